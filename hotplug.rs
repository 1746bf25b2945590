// SPDX-License-Identifier: GPL-2.0

//! Memory hotplug: no stable node may be looked at while the memory of its
//! pfn goes offline (see [`Ksm::scan_lock`]).
//!
//! A stale node (its page freed) keeps its pfn until a search looks at it,
//! and `pfn_folio()` of an offlined block reads a poisoned (DEBUG_VM) or
//! removed memmap.  So, as upstream's `ksm_memory_callback()`: from
//! `MEM_GOING_OFFLINE` nobody takes the scan lock (`Ksm::scan_lock()` waits
//! while `offlining` is set; the current holder is waited for), and at
//! `MEM_OFFLINE` the nodes whose pfn lies in the range are removed by pfn
//! alone (a live KSM page there was migrated first, moving its node's pfn).
//! `MEM_CANCEL_OFFLINE` just lets everyone back.  `rust_ksm_faults` 6
//! tests it (see scripts/check for the memory layout it needs).

use crate::{bindings, ksm, Ksm};
use core::ptr;
use core::sync::atomic::Ordering;
use kernel::error::to_result;
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;

/// `Sync` wrapper for the memory notifier block, which the notifier chain
/// links through.
struct NotifierBlock(core::cell::UnsafeCell<bindings::notifier_block>);

// SAFETY: the block is only changed by the notifier chain, under its lock.
unsafe impl Sync for NotifierBlock {}

static MEMORY_NB: NotifierBlock =
    NotifierBlock(core::cell::UnsafeCell::new(bindings::notifier_block {
        notifier_call: Some(memory_callback),
        next: ptr::null_mut(),
        priority: 0,
    }));

/// Memory hotplug events (see [`Ksm::scan_lock`]).
///
/// # Safety
///
/// Called by the memory notifier chain; for MEM_OFFLINE `data` is a
/// `struct memory_notify`.
unsafe extern "C" fn memory_callback(
    _nb: *mut bindings::notifier_block,
    action: kernel::ffi::c_ulong,
    data: *mut c_void,
) -> c_int {
    match action as bindings::memory_block_state {
        bindings::memory_block_state_MEM_GOING_OFFLINE => ksm().offline_begin(),
        bindings::memory_block_state_MEM_OFFLINE => {
            // SAFETY: as the chain guarantees for this action.
            let arg = unsafe { &*data.cast::<bindings::memory_notify>() };
            ksm().offline_end(Some((arg.start_pfn, arg.start_pfn + arg.nr_pages)));
        }
        bindings::memory_block_state_MEM_CANCEL_OFFLINE => ksm().offline_end(None),
        _ => {}
    }
    bindings::NOTIFY_OK as c_int
}

/// Registration of [`memory_callback`]; unregistered on drop, after the
/// last unmerge (which may wait for an offline to end).
pub(crate) struct MemoryNotifier;

impl MemoryNotifier {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: the block is static; its callback only needs `KSM`, set
        // for as long as this registration lives (see `RustKsm`).
        to_result(unsafe { bindings::register_memory_notifier(MEMORY_NB.0.get()) })?;
        Ok(Self)
    }
}

impl Drop for MemoryNotifier {
    fn drop(&mut self) {
        // SAFETY: registered in `new`; this waits for a running callback.
        unsafe { bindings::unregister_memory_notifier(MEMORY_NB.0.get()) };
    }
}

impl Ksm {
    /// MEM_GOING_OFFLINE: keep everyone off the nodes, and wait for whoever
    /// holds the scan lock now.
    fn offline_begin(&self) {
        let control = self.control.lock();
        self.offlining.fetch_add(1, Ordering::AcqRel);
        drop(control);
        drop(self.scan.lock());
    }

    /// MEM_OFFLINE (with the range) or MEM_CANCEL_OFFLINE: prune the nodes
    /// of the range, then let everyone back.
    fn offline_end(&self, range: Option<(usize, usize)>) {
        if let Some((start, end)) = range {
            let mut scan = self.scan.lock();
            scan.trees.remove_nodes_in(start, end);
            scan.publish(&self.stats);
        }
        let control = self.control.lock();
        self.offlining.fetch_sub(1, Ordering::AcqRel);
        drop(control);
        self.offline_done.notify_all();
    }
}
