// SPDX-License-Identifier: GPL-2.0

//! A VMA under its mmap lock, and what KSM looks up in it.

use super::anon_vma::AnonVmaRef;
use super::mm::MmapReadGuard;
use super::page::PageRef;
use crate::bindings;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use kernel::ffi::c_ulong;

/// `FW_MIGRATION` of <linux/pagewalk.h> (a cast macro bindgen skips): also
/// report migration entries' folios.
const FW_MIGRATION: bindings::folio_walk_flags_t = 1 << 0;

/// `FW_ZEROPAGE` of <linux/pagewalk.h>: also report the zero page.
const FW_ZEROPAGE: bindings::folio_walk_flags_t = 1 << 1;

/// A VMA whose mm's mmap lock is held (for read or write) for `'a`.
///
/// Holding one is what lets page-table work on the VMA be safe code: the
/// VMA, its page-table upper levels and its anon_vma cannot go meanwhile.
///
/// # Invariants
///
/// `vma` is a valid VMA and the mmap lock of its mm is held for `'a`.
#[derive(Clone, Copy)]
pub(crate) struct VmaRef<'a> {
    vma: NonNull<bindings::vm_area_struct>,
    _lock: PhantomData<&'a ()>,
}

impl<'a> VmaRef<'a> {
    /// # Safety
    ///
    /// `vma` is valid and the mmap lock of its mm is held for `'a` (a hook
    /// the core calls with the lock held, a page-walk callback).
    pub(crate) unsafe fn from_raw(vma: NonNull<bindings::vm_area_struct>) -> Self {
        // INVARIANT: by the function's safety requirements.
        Self {
            vma,
            _lock: PhantomData,
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::vm_area_struct {
        self.vma.as_ptr()
    }

    /// vma_start_write(): lock the VMA against page faults under the
    /// per-VMA lock, as mm/ksm.c does before unmerging for mremap.
    ///
    /// # Safety
    ///
    /// The mmap lock is held for write.
    pub(crate) unsafe fn start_write(&self) {
        // SAFETY: by the function's safety requirements.
        unsafe { bindings::rust_ksm_vma_start_write(self.as_ptr()) };
    }

    pub(crate) fn mm(&self) -> *mut bindings::mm_struct {
        // SAFETY: the VMA is stable under the mmap lock (type invariant).
        unsafe { (*self.as_ptr()).vm_mm }
    }

    pub(crate) fn start(&self) -> usize {
        // SAFETY: as above.
        unsafe { bindings::rust_ksm_vma_start(self.as_ptr()) as usize }
    }

    pub(crate) fn end(&self) -> usize {
        // SAFETY: as above.
        unsafe { bindings::rust_ksm_vma_end(self.as_ptr()) as usize }
    }

    pub(crate) fn flags(&self) -> c_ulong {
        // SAFETY: as above.
        unsafe { bindings::rust_ksm_vm_flags(self.as_ptr()) }
    }

    /// The VMA's anon_vma, if it has one yet.
    pub(crate) fn anon_vma(&self) -> Option<NonNull<bindings::anon_vma>> {
        // SAFETY: as above.
        NonNull::new(unsafe { (*self.as_ptr()).anon_vma }.cast::<bindings::anon_vma>())
    }

    /// A reference on the VMA's anon_vma, if it has one.
    pub(crate) fn get_anon_vma(&self) -> Option<AnonVmaRef> {
        // SAFETY: the mmap lock pins the VMA's anon_vma.
        self.anon_vma().map(|av| unsafe { AnonVmaRef::get(av) })
    }

    /// Whether the VMA has `VM_MERGEABLE` (it may have no page yet).
    pub(crate) fn vm_mergeable(&self) -> bool {
        self.flags() & bindings::VM_MERGEABLE as c_ulong != 0
    }

    /// find_mergeable_vma()'s test: `VM_MERGEABLE` with an anon_vma.
    pub(crate) fn is_mergeable(&self) -> bool {
        self.vm_mergeable() && self.anon_vma().is_some()
    }

    /// The linear page index of `addr` in the VMA
    /// (`vm_pgoff + (addr - vm_start) / PAGE_SIZE`).
    pub(crate) fn linear_page_index(&self, addr: usize) -> usize {
        // SAFETY: as above.
        unsafe { bindings::rust_ksm_linear_page_index(self.as_ptr(), addr) as usize }
    }

    /// The anonymous page mapped at `addr`, referenced.
    pub(crate) fn anon_page_at(&self, addr: usize) -> Option<PageRef> {
        let mut fw = MaybeUninit::<bindings::folio_walk>::zeroed();
        // SAFETY: the mmap lock is held; `fw` is ours.
        let folio = unsafe { bindings::folio_walk_start(fw.as_mut_ptr(), self.as_ptr(), addr, 0) };
        if folio.is_null() {
            return None;
        }
        // SAFETY: folio_walk_start() succeeded: `fw` is initialized and the
        // PTL held until folio_walk_end(), which keeps the folio mapped
        // while we take our reference.
        unsafe {
            let page = (*fw.as_ptr()).page;
            let ok = !page.is_null()
                && !bindings::rust_ksm_folio_is_zone_device(folio)
                && bindings::rust_ksm_folio_test_anon(folio);
            let result = if ok {
                Some(PageRef::get(NonNull::new_unchecked(page)))
            } else {
                None
            };
            bindings::rust_ksm_folio_walk_end(fw.as_mut_ptr(), self.as_ptr());
            result
        }
    }

    /// Is a KSM page (or a KSM-placed zero page) mapped at `addr`?  A
    /// migration entry of a KSM folio counts: it maps the page again soon.
    pub(crate) fn ksm_page_mapped(&self, addr: usize) -> bool {
        let mut fw = MaybeUninit::<bindings::folio_walk>::zeroed();
        // SAFETY: the mmap lock is held; `fw` is ours.
        let folio = unsafe {
            bindings::folio_walk_start(
                fw.as_mut_ptr(),
                self.as_ptr(),
                addr,
                FW_MIGRATION | FW_ZEROPAGE,
            )
        };
        if folio.is_null() {
            return false;
        }
        // SAFETY: as in anon_page_at(); a small folio is mapped at PTE
        // level, so `pte` is the union member in use.
        unsafe {
            let ksm = !bindings::rust_ksm_folio_test_large(folio)
                && (bindings::rust_ksm_folio_test_ksm(folio)
                    || bindings::rust_ksm_is_ksm_zero_pte(
                        *(*fw.as_ptr()).__bindgen_anon_2.pte.as_ref(),
                    ));
            bindings::rust_ksm_folio_walk_end(fw.as_mut_ptr(), self.as_ptr());
            ksm
        }
    }
}

impl MmapReadGuard<'_> {
    /// The first VMA ending above `addr` (find_vma()), to visit them all.
    pub(crate) fn find_vma(&self, addr: usize) -> Option<VmaRef<'_>> {
        // SAFETY: the mmap lock is held (type invariant of the guard).
        let vma = NonNull::new(unsafe { bindings::find_vma(self.mm(), addr) })?;
        // SAFETY: found under the lock this guard holds for its lifetime.
        Some(unsafe { VmaRef::from_raw(vma) })
    }

    /// The VMA at `addr`, if any (vma_lookup()).
    pub(crate) fn vma(&self, addr: usize) -> Option<VmaRef<'_>> {
        // SAFETY: the mmap lock is held (type invariant of the guard).
        let vma = NonNull::new(unsafe { bindings::rust_ksm_vma_lookup(self.mm(), addr) })?;
        // SAFETY: found under the lock this guard holds for its lifetime.
        Some(unsafe { VmaRef::from_raw(vma) })
    }

    /// find_mergeable_vma(): the `VM_MERGEABLE` VMA at `addr` with an
    /// anon_vma.
    pub(crate) fn mergeable_vma(&self, addr: usize) -> Option<VmaRef<'_>> {
        self.vma(addr).filter(VmaRef::is_mergeable)
    }
}
