// SPDX-License-Identifier: GPL-2.0

//! Page-table work of merging and unmerging, after mm/ksm.c (6.12):
//! write-protect a candidate PTE, replace it with the KSM page, and break
//! sharing again through the fault handler.

use crate::bindings;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use kernel::error::code::*;
use kernel::ffi::{c_ulong, c_void};
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;

/// `FW_MIGRATION` of <linux/pagewalk.h> (a cast macro bindgen skips): also
/// report migration entries' folios.
const FW_MIGRATION: bindings::folio_walk_flags_t = 1 << 0;

/// `FW_ZEROPAGE` of <linux/pagewalk.h>: also report the zero page.
const FW_ZEROPAGE: bindings::folio_walk_flags_t = 1 << 1;

/// `RMAP_NONE` of <linux/rmap.h> (a cast macro bindgen skips).
const RMAP_NONE: bindings::rmap_t = 0;

/// A page with a reference held on its folio.
///
/// # Invariants
///
/// `page` is valid and we own one reference on its folio.
pub(crate) struct PageRef {
    page: NonNull<bindings::page>,
}

impl PageRef {
    /// Takes a reference on `page`'s folio.
    ///
    /// # Safety
    ///
    /// `page` must be a valid page whose folio cannot be freed during the
    /// call (mapped under a held PTL, or already referenced).
    pub(crate) unsafe fn get(page: NonNull<bindings::page>) -> Self {
        // SAFETY: by the function's safety requirements.
        unsafe { bindings::rust_ksm_folio_get(bindings::rust_ksm_page_folio(page.as_ptr())) };
        // INVARIANT: reference taken above.
        Self { page }
    }

    /// Adopts a reference the caller owns on the folio of `page`.
    ///
    /// # Safety
    ///
    /// The caller owns one reference on `page`'s folio and gives it up.
    pub(crate) unsafe fn adopt(page: NonNull<bindings::page>) -> Self {
        // INVARIANT: by the function's safety requirements.
        Self { page }
    }

    pub(crate) fn page(&self) -> *mut bindings::page {
        self.page.as_ptr()
    }

    /// The page's current folio (it changes when a large folio is split).
    pub(crate) fn folio(&self) -> *mut bindings::folio {
        // SAFETY: the reference keeps the page's folio association stable
        // but for splits, which keep the reference on the page's new folio.
        unsafe { bindings::rust_ksm_page_folio(self.page()) }
    }
}

impl Drop for PageRef {
    fn drop(&mut self) {
        // SAFETY: the type invariant says we own a reference.
        unsafe { bindings::rust_ksm_folio_put(self.folio()) };
    }
}

/// What a page is merged into: an existing KSM page or the zero page.
/// (Merging into nothing makes the page itself a KSM page.)
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    Ksm(&'a PageRef),
    /// The zero page for the address (`use_zero_pages`): mapped by a
    /// special, dirty PTE that the core counts in `ksm_zero_pages`.
    Zero,
}

/// xxhash of a page's contents: the stable tree's key, and truncated to 32
/// bits the unstable-tree gate and key (upstream's calc_checksum()).
pub(crate) fn hash(page: &PageRef) -> u64 {
    // SAFETY: the page is referenced.
    unsafe { hash_of(page.page()) }
}

/// The hash of an all-zero page.
pub(crate) fn zero_hash() -> u64 {
    // SAFETY: the zero page is always there.
    unsafe { hash_of(bindings::rust_ksm_zero_page(0)) }
}

/// Bytes of a page that [`key`] reads: `KEY_CHUNKS` runs of `KEY_CHUNK`.
const KEY_CHUNK: usize = 32;
const KEY_CHUNKS: usize = 8;

/// The stable tree's key: xxhash of 256 bytes sampled across the page,
/// first and last bytes included.  Equal pages have equal keys; unequal
/// pages usually differ in it too, and where they do not, the tree orders
/// them by contents.  A sixteenth of the cost of hashing the whole page,
/// which a page merged into the stable tree then never needs.
pub(crate) fn key(page: &PageRef) -> u64 {
    // SAFETY: the page is referenced.
    unsafe { key_of(page.page()) }
}

/// The key of an all-zero page.
pub(crate) fn zero_key() -> u64 {
    // SAFETY: the zero page is always there.
    unsafe { key_of(bindings::rust_ksm_zero_page(0)) }
}

/// # Safety
///
/// `page` is a page that stays allocated during the call.
unsafe fn key_of(page: *mut bindings::page) -> u64 {
    let mut sample = [0u8; KEY_CHUNK * KEY_CHUNKS];
    // SAFETY: by the function's safety requirements; every chunk lies
    // inside the page; the mapping is released below.
    unsafe {
        let addr = bindings::rust_ksm_kmap_local_page(page).cast::<u8>();
        for (i, chunk) in sample.chunks_exact_mut(KEY_CHUNK).enumerate() {
            let offset = i * (PAGE_SIZE - KEY_CHUNK) / (KEY_CHUNKS - 1);
            ptr::copy_nonoverlapping(addr.add(offset), chunk.as_mut_ptr(), KEY_CHUNK);
        }
        bindings::rust_ksm_kunmap_local(addr.cast());
        bindings::xxh64(sample.as_ptr().cast(), sample.len(), 0)
    }
}

/// # Safety
///
/// `page` is a page that stays allocated during the call.
unsafe fn hash_of(page: *mut bindings::page) -> u64 {
    // SAFETY: by the function's safety requirements; the mapping is
    // released below.
    unsafe {
        let addr = bindings::rust_ksm_kmap_local_page(page);
        let sum = bindings::xxh64(addr, PAGE_SIZE, 0);
        bindings::rust_ksm_kunmap_local(addr);
        sum
    }
}

/// pages_identical(): does `page` hold what `target` (at `addr`) holds?
fn identical(page: &PageRef, target: Target<'_>, addr: usize) -> bool {
    match target {
        Target::Ksm(kpage) => compare(page, kpage) == 0,
        // SAFETY: the page is referenced; the zero page is always there.
        Target::Zero => unsafe {
            bindings::memcmp_pages(page.page(), bindings::rust_ksm_zero_page(addr)) == 0
        },
    }
}

/// memcmp of two pages' contents.
pub(crate) fn compare(a: &PageRef, b: &PageRef) -> i32 {
    // SAFETY: both pages are referenced.
    unsafe { bindings::memcmp_pages(a.page(), b.page()) }
}

/// find_mergeable_vma(): the VM_MERGEABLE VMA at `addr` with an anon_vma.
///
/// # Safety
///
/// The mmap lock of `mm` must be held.
pub(crate) unsafe fn mergeable_vma(
    mm: *mut bindings::mm_struct,
    addr: usize,
) -> Option<NonNull<bindings::vm_area_struct>> {
    // SAFETY: mmap lock held by the caller.
    let vma = NonNull::new(unsafe { bindings::rust_ksm_vma_lookup(mm, addr) })?;
    // SAFETY: the VMA is stable under the mmap lock.
    let (flags, anon_vma) = unsafe {
        (
            bindings::rust_ksm_vm_flags(vma.as_ptr()),
            (*vma.as_ptr()).anon_vma,
        )
    };
    if flags & bindings::VM_MERGEABLE as c_ulong == 0 || anon_vma.is_null() {
        return None;
    }
    Some(vma)
}

/// The anonymous page mapped at `addr` of `vma`, referenced.
///
/// # Safety
///
/// The mmap lock of the VMA's mm must be held.
pub(crate) unsafe fn anon_page_at(
    vma: NonNull<bindings::vm_area_struct>,
    addr: usize,
) -> Option<PageRef> {
    let mut fw = MaybeUninit::<bindings::folio_walk>::zeroed();
    // SAFETY: the mmap lock is held; `fw` is ours.
    let folio = unsafe { bindings::folio_walk_start(fw.as_mut_ptr(), vma.as_ptr(), addr, 0) };
    if folio.is_null() {
        return None;
    }
    // SAFETY: folio_walk_start() succeeded: `fw` is initialized, the PTL held.
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
        bindings::rust_ksm_folio_walk_end(fw.as_mut_ptr(), vma.as_ptr());
        result
    }
}

/// Is a KSM page (or a KSM-placed zero page) mapped at `addr` of `vma`?
///
/// # Safety
///
/// The mmap lock of the VMA's mm must be held.
unsafe fn ksm_page_mapped(vma: NonNull<bindings::vm_area_struct>, addr: usize) -> bool {
    let mut fw = MaybeUninit::<bindings::folio_walk>::zeroed();
    // SAFETY: the mmap lock is held; `fw` is ours.
    let folio = unsafe {
        bindings::folio_walk_start(
            fw.as_mut_ptr(),
            vma.as_ptr(),
            addr,
            FW_MIGRATION | FW_ZEROPAGE,
        )
    };
    if folio.is_null() {
        return false;
    }
    // SAFETY: as above; the PTL is held until folio_walk_end().  A small
    // folio is mapped at PTE level, so `pte` is the union member in use.
    unsafe {
        let ksm = !bindings::rust_ksm_folio_test_large(folio)
            && (bindings::rust_ksm_folio_test_ksm(folio)
                || bindings::rust_ksm_is_ksm_zero_pte(
                    *(*fw.as_ptr()).__bindgen_anon_2.pte.as_ref(),
                ));
        bindings::rust_ksm_folio_walk_end(fw.as_mut_ptr(), vma.as_ptr());
        ksm
    }
}

/// break_ksm(): replace a KSM page at `addr` by a private copy, through an
/// unsharing fault, until no KSM page is mapped there.
///
/// # Safety
///
/// The mmap lock of the VMA's mm must be held.
pub(crate) unsafe fn break_ksm(
    vma: NonNull<bindings::vm_area_struct>,
    addr: usize,
    lock_vma: bool,
) -> Result {
    if lock_vma {
        // SAFETY: the mmap lock is held for write when `lock_vma` is set.
        unsafe { bindings::rust_ksm_vma_start_write(vma.as_ptr()) };
    }
    loop {
        // SAFETY: plain call, no spinlock held.
        unsafe { bindings::rust_ksm_cond_resched() };
        // SAFETY: the mmap lock is held.
        if !unsafe { ksm_page_mapped(vma, addr) } {
            return Ok(());
        }
        // SAFETY: the mmap lock is held.
        if !unsafe { unshare(vma, addr) }? {
            return Ok(());
        }
    }
}

/// One remote unsharing fault at `addr`, as mm/ksm.c takes from ksmd and
/// madvise.  `Ok(false)` if it failed for good (SIGBUS, SIGSEGV): there is
/// no use faulting again.
///
/// # Safety
///
/// The mmap lock of the VMA's mm must be held.
pub(crate) unsafe fn unshare(vma: NonNull<bindings::vm_area_struct>, addr: usize) -> Result<bool> {
    // SAFETY: the mmap lock is held.
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

/// write_protect_page(): make the PTE of `folio` at `addr` read-only and
/// clean, checking no one else (GUP, O_DIRECT) holds a reference.
/// Returns the PTE value to expect in [`replace_page`].
///
/// # Safety
///
/// mmap lock held; `folio` locked, referenced once by us, small.
unsafe fn write_protect_page(
    vma: NonNull<bindings::vm_area_struct>,
    folio: *mut bindings::folio,
    addr: usize,
) -> Option<bindings::pte_t> {
    // SAFETY: the VMA is stable under the mmap lock.
    let mm = unsafe { (*vma.as_ptr()).vm_mm };
    let mut range = MaybeUninit::<bindings::mmu_notifier_range>::zeroed();
    let mut pvmw = MaybeUninit::<bindings::page_vma_mapped_walk>::zeroed();
    // SAFETY: locks as required; `range` and `pvmw` are ours, and both are
    // finished below on every path.
    unsafe {
        bindings::rust_ksm_mmu_notifier_clear_start(range.as_mut_ptr(), mm, addr, addr + PAGE_SIZE);
        bindings::rust_ksm_pvmw_init(pvmw.as_mut_ptr(), folio, vma.as_ptr(), addr);
        let mut result = None;
        if bindings::page_vma_mapped_walk(pvmw.as_mut_ptr()) {
            let pte = (*pvmw.as_ptr()).pte;
            if !pte.is_null() {
                result = write_protect_pte(vma, mm, folio, addr, pte);
            }
            bindings::rust_ksm_pvmw_done(pvmw.as_mut_ptr());
        }
        bindings::rust_ksm_mmu_notifier_end(range.as_mut_ptr());
        result
    }
}

/// The body of [`write_protect_page`] under the PTE lock.
///
/// # Safety
///
/// As [`write_protect_page`], with `pte` mapping `folio` at `addr`, locked.
unsafe fn write_protect_pte(
    vma: NonNull<bindings::vm_area_struct>,
    mm: *mut bindings::mm_struct,
    folio: *mut bindings::folio,
    addr: usize,
    pte: *mut bindings::pte_t,
) -> Option<bindings::pte_t> {
    // SAFETY: by the function's safety requirements.
    unsafe {
        let page = bindings::rust_ksm_folio_page(folio);
        let anon_exclusive = bindings::rust_ksm_page_anon_exclusive(page);
        let mut entry = bindings::rust_ksm_ptep_get(pte);
        if bindings::rust_ksm_pte_write(entry)
            || bindings::rust_ksm_pte_dirty(entry)
            || anon_exclusive
            || bindings::rust_ksm_mm_tlb_flush_pending(mm)
        {
            let swapped = i32::from(bindings::rust_ksm_folio_test_swapcache(folio));
            // Clear and flush first: GUP-fast cannot take a new reference
            // after this, so the count check below is reliable.
            entry = bindings::ptep_clear_flush(vma.as_ptr(), addr, pte);
            // Our reference, one per mapping, one for the swap cache: any
            // other is I/O or a pin in progress.
            if bindings::rust_ksm_folio_mapcount(folio) + 1 + swapped
                != bindings::rust_ksm_folio_ref_count(folio)
            {
                bindings::rust_ksm_set_pte_at(mm, addr, pte, entry);
                return None;
            }
            if anon_exclusive && bindings::rust_ksm_folio_try_share_anon_rmap_pte(folio, page) != 0
            {
                bindings::rust_ksm_set_pte_at(mm, addr, pte, entry);
                return None;
            }
            if bindings::rust_ksm_pte_dirty(entry) {
                bindings::folio_mark_dirty(folio);
            }
            entry = bindings::rust_ksm_pte_mkclean(entry);
            if bindings::rust_ksm_pte_write(entry) {
                entry = bindings::rust_ksm_pte_wrprotect(entry);
            }
            bindings::rust_ksm_set_pte_at(mm, addr, pte, entry);
        }
        Some(entry)
    }
}

/// replace_page(): map `target` at `addr` instead of `page`, whose PTE
/// must still be `orig_pte`.
///
/// # Safety
///
/// mmap lock held; `page`'s folio locked; both pages referenced.
unsafe fn replace_page(
    vma: NonNull<bindings::vm_area_struct>,
    page: &PageRef,
    target: Target<'_>,
    addr: usize,
    orig_pte: bindings::pte_t,
) -> Result {
    // SAFETY: by the function's safety requirements.
    unsafe {
        let mm = (*vma.as_ptr()).vm_mm;
        let mut range = MaybeUninit::<bindings::mmu_notifier_range>::zeroed();
        bindings::rust_ksm_mmu_notifier_clear_start(range.as_mut_ptr(), mm, addr, addr + PAGE_SIZE);
        let mut result = Err(EFAULT);
        if let Some((ptep, ptl)) = lock_pte_table(mm, addr) {
            let ptep = ptep.as_ptr();
            if bindings::rust_ksm_pte_same(bindings::rust_ksm_ptep_get(ptep), orig_pte) {
                replace_pte(vma, mm, ptep, page, target, addr);
                result = Ok(());
            }
            bindings::rust_ksm_pte_unmap_unlock(ptep, ptl);
        }
        bindings::rust_ksm_mmu_notifier_end(range.as_mut_ptr());
        result
    }
}

/// The body of [`replace_page`] under the PTE lock, the PTE checked.
///
/// # Safety
///
/// As [`replace_page`], with `ptep` the locked PTE mapping `page` at `addr`.
unsafe fn replace_pte(
    vma: NonNull<bindings::vm_area_struct>,
    mm: *mut bindings::mm_struct,
    ptep: *mut bindings::pte_t,
    page: &PageRef,
    target: Target<'_>,
    addr: usize,
) {
    // SAFETY: by the function's safety requirements.
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
        // with the change, and no CPU may keep the old page's TLB entry.
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

/// A page of a run for [`merge_run`], the KSM page it is to merge into,
/// and what became of it.
pub(crate) struct RunPage {
    /// Where the page is mapped.
    pub(crate) addr: usize,
    pub(crate) page: PageRef,
    pub(crate) kpage: PageRef,
    pub(crate) state: RunState,
    /// We hold the page's folio lock.
    locked: bool,
}

impl RunPage {
    pub(crate) fn new(addr: usize, page: PageRef, kpage: PageRef) -> Self {
        Self {
            addr,
            page,
            kpage,
            state: RunState::Todo,
            locked: false,
        }
    }
}

/// Where a [`RunPage`] is in [`merge_run`].
#[derive(Clone, Copy)]
pub(crate) enum RunState {
    /// Not started.
    Todo,
    /// Folio locked.
    Locked,
    /// PTE read-only and clean; the entry the replacement must find.
    Protected(bindings::pte_t),
    /// `kpage` is mapped instead.
    Merged,
    /// Left as it was (`ENOENT`: the contents differ from `kpage`'s).
    Failed(Error),
}

/// The PTE table mapping `addr` in `mm`, locked: the PTE of `addr` and the
/// lock.  None where no PTE table is (a hole or a huge PMD).
///
/// # Safety
///
/// The mmap lock of `mm` must be held.
unsafe fn lock_pte_table(
    mm: *mut bindings::mm_struct,
    addr: usize,
) -> Option<(NonNull<bindings::pte_t>, *mut bindings::spinlock_t)> {
    // SAFETY: the mmap lock is held, so the upper levels stay.
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
        let ptep = bindings::rust_ksm_pte_offset_map_lock(mm, pmd, addr, &mut ptl);
        Some((NonNull::new(ptep)?, ptl))
    }
}

/// try_to_merge_one_page() for a run of pages, each into its KSM page:
/// the same steps (lock, write-protect, compare, replace) with the same
/// rules and the same per-PTE clear-and-flush, but each page-table step
/// taken for the whole run under one mmu notifier range and one page table
/// lock, where mm/ksm.c takes both, and walks the page table, per page.
///
/// `run` holds small anonymous pages (not KSM pages) mapped in `vma` at
/// increasing addresses inside one PMD; each ends `Merged` or `Failed`.
///
/// # Safety
///
/// The mmap lock of the VMA's mm must be held; each `kpage` is a KSM page.
pub(crate) unsafe fn merge_run(vma: NonNull<bindings::vm_area_struct>, run: &mut [RunPage]) {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return;
    };
    let (start, end) = (first.addr, last.addr + PAGE_SIZE);
    // SAFETY: the VMA is stable under the mmap lock.
    let mm = unsafe { (*vma.as_ptr()).vm_mm };
    for p in run.iter_mut() {
        let folio = p.page.folio();
        // SAFETY: referenced folio.
        p.state = unsafe {
            if !bindings::rust_ksm_folio_test_anon(folio)
                || bindings::rust_ksm_folio_test_large(folio)
            {
                RunState::Failed(EFAULT)
            } else if !bindings::rust_ksm_folio_trylock(folio) {
                // Rather scan on and come back than wait for the folio.
                RunState::Failed(EBUSY)
            } else {
                p.locked = true;
                RunState::Locked
            }
        };
    }
    let mut range = MaybeUninit::<bindings::mmu_notifier_range>::zeroed();
    // SAFETY: mmap lock held; `range` is ours and ended below.
    unsafe { bindings::rust_ksm_mmu_notifier_clear_start(range.as_mut_ptr(), mm, start, end) };
    // write_protect_page() for every page locked.
    let protect = |p: &RunPage, pte: *mut bindings::pte_t| {
        if !matches!(p.state, RunState::Locked) {
            return None;
        }
        let folio = p.page.folio();
        // SAFETY: `pte` is locked and is the PTE of `p.addr`; the folio
        // is locked, referenced and small.
        Some(unsafe {
            let entry = bindings::rust_ksm_ptep_get(pte);
            if !bindings::rust_ksm_pte_present(entry)
                || bindings::rust_ksm_pte_pfn(entry) != bindings::rust_ksm_folio_pfn(folio)
            {
                RunState::Failed(EFAULT)
            } else {
                write_protect_pte(vma, mm, folio, p.addr, pte)
                    .map_or(RunState::Failed(EFAULT), RunState::Protected)
            }
        })
    };
    // SAFETY: mmap lock held; the run lies in one PMD from `start`.
    unsafe { step_ptes(mm, start, run, protect) };
    for p in run.iter_mut() {
        if matches!(p.state, RunState::Protected(_)) && compare(&p.page, &p.kpage) != 0 {
            p.state = RunState::Failed(ENOENT);
        }
    }
    // replace_page() for every page write-protected and equal to its KSM page.
    let replace = |p: &RunPage, pte: *mut bindings::pte_t| {
        let RunState::Protected(orig) = p.state else {
            return None;
        };
        // SAFETY: as above; both pages referenced.
        Some(unsafe {
            if bindings::rust_ksm_pte_same(bindings::rust_ksm_ptep_get(pte), orig) {
                replace_pte(vma, mm, pte, &p.page, Target::Ksm(&p.kpage), p.addr);
                RunState::Merged
            } else {
                RunState::Failed(EFAULT)
            }
        })
    };
    // SAFETY: as above.
    unsafe { step_ptes(mm, start, run, replace) };
    // SAFETY: started above.
    unsafe { bindings::rust_ksm_mmu_notifier_end(range.as_mut_ptr()) };
    for p in run.iter_mut() {
        if !matches!(p.state, RunState::Merged | RunState::Failed(_)) {
            // The page table went away under us.
            p.state = RunState::Failed(EFAULT);
        }
        if core::mem::take(&mut p.locked) {
            // SAFETY: locked above.
            unsafe { bindings::folio_unlock(p.page.folio()) };
        }
    }
}

/// Under the lock of the PTE table mapping `start`, hands `step` each page
/// of `run` with its PTE and moves the page to the state `step` returns
/// (`None`: leaves it).  Does nothing if there is no PTE table there.
///
/// # Safety
///
/// The mmap lock of `mm` must be held; the run lies in the PMD of `start`,
/// from `start` on.
unsafe fn step_ptes(
    mm: *mut bindings::mm_struct,
    start: usize,
    run: &mut [RunPage],
    mut step: impl FnMut(&RunPage, *mut bindings::pte_t) -> Option<RunState>,
) {
    // SAFETY: the mmap lock is held.
    let Some((ptes, ptl)) = (unsafe { lock_pte_table(mm, start) }) else {
        return;
    };
    for p in run.iter_mut() {
        // SAFETY: the table maps the PMD of `start`, where the run lies.
        let pte = unsafe { ptes.as_ptr().add((p.addr - start) / PAGE_SIZE) };
        if let Some(state) = step(p, pte) {
            p.state = state;
        }
    }
    // SAFETY: mapped and locked above.
    unsafe { bindings::rust_ksm_pte_unmap_unlock(ptes.as_ptr(), ptl) };
}

/// try_to_merge_one_page(): merge `page`, mapped at `addr` of `vma`, into
/// `target`; or, with no target, turn `page` itself into a KSM page (its
/// stable node is set by the caller).  Fails with `ENOENT` when the
/// write-protected page turns out not to equal the target.
///
/// # Safety
///
/// The mmap lock of the VMA's mm must be held.
pub(crate) unsafe fn merge_one_page(
    vma: NonNull<bindings::vm_area_struct>,
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
    let mut folio = page.folio();
    // SAFETY: referenced folio.
    if !unsafe { bindings::rust_ksm_folio_test_anon(folio) } {
        return Err(EFAULT);
    }
    // Trylock: rather scan on and come back than wait for the folio.
    // SAFETY: referenced folio.
    if !unsafe { bindings::rust_ksm_folio_trylock(folio) } {
        return Err(EBUSY);
    }
    let mut result = Err(EFAULT);
    // SAFETY: locked and referenced.
    let small = if unsafe { bindings::rust_ksm_folio_test_large(folio) } {
        // SAFETY: locked and referenced; the lock and our reference follow
        // the page into its new small folio.
        let ok = unsafe { bindings::rust_ksm_split_huge_page(page.page()) } == 0;
        folio = page.folio();
        ok
    } else {
        true
    };
    if small {
        // SAFETY: mmap lock held, folio locked, referenced and small.
        if let Some(orig_pte) = unsafe { write_protect_page(vma, folio, addr) } {
            result = match target {
                None => {
                    // SAFETY: locked folio; it becomes a KSM folio whose
                    // stable node the caller sets under the same lock.
                    unsafe {
                        bindings::rust_ksm_folio_set_mapping(
                            folio,
                            bindings::PAGE_MAPPING_KSM as usize as *mut c_void,
                        );
                        bindings::folio_mark_accessed(folio);
                        if !bindings::rust_ksm_folio_test_dirty(folio) {
                            bindings::folio_mark_dirty(folio);
                        }
                    }
                    Ok(())
                }
                Some(target) if identical(page, target, addr) => {
                    // SAFETY: as required by replace_page().
                    unsafe { replace_page(vma, page, target, addr, orig_pte) }
                }
                // The caller may have trusted a key: say the contents differ.
                Some(_) => Err(ENOENT),
            };
        }
    }
    // SAFETY: locked above.
    unsafe { bindings::folio_unlock(folio) };
    result
}
