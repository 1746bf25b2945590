// SPDX-License-Identifier: GPL-2.0

//! `walk_page_range()` behind a visitor: the walk finds the present pages of
//! a range, skipping page-table holes, and shows each to a [`Visitor`]
//! under its page-table lock; the visitor says what it takes and when to
//! stop.

use super::mm::MmapReadGuard;
use super::page::PageRef;
use super::vma::VmaRef;
use crate::bindings;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use kernel::ffi::{c_int, c_ulong, c_void};
use kernel::page::PAGE_SIZE;

/// What a visitor tells the walk after each entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Go,
    Stop,
}

/// A page mapped by a PTE or a huge PMD, shown under that page-table lock.
///
/// # Invariants
///
/// `page` is mapped, and its page-table lock held, for `'l`.
pub(crate) struct MappedPage<'l> {
    page: NonNull<bindings::page>,
    _lock: PhantomData<&'l ()>,
}

impl MappedPage<'_> {
    fn folio(&self) -> *mut bindings::folio {
        // SAFETY: a mapped page has a valid folio while the lock is held.
        unsafe { bindings::rust_ksm_page_folio(self.page.as_ptr()) }
    }

    /// An ordinary anonymous page (KSM pages included; not device memory).
    pub(crate) fn is_anon(&self) -> bool {
        let folio = self.folio();
        // SAFETY: valid folio (see `folio()`).
        unsafe {
            !bindings::rust_ksm_folio_is_zone_device(folio)
                && bindings::rust_ksm_folio_test_anon(folio)
        }
    }

    pub(crate) fn is_ksm(&self) -> bool {
        // SAFETY: valid folio (see `folio()`).
        unsafe { bindings::rust_ksm_folio_test_ksm(self.folio()) }
    }

    /// Part of a large folio (a THP, PTE- or PMD-mapped).
    pub(crate) fn is_large(&self) -> bool {
        // SAFETY: valid folio (see `folio()`).
        unsafe { bindings::rust_ksm_folio_test_large(self.folio()) }
    }

    /// The folio's `mapping` word (for a KSM folio: its stable node and
    /// the `PAGE_MAPPING_KSM` bits).
    pub(crate) fn mapping(&self) -> usize {
        // SAFETY: valid folio (see `folio()`).
        unsafe { bindings::rust_ksm_folio_mapping(self.folio()) as usize }
    }

    /// Takes a reference, which outlives the walk.
    pub(crate) fn get(&self) -> PageRef {
        // SAFETY: mapped under the held lock, so the folio cannot be freed
        // during the call (type invariant).
        unsafe { PageRef::get(self.page) }
    }
}

/// An entry the walk shows its visitor.
pub(crate) enum Entry<'l> {
    /// A page mapped by a PTE.
    Pte(MappedPage<'l>),
    /// The page at the address, of a huge page mapped by a PMD.
    HugePmd(MappedPage<'l>),
    /// A KSM zero page (`use_zero_pages`); only if [`Visitor::ksm_entries`].
    KsmZero,
    /// A migration entry of a KSM folio: the page is mapped again once the
    /// migration ends; only if [`Visitor::ksm_entries`].
    KsmMigrating,
}

/// What a walk does with what it finds.
pub(crate) trait Visitor {
    /// Whether to walk `vma` at all ([`walk_mm`] only).
    fn wants_vma(&mut self, _vma: VmaRef<'_>) -> bool {
        true
    }

    /// Whether to be shown KSM zero pages and KSM migration entries too.
    fn ksm_entries(&self) -> bool {
        false
    }

    /// One entry, at `addr`, under its page-table lock.
    fn visit(&mut self, addr: usize, entry: Entry<'_>) -> Step;
}

/// The walk's private data.
struct Walk<'v> {
    visitor: &'v mut dyn Visitor,
    stopped: bool,
}

impl<'v> Walk<'v> {
    /// Runs `walk`, a `walk_page_range*()` call handed [`OPS`] and the
    /// private data the callbacks cast back to a `Walk`.  True if the
    /// visitor stopped the walk.
    fn run(
        visitor: &'v mut dyn Visitor,
        walk: impl FnOnce(&'static bindings::mm_walk_ops, *mut c_void),
    ) -> bool {
        let mut w = Walk {
            visitor,
            stopped: false,
        };
        walk(&OPS, ptr::from_mut(&mut w).cast::<c_void>());
        w.stopped
    }
}

/// Walks `[start, end)` of the mm whose mmap lock `guard` holds.  True if
/// the visitor stopped the walk.
pub(crate) fn walk_mm(
    guard: &MmapReadGuard<'_>,
    start: usize,
    end: usize,
    visitor: &mut dyn Visitor,
) -> bool {
    Walk::run(visitor, |ops, private| {
        // SAFETY: the mmap lock is held for read (the guard); `private`
        // outlives the call.
        unsafe { bindings::walk_page_range(guard.mm(), start, end, ops, private) };
    })
}

/// Walks `[start, end)` of `vma` ([`Visitor::wants_vma`] is not asked).
/// True if the visitor stopped the walk.
pub(crate) fn walk_vma(
    vma: VmaRef<'_>,
    start: usize,
    end: usize,
    visitor: &mut dyn Visitor,
) -> bool {
    Walk::run(visitor, |ops, private| {
        // SAFETY: the mmap lock is held (`VmaRef`); `private` outlives the
        // call.
        unsafe { bindings::walk_page_range_vma(vma.as_ptr(), start, end, ops, private) };
    })
}

static OPS: bindings::mm_walk_ops = bindings::mm_walk_ops {
    test_walk: Some(test_walk),
    pmd_entry: Some(pmd_entry),
    walk_lock: bindings::page_walk_lock_PGWALK_RDLOCK,
    // SAFETY: all other callbacks absent (NULL) is valid.
    ..unsafe { core::mem::zeroed() }
};

/// `walk_page_range()` callbacks return this to stop.
const STOP: c_int = 1;

/// # Safety
///
/// Called by `walk_page_range()` with a valid `walk` whose `private` is a
/// [`Walk`], mmap lock held.
unsafe extern "C" fn test_walk(
    _start: c_ulong,
    _end: c_ulong,
    walk: *mut bindings::mm_walk,
) -> c_int {
    // SAFETY: by the function's safety requirements.
    let (w, vma) = unsafe {
        (
            &mut *(*walk).private.cast::<Walk<'_>>(),
            VmaRef::from_raw(NonNull::new_unchecked((*walk).vma)),
        )
    };
    // Non-zero skips the VMA.
    c_int::from(!w.visitor.wants_vma(vma))
}

/// Shows the visitor the pages one PMD maps, like mm/ksm.c's
/// ksm_next_page_pmd_entry(): a huge PMD is looked at in place (no split).
///
/// # Safety
///
/// As [`test_walk`], with `pmdp` a PMD of the walked mm covering
/// `[addr, end)`.
unsafe extern "C" fn pmd_entry(
    pmdp: *mut bindings::pmd_t,
    addr: c_ulong,
    end: c_ulong,
    walk: *mut bindings::mm_walk,
) -> c_int {
    // SAFETY: by the function's safety requirements.
    let (w, mm, vma) = unsafe {
        (
            &mut *(*walk).private.cast::<Walk<'_>>(),
            (*walk).mm,
            (*walk).vma,
        )
    };
    super::cond_resched();
    // SAFETY: `pmdp` is a PMD of `mm`, whose mmap lock is held.
    let step = unsafe {
        match huge_pmd(w, mm, vma, pmdp, addr) {
            Some(step) => step,
            None => ptes(w, mm, vma, pmdp, addr, end),
        }
    };
    if step == Step::Stop {
        w.stopped = true;
        STOP
    } else {
        0
    }
}

/// A PMD mapping a huge page: its page at `addr`, shown under the PMD lock.
/// None if the PMD maps a PTE table (or nothing).
///
/// # Safety
///
/// As [`pmd_entry`].
unsafe fn huge_pmd(
    w: &mut Walk<'_>,
    mm: *mut bindings::mm_struct,
    vma: *mut bindings::vm_area_struct,
    pmdp: *mut bindings::pmd_t,
    addr: usize,
) -> Option<Step> {
    if !cfg!(CONFIG_TRANSPARENT_HUGEPAGE) {
        return None;
    }
    // SAFETY: by the function's safety requirements; the entry is re-read
    // under the PMD lock, which is released before returning.
    unsafe {
        let pmd = bindings::rust_ksm_pmdp_get_lockless(pmdp);
        if !bindings::rust_ksm_pmd_present(pmd) {
            return Some(Step::Go);
        }
        if !bindings::rust_ksm_pmd_leaf(pmd) {
            return None;
        }
        let ptl = bindings::rust_ksm_pmd_lock(mm, pmdp);
        let pmd = bindings::rust_ksm_pmdp_get(pmdp);
        let mut step = None;
        if bindings::rust_ksm_pmd_present(pmd) && bindings::rust_ksm_pmd_leaf(pmd) {
            let head = bindings::vm_normal_page_pmd(vma, addr, pmd);
            step = Some(match NonNull::new(head) {
                // A huge page's struct pages are contiguous; `addr` lies in
                // this one.
                Some(head) => {
                    let offset = (addr & ((1usize << bindings::PMD_SHIFT) - 1)) / PAGE_SIZE;
                    // INVARIANT: mapped, under the PMD lock until the unlock
                    // below.
                    let page = MappedPage {
                        page: NonNull::new_unchecked(head.as_ptr().add(offset)),
                        _lock: PhantomData,
                    };
                    w.visitor.visit(addr, Entry::HugePmd(page))
                }
                None => Step::Go,
            });
        }
        // Split meanwhile (None): the PTEs then.
        bindings::spin_unlock(ptl);
        step
    }
}

/// The PTEs of `[addr, end)`, shown under the PTE table's lock.
///
/// # Safety
///
/// As [`pmd_entry`].
unsafe fn ptes(
    w: &mut Walk<'_>,
    mm: *mut bindings::mm_struct,
    vma: *mut bindings::vm_area_struct,
    pmdp: *mut bindings::pmd_t,
    addr: usize,
    end: usize,
) -> Step {
    let ksm_entries = w.visitor.ksm_entries();
    let mut ptl = ptr::null_mut();
    // SAFETY: `pmdp` belongs to `mm`, whose mmap lock is held.
    let ptes = unsafe { bindings::rust_ksm_pte_offset_map_lock(mm, pmdp, addr, &mut ptl) };
    let Some(ptes) = NonNull::new(ptes) else {
        return Step::Go;
    };
    let mut step = Step::Go;
    for (i, page_addr) in (addr..end).step_by(PAGE_SIZE).enumerate() {
        // SAFETY: the PTE table covers `addr..end` and is locked.
        let pte = unsafe { bindings::rust_ksm_ptep_get(ptes.as_ptr().add(i)) };
        // SAFETY: `pte` is a value; a migration entry's folio is locked and
        // referenced by the migration, and the PTE lock is held.
        let entry = unsafe {
            if !bindings::rust_ksm_pte_present(pte) {
                let ksm_migrating = ksm_entries
                    && bindings::rust_ksm_is_migration_pte(pte)
                    && bindings::rust_ksm_folio_test_ksm(bindings::rust_ksm_migration_pte_folio(
                        pte,
                    ));
                if !ksm_migrating {
                    continue;
                }
                Entry::KsmMigrating
            } else if ksm_entries && bindings::rust_ksm_is_ksm_zero_pte(pte) {
                Entry::KsmZero
            } else {
                // The PTE lock is held, so the mapping is stable.
                let Some(page) = NonNull::new(bindings::vm_normal_page(vma, page_addr, pte)) else {
                    continue;
                };
                // INVARIANT: mapped, under the PTE lock until the unlock
                // below.
                Entry::Pte(MappedPage {
                    page,
                    _lock: PhantomData,
                })
            }
        };
        step = w.visitor.visit(page_addr, entry);
        if step == Step::Stop {
            break;
        }
    }
    // SAFETY: mapped and locked above.
    unsafe { bindings::rust_ksm_pte_unmap_unlock(ptes.as_ptr(), ptl) };
    step
}
