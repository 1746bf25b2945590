// SPDX-License-Identifier: GPL-2.0

//! The engine hooks (`struct ksm_engine_ops`), called by the KSM core under
//! its SRCU while the module is registered: each turns the core's pointers
//! into what the engine takes and calls into it.

use crate::kmm::{PageRef, VmaRef};
use crate::merge::unmerge;
use crate::rmap::{self, StableNode};
use crate::{bindings, ksm};
use core::ptr::NonNull;
use core::sync::atomic::Ordering;
use kernel::c_str;
use kernel::error::{from_result, to_result};
use kernel::ffi::{c_int, c_long, c_uint};
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;

/// # Safety
///
/// Called by the KSM core with a valid `mm`.
unsafe extern "C" fn engine_enter(mm: *mut bindings::mm_struct) -> c_int {
    from_result(|| {
        ksm().enter(NonNull::new(mm).ok_or(EINVAL)?)?;
        Ok(0)
    })
}

/// # Safety
///
/// Called by the KSM core with a valid `mm`.
unsafe extern "C" fn engine_exit(mm: *mut bindings::mm_struct) {
    ksm().exit(mm);
}

/// MADV_UNMERGEABLE, mremap, prctl: break every KSM page of the range,
/// walking only populated page tables.
///
/// # Safety
///
/// Called by the KSM core with a valid VMA, mmap lock held.
unsafe extern "C" fn engine_unmerge_range(
    vma: *mut bindings::vm_area_struct,
    start: usize,
    end: usize,
    lock_vma: bool,
) -> c_int {
    from_result(|| {
        // SAFETY: the core holds the mmap lock, as the hook requires.
        let vma = unsafe { VmaRef::from_raw(NonNull::new(vma).ok_or(EINVAL)?) };
        if lock_vma {
            // SAFETY: the core asks for the VMA lock with the mmap lock
            // held for write.
            unsafe { vma.start_write() };
        }
        unmerge::unmerge_range(vma, start, end, true)?;
        Ok(0)
    })
}

/// # Safety
///
/// Called by the KSM core with a locked KSM folio.
unsafe extern "C" fn engine_rmap_walk(
    folio: *mut bindings::folio,
    rwc: *mut bindings::rmap_walk_control,
) {
    // SAFETY: as the core guarantees.
    unsafe { rmap::walk::rmap_walk(folio, rwc) };
}

/// folio_migrate_ksm(): the stable node follows the page to `new`.
///
/// # Safety
///
/// Called by the KSM core with two locked folios, `new` already carrying
/// `old`'s mapping.
unsafe extern "C" fn engine_folio_migrate(new: *mut bindings::folio, old: *mut bindings::folio) {
    // SAFETY: as the core guarantees.
    unsafe { StableNode::folio_migrated(new, old) };
}

/// Swap-in of a KSM folio may map it again if it still has its node and
/// we are not unmerging everything; otherwise the fault handler copies it.
///
/// # Safety
///
/// Called by the KSM core with a KSM folio.
unsafe extern "C" fn engine_folio_mappable(folio: *mut bindings::folio) -> bool {
    // SAFETY: as the core guarantees.
    unsafe { StableNode::of_folio(folio) }.is_some() && ksm().unmerging.load(Ordering::Relaxed) == 0
}

/// /proc/PID/ksm_stat's profit, from the per-mm counters the engine keeps.
///
/// # Safety
///
/// Called by the KSM core with a valid `mm`.
unsafe extern "C" fn engine_process_profit(mm: *mut bindings::mm_struct) -> c_long {
    // SAFETY: `mm` is valid for the call; these are plain counters (in the
    // anonymous struct that holds most of `mm_struct`).
    let (merging, rmap_items, zero_pages) = unsafe {
        let fields = &(*mm).__bindgen_anon_1;
        (
            fields.ksm_merging_pages,
            fields.ksm_rmap_items,
            bindings::rust_ksm_mm_zero_pages(mm),
        )
    };
    (merging as c_long + zero_pages) * (PAGE_SIZE as c_long)
        - (rmap_items as c_long) * (rmap::RMAP_ITEM_BYTES as c_long)
}

/// Registration offers us each page the built-in KSM merged: it becomes
/// ours, mappings and all (see `scan/handover.rs`).
///
/// # Safety
///
/// Called by the KSM core with a locked, referenced KSM folio of the
/// built-in KSM and `nr` mappings at `maps`.
unsafe extern "C" fn engine_adopt(
    folio: *mut bindings::folio,
    maps: *const bindings::ksm_mapping,
    nr: c_uint,
) -> c_int {
    from_result(|| {
        let maps = if nr == 0 {
            &[][..]
        } else {
            // SAFETY: the core passes `nr` mappings at `maps`.
            unsafe { core::slice::from_raw_parts(maps, nr as usize) }
        };
        // SAFETY: the core holds a reference on the folio for the call.
        let page = unsafe { PageRef::of_folio(folio) };
        ksm().adopt(&page, maps)?;
        Ok(0)
    })
}

/// `Sync` wrapper for the ops table, which holds a C string pointer.
struct EngineOps(bindings::ksm_engine_ops);

// SAFETY: the table is immutable and its pointers are to 'static data.
unsafe impl Sync for EngineOps {}

static ENGINE_OPS: EngineOps = EngineOps(bindings::ksm_engine_ops {
    name: c_str!("rust_ksm").as_char_ptr(),
    enter: Some(engine_enter),
    exit: Some(engine_exit),
    unmerge_range: Some(engine_unmerge_range),
    rmap_walk: Some(engine_rmap_walk),
    folio_migrate: Some(engine_folio_migrate),
    folio_mappable: Some(engine_folio_mappable),
    process_profit: Some(engine_process_profit),
    adopt: Some(engine_adopt),
});

/// Registration as the kernel's KSM engine; unregisters on drop.
pub(crate) struct EngineRegistration;

impl EngineRegistration {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: `ENGINE_OPS` is 'static and its hooks are valid while `KSM`
        // is set, which the module guarantees (see `RustKsm`).
        to_result(unsafe { bindings::ksm_register_engine(&ENGINE_OPS.0) })?;
        // The pages adopted during registration get their place in the
        // scan order.
        ksm().file_adopted();
        Ok(Self)
    }
}

impl Drop for EngineRegistration {
    fn drop(&mut self) {
        // SAFETY: registered in `new`; this waits for running hooks.
        unsafe { bindings::ksm_unregister_engine(&ENGINE_OPS.0) };
    }
}
