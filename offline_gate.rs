// SPDX-License-Identifier: GPL-2.0

//! The rule that closes the scan lock while memory goes offline (see
//! `hotplug.rs` and `Ksm::scan_lock`), as a value the host tests can drive.
//!
//! The memory notifier chain does not promise a begin for every end:
//!
//! - a notifier registered while an offline is in progress (insmod during
//!   an offline: ours is registered before the engine, whose registration
//!   then waits for that offline to end) sees `MEM_OFFLINE` or
//!   `MEM_CANCEL_OFFLINE` without the `MEM_GOING_OFFLINE` that began it;
//! - a notifier earlier in the chain that refuses `MEM_GOING_OFFLINE`
//!   (virtio-mem while its device goes away, s390 standby memory) stops the
//!   chain before ours, but `MEM_CANCEL_OFFLINE` goes to every notifier.
//!
//! So the gate remembers which range it was closed for and opens only for
//! the end of that range; an end it never saw begin changes nothing.  A
//! count of begins minus ends wrapped on either path, and the scan lock
//! then stayed closed for good.  `offline_pages()` runs under the memory
//! hotplug lock, taken for writing, so offlines do not overlap and one
//! range is all the gate needs; a second begin while closed (no kernel does
//! that) moves the gate to the newer range, which keeps it closed until an
//! end of its own.

#![deny(unsafe_code)]

/// A range of pfns, `[start, end)`.
pub(crate) type PfnRange = (usize, usize);

/// Whether memory is going offline, and which.
///
/// # Invariants
///
/// `closed_for` is the range of the `MEM_GOING_OFFLINE` last seen whose end
/// has not been seen yet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OfflineGate {
    closed_for: Option<PfnRange>,
}

impl OfflineGate {
    pub(crate) const fn new() -> Self {
        Self { closed_for: None }
    }

    /// `MEM_GOING_OFFLINE` of `range`: nobody may look at stable nodes
    /// until it ends.
    pub(crate) fn begin(&mut self, range: PfnRange) {
        // INVARIANT: `range` is the latest begin, not ended.
        self.closed_for = Some(range);
    }

    /// `MEM_OFFLINE` or `MEM_CANCEL_OFFLINE` of `range`.  Returns whether
    /// the gate opened (the end matched the begin it was closed for).
    pub(crate) fn end(&mut self, range: PfnRange) -> bool {
        if self.closed_for != Some(range) {
            return false;
        }
        // INVARIANT: the begin it was closed for has ended.
        self.closed_for = None;
        true
    }

    /// Whether the scan lock must wait.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed_for.is_some()
    }
}
