// SPDX-License-Identifier: GPL-2.0

//! cmp_and_merge_page(): what the scanner does with one page (stable tree,
//! zero page, unstable tree), and the merges it asks of `crate::merge`.

use super::{ScanParams, ScanState};
use crate::kmm::{page, trace, AnonVmaRef, PageRef};
use crate::merge::{self, Target};
use crate::rmap::{ItemState, RmapItem};
use crate::tree::{Search, StableNode};
use core::ptr::NonNull;
use kernel::prelude::*;

/// try_to_merge_with_ksm_page(): merge `item`'s page into `target` (or make
/// it a KSM page), returning the anon_vma (referenced) and linear page
/// index its stable item keeps (see [`crate::rmap::StableRmap`]).
pub(super) fn merge_with(
    item: &RmapItem,
    page: &PageRef,
    target: Option<Target<'_>>,
) -> Result<(AnonVmaRef, usize)> {
    let merged = item.with_vma(|vma| {
        // VM_LOCKED needs nothing special (as in 6.12's mm/ksm.c):
        // replace_page() maps the KSM folio with folio_add_anon_rmap_pte(),
        // which mlocks it for a locked VMA, and folio_remove_rmap_pte()
        // munlocks the old one.
        merge::merge_one_page(vma, page, target, item.address)?;
        // A mergeable VMA has an anon_vma.
        let anon_vma = vma.get_anon_vma().ok_or(EFAULT)?;
        Ok((anon_vma, vma.linear_page_index(item.address)))
    });
    let kpage = match target {
        Some(Target::Ksm(kpage)) => Some(kpage),
        _ => None,
    };
    trace::merge_with_ksm_page(kpage, page, item.trace_id(), item.mm.as_ptr(), &merged);
    merged
}

/// try_to_merge_with_zero_page(): map the zero page instead of `item`'s
/// (all-zero) page.  The item stays out of the trees: the next scan finds
/// no page there and frees it, as upstream.
pub(super) fn merge_with_zero(item: &RmapItem, page: &PageRef) -> Result {
    let merged =
        item.with_vma(|vma| merge::merge_one_page(vma, page, Some(Target::Zero), item.address));
    trace::merge_one_page(item.address, item.trace_id(), item.mm.as_ptr(), &merged);
    merged
}

/// Splits the huge page `page` is part of, if its folio lock is free.
pub(super) fn split_huge(page: &PageRef) {
    if let Some(mut locked) = page.try_lock() {
        locked.split(page);
    }
}

/// break_cow(): undo a merge of `item`'s page.
pub(super) fn break_cow(item: &RmapItem) {
    let _ = item.with_vma(|vma| merge::break_ksm(vma, item.address));
}

impl ScanState {
    /// cmp_and_merge_page(): the heart of KSM, after mm/ksm.c.  A page
    /// that the stable tree takes joins the batch (merged by
    /// [`Self::flush_batch`]); anything else is done here and now.
    pub(super) fn cmp_and_merge(&mut self, item: &mut RmapItem, page: PageRef, params: ScanParams) {
        // SAFETY: referenced page.
        if unsafe { StableNode::is_builtins(page.folio()) } {
            // A KSM page the built-in KSM kept when we registered (it
            // could not hand it over: out of memory, or no mapping its
            // items knew of, such as a child forked before its scan).
            // This mapping gets its own copy, which merges here as any
            // page; the built-in's page goes with its last mapping.
            self.trees.remove_item(item);
            break_cow(item);
            return;
        }
        // SAFETY: referenced page.
        if let Some(own) = unsafe { StableNode::of_folio(page.folio()) } {
            // SAFETY: a node a KSM folio points to stays alive while we hold
            // the scan lock (only its holder frees nodes).
            if !self.trees.in_current_domain(unsafe { own.as_ref() }) {
                // A KSM page of another merge domain: merged before this
                // process moved, or inherited through fork into another
                // cgroup.  This mapping gets its own copy; the page is
                // looked at afresh next time.
                self.trees.remove_item(item);
                break_cow(item);
                return;
            }
            // Already merged with this very page?
            if matches!(item.state, ItemState::Stable { node, .. } if node == own) {
                return;
            }
        }
        let key = page::key(&page);
        // All-zero candidates (use_zero_pages) take the one-page path, which
        // tries the zero page first.
        if params.use_zero_pages && key == self.zero_key {
            self.cmp_and_merge_one(item, &page, key, Some(Search::Fast), params);
            return;
        }
        let Some((node, kpage)) =
            self.trees
                .stable_search(&page, key, &params.search(), Search::Fast)
        else {
            // Fast found nothing: neither would Exact, which only tells
            // apart nodes that share the key.
            self.cmp_and_merge_one(item, &page, key, None, params);
            return;
        };
        if let Err(page) = self.batch_add(item, page, node, kpage, params) {
            // Not for a batch (a KSM page itself, a huge page, or the node
            // full after the batch merged): on its own, from the search,
            // which the batch may have changed.
            self.cmp_and_merge_one(item, &page, key, Some(Search::Fast), params);
        }
    }

    /// cmp_and_merge_page() for one page, starting with a stable tree
    /// search of kind `first` (`Exact` after a batch found a key that lied;
    /// None: known to find nothing).
    pub(super) fn cmp_and_merge_one(
        &mut self,
        item: &mut RmapItem,
        page: &PageRef,
        key: u64,
        first: Option<Search>,
        params: ScanParams,
    ) {
        // use_zero_pages: an all-zero page (the full hash says so) whose
        // checksum held since the previous scan maps the zero page instead
        // (before the stable tree, as upstream).
        if params.use_zero_pages && key == self.zero_key && !page.is_ksm() {
            if page::hash(page) == self.zero_hash && item.checksum == key as u32 {
                self.trees.remove_item(item);
                if merge_with_zero(item, page).is_ok() {
                    return;
                }
            }
        }
        // First trust the key (the merge compares in full); search exactly
        // only if that node's contents turn out to differ.
        let searches: &[Search] = match first {
            Some(Search::Fast) => &[Search::Fast, Search::Exact],
            Some(Search::Exact) => &[Search::Exact],
            None => &[],
        };
        for &search in searches {
            let found = self
                .trees
                .stable_search(page, key, &params.search(), search);
            self.trees.remove_item(item);
            let Some((node, kpage)) = found else {
                break;
            };
            match merge_with(item, page, Some(Target::Ksm(&kpage))) {
                Ok((anon_vma, index)) => {
                    self.append(item, node, &kpage, anon_vma, index);
                    return;
                }
                Err(e) if e == ENOENT => continue,
                Err(_) => return,
            }
        }
        self.trees.remove_item(item);

        // Pages that change between scans stay out of the unstable tree.
        // The checksum is the sampled key (256 bytes of the page), not
        // upstream's hash of the whole page: it was read for the stable tree
        // anyway, and a full hash of every page on first sight cost 13% of
        // the CPU of a merge and 26% of a steady-state scan (make bench's
        // breakdown).  A page that changed only between the samples passes
        // the gate; what it costs is a tree slot, never a wrong merge: the
        // merge compares the write-protected pages in full.
        let sum = key as u32;
        if item.checksum != sum {
            item.checksum = sum;
            return;
        }

        let Some((tree_item, tree_page)) = self.trees.unstable_search_insert(item, page) else {
            return;
        };
        // SAFETY: unstable items live in their mm's list, scan-lock owned;
        // `tree_item` is not `item` (it was found in the tree, `item` not).
        let tree_item = unsafe { &mut *tree_item.as_ptr() };
        // Two subpages of one huge page: splitting it fails while we hold
        // both references, so merging fails; split with one dropped.
        let same_huge = page.folio() == tree_page.folio() && page.is_large();
        let Ok((av_item, idx_item)) = merge_with(item, page, None) else {
            if same_huge {
                drop(tree_page);
                split_huge(page);
            }
            return;
        };
        let Ok((av_tree, idx_tree)) = merge_with(tree_item, &tree_page, Some(Target::Ksm(page)))
        else {
            drop(av_item);
            break_cow(item);
            return;
        };
        self.trees.remove_item(tree_item);
        // Locked for the stable tree insert.
        let locked = page.lock();
        // The node's identity comes from the KSM page as it is now, write-
        // protected in every mapping, so fixed: `key` and `hash` were read
        // before, and both pages may have changed alike in between.
        let (key, hash) = (page::key(page), page::hash(page));
        // Each append keeps its anon_vma reference, or puts it on failure;
        // one not tried is put when it goes out of scope.
        let appended = match self.trees.stable_insert(page, key, hash) {
            // SAFETY: the folio is locked; items alive.
            Ok(node) => unsafe {
                self.trees
                    .stable_append(tree_item, node, av_tree, idx_tree)
                    .is_ok()
                    && self
                        .trees
                        .stable_append(item, node, av_item, idx_item)
                        .is_ok()
            },
            Err(_) => false,
        };
        drop(locked);
        if !appended {
            // Leave no KSM page outside the stable tree.
            for it in [&mut *tree_item, &mut *item] {
                self.trees.remove_item(it);
                break_cow(it);
            }
        }
    }

    /// stable_tree_append() under the KSM folio's lock.
    pub(super) fn append(
        &mut self,
        item: &mut RmapItem,
        node: NonNull<crate::tree::StableNode>,
        kpage: &PageRef,
        anon_vma: AnonVmaRef,
        index: usize,
    ) {
        let locked = kpage.lock();
        // The node may have lost the folio (stale) since the search.
        // SAFETY: referenced, locked folio.
        let ok = unsafe { StableNode::of_folio(locked.folio()) } == Some(node)
            // SAFETY: folio locked, item alive.  On failure the reference
            // is put.
            && unsafe { self.trees.stable_append(item, node, anon_vma, index) }.is_ok();
        drop(locked);
        if !ok {
            break_cow(item);
        }
    }
}
