// SPDX-License-Identifier: GPL-2.0

//! Memory hotplug: no stable node may be looked at while the memory of its
//! pfn goes offline (see [`Ksm::scan_lock`]).
//!
//! A stale node (its page freed) keeps its pfn until a search looks at it,
//! and `pfn_folio()` of an offlined block reads a poisoned (DEBUG_VM) or
//! removed memmap.  So, as upstream's `ksm_memory_callback()`: from
//! `MEM_GOING_OFFLINE` nobody takes the scan lock (`Ksm::scan_lock()` waits
//! while the [`OfflineGate`] is closed; the current holder is waited for),
//! and at `MEM_OFFLINE` the nodes whose pfn lies in the range are removed by
//! pfn alone (a live KSM page there was migrated first, moving its node's
//! pfn).  `MEM_CANCEL_OFFLINE` just lets everyone back.  An end whose begin
//! this module never saw opens nothing (see `offline_gate.rs`).
//! `rust_ksm_faults` 6 and 9 test it (see scripts/check for the memory
//! layout they need).

use crate::offline_gate::PfnRange;
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
/// Called by the memory notifier chain; for the offline actions `data` is
/// a `struct memory_notify` (offline_pages() passes one to each).
unsafe extern "C" fn memory_callback(
    _nb: *mut bindings::notifier_block,
    action: kernel::ffi::c_ulong,
    data: *mut c_void,
) -> c_int {
    let range = || {
        // SAFETY: as the chain guarantees for the offline actions.
        let arg = unsafe { &*data.cast::<bindings::memory_notify>() };
        (arg.start_pfn, arg.start_pfn + arg.nr_pages)
    };
    match action as bindings::memory_block_state {
        bindings::memory_block_state_MEM_GOING_OFFLINE => ksm().offline_begin(range()),
        bindings::memory_block_state_MEM_OFFLINE => ksm().offline_end(range(), true),
        bindings::memory_block_state_MEM_CANCEL_OFFLINE => ksm().offline_end(range(), false),
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
    fn offline_begin(&self, range: PfnRange) {
        let mut gate = self.offline.lock();
        gate.begin(range);
        self.offlining.store(true, Ordering::Release);
        drop(gate);
        drop(self.scan.lock());
    }

    /// MEM_OFFLINE (`gone`: prune the nodes of the range, whether or not
    /// its begin was seen) or MEM_CANCEL_OFFLINE; then let everyone back if
    /// this ends the offline the gate was closed for.
    fn offline_end(&self, range: PfnRange, gone: bool) {
        if gone {
            let mut scan = self.scan.lock();
            scan.trees.remove_nodes_in(range.0, range.1);
            scan.publish(&self.stats);
        }
        let mut gate = self.offline.lock();
        if gate.end(range) {
            self.offlining.store(false, Ordering::Release);
            drop(gate);
            self.offline_done.notify_all();
        }
    }
}
