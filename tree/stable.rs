// SPDX-License-Identifier: GPL-2.0

//! The stable tree: one [`StableNode`] per KSM page, ordered by (key,
//! contents); getting a node's folio (stale nodes go), search, insert,
//! append, and the per-NUMA-node trees of `merge_across_nodes=0`.  Walks
//! over all nodes are in `sweep.rs`.
//!
//! No lock/unlock handshake with migration.  Upstream's
//! stable_tree_search() takes and drops the lock of the node's page after
//! raising its count "so that page migration is sure to notice its raised
//! count": without it, the search can return the old folio of a migration
//! that has passed its refcount check, and the merge would map that old
//! folio, which is no longer the node's.  Here the search takes the page
//! without the lock ([`Trees::get_folio`], not `get_folio_locked`) and the
//! caller checks afterwards instead: the append of a merged page
//! (`ScanState::append`, and the batch flush) locks the KSM folio and
//! verifies that its `mapping` still points to the node; if not (migration
//! moved the node meanwhile), the new mapping is broken again
//! (`break_cow`).  Between the two a mapping of the old folio exists that
//! the rmap walk does not find (its mapping has no node), which only makes
//! reclaim or migration of that folio fail for a moment.

use super::{Search, SearchLimits, Trees};
use crate::bindings;
use crate::kmm::page::{self, PageRef};
use crate::kmm::rbtree::{RbLink, RbRoot, Step};
use crate::kmm::trace;
use crate::kmm::{AnonVmaRef, LockedPage};
use crate::rmap::{ItemState, RmapItem, StableNode, StableRmap};
use core::ptr::NonNull;
use kernel::c_str;
use kernel::prelude::*;

impl Trees {
    /// The stable tree of index `tree` (see [`Self::tree_of`]).
    pub(super) fn stable_root(&mut self, tree: usize) -> &mut RbRoot {
        &mut self.stable[tree]
    }

    /// Every stable tree.
    pub(super) fn stable_roots(&self) -> impl Iterator<Item = &RbRoot> {
        self.stable.iter()
    }

    /// The trees a page of the current domain belongs in: its NUMA node's
    /// or the domain's only ones.
    pub(super) fn tree_of(&self, page: &PageRef) -> usize {
        self.domain_base() + Self::nid_of(self.across, page)
    }

    /// The tree within a domain's for `page`, for a descent, which cannot
    /// borrow the trees: its NUMA node, or 0 when merging across nodes.
    pub(super) fn nid_of(across_nodes: bool, page: &PageRef) -> usize {
        if across_nodes {
            0
        } else {
            // SAFETY: referenced folio.
            unsafe { bindings::rust_ksm_folio_nid(page.folio()) as usize }
        }
    }

    /// ksm_get_folio(KSM_GET_FOLIO_LOCK): [`Self::get_folio`], locked, or
    /// None if the node is stale (and removed).
    pub(crate) fn get_folio_locked(&mut self, node: NonNull<StableNode>) -> Option<LockedPage> {
        loop {
            let locked = LockedPage::lock(self.get_folio(node)?);
            // Still ours once locked?  Otherwise look again: stale, or
            // migrated meanwhile.
            // SAFETY: referenced, locked folio.
            if unsafe { bindings::rust_ksm_folio_mapping(locked.folio()) }
                == StableNode::mapping(node)
            {
                return Some(locked);
            }
        }
    }

    /// ksm_get_folio(): the node's folio, referenced, or None if the node is
    /// stale, in which case it is removed.
    pub(crate) fn get_folio(&mut self, node: NonNull<StableNode>) -> Option<PageRef> {
        // SAFETY: nodes in the tree are alive.
        let page = unsafe { node.as_ref() }.folio();
        if page.is_none() {
            self.remove_node(node);
        }
        page
    }

    /// remove_node_from_stable_tree(): free a node whose folio no longer
    /// points to it (or whose pointer was cleared, or now points to the
    /// built-in KSM's node), dropping its items.
    pub(crate) fn remove_node(&mut self, node: NonNull<StableNode>) {
        // SAFETY: the node is alive and linked; we own it from now on.
        let node = unsafe { KBox::from_raw(node.as_ptr()) };
        // SAFETY: scan lock held; no folio points to the node any more.
        let items = unsafe { &*node.items.get() };
        let pfn = node.pfn();
        for (i, &item) in items.iter().enumerate() {
            // SAFETY: stable items are alive while in a node; no walker can
            // reach the node any more.
            let item = unsafe { &mut *item.as_ptr() };
            if i != 0 {
                // Upstream reports every item of the node but the last one
                // in its list, i.e. the sharing ones.
                trace::remove_rmap_item(pfn, item.trace_id(), item.mm.as_ptr());
            }
            // Dropping the old state puts the item's anon_vma reference.
            item.state = ItemState::Volatile;
            // SAFETY: the item's mm is allocated.
            unsafe { (*item.mm.as_ptr()).__bindgen_anon_1.ksm_merging_pages -= 1 };
            self.count_mapping(node.tree(), i == 0, false);
        }
        trace::remove_ksm_page(pfn);
        self.unlink_node(&node);
        self.counters.stable_nodes -= 1;
    }

    /// The node whose link `link` is: its first field (`#[repr(C)]`).
    pub(super) fn node_of(link: NonNull<RbLink>) -> NonNull<StableNode> {
        link.cast::<StableNode>()
    }

    /// stable_tree_search(): a stable node with `page`'s contents (whose
    /// sampled key is `key`) that can take one more mapping
    /// (`limits.max_sharing`), with its page referenced.
    ///
    /// The tree is ordered by (key, contents), so the descent compares
    /// integers, and reads a node's page only on a key match.  With
    /// `Search::Fast` not even then: a node with the key is the answer,
    /// and the merge, which compares the pages in full after
    /// write-protecting them, tells whether the contents really are equal
    /// (if not, the caller searches again with `Search::Exact`).  That
    /// saves reading two pages per merge in the common case.
    ///
    /// Of equal nodes (a chain of dups, `max_page_sharing`) the descent
    /// goes on to the last: dups are inserted right of their equals, so
    /// that is the newest, the one that most likely has room.  Finding a
    /// dup with room stays O(log n) however long the chain grows; only when
    /// the newest is full are the others looked at (see
    /// [`Self::equal_with_room`]), once per new dup.
    pub(crate) fn stable_search(
        &mut self,
        page: &PageRef,
        key: u64,
        limits: &SearchLimits,
        search: Search,
    ) -> Option<(NonNull<StableNode>, PageRef)> {
        // A page that is already ours: its own node, full or not.  (While we
        // are the engine, a KSM folio with a node points to one of ours: the
        // built-in KSM had none left when we registered.)
        // SAFETY: referenced page.
        if let Some(own) = unsafe { StableNode::of_folio(page.folio()) } {
            // SAFETY: a node a KSM folio points to is alive while we hold
            // the scan lock (only its holder frees nodes).
            if !self.in_current_domain(unsafe { own.as_ref() }) {
                return None;
            }
            if let Some(kpage) = self.get_folio(own) {
                return Some((own, kpage));
            }
        }
        let tree = self.tree_of(page);
        'restart: loop {
            // The last equal node met, and its page if we read it.
            let mut last: Option<(NonNull<StableNode>, Option<PageRef>)> = None;
            let stale = self.stable_root(tree).search(|link| {
                let node = Self::node_of(link);
                // SAFETY: nodes in the tree are alive.
                let n = unsafe { node.as_ref() };
                if key != n.key {
                    return if key < n.key { Step::Left } else { Step::Right };
                }
                match search {
                    Search::Fast => last = Some((node, None)),
                    Search::Exact => {
                        let Some(tree_page) = n.folio() else {
                            // Stale: remove it, then search again.
                            return Step::Stop(node);
                        };
                        match page::compare(page, &tree_page) {
                            ret if ret < 0 => return Step::Left,
                            0 => last = Some((node, Some(tree_page))),
                            _ => return Step::Right,
                        }
                    }
                }
                // Equal: on to the right, where newer dups are.
                Step::Right
            });
            if let Some(stale) = stale {
                self.remove_node(stale);
                continue 'restart;
            }
            let (node, tree_page) = last?;
            let tree_page = match tree_page {
                Some(tree_page) => tree_page,
                None => match self.get_folio(node) {
                    Some(tree_page) => tree_page,
                    None => continue 'restart,
                },
            };
            if tree != self.tree_of(&tree_page) {
                // Migrated to another node: merges only across nodes.
                return None;
            }
            self.prune_chain(node, limits.chains_prune_jiffies);
            return self.equal_with_room(node, tree_page, limits.max_sharing);
        }
    }

    /// stable_tree_insert(): a new node for the locked KSM folio of `kpage`,
    /// whose contents have sampled key `key` and full hash `hash`.
    pub(crate) fn stable_insert(
        &mut self,
        kpage: &PageRef,
        key: u64,
        hash: u64,
    ) -> Result<NonNull<StableNode>> {
        let tree = self.tree_of(kpage);
        // SAFETY: referenced folio.
        let kpfn = unsafe { bindings::rust_ksm_folio_pfn(kpage.folio()) };
        let node = KBox::new(StableNode::new(tree as u16, kpfn, key, hash), GFP_KERNEL)?;
        // The node is pinned in its box from now on.
        let node = NonNull::from(KBox::leak(node));
        // SAFETY: a new node, not in any tree; `kpage` has its contents.
        unsafe { self.link_node(node, kpage) };
        // SAFETY: the caller holds the folio lock.
        unsafe { bindings::rust_ksm_folio_set_mapping(kpage.folio(), StableNode::mapping(node)) };
        self.counters.stable_nodes += 1;
        Ok(node)
    }

    /// Links `node` into its tree (`node.tree`), ordered by (key, contents),
    /// right of any equal node, and counts it into its chain.
    ///
    /// # Safety
    ///
    /// `node` is alive and in no tree; `kpage` holds its contents.
    pub(super) unsafe fn link_node(&mut self, node: NonNull<StableNode>, kpage: &PageRef) {
        // SAFETY: alive, by the safety requirements.
        let (key, tree) = unsafe { (node.as_ref().key, node.as_ref().tree()) };
        let step = |link| {
            let tree_node = Self::node_of(link);
            // SAFETY: nodes in the tree are alive.
            let t = unsafe { tree_node.as_ref() };
            if key != t.key {
                return if key < t.key { Step::Left } else { Step::Right };
            }
            let Some(tree_page) = t.folio() else {
                return Step::Stop(tree_node);
            };
            // Equal contents go right: duplicates (max_page_sharing) stay
            // next to each other in order.
            if page::compare(kpage, &tree_page) < 0 {
                Step::Left
            } else {
                Step::Right
            }
        };
        loop {
            // SAFETY: alive and in no tree, by the safety requirements; a
            // node stays in its box, in place, until freed after unlinking.
            let stale = unsafe { self.stable_root(tree).insert(&node.as_ref().rb, step) };
            if let Some(stale) = stale {
                // Stale: remove it, then descend again.
                self.remove_node(stale);
                continue;
            }
            // SAFETY: just linked.
            match Self::group_size(unsafe { node.as_ref() }) {
                1 => {}
                2 => {
                    self.counters.chains += 1;
                    self.counters.dups += 2;
                }
                _ => self.counters.dups += 1,
            }
            return;
        }
    }

    /// Counts `node` out of its chain and unlinks it from its tree.
    pub(super) fn unlink_node(&mut self, node: &StableNode) {
        let (chains, dups) = match Self::group_size(node) {
            1 => (0, 0),
            2 => (1, 2),
            _ => (0, 1),
        };
        // The counts follow from the tree's order; a mismatch is a bug to
        // report, not a reason to panic (a Rust overflow) in the kernel.
        match (
            self.counters.chains.checked_sub(chains),
            self.counters.dups.checked_sub(dups),
        ) {
            (Some(c), Some(d)) => (self.counters.chains, self.counters.dups) = (c, d),
            _ => {
                // SAFETY: a constant NUL-terminated message.
                unsafe {
                    bindings::rust_ksm_warn_once(
                        c_str!("stable_node_chains/dups count mismatch").as_char_ptr(),
                    )
                };
                self.counters.chains = self.counters.chains.saturating_sub(chains);
                self.counters.dups = self.counters.dups.saturating_sub(dups);
            }
        }
        // SAFETY: the node is linked in that tree.
        unsafe { self.stable_root(node.tree()).erase(&node.rb) };
    }

    /// Room in `node`'s item list for `n` more mappings, so that as many
    /// [`Self::stable_append`]s grow it at most once (adoption knows them
    /// all up front; the allocator is most of what a handover costs on a
    /// debug kernel).  A failure is no error: the appends grow it then.
    ///
    /// # Safety
    ///
    /// The node's folio is locked.
    pub(crate) unsafe fn stable_reserve(&mut self, node: NonNull<StableNode>, n: usize) {
        // SAFETY: scan lock and folio lock held.
        let items = unsafe { &mut *node.as_ref().items.get() };
        let _ = items.reserve(n, GFP_KERNEL);
    }

    /// stable_tree_append(): `item` now maps `node`'s page.
    ///
    /// # Safety
    ///
    /// The node's folio is locked; `item` is the scan state's (in its mm's
    /// list, or adopted and not filed yet).  The item keeps `anon_vma`'s
    /// reference (put if the append fails).
    pub(crate) unsafe fn stable_append(
        &mut self,
        item: &mut RmapItem,
        node: NonNull<StableNode>,
        anon_vma: AnonVmaRef,
        index: usize,
    ) -> Result {
        // SAFETY: scan lock and folio lock held.
        let items = unsafe { &mut *node.as_ref().items.get() };
        items.push(NonNull::from(&mut *item), GFP_KERNEL)?;
        // SAFETY: alive (its folio is locked).
        let tree = unsafe { node.as_ref() }.tree();
        self.count_mapping(tree, items.len() == 1, true);
        // SAFETY: the item's mm is allocated.
        unsafe { (*item.mm.as_ptr()).__bindgen_anon_1.ksm_merging_pages += 1 };
        // Under the folio lock, as the walk reads it (the item is listed
        // already, but the walk cannot look before we unlock).
        item.state = ItemState::Stable {
            node,
            rmap: StableRmap { anon_vma, index },
        };
        Ok(())
    }
}
