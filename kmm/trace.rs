// SPDX-License-Identifier: GPL-2.0

//! The `ksm:*` tracepoints (include/trace/events/ksm.h), fired at the
//! points where mm/ksm.c fires them, with the same fields, so that
//! `perf trace -e 'ksm:*'`, bpftrace and monitoring scripts work with
//! rust_ksm as with the built-in KSM.  (`ksm_enter`/`ksm_exit` come from the
//! core.)  Rust has no tracepoint macro in 6.12: each event is a C wrapper in
//! helpers.c; pointers are recorded as values, never dereferenced.

use super::page::{PageRef, ZeroPage};
use crate::bindings;
use kernel::ffi::c_void;
use kernel::prelude::*;

/// A pass over all mms begins: upstream's scan sequence number and its
/// rmap item count.
pub(crate) fn start_scan(seq: u32, rmap_items: usize) {
    // SAFETY: the tracepoint records two integers.
    unsafe { bindings::rust_ksm_trace_start_scan(seq as i32, rmap_items as u32) };
}

/// A pass ends (the same `seq` as its start).
pub(crate) fn stop_scan(seq: u32, rmap_items: usize) {
    // SAFETY: the tracepoint records two integers.
    unsafe { bindings::rust_ksm_trace_stop_scan(seq as i32, rmap_items as u32) };
}

/// A page of `mm` (its rmap item `item`) was merged into the KSM page
/// `kpage`, or with none made a KSM page itself (then `pfn` is the page's):
/// try_to_merge_with_ksm_page()'s event, `result` its outcome.
pub(crate) fn merge_with_ksm_page<T>(
    kpage: Option<&PageRef>,
    page: &PageRef,
    item: *const c_void,
    mm: *mut bindings::mm_struct,
    result: &Result<T>,
) {
    let pfn = kpage.unwrap_or(page).pfn();
    let kpage = kpage.map_or(core::ptr::null_mut(), |k| k.page().cast::<c_void>());
    // SAFETY: the tracepoint records the pointers as values.
    unsafe {
        bindings::rust_ksm_trace_merge_with_ksm_page(
            kpage,
            pfn,
            item.cast_mut(),
            mm.cast(),
            errno(result),
        )
    };
}

/// An all-zero page at `addr` was (or was not: `result`) replaced by the
/// zero page: try_to_merge_with_zero_page()'s event.
pub(crate) fn merge_one_page<T>(
    addr: usize,
    item: *const c_void,
    mm: *mut bindings::mm_struct,
    result: &Result<T>,
) {
    let pfn = ZeroPage::at(addr).pfn();
    // SAFETY: the tracepoint records the pointers as values.
    unsafe {
        bindings::rust_ksm_trace_merge_one_page(pfn, item.cast_mut(), mm.cast(), errno(result))
    };
}

/// The KSM page at `pfn` leaves the stable tree (its node is removed).
pub(crate) fn remove_ksm_page(pfn: usize) {
    // SAFETY: the tracepoint records an integer.
    unsafe { bindings::rust_ksm_trace_remove_ksm_page(pfn) };
}

/// A mapping (rmap item `item` of `mm`) of the KSM page at `pfn` is
/// dropped with its node (upstream: every item but the last on the node).
pub(crate) fn remove_rmap_item(pfn: usize, item: *const c_void, mm: *mut bindings::mm_struct) {
    // SAFETY: the tracepoint records the pointers as values.
    unsafe { bindings::rust_ksm_trace_remove_rmap_item(pfn, item.cast_mut(), mm.cast()) };
}

/// The scan-time advisor set `pages_to_scan` after a full scan of
/// `scan_time` seconds that used `cpu_percent` of a CPU.
pub(crate) fn advisor(scan_time: u64, pages_to_scan: u64, cpu_percent: u64) {
    // SAFETY: the tracepoint records three integers.
    unsafe {
        bindings::rust_ksm_trace_advisor(
            scan_time as i64,
            pages_to_scan as usize,
            cpu_percent as u32,
        )
    };
}

fn errno<T>(result: &Result<T>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) => e.to_errno(),
    }
}
