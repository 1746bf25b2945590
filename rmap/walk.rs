// SPDX-License-Identifier: GPL-2.0

//! The rmap walk of a rust_ksm page, from the linear page index each stable
//! item stores.
//!
//! mm/ksm.c (6.12) visits every VMA of each item's anon_vma and filters by
//! address; with thousands of VMAs sharing one anon_vma a single walk takes
//! hundreds of milliseconds under the anon_vma lock.  Here each item's
//! anon_vma interval tree is queried for exactly `[index, index]`, and the
//! address in each VMA found is computed from the index.  Using the address
//! as the index (`address >> PAGE_SHIFT`) would be wrong after mremap: anon
//! pages keep the index of the address they were first mapped at.

use crate::bindings;
use crate::kmm::anon_vma::{AnonVmaReadGuard, RmapVma};
use crate::kmm::{self, LockedPage};
use crate::rmap::{RmapItem, StableNode};

/// How a walk ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// Every mapping was visited.
    Done,
    /// The visitor asked to stop.
    Stopped,
    /// An anon_vma lock was contended, with `try_lock`.
    Contended,
}

/// The walk of a locked KSM folio: `visit(vma, addr)` for each VMA that
/// covers its page, at `addr` (mappings' own mms first, then their forked
/// children), until `visit` returns true.  With `try_lock`, a contended
/// anon_vma lock ends the walk instead of waiting.
///
/// # Safety
///
/// `folio` is a locked folio: the folio lock keeps the stable node, its
/// item list and its items' mm and state stable.
pub(crate) unsafe fn walk(
    folio: *mut bindings::folio,
    try_lock: bool,
    mut visit: impl FnMut(RmapVma<'_>, usize) -> bool,
) -> Walk {
    // SAFETY: by the function's safety requirements.
    let Some(node) = (unsafe { StableNode::of_folio(folio) }) else {
        return Walk::Done;
    };
    // SAFETY: the folio lock keeps the list unchanged (see StableNode).
    let items = unsafe { node.as_ref().items() };
    for forks in [false, true] {
        for &item in items.iter() {
            // SAFETY: an item of the node of the folio we hold locked.
            let Some((mm, rmap)) = (unsafe { RmapItem::stable_rmap(item) }) else {
                continue;
            };
            let guard = match rmap.anon_vma.try_read() {
                Some(guard) => guard,
                None if try_lock => return Walk::Contended,
                None => rmap.anon_vma.read(),
            };
            if walk_anon_vma(&guard, rmap.index, mm.as_ptr(), forks, &mut visit) {
                return Walk::Stopped;
            }
        }
    }
    Walk::Done
}

/// [`walk`] of a folio the caller locked.
pub(crate) fn walk_locked(
    page: &LockedPage,
    visit: impl FnMut(RmapVma<'_>, usize) -> bool,
) -> Walk {
    // SAFETY: locked (type invariant of `LockedPage`).
    unsafe { walk(page.folio(), false, visit) }
}

/// rmap_walk() of a rust_ksm folio (the engine hook): [`walk`], calling
/// `rwc`'s callbacks as rmap_walk_anon() would.
///
/// # Safety
///
/// `folio` is a locked KSM folio, `rwc` a valid walk control.
pub(crate) unsafe fn rmap_walk(folio: *mut bindings::folio, rwc: *mut bindings::rmap_walk_control) {
    // SAFETY: `rwc` is valid.
    let rwc = unsafe { &mut *rwc };
    let (arg, invalid_vma, rmap_one, done) = (rwc.arg, rwc.invalid_vma, rwc.rmap_one, rwc.done);
    let visit = |vma: RmapVma<'_>, addr: usize| {
        // SAFETY: the caller's callbacks, called as rmap_walk_anon() calls
        // them: the folio locked, the VMA stable under its anon_vma lock.
        unsafe {
            if invalid_vma.is_some_and(|invalid| invalid(vma.as_ptr(), arg)) {
                return false;
            }
            if rmap_one.is_some_and(|one| !one(folio, vma.as_ptr(), addr, arg)) {
                return true;
            }
            done.is_some_and(|done| done(folio) != 0)
        }
    };
    // SAFETY: by the function's safety requirements.
    if unsafe { walk(folio, rwc.try_lock, visit) } == Walk::Contended {
        rwc.contended = true;
    }
}

/// Visits the VMAs of the locked anon_vma that map page `index`; true to
/// stop.
fn walk_anon_vma(
    anon_vma: &AnonVmaReadGuard<'_>,
    index: usize,
    mm: *mut bindings::mm_struct,
    forks: bool,
    visit: &mut impl FnMut(RmapVma<'_>, usize) -> bool,
) -> bool {
    for vma in anon_vma.vmas_at(index) {
        // The anon_vma lock is a rwsem: no spinlock is held.
        kmm::cond_resched();
        if (vma.mm() == mm) == forks {
            continue;
        }
        let Some(addr) = vma.address_of(index) else {
            continue;
        };
        if visit(vma, addr) {
            return true;
        }
    }
    false
}
