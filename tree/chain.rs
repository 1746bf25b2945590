// SPDX-License-Identifier: GPL-2.0

//! Chains of dups: nodes with the same contents, one per `max_page_sharing`
//! mappings, side by side in the stable tree; pruning their stale members
//! (`stable_node_chains_prune_millisecs`).
//!
//! Searches land on the newest dup of a chain (see the module head of
//! `tree`), so an older dup whose page went away unnoticed (its last
//! mapping one the scanner had no item for, a forked child's) would
//! linger; a search that lands on a chain not pruned for
//! `stable_node_chains_prune_millisecs` looks at all its dups and drops the
//! stale ones.

use super::Trees;
use crate::kmm::page::PageRef;
use crate::kmm::rbtree::RbLink;
use crate::rmap::StableNode;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

/// A step to a neighbour in tree order: [`RbLink::prev`] or [`RbLink::next`].
type Neighbour = unsafe fn(&RbLink) -> Option<NonNull<RbLink>>;

/// Both ways along the tree.
const NEIGHBOURS: [Neighbour; 2] = [RbLink::prev, RbLink::next];

impl Trees {
    /// How many nodes (this one included) have this node's contents.
    pub(super) fn group_size(node: &StableNode) -> usize {
        let mut size = 1;
        for step in NEIGHBOURS {
            // SAFETY: the node is linked in our tree (scan lock held), which
            // does not change during the count.
            let mut at = unsafe { step(&node.rb) };
            while let Some(link) = at {
                // SAFETY: nodes in the tree are alive.
                let dup = unsafe { Self::node_of(link).as_ref() };
                if !dup.same_contents(node) {
                    break;
                }
                size += 1;
                // SAFETY: linked, as above.
                at = unsafe { step(&dup.rb) };
            }
        }
        size
    }

    /// If `node` (live) is the newest dup of a chain that was not pruned
    /// for `stable_node_chains_prune_millisecs`, looks at every dup of the
    /// chain, removing the stale ones (as upstream's stable_node_dup()
    /// does every so often).  Searches land on the newest dup, so without
    /// this a dup in the middle whose page went away unnoticed (its last
    /// mapping was not one the scanner had an item for, a forked child's)
    /// would stay in the tree and in `stable_node_dups`.
    ///
    /// Every search that finds a node comes here, so the clock is
    /// `jiffies` (as upstream's), not `ktime_get()`: that was 1% of the CPU
    /// of a merge (`make bench`'s profile).
    pub(super) fn prune_chain(&mut self, node: NonNull<StableNode>, prune_jiffies: usize) {
        let now = crate::kmm::jiffies();
        // SAFETY: nodes in the tree are alive (scan lock held).
        let n = unsafe { node.as_ref() };
        if now.wrapping_sub(n.pruned_at.load(Ordering::Relaxed)) < prune_jiffies {
            return;
        }
        n.pruned_at.store(now, Ordering::Relaxed);
        // The newest dup is the last of its chain.
        // SAFETY: `node` is in the tree.
        let mut at = unsafe { n.rb.prev() };
        while let Some(link) = at {
            let dup = Self::node_of(link);
            // SAFETY: nodes in the tree are alive.
            let dup_ref = unsafe { dup.as_ref() };
            if !dup_ref.same_contents(n) {
                break;
            }
            // SAFETY: linked; step on before a stale `dup` goes away.
            at = unsafe { dup_ref.rb.prev() };
            // Removes `dup` if stale.
            drop(self.get_folio(dup));
        }
    }

    pub(super) fn full(node: NonNull<StableNode>, max_sharing: usize) -> bool {
        // SAFETY: scan lock held.
        unsafe { node.as_ref().items() }.len() >= max_sharing
    }

    /// Among the equal nodes around `node` (duplicates sit next to each
    /// other in order: they are inserted beside an equal one), one not full.
    /// Neighbours are told equal by key and hash, without reading their
    /// pages: the merge compares the chosen page in full anyway.
    pub(super) fn equal_with_room(
        &mut self,
        node: NonNull<StableNode>,
        tree_page: PageRef,
        max_sharing: usize,
    ) -> Option<(NonNull<StableNode>, PageRef)> {
        if !Self::full(node, max_sharing) {
            return Some((node, tree_page));
        }
        drop(tree_page);
        // SAFETY: nodes in the tree are alive.
        let n = unsafe { node.as_ref() };
        for step in NEIGHBOURS {
            // SAFETY: `node` is in the tree.
            let mut at = unsafe { step(&n.rb) };
            while let Some(link) = at {
                let dup = Self::node_of(link);
                // SAFETY: nodes in the tree are alive.
                let dup_ref = unsafe { dup.as_ref() };
                if !dup_ref.same_contents(n) {
                    break;
                }
                // SAFETY: linked; step on before a stale `dup` goes away.
                at = unsafe { step(&dup_ref.rb) };
                if Self::full(dup, max_sharing) {
                    continue;
                }
                if let Some(dup_page) = self.get_folio(dup) {
                    return Some((dup, dup_page));
                }
            }
        }
        None
    }
}
