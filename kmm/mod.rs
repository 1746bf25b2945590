// SPDX-License-Identifier: GPL-2.0

//! kmm: the kernel's mm objects as Rust types, for the KSM algorithm.
//!
//! The algorithm files (`rmap/`, `tree/`, `merge/`, `scan/`) work on the
//! types of this layer; this is where raw `bindings` calls on mm objects
//! live, each paired call (lock/unlock, get/put, start/end, map/unmap)
//! folded into one RAII type so that an early return cannot leak a lock or
//! a reference, and each `unsafe` requirement carried by a type instead of
//! being repeated at every call site:
//!
//! - [`mm`]: `mm_struct` references and the mmap lock ([`MmGrab`],
//!   `MmUsers`, `MmapReadGuard`);
//! - [`vma`]: a VMA under its mmap lock ([`VmaRef`]): flags, anon_vma,
//!   linear page index, the page or KSM page mapped at an address;
//! - [`page`]: a referenced page ([`PageRef`]), its folio lock
//!   ([`FolioLock`]) and its contents (hash, key, compare);
//! - [`pgtable`]: page-table guards (the PTE table of a PMD, an mmu-notifier
//!   range, `page_vma_mapped_walk()`);
//! - [`anon_vma`]: a referenced `anon_vma` ([`AnonVmaRef`]), its read lock
//!   and the VMAs its interval tree holds at an index;
//! - [`handback`]: handing KSM pages to the built-in KSM;
//! - [`walk`]: `walk_page_range()` behind a [`walk::Visitor`];
//! - [`rbtree`]: intrusive red-black trees ordered during the descent
//!   ([`rbtree::RbRoot`], [`rbtree::RbLink`]);
//! - [`trace`]: the `ksm:*` tracepoints;
//! - [`words`]: page contents compared a block at a time.
//!
//! Names follow upstream's `kernel::mm` (6.13+) where one exists, so that
//! the layer can give way to it on newer kernels.

pub(crate) mod anon_vma;
pub(crate) mod handback;
pub(crate) mod mm;
pub(crate) mod page;
pub(crate) mod pgtable;
pub(crate) mod rbtree;
pub(crate) mod trace;
pub(crate) mod vma;
pub(crate) mod walk;
pub(crate) mod words;

pub(crate) use anon_vma::AnonVmaRef;
pub(crate) use mm::{MmGrab, OwnerKey};
pub(crate) use page::{FolioLock, LockedPage, PageRef};
pub(crate) use vma::VmaRef;

/// Gives the CPU away if a reschedule is due (`cond_resched()`).  Call it
/// with no spinlock held.
pub(crate) fn cond_resched() {
    // SAFETY: a plain call; sleeping is allowed where this is called (no
    // spinlock held, as documented).
    unsafe { crate::bindings::rust_ksm_cond_resched() };
}

/// The kernel's tick count (`jiffies`): a clock for coarse intervals that
/// costs one load, where `ktime_get()` reads the clocksource.
pub(crate) fn jiffies() -> usize {
    // SAFETY: `jiffies` is a kernel global, always mapped; the timer
    // interrupt updates it with an aligned word store, so a volatile load
    // reads one value or the next (what `READ_ONCE(jiffies)` does).
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(crate::bindings::jiffies)) as usize }
}

/// Whether a signal is pending for the current task.
pub(crate) fn signal_pending() -> bool {
    // SAFETY: `current` is always a valid task.
    unsafe { crate::bindings::signal_pending(crate::bindings::get_current()) != 0 }
}
