// SPDX-License-Identifier: GPL-2.0

//! Merging a batch of pages, each into its KSM page, with one page-table
//! lock and one mmu-notifier range per step where mm/ksm.c takes them per
//! page ([`merge_batch`]).
//!
//! The scanner ([`crate::scan`]'s `MergeBatch`) hands over pages of one
//! walk batch (up to [`BATCH_MAX`], one mm) that the stable tree sends to
//! stable nodes and that lie in one PMD, each with its own node's page: one
//! mmap lock and VMA lookup, one mmu notifier range, and per step
//! (write-protect, replace) one page table lock for the run, where upstream
//! takes each, and walks the page table, per page.  Each PTE still gets
//! upstream's own treatment (clear-and-flush, refcount check, full compare
//! after write-protection, `pte_same` before replacing): x86 keeps TLB
//! flushing from modules (`flush_tlb_range()` is `#ifndef MODULE` there).
//! A page the batch cannot merge goes on as upstream's would: contents
//! differing from the node's (the sampled key lied, `ENOENT`) searches
//! again comparing, a page past the batch's VMA starts over alone, any
//! other failure waits for the next scan.  KSM pages, huge pages and
//! all-zero candidates (`use_zero_pages`) take the one-page path.

use super::{replace_pte, write_protect_pte, Target};
use crate::bindings;
use crate::kmm::page::compare;
use crate::kmm::pgtable::{MmuNotifierRange, PteTable};
use crate::kmm::{FolioLock, PageRef, VmaRef};
use core::borrow::{Borrow, BorrowMut};
use kernel::error::code::*;
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;

/// The most pages [`merge_batch`] takes at once.
pub(crate) const BATCH_MAX: usize = 32;

/// A page of a batch for [`merge_batch`], the KSM page it is to merge into,
/// and what became of it.
pub(crate) struct BatchPage {
    /// Where the page is mapped.
    pub(crate) addr: usize,
    pub(crate) page: PageRef,
    pub(crate) kpage: PageRef,
    pub(crate) state: BatchState,
}

impl BatchPage {
    pub(crate) fn new(addr: usize, page: PageRef, kpage: PageRef) -> Self {
        Self {
            addr,
            page,
            kpage,
            state: BatchState::Todo,
        }
    }
}

/// Where a [`BatchPage`] is in [`merge_batch`].
#[derive(Clone, Copy)]
pub(crate) enum BatchState {
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

/// try_to_merge_one_page() for a batch of pages, each into its KSM page:
/// the same steps (lock, write-protect, compare, replace) with the same
/// rules and the same per-PTE clear-and-flush, but each page-table step
/// taken for the whole batch under one mmu notifier range and one page table
/// lock, where mm/ksm.c takes both, and walks the page table, per page.
///
/// `batch` holds at most [`BATCH_MAX`] small anonymous pages (not KSM pages)
/// mapped in `vma` at increasing addresses inside one PMD; each ends
/// `Merged` or `Failed`.  Each `kpage` is a KSM page.  (The caller's batch
/// entries may carry more than a [`BatchPage`]: they lend it.)
pub(crate) fn merge_batch<P: BorrowMut<BatchPage>>(vma: VmaRef<'_>, batch: &mut [P]) {
    let page = <P as Borrow<BatchPage>>::borrow;
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return;
    };
    let (start, end) = (page(first).addr, page(last).addr + PAGE_SIZE);
    let n = batch.len();
    assert!(n <= BATCH_MAX);
    // The states live apart from the pages while the folio locks borrow
    // them; they are written back at the end.
    let mut state = [BatchState::Todo; BATCH_MAX];
    let mut locks: [Option<FolioLock<'_>>; BATCH_MAX] = core::array::from_fn(|_| None);
    for (i, p) in batch.iter().map(page).enumerate() {
        state[i] = if !p.page.is_anon() || p.page.is_large() {
            BatchState::Failed(EFAULT)
        } else if let Some(lock) = p.page.try_lock() {
            // Trylock: rather scan on and come back than wait for the folio.
            locks[i] = Some(lock);
            BatchState::Locked
        } else {
            BatchState::Failed(EBUSY)
        };
    }
    {
        let _range = MmuNotifierRange::clear(vma, start, end);
        // write_protect_page() for every page locked.
        if let Some(table) = PteTable::lock(vma, start) {
            for (i, p) in batch.iter().map(page).enumerate() {
                let (BatchState::Locked, Some(lock)) = (state[i], &locks[i]) else {
                    continue;
                };
                let pte = table.pte(p.addr);
                // SAFETY: plain reads of a locked PTE and a referenced folio.
                let maps_it = unsafe {
                    let entry = pte.get();
                    bindings::rust_ksm_pte_present(entry)
                        && bindings::rust_ksm_pte_pfn(entry)
                            == bindings::rust_ksm_folio_pfn(lock.folio())
                };
                state[i] = if !maps_it {
                    BatchState::Failed(EFAULT)
                } else {
                    // SAFETY: the PTE maps the folio at `p.addr`; the folio
                    // is locked, referenced once by us and small.
                    unsafe { write_protect_pte(vma, lock, p.addr, pte) }
                        .map_or(BatchState::Failed(EFAULT), BatchState::Protected)
                };
            }
        }
        for (i, p) in batch.iter().map(page).enumerate() {
            if matches!(state[i], BatchState::Protected(_)) && compare(&p.page, &p.kpage) != 0 {
                state[i] = BatchState::Failed(ENOENT);
            }
        }
        // replace_page() for every page write-protected and equal to its
        // KSM page.
        if let Some(table) = PteTable::lock(vma, start) {
            for (i, p) in batch.iter().map(page).enumerate() {
                let BatchState::Protected(orig) = state[i] else {
                    continue;
                };
                let pte = table.pte(p.addr);
                // SAFETY: plain comparison of two entries.
                state[i] = if unsafe { bindings::rust_ksm_pte_same(pte.get(), orig) } {
                    // SAFETY: the unchanged PTE maps `p.page` at `p.addr`;
                    // its folio is locked; both pages are referenced.
                    unsafe { replace_pte(vma, pte, &p.page, Target::Ksm(&p.kpage), p.addr) };
                    BatchState::Merged
                } else {
                    BatchState::Failed(EFAULT)
                };
            }
        }
    }
    drop(locks);
    for (p, s) in batch.iter_mut().zip(state) {
        BorrowMut::<BatchPage>::borrow_mut(p).state = match s {
            BatchState::Merged | BatchState::Failed(_) => s,
            // The page table went away under us.
            _ => BatchState::Failed(EFAULT),
        };
    }
}
