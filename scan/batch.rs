// SPDX-License-Identifier: GPL-2.0

//! Merge batches: pages that the stable tree takes, merged into their KSM
//! pages together under one page-table lock (`merge::merge_batch`).

use super::cmp_and_merge::break_cow;
use super::{ScanParams, ScanState, WALK_BATCH};
use crate::bindings;
use crate::kmm::{page, trace, AnonVmaRef, PageRef};
use crate::merge::{self, BatchPage, BatchState};
use crate::rmap::RmapItem;
use crate::tree::{Search, StableNode};
use core::borrow::{Borrow, BorrowMut};
use core::ptr::{self, NonNull};
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;

/// A page of a [`MergeBatch`]: what [`merge::merge_batch`] needs, and whom
/// the merge is for.
struct Pending {
    merge: BatchPage,
    /// The page's item.
    item: NonNull<RmapItem>,
    /// The stable node whose page is `merge.kpage`.
    node: NonNull<StableNode>,
    /// Once merged: the anon_vma reference the new mapping keeps, until
    /// stable_tree_append() takes it.
    anon_vma: Option<AnonVmaRef>,
    /// Merged and appended to `node`.
    appended: bool,
}

impl Borrow<BatchPage> for Pending {
    fn borrow(&self) -> &BatchPage {
        &self.merge
    }
}

impl BorrowMut<BatchPage> for Pending {
    fn borrow_mut(&mut self) -> &mut BatchPage {
        &mut self.merge
    }
}

/// Pages of one walk batch, in one PMD, that the stable tree sends to
/// stable nodes: [`merge::merge_batch`] merges them under one page table
/// lock per step, and [`ScanState::flush_batch`] appends them to their nodes
/// under one lock of each node's folio.
///
/// # Invariants
///
/// Each entry's item is taken out of both trees and alive in the current
/// mm's list behind the scanner's cursor (a batch is flushed before the
/// cursor moves past its walk batch).  A node's pages in the batch never
/// outnumber the mappings it takes before it is full (`max_page_sharing`).
pub(super) struct MergeBatch {
    pending: KVec<Pending>,
}

// SAFETY: a `MergeBatch` is part of the `ScanState`, used only by the holder of
// the scan lock; its items and nodes belong to the same state, and its
// page and anon_vma references may be dropped by any thread.
unsafe impl Send for MergeBatch {}

impl MergeBatch {
    pub(super) fn new() -> Self {
        Self {
            pending: KVec::new(),
        }
    }

    /// How many more mappings `node` takes, counting those in the batch.
    pub(super) fn room(&self, node: NonNull<StableNode>, max_sharing: usize) -> usize {
        // SAFETY: scan lock held: the node is alive, its list stable.
        let used = unsafe { node.as_ref().items() }.len();
        let pending = self.pending.iter().filter(|p| p.node == node).count();
        max_sharing.saturating_sub(used + pending)
    }

    /// Empties the batch, keeping its room for the next one.
    fn clear(pending: &mut KVec<Pending>) {
        let len = pending.len();
        // SAFETY: the entries are dropped in place right after, and not
        // reachable through the vector any more (as Vec::clear()).
        unsafe {
            pending.set_len(0);
            ptr::drop_in_place(ptr::slice_from_raw_parts_mut(pending.as_mut_ptr(), len));
        }
    }
}

impl ScanState {
    /// Defers the merge of `item`'s `page` into the stable node `node`
    /// (page `kpage`) to the batch, flushing the batch first if it cannot
    /// take the page.  Gives the page back if it is not for a batch (the batch
    /// is flushed then, so that no merge into its node is pending).
    pub(super) fn batch_add(
        &mut self,
        item: &mut RmapItem,
        page: PageRef,
        node: NonNull<StableNode>,
        kpage: PageRef,
        params: ScanParams,
    ) -> core::result::Result<(), PageRef> {
        // A KSM page (forked, or this node's) or a huge page needs the
        // one-page path.
        if page.is_ksm() || page.is_large() {
            self.flush_batch(params);
            return Err(page);
        }
        let addr = item.address;
        let fits = self.batch.pending.first().map_or(true, |head| {
            (head.merge.addr ^ addr) >> bindings::PMD_SHIFT == 0
                && self.batch.pending.len() < WALK_BATCH
        });
        if !fits {
            self.flush_batch(params);
        }
        if self.batch.room(node, params.max_page_sharing) == 0 {
            // Full, or full once the batch is merged.
            self.flush_batch(params);
            if self.batch.room(node, params.max_page_sharing) == 0 {
                return Err(page);
            }
        }
        if self.batch.pending.is_empty()
            && self.batch.pending.reserve(WALK_BATCH, GFP_KERNEL).is_err()
        {
            return Err(page);
        }
        // Out of either tree before its page changes hands, as the one-page
        // path does after its search.
        self.trees.remove_item(item);
        let pending = Pending {
            merge: BatchPage::new(addr, page, kpage),
            item: NonNull::from(item),
            node,
            anon_vma: None,
            appended: false,
        };
        // Cannot fail: room was reserved for a whole batch.
        let _ = self.batch.pending.push(pending, GFP_KERNEL);
        Ok(())
    }

    /// Merges the batch (try_to_merge_with_ksm_page() and
    /// stable_tree_append() for each of its pages, batched), then gives the
    /// pages it could not merge the one-page path where mm/ksm.c would go on
    /// with them.
    pub(super) fn flush_batch(&mut self, params: ScanParams) {
        let mut batch = core::mem::take(&mut self.batch.pending);
        let Some(head) = batch.first() else {
            self.batch.pending = batch;
            return;
        };
        let head_addr = head.merge.addr;
        // INVARIANT (MergeBatch): the items are alive in the current mm's list.
        // SAFETY: so the first is.
        let merged = unsafe { head.item.as_ref() }.with_vma(|vma| {
            // The pages past this VMA (it shares the PMD with another)
            // stay `Todo`.
            let n = batch
                .iter()
                .take_while(|p| p.merge.addr >= vma.start() && p.merge.addr < vma.end())
                .count();
            // The pages are as merge_batch() wants (see batch_add()), each
            // `kpage` its node's KSM page.
            merge::merge_batch(vma, &mut batch[..n]);
            // One anon_vma reference per page merged (the VMA has an
            // anon_vma: it is mergeable).
            for p in batch[..n].iter_mut() {
                if matches!(p.merge.state, BatchState::Merged) {
                    p.anon_vma = vma.get_anon_vma();
                }
            }
            // The linear page index of the first page: all are in one VMA.
            Ok(vma.linear_page_index(head_addr))
        });
        if let Ok(head_index) = merged {
            self.append_batch(&mut batch, head_addr, head_index);
        }
        for p in batch.iter() {
            // SAFETY: INVARIANT (MergeBatch): a live item, ours under the
            // scan lock.
            let item = unsafe { &mut *p.item.as_ptr() };
            // try_to_merge_with_ksm_page()'s event, for a merge done (even
            // if its append failed: it is broken again below) or given up.
            // A key that lied is not an outcome: the search goes on.
            let outcome = match p.merge.state {
                BatchState::Merged => Some(Ok(())),
                BatchState::Failed(e) if e != ENOENT => Some(Err(e)),
                _ => None,
            };
            if let Some(outcome) = outcome {
                let (kpage, page) = (&p.merge.kpage, &p.merge.page);
                trace::merge_with_ksm_page(
                    Some(kpage),
                    page,
                    item.trace_id(),
                    item.mm.as_ptr(),
                    &outcome,
                );
            }
            match p.merge.state {
                // Leave no KSM page mapped outside the stable tree.
                BatchState::Merged if !p.appended => break_cow(item),
                // The key lied: search again, comparing.
                BatchState::Failed(e) if e == ENOENT => {
                    let key = page::key(&p.merge.page);
                    self.cmp_and_merge_one(item, &p.merge.page, key, Some(Search::Exact), params);
                }
                // Not in the batch's VMA: from the start.
                BatchState::Todo => {
                    let key = page::key(&p.merge.page);
                    self.cmp_and_merge_one(item, &p.merge.page, key, Some(Search::Fast), params);
                }
                // Merged, or failed as mm/ksm.c gives up on a page.
                _ => {}
            }
        }
        MergeBatch::clear(&mut batch);
        self.batch.pending = batch;
    }

    /// stable_tree_append() for each merged page of `batch` (the first of
    /// which is mapped at `head_addr`, linear page index `head_index`),
    /// node by node, each node's pages under one lock of its folio.  A page
    /// whose node lost its folio since the search stays not `appended`.
    fn append_batch(&mut self, batch: &mut [Pending], head_addr: usize, head_index: usize) {
        for first in 0..batch.len() {
            // Merged pages keep their anon_vma reference until appended (or
            // given up).
            if batch[first].anon_vma.is_none() {
                continue;
            }
            let node = batch[first].node;
            // A reference of its own, as the entries change under the lock.
            let kpage = batch[first].merge.kpage.clone();
            let locked = kpage.lock();
            // The node may have lost the folio (stale) since the search.
            // SAFETY: referenced, locked folio.
            let live = unsafe { StableNode::of_folio(locked.folio()) } == Some(node);
            for p in batch[first..].iter_mut().filter(|p| p.node == node) {
                let Some(anon_vma) = p.anon_vma.take() else {
                    continue;
                };
                if !live {
                    continue;
                }
                let index = head_index + (p.merge.addr - head_addr) / PAGE_SIZE;
                // SAFETY: INVARIANT (MergeBatch): a live item, ours under the
                // scan lock; the KSM folio is locked.
                let item = unsafe { &mut *p.item.as_ptr() };
                // SAFETY: as above.
                let appended = unsafe { self.trees.stable_append(item, node, anon_vma, index) };
                p.appended = appended.is_ok();
            }
        }
    }
}
