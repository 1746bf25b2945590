// SPDX-License-Identifier: GPL-2.0

//! Merge batches: pages that the stable tree takes, merged into their KSM
//! pages together under one page-table lock (`merge::merge_batch`).

use super::cmp_and_merge::break_cow;
use super::{ScanParams, ScanState, WALK_BATCH};
use crate::bindings;
use crate::kmm::{page, AnonVmaRef, PageRef};
use crate::merge::{self, BatchPage, BatchState};
use crate::rmap::RmapItem;
use crate::tree::{Search, StableNode};
use core::ptr::{self, NonNull};
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;

/// Pages of one walk batch, in one PMD, that the stable tree sends to
/// stable nodes: [`merge::merge_batch`] merges them under one page table
/// lock per step, and [`ScanState::flush_batch`] appends them to their nodes
/// under one lock of each node's folio.
///
/// # Invariants
///
/// `items[i]` is the item of `pages[i]`, taken out of both trees, alive
/// in the current mm's list behind the scanner's cursor (a batch is flushed
/// before the cursor moves past its walk batch); `nodes[i]` is the node
/// whose page is `pages[i].kpage`.  A node's pages in the batch never
/// outnumber the mappings it takes before it is full (`max_page_sharing`).
pub(super) struct MergeBatch {
    pages: KVec<BatchPage>,
    items: KVec<NonNull<RmapItem>>,
    nodes: KVec<NonNull<StableNode>>,
}

// SAFETY: a `MergeBatch` is part of the `ScanState`, used only by the holder of
// the scan lock; its items and nodes belong to the same state, and its
// page references are folio references, which any thread may drop.
unsafe impl Send for MergeBatch {}

impl MergeBatch {
    pub(super) fn new() -> Self {
        Self {
            pages: KVec::new(),
            items: KVec::new(),
            nodes: KVec::new(),
        }
    }

    /// How many more mappings `node` takes, counting those in the batch.
    pub(super) fn room(&self, node: NonNull<StableNode>, max_sharing: usize) -> usize {
        // SAFETY: scan lock held: the node is alive, its list stable.
        let used = unsafe { node.as_ref().mappings() }.len();
        let pending = self.nodes.iter().filter(|n| **n == node).count();
        max_sharing.saturating_sub(used + pending)
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
        let fits = self.batch.pages.first().map_or(true, |head| {
            (head.addr ^ addr) >> bindings::PMD_SHIFT == 0 && self.batch.pages.len() < WALK_BATCH
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
        if self.batch.pages.is_empty()
            && (self.batch.pages.reserve(WALK_BATCH, GFP_KERNEL).is_err()
                || self.batch.items.reserve(WALK_BATCH, GFP_KERNEL).is_err()
                || self.batch.nodes.reserve(WALK_BATCH, GFP_KERNEL).is_err())
        {
            return Err(page);
        }
        // Out of either tree before its page changes hands, as the one-page
        // path does after its search.
        self.trees.remove_item(item);
        // Cannot fail: room was reserved for a whole batch.
        let _ = self.batch.items.push(NonNull::from(item), GFP_KERNEL);
        let _ = self.batch.nodes.push(node, GFP_KERNEL);
        let _ = self
            .batch
            .pages
            .push(BatchPage::new(addr, page, kpage), GFP_KERNEL);
        Ok(())
    }

    /// Merges the batch (try_to_merge_with_ksm_page() and
    /// stable_tree_append() for each of its pages, batched), then gives the
    /// pages it could not merge the one-page path where mm/ksm.c would go on
    /// with them.
    pub(super) fn flush_batch(&mut self, params: ScanParams) {
        let Some(head_addr) = self.batch.pages.first().map(|p| p.addr) else {
            return;
        };
        let mut pages = core::mem::take(&mut self.batch.pages);
        let mut items = core::mem::take(&mut self.batch.items);
        let mut nodes = core::mem::take(&mut self.batch.nodes);
        // The anon_vma (referenced once per page merged) and the linear
        // page index of the first page: all pages are in one VMA.
        let mut refs: [Option<AnonVmaRef>; WALK_BATCH] = core::array::from_fn(|_| None);
        // INVARIANT (MergeBatch): the items are alive in the current mm's list.
        // SAFETY: so the first is.
        let merged = unsafe { items[0].as_ref() }.with_vma(|vma| {
            // The pages past this VMA (it shares the PMD with another)
            // stay `Todo`.
            let n = pages
                .iter()
                .take_while(|p| p.addr >= vma.start() && p.addr < vma.end())
                .count();
            // The pages are as merge_batch() wants (see batch_add()), each
            // `kpage` its node's KSM page.
            merge::merge_batch(vma, &mut pages[..n]);
            for (p, r) in pages[..n].iter().zip(refs.iter_mut()) {
                if matches!(p.state, BatchState::Merged) {
                    *r = vma.get_anon_vma();
                }
            }
            Ok(vma.linear_page_index(head_addr))
        });
        let len = pages.len();
        // Merged but not appended: to be broken again.
        let mut undo = [false; WALK_BATCH];
        if let Ok(head_index) = merged {
            // Append node by node, each under one lock of its folio.
            let mut done = [false; WALK_BATCH];
            for first in 0..len {
                if done[first] || !matches!(pages[first].state, BatchState::Merged) {
                    continue;
                }
                let node = nodes[first];
                let locked = pages[first].kpage.lock();
                // The node may have lost the folio (stale) since the search.
                // SAFETY: referenced, locked folio.
                let live = unsafe { StableNode::of_folio(locked.folio()) } == Some(node);
                for i in first..len {
                    if done[i] || nodes[i] != node || !matches!(pages[i].state, BatchState::Merged)
                    {
                        continue;
                    }
                    done[i] = true;
                    let index = head_index + (pages[i].addr - head_addr) / PAGE_SIZE;
                    // Merged pages have their reference (the VMA had an
                    // anon_vma: it is mergeable).
                    let appended = match (live, refs[i].take()) {
                        (true, Some(anon_vma)) => {
                            // SAFETY: INVARIANT (MergeBatch): a live item, ours
                            // under the scan lock; the KSM folio is locked.
                            let item = unsafe { &mut *items[i].as_ptr() };
                            // SAFETY: as above.
                            unsafe { self.trees.stable_append(item, node, anon_vma, index) }.is_ok()
                        }
                        _ => false,
                    };
                    undo[i] = !appended;
                }
            }
        }
        for (i, p) in pages.iter().enumerate() {
            // SAFETY: INVARIANT (MergeBatch): a live item.
            let item = unsafe { &mut *items[i].as_ptr() };
            match p.state {
                // Leave no KSM page mapped outside the stable tree.
                BatchState::Merged if undo[i] => break_cow(item),
                // The key lied: search again, comparing.
                BatchState::Failed(e) if e == ENOENT => {
                    let key = page::key(&p.page);
                    self.cmp_and_merge_one(item, &p.page, key, Some(Search::Exact), params);
                }
                // Not in the batch's VMA: from the start.
                BatchState::Todo => {
                    let key = page::key(&p.page);
                    self.cmp_and_merge_one(item, &p.page, key, Some(Search::Fast), params);
                }
                // Merged, or failed as mm/ksm.c gives up on a page.
                _ => {}
            }
        }
        // Keep the vectors' room for the next batch.
        // SAFETY: the pages are dropped in place right after, and not
        // reachable through the vector any more (as Vec::clear()).
        unsafe {
            pages.set_len(0);
            ptr::drop_in_place(ptr::slice_from_raw_parts_mut(pages.as_mut_ptr(), len));
            // Plain pointers: nothing to drop.
            items.set_len(0);
            nodes.set_len(0);
        }
        self.batch.pages = pages;
        self.batch.items = items;
        self.batch.nodes = nodes;
    }
}
