// SPDX-License-Identifier: GPL-2.0

//! Page-table guards: an mmu-notifier range, the locked PTE table of a PMD,
//! and the locked PTE `page_vma_mapped_walk()` finds.

use super::vma::VmaRef;
use crate::bindings;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use kernel::page::PAGE_SIZE;

/// An mmu-notifier invalidation (`MMU_NOTIFY_CLEAR`) of a range of an mm,
/// from `new()` until drop: secondary MMUs (KVM, devices) drop their
/// mappings of the range before its PTEs change.
///
/// # Invariants
///
/// `range` was started by `mmu_notifier_invalidate_range_start()` and not
/// ended yet; the mmap lock of its mm is held for `'a`.
pub(crate) struct MmuNotifierRange<'a> {
    range: bindings::mmu_notifier_range,
    _vma: PhantomData<VmaRef<'a>>,
}

impl<'a> MmuNotifierRange<'a> {
    /// Starts the invalidation of `[start, end)` in `vma`'s mm.
    pub(crate) fn clear(vma: VmaRef<'a>, start: usize, end: usize) -> Self {
        let mut range = MaybeUninit::<bindings::mmu_notifier_range>::zeroed();
        // SAFETY: the mmap lock is held (`VmaRef`); `range` is ours.  The
        // started range is plain data: moving it before the end is fine.
        unsafe {
            bindings::rust_ksm_mmu_notifier_clear_start(range.as_mut_ptr(), vma.mm(), start, end);
        }
        // INVARIANT: started above.
        Self {
            // SAFETY: initialized by the start above.
            range: unsafe { range.assume_init() },
            _vma: PhantomData,
        }
    }
}

impl Drop for MmuNotifierRange<'_> {
    fn drop(&mut self) {
        // SAFETY: started and not ended (type invariant).
        unsafe { bindings::rust_ksm_mmu_notifier_end(&mut self.range) };
    }
}

/// The PTE table that maps a PMD's range, mapped and locked until drop.
///
/// # Invariants
///
/// `ptes` is the first PTE of the table mapping `[base, base + PMD size)`,
/// mapped by `pte_offset_map_lock()` with `ptl` held.
pub(crate) struct PteTable<'a> {
    ptes: NonNull<bindings::pte_t>,
    ptl: *mut bindings::spinlock_t,
    base: usize,
    _vma: PhantomData<VmaRef<'a>>,
}

impl<'a> PteTable<'a> {
    /// Locks the PTE table mapping `addr` in `vma`'s mm.  None where there
    /// is none: a hole, or a huge PMD.
    pub(crate) fn lock(vma: VmaRef<'a>, addr: usize) -> Option<Self> {
        let mm = vma.mm();
        let base = addr & !((1usize << bindings::PMD_SHIFT) - 1);
        // SAFETY: the mmap lock is held (`VmaRef`), so the upper levels
        // stay; pte_offset_map_lock() rechecks the PMD under the lock.
        unsafe {
            let pmd = bindings::rust_ksm_mm_find_pmd(mm, addr);
            if pmd.is_null() {
                return None;
            }
            let pmde = bindings::rust_ksm_pmdp_get_lockless(pmd);
            if !bindings::rust_ksm_pmd_present(pmde) || bindings::rust_ksm_pmd_leaf(pmde) {
                return None;
            }
            let mut ptl = ptr::null_mut();
            let ptes = bindings::rust_ksm_pte_offset_map_lock(mm, pmd, base, &mut ptl);
            // INVARIANT: mapped and locked from the table's first PTE.
            Some(Self {
                ptes: NonNull::new(ptes)?,
                ptl,
                base,
                _vma: PhantomData,
            })
        }
    }

    /// The PTE of `addr`, which must lie in the table's PMD.
    pub(crate) fn pte(&self, addr: usize) -> Pte<'_> {
        let i = (addr - self.base) / PAGE_SIZE;
        assert!(addr >= self.base && i < (1usize << bindings::PMD_SHIFT) / PAGE_SIZE);
        // INVARIANT: inside the mapped, locked table.
        Pte {
            // SAFETY: `i` is inside the table (checked above).
            ptep: unsafe { self.ptes.as_ptr().add(i) },
            _table: PhantomData,
        }
    }
}

impl Drop for PteTable<'_> {
    fn drop(&mut self) {
        // SAFETY: mapped and locked (type invariant).
        unsafe { bindings::rust_ksm_pte_unmap_unlock(self.ptes.as_ptr(), self.ptl) };
    }
}

/// A PTE whose table is mapped and locked for `'t`.
///
/// # Invariants
///
/// `ptep` points into a PTE table mapped and locked for `'t`.
#[derive(Clone, Copy)]
pub(crate) struct Pte<'t> {
    ptep: *mut bindings::pte_t,
    _table: PhantomData<&'t ()>,
}

impl Pte<'_> {
    /// The entry (ptep_get()).
    pub(crate) fn get(&self) -> bindings::pte_t {
        // SAFETY: mapped and locked (type invariant).
        unsafe { bindings::rust_ksm_ptep_get(self.ptep) }
    }

    /// The raw pointer, for the kernel calls that change the entry.
    pub(crate) fn as_ptr(&self) -> *mut bindings::pte_t {
        self.ptep
    }
}

/// The PTE mapping a folio at an address, found and locked by
/// `page_vma_mapped_walk()`, until drop (`page_vma_mapped_walk_done()`).
///
/// # Invariants
///
/// `pvmw` found a mapping: its PTE is mapped and locked (a PMD mapping, for
/// which `pvmw.pte` is NULL, is refused by [`MappedPte::find`]).
pub(crate) struct MappedPte<'a> {
    pvmw: bindings::page_vma_mapped_walk,
    _vma: PhantomData<VmaRef<'a>>,
}

impl<'a> MappedPte<'a> {
    /// The PTE mapping `folio` at `addr` of `vma`, locked.
    ///
    /// # Safety
    ///
    /// `folio` is referenced and small.
    pub(crate) unsafe fn find(
        folio: *mut bindings::folio,
        vma: VmaRef<'a>,
        addr: usize,
    ) -> Option<Self> {
        let mut pvmw = MaybeUninit::<bindings::page_vma_mapped_walk>::zeroed();
        // SAFETY: the mmap lock is held (`VmaRef`), the folio referenced;
        // `pvmw` is ours.  On success the walk holds the PTL; the structure
        // points to the table, not to itself, so it may move.
        unsafe {
            bindings::rust_ksm_pvmw_init(pvmw.as_mut_ptr(), folio, vma.as_ptr(), addr);
            if !bindings::page_vma_mapped_walk(pvmw.as_mut_ptr()) {
                return None;
            }
            let mut found = Self {
                pvmw: pvmw.assume_init(),
                _vma: PhantomData,
            };
            if found.pvmw.pte.is_null() {
                // A PMD mapping: not what a small folio has.
                bindings::rust_ksm_pvmw_done(&mut found.pvmw);
                core::mem::forget(found);
                return None;
            }
            // INVARIANT: found, PTE level, locked.
            Some(found)
        }
    }

    /// The locked PTE.
    pub(crate) fn pte(&self) -> Pte<'_> {
        // INVARIANT: locked until `self` drops.
        Pte {
            ptep: self.pvmw.pte,
            _table: PhantomData,
        }
    }
}

impl Drop for MappedPte<'_> {
    fn drop(&mut self) {
        // SAFETY: the walk found a mapping and holds its lock (type
        // invariant).
        unsafe { bindings::rust_ksm_pvmw_done(&mut self.pvmw) };
    }
}
