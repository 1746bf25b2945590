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
use crate::kmm::{self, anon_vma::AnonVmaReadGuard};
use crate::rmap::StableNode;
use kernel::page::PAGE_SHIFT;

/// The address of page `index` in `vma`, if the VMA covers it.
///
/// # Safety
///
/// `vma` is valid (the anon_vma lock held keeps it so).
unsafe fn address_in(vma: *mut bindings::vm_area_struct, index: usize) -> Option<usize> {
    // SAFETY: by the function's safety requirements.
    let (start, end, pgoff) = unsafe {
        (
            bindings::rust_ksm_vma_start(vma),
            bindings::rust_ksm_vma_end(vma),
            (*vma).vm_pgoff,
        )
    };
    let addr = start.checked_add(index.checked_sub(pgoff)? << PAGE_SHIFT)?;
    (addr < end).then_some(addr)
}

/// rmap_walk() of a rust_ksm folio.
///
/// # Safety
///
/// `folio` is a locked KSM folio, `rwc` a valid walk control: the folio lock
/// keeps the stable node and its mapping list stable.
pub(crate) unsafe fn rmap_walk(folio: *mut bindings::folio, rwc: *mut bindings::rmap_walk_control) {
    // SAFETY: by the function's safety requirements.
    let Some(node) = (unsafe { StableNode::of_folio(folio) }) else {
        return;
    };
    // SAFETY: the folio lock keeps the list unchanged (see StableNode).
    let mappings = unsafe { node.as_ref().mappings() };
    // SAFETY: `rwc` is valid.
    let rwc = unsafe { &mut *rwc };
    // First the mapping each item was merged from, then forked children.
    for forks in [false, true] {
        for m in mappings.iter() {
            let guard = match m.anon_vma.try_read() {
                Some(guard) => guard,
                None if rwc.try_lock => {
                    rwc.contended = true;
                    return;
                }
                None => m.anon_vma.read(),
            };
            // SAFETY: the anon_vma lock is held for read: the VMAs in its
            // tree are stable; `folio` and `rwc` as required.
            if unsafe { walk_anon_vma(folio, rwc, &guard, m.index, m.mm.as_ptr(), forks) } {
                return;
            }
        }
    }
}

/// Visits the VMAs of the locked anon_vma that map page `index`; true to
/// stop.
///
/// # Safety
///
/// `folio` and `rwc` as for [`rmap_walk`].
unsafe fn walk_anon_vma(
    folio: *mut bindings::folio,
    rwc: &mut bindings::rmap_walk_control,
    anon_vma: &AnonVmaReadGuard<'_>,
    index: usize,
    mm: *mut bindings::mm_struct,
    forks: bool,
) -> bool {
    for vma in anon_vma.vmas_at(index) {
        let vma = vma.as_ptr();
        // The anon_vma lock is a rwsem: no spinlock is held.
        kmm::cond_resched();
        // SAFETY: the VMA is stable under the anon_vma lock.
        if (unsafe { (*vma).vm_mm } == mm) == forks {
            continue;
        }
        // SAFETY: as above.
        let Some(addr) = (unsafe { address_in(vma, index) }) else {
            continue;
        };
        // SAFETY: the callbacks are the caller's, called as rmap_walk_anon()
        // would.
        unsafe {
            if let Some(invalid) = rwc.invalid_vma {
                if invalid(vma, rwc.arg) {
                    continue;
                }
            }
            if let Some(rmap_one) = rwc.rmap_one {
                if !rmap_one(folio, vma, addr, rwc.arg) {
                    return true;
                }
            }
            if let Some(done) = rwc.done {
                if done(folio) != 0 {
                    return true;
                }
            }
        }
    }
    false
}
