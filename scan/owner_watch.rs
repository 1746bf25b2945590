// SPDX-License-Identifier: GPL-2.0

//! Owner changes: with `merge_domain=cgroup` an mm is homed by the cgroup
//! of its owner (`mm->owner`), and when that task exits while others still
//! use the mm, `mm_update_next_owner()` makes one of them the owner, maybe
//! one in another cgroup (a `CLONE_VM` child moved elsewhere), and tells
//! nobody.  The only event is `sched:sched_process_exit`, after the change,
//! for every exit on the system, with no mm to say which one it was.
//!
//! So the scanner remembers, in a small lock-free filter, the tasks it has
//! homed mms by ([`OwnerWatch::watch`], at every domain lookup), and the
//! exit probe asks the filter about the exiting task
//! ([`OwnerWatch::may_be_watched`]): a few instructions per exit on the
//! system, and a re-check of the domains (a lookup per registered mm) only
//! when an owner, or a task sharing its bit, exits.  The filter is rebuilt
//! from the owners found at every full re-check ([`OwnerWatch::replace`]),
//! so the owners of mms long gone do not keep their bits.
//!
//! Ordering: the exiting task stores the new owner and then (probe) reads
//! the filter; the scanner sets the bit and then reads the owner.  A full
//! fence on both sides (store, fence, load: the store-buffering pattern)
//! means that at least one sees the other: either the probe sees the bit
//! and raises the event, or the scanner's lookup already sees the new
//! owner.  Pure logic, host-tested (selftests/host).

#![deny(unsafe_code)]

use core::sync::atomic::{fence, AtomicU64, Ordering};

/// Words of the filter: 4096 bits, one cache line per 512.
pub(crate) const WORDS: usize = 64;

/// Bit `(word, mask)` of a task identity (its `task_struct` address).
fn bit_of(task: usize) -> (usize, u64) {
    // Fibonacci hashing: the high bits of the product mix every bit of
    // the address (task_structs are large and aligned alike).
    let h = (task as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52;
    ((h / 64) as usize % WORDS, 1 << (h % 64))
}

/// The tasks mms were homed by, as a set that may answer "maybe" for a
/// task it does not hold and never answers "no" for one it does.
pub(crate) struct OwnerWatch {
    bits: [AtomicU64; WORDS],
}

/// The owners met in one full re-check, to [`OwnerWatch::replace`] the
/// filter's bits with.
pub(crate) struct OwnerSet([u64; WORDS]);

impl OwnerSet {
    pub(crate) const fn new() -> Self {
        Self([0; WORDS])
    }

    fn add(&mut self, task: usize) {
        let (w, m) = bit_of(task);
        self.0[w] |= m;
    }
}

impl OwnerWatch {
    pub(crate) const fn new() -> Self {
        Self {
            bits: [const { AtomicU64::new(0) }; WORDS],
        }
    }

    /// Watches `task` (0: none) before its mm's domain is looked up; also
    /// into `set` during a full re-check.
    pub(crate) fn watch(&self, task: usize, set: Option<&mut OwnerSet>) {
        if task == 0 {
            return;
        }
        let (w, m) = bit_of(task);
        self.bits[w].fetch_or(m, Ordering::Relaxed);
        // Bit stored before the owner is read again: see the module head.
        fence(Ordering::SeqCst);
        if let Some(set) = set {
            set.add(task);
        }
    }

    /// Whether the exiting `task` may own a registered mm (after
    /// `mm_update_next_owner()` stored its successor).
    pub(crate) fn may_be_watched(&self, task: usize) -> bool {
        // Successor stored before the bit is read: see the module head.
        fence(Ordering::SeqCst);
        let (w, m) = bit_of(task);
        self.bits[w].load(Ordering::Relaxed) & m != 0
    }

    /// After a full re-check: keep only the bits of the owners it met.
    /// A bit both sets have stays set throughout (one store per word).
    pub(crate) fn replace(&self, set: &OwnerSet) {
        for (word, new) in self.bits.iter().zip(set.0) {
            word.store(new, Ordering::Relaxed);
        }
    }
}

/// The owners the scanner homed mms by, for the exit probe
/// (`domain_events.rs`).
pub(crate) static OWNERS: OwnerWatch = OwnerWatch::new();
