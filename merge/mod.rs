// SPDX-License-Identifier: GPL-2.0

//! Page-table work of merging and unmerging, after mm/ksm.c (6.12):
//! write-protect a candidate PTE, replace it with the KSM page, and break
//! sharing again through the fault handler.
//!
//! Everything here runs under the mmap lock of the VMA's mm, which a
//! [`VmaRef`] stands for; the folio locks, page-table locks and mmu-notifier
//! ranges are the guards of [`crate::kmm`].
//!
//! After mm/ksm.c (6.12): write-protect under mmu notifiers with
//! clear-and-flush before the refcount check (no GUP pin or O_DIRECT may
//! hold the page), share anon-exclusive pages first, replace the PTE after
//! `pte_same` and let the replaced page's swap slot go once it is unmapped
//! (`folio_free_swap()`, exported by patch 0001).  Huge pages are split
//! (retrying with one reference dropped when both candidates are subpages
//! of one THP).  mlocked memory merges as upstream's does: the rmap calls
//! of replace_page() mlock the KSM folio for a `VM_LOCKED` VMA and munlock
//! the page it replaces (6.12 needs no special case in KSM any more).
//!
//! Zero pages (`use_zero_pages=1`, off by default as upstream): an
//! all-zero page whose checksum held for a scan is replaced by the zero
//! page itself, mapped by a special dirty PTE as 6.12 does; the core counts
//! those in `ksm_zero_pages` (global and per mm) and uncounts them when the
//! PTE goes.  Unmerging breaks them too: with any left, no engine could
//! register again.

mod batch;
pub(crate) mod unmerge;

pub(crate) use batch::{merge_batch, BatchPage, BatchState, BATCH_MAX};

use crate::bindings;
use crate::kmm::page::{compare, is_zero_filled};
use crate::kmm::pgtable::{MappedPte, MmuNotifierRange, Pte, PteTable};
use crate::kmm::{self, FolioLock, PageRef, VmaRef};
use core::ptr;
use kernel::error::code::*;
use kernel::ffi::c_void;
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;

/// `RMAP_NONE` of <linux/rmap.h> (a cast macro bindgen skips).
const RMAP_NONE: bindings::rmap_t = 0;

/// What a page is merged into: an existing KSM page or the zero page.
/// (Merging into nothing makes the page itself a KSM page.)
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    Ksm(&'a PageRef),
    /// The zero page for the address (`use_zero_pages`): mapped by a
    /// special, dirty PTE that the core counts in `ksm_zero_pages`.
    Zero,
}

/// pages_identical(): does `page` hold what `target` (at `addr`) holds?
fn identical(page: &PageRef, target: Target<'_>, addr: usize) -> bool {
    match target {
        Target::Ksm(kpage) => compare(page, kpage) == 0,
        Target::Zero => is_zero_filled(page, addr),
    }
}

/// break_ksm(): replace a KSM page at `addr` by a private copy, through an
/// unsharing fault, until no KSM page is mapped there.
pub(crate) fn break_ksm(vma: VmaRef<'_>, addr: usize) -> Result {
    loop {
        kmm::cond_resched();
        if !vma.ksm_page_mapped(addr) {
            return Ok(());
        }
        if !unshare(vma, addr)? {
            return Ok(());
        }
    }
}

/// One remote unsharing fault at `addr`, as mm/ksm.c takes from ksmd and
/// madvise.  `Ok(false)` if it failed for good (SIGBUS, SIGSEGV): there is
/// no use faulting again.  `ENOMEM` if the copy could not be charged or
/// allocated (madvise() reports it as `EAGAIN`).
pub(crate) fn unshare(vma: VmaRef<'_>, addr: usize) -> Result<bool> {
    // SAFETY: the mmap lock is held (`VmaRef`), as handle_mm_fault() wants.
    let ret = unsafe {
        bindings::handle_mm_fault(
            vma.as_ptr(),
            addr,
            bindings::fault_flag_FAULT_FLAG_UNSHARE | bindings::fault_flag_FAULT_FLAG_REMOTE,
            ptr::null_mut(),
        )
    };
    if ret & bindings::vm_fault_reason_VM_FAULT_OOM != 0 {
        return Err(ENOMEM);
    }
    Ok(ret
        & (bindings::vm_fault_reason_VM_FAULT_SIGBUS | bindings::vm_fault_reason_VM_FAULT_SIGSEGV)
        == 0)
}

/// write_protect_page(): make the PTE of the locked `folio` at `addr`
/// read-only and clean, checking no one else (GUP, O_DIRECT) holds a
/// reference.  Returns the PTE value to expect in [`replace_page`].
///
/// # Safety
///
/// `folio` is small and referenced once by us.
unsafe fn write_protect_page(
    vma: VmaRef<'_>,
    folio: &FolioLock<'_>,
    addr: usize,
) -> Option<bindings::pte_t> {
    let _range = MmuNotifierRange::clear(vma, addr, addr + PAGE_SIZE);
    // SAFETY: referenced and small (the function's safety requirements).
    let mapped = unsafe { MappedPte::find(folio.folio(), vma, addr) }?;
    // SAFETY: the walk found this PTE mapping the folio at `addr`.
    unsafe { write_protect_pte(vma, folio, addr, mapped.pte()) }
}

/// The body of [`write_protect_page`] under the PTE lock.
///
/// # Safety
///
/// As [`write_protect_page`], with `pte` mapping `folio` at `addr`.
pub(super) unsafe fn write_protect_pte(
    vma: VmaRef<'_>,
    folio: &FolioLock<'_>,
    addr: usize,
    pte: Pte<'_>,
) -> Option<bindings::pte_t> {
    let (mm, folio, ptep) = (vma.mm(), folio.folio(), pte.as_ptr());
    // SAFETY: the folio is locked and referenced, the PTE locked and
    // mapping it at `addr` (the function's safety requirements).
    unsafe {
        let page = bindings::rust_ksm_folio_page(folio);
        let anon_exclusive = bindings::rust_ksm_page_anon_exclusive(page);
        let mut entry = pte.get();
        if bindings::rust_ksm_pte_write(entry)
            || bindings::rust_ksm_pte_dirty(entry)
            || anon_exclusive
            || bindings::rust_ksm_mm_tlb_flush_pending(mm)
        {
            let swapped = i32::from(bindings::rust_ksm_folio_test_swapcache(folio));
            // Clear and flush first: GUP-fast cannot take a new reference
            // after this, so the count check below is reliable.  (The
            // cache flush is for virtually indexed caches, as in mm/ksm.c.)
            bindings::rust_ksm_flush_cache_page(
                vma.as_ptr(),
                addr,
                bindings::rust_ksm_page_to_pfn(page),
            );
            entry = bindings::ptep_clear_flush(vma.as_ptr(), addr, ptep);
            // Our reference, one per mapping, one for the swap cache: any
            // other is I/O or a pin in progress.
            if bindings::rust_ksm_folio_mapcount(folio) + 1 + swapped
                != bindings::rust_ksm_folio_ref_count(folio)
            {
                bindings::rust_ksm_set_pte_at(mm, addr, ptep, entry);
                return None;
            }
            if anon_exclusive && bindings::rust_ksm_folio_try_share_anon_rmap_pte(folio, page) != 0
            {
                bindings::rust_ksm_set_pte_at(mm, addr, ptep, entry);
                return None;
            }
            if bindings::rust_ksm_pte_dirty(entry) {
                bindings::folio_mark_dirty(folio);
            }
            entry = bindings::rust_ksm_pte_mkclean(entry);
            if bindings::rust_ksm_pte_write(entry) {
                entry = bindings::rust_ksm_pte_wrprotect(entry);
            }
            bindings::rust_ksm_set_pte_at(mm, addr, ptep, entry);
        }
        Some(entry)
    }
}

/// replace_page(): map `target` at `addr` instead of `page` (whose folio
/// `_locked` holds locked), if its PTE is still `orig_pte`.
fn replace_page(
    vma: VmaRef<'_>,
    page: &PageRef,
    _locked: &FolioLock<'_>,
    target: Target<'_>,
    addr: usize,
    orig_pte: bindings::pte_t,
) -> Result {
    let _range = MmuNotifierRange::clear(vma, addr, addr + PAGE_SIZE);
    let table = PteTable::lock(vma, addr).ok_or(EFAULT)?;
    let pte = table.pte(addr);
    // SAFETY: plain comparison of two entries.
    if !unsafe { bindings::rust_ksm_pte_same(pte.get(), orig_pte) } {
        return Err(EFAULT);
    }
    // SAFETY: the unchanged PTE still maps `page` at `addr`; its folio is
    // locked; both pages are referenced.
    unsafe { replace_pte(vma, pte, page, target, addr) };
    Ok(())
}

/// The body of [`replace_page`] under the PTE lock, the PTE checked.
///
/// # Safety
///
/// `pte` maps `page` at `addr` of `vma`; `page`'s folio is locked.
pub(super) unsafe fn replace_pte(
    vma: VmaRef<'_>,
    pte: Pte<'_>,
    page: &PageRef,
    target: Target<'_>,
    addr: usize,
) {
    let (mm, ptep) = (vma.mm(), pte.as_ptr());
    // SAFETY: by the function's safety requirements; both pages are
    // referenced (`PageRef`).
    unsafe {
        let newpte = match target {
            Target::Ksm(kpage) => {
                let kfolio = kpage.folio();
                bindings::rust_ksm_folio_get(kfolio);
                bindings::folio_add_anon_rmap_ptes(
                    kfolio,
                    kpage.page(),
                    1,
                    vma.as_ptr(),
                    addr,
                    RMAP_NONE,
                );
                bindings::rust_ksm_mk_pte(kpage.page(), vma.as_ptr())
            }
            Target::Zero => {
                // The zero page is not anonymous: move the page from the
                // mm's anon count to its KSM zero pages (the core undoes
                // that when the PTE goes).
                bindings::rust_ksm_map_zero_page(mm);
                bindings::rust_ksm_dec_anon_pages(mm);
                bindings::rust_ksm_mk_ksm_zero_pte(addr, vma.as_ptr())
            }
        };
        // Clear and flush before the new PTE: GUP-fast must not race
        // with the change, and no CPU may keep the old page's TLB entry
        // (nor a virtually indexed cache its lines).
        bindings::rust_ksm_flush_cache_page(
            vma.as_ptr(),
            addr,
            bindings::rust_ksm_pte_pfn(pte.get()),
        );
        bindings::ptep_clear_flush(vma.as_ptr(), addr, ptep);
        bindings::rust_ksm_set_pte_at(mm, addr, ptep, newpte);
        let folio = page.folio();
        bindings::folio_remove_rmap_ptes(folio, page.page(), 1, vma.as_ptr());
        // Unmapped now: let its swap slot go rather than wait for reclaim
        // (the folio is locked, as folio_free_swap() wants).
        if !bindings::rust_ksm_folio_mapped(folio) {
            bindings::folio_free_swap(folio);
        }
        // The reference of the mapping just removed.
        bindings::rust_ksm_folio_put(folio);
    }
}

/// try_to_merge_one_page(): merge `page`, mapped at `addr` of `vma`, into
/// `target`; or, with no target, turn `page` itself into a KSM page (its
/// stable node is set by the caller).  Fails with `ENOENT` when the
/// write-protected page turns out not to equal the target.
pub(crate) fn merge_one_page(
    vma: VmaRef<'_>,
    page: &PageRef,
    target: Option<Target<'_>>,
    addr: usize,
) -> Result {
    if let Some(Target::Ksm(kpage)) = target {
        if kpage.page() == page.page() {
            // A KSM page forked into this mm: nothing to replace.
            return Ok(());
        }
    }
    if !page.is_anon() {
        return Err(EFAULT);
    }
    // Trylock: rather scan on and come back than wait for the folio.
    let mut lock = page.try_lock().ok_or(EBUSY)?;
    // The lock and our reference follow the page into its new small folio.
    if page.is_large() && !lock.split(page) {
        return Err(EFAULT);
    }
    // SAFETY: the folio is locked, small, and referenced once by us.
    let orig_pte = unsafe { write_protect_page(vma, &lock, addr) }.ok_or(EFAULT)?;
    match target {
        None => {
            // SAFETY: locked folio; it becomes a KSM folio whose stable node
            // the caller sets under the folio lock.
            unsafe {
                bindings::rust_ksm_folio_set_mapping(
                    lock.folio(),
                    bindings::PAGE_MAPPING_KSM as usize as *mut c_void,
                );
            }
            lock.mark_accessed();
            lock.mark_dirty();
            Ok(())
        }
        Some(target) if identical(page, target, addr) => {
            replace_page(vma, page, &lock, target, addr, orig_pte)
        }
        // The caller may have trusted a key: say the contents differ.
        Some(_) => Err(ENOENT),
    }
}
