// SPDX-License-Identifier: GPL-2.0

//! The content-ordered trees: unstable (rmap items whose pages did not change
//! for a scan) and stable (KSM pages, one [`StableNode`] each).
//!
//! They are intrusive red-black trees ([`crate::kmm::rbtree`]), because their
//! order is page content, which is read (and for the unstable tree may even
//! change) during the search: not a fixed `Ord` that `kernel::rbtree` could
//! use.
//!
//! The unstable tree is ordered by (checksum, contents): the checksum an
//! item had when inserted does not change while it is there, so a descent
//! reads another process's page only on a checksum match.  The stable tree
//! is ordered by (key, contents), where the key is xxhash of 256 bytes
//! sampled across the page (eight 32-byte runs, first and last included,
//! `kmm::page::key`).  The search trusts the key: the last node with the
//! page's key is the candidate, and the merge, which compares the pages in
//! full after write-protecting, decides; only if the contents differ does a
//! second, comparing descent run.  So a page that merges into the stable
//! tree costs a 256-byte hash and one page compare, where upstream pays a
//! compare per node on the descent plus the compare in the merge.  The
//! same key, truncated, is the unstable tree's checksum (the gate that keeps
//! pages changing between scans out, and the first part of its order), so a
//! page is hashed in full only when it becomes a KSM page (the node's hash
//! below) or may be all zeros (`use_zero_pages`).
//!
//! Nodes also keep their full hash: equal nodes (one per `max_page_sharing`
//! mappings) are inserted next to each other, so a run of equal (key, hash)
//! is a chain of dups (`chain.rs`), and a full node's neighbours are tried
//! by it.  New dups go right of their equals and the descent goes on right
//! past an equal node, so it lands on the newest dup, the one with room: a
//! search stays O(log n) however long a chain grows (a first version
//! stopped at the first equal node and walked the chain from there, O(dups)
//! per page: 400 MiB of one pattern is 400 dups).
//!
//! With `merge_across_nodes=0` each NUMA node has its own stable and
//! unstable tree (one pair for all otherwise), and each merge domain
//! (`domain.rs`) its own set of these; nodes and unstable items remember
//! their tree by index.  A page
//! that migrated to another node is not merged with in its old tree; the
//! migration hook raises a flag, and as the next pass begins the scanner
//! moves every stable node whose page changed node into that node's tree
//! (`Trees::rehome_migrated`; upstream reaches the same through its
//! migrate_nodes list).

mod chain;
mod domain;
mod stable;
mod sweep;
mod unstable;

use crate::bindings;
use crate::kmm::rbtree::{RbLink, RbRoot};
pub(crate) use crate::rmap::StableNode;
use crate::rmap::{self, ItemState, RmapItem};
use core::num::NonZeroUsize;
use core::ptr::{self, NonNull};
use kernel::prelude::*;

pub(crate) use domain::Domain;

/// How [`Trees::stable_search`] tells a node's contents equal to a page's.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Search {
    /// By the sampled key alone; the merge verifies.
    Fast,
    /// By comparing the pages.
    Exact,
}

/// The knobs a stable tree search goes by.
pub(crate) struct SearchLimits {
    /// `max_page_sharing`: mappings a node takes.
    pub(crate) max_sharing: usize,
    /// `stable_node_chains_prune_millisecs`, in jiffies.
    pub(crate) chains_prune_jiffies: usize,
}

/// Global merge counters (sysfs).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) pages_shared: usize,
    pub(crate) pages_sharing: usize,
    pub(crate) pages_unshared: usize,
    pub(crate) rmap_items: usize,
    pub(crate) stable_nodes: usize,
    /// Groups of more than one node with the same contents (a node per
    /// `max_page_sharing` mappings), and the nodes in them.
    pub(crate) chains: usize,
    pub(crate) dups: usize,
}

/// Both trees and their counters; owned by the scan state, so only the
/// scan-lock holder touches them.
pub(crate) struct Trees {
    /// The stable and unstable trees, by tree index: `per_domain` of each
    /// per merge domain slot (`domains`), one per NUMA node with
    /// `merge_across_nodes=0`, else one (upstream's one_stable_tree /
    /// one_unstable_tree).
    stable: KVec<RbRoot>,
    unstable: KVec<RbRoot>,
    /// `merge_across_nodes`.
    across: bool,
    /// Non-zero, so that dividing a tree index by it cannot panic.
    per_domain: NonZeroUsize,
    /// The merge domains' slots (a free one is None).
    domains: KVec<Option<Domain>>,
    /// The slot the pages being scanned belong to.
    cur_domain: usize,
    /// Changes whenever the slots are reset: an mm's slot taken before is
    /// no longer valid (see `ScanState`).
    pub(crate) domain_epoch: u32,
    /// Scan number; unstable items of older scans are no longer linked.
    pub(crate) seqnr: u32,
    pub(crate) counters: Counters,
    /// Offset of the unstable link inside an `RmapItem`.
    unstable_link_offset: usize,
}

// SAFETY: the trees are only reachable through the scan lock.
unsafe impl Send for Trees {}

/// Offset of `ItemState::Unstable::link` in `RmapItem` (enum field offsets
/// are not available to `offset_of!`, but a type's layout is fixed).
fn unstable_link_offset() -> usize {
    let mut item = RmapItem::new(NonNull::dangling(), 0);
    item.state = ItemState::Unstable {
        link: RbLink::new(),
        seqnr: 0,
        tree: 0,
    };
    match &item.state {
        ItemState::Unstable { link, .. } => {
            ptr::from_ref(link) as usize - ptr::from_ref(&item) as usize
        }
        _ => unreachable!(),
    }
}

impl Trees {
    pub(crate) fn new() -> Self {
        Self {
            stable: KVec::new(),
            unstable: KVec::new(),
            across: true,
            per_domain: NonZeroUsize::MIN,
            domains: KVec::new(),
            cur_domain: 0,
            domain_epoch: 0,
            seqnr: 0,
            counters: Counters::default(),
            unstable_link_offset: unstable_link_offset(),
        }
    }

    /// Whether pages of different NUMA nodes merge (`merge_across_nodes`).
    pub(crate) fn across_nodes(&self) -> bool {
        self.across
    }

    /// merge_across_nodes_store(): one pair of trees for all nodes, or one
    /// per node.  `EBUSY` while any stable node is left once the stale ones
    /// are dropped (a KSM page is still mapped), as upstream.
    pub(crate) fn set_across_nodes(&mut self, across: bool) -> Result {
        if across == self.across {
            return Ok(());
        }
        self.check_no_ksm_pages()?;
        // SAFETY: reads an exported variable, fixed after boot.
        let nodes = unsafe { bindings::rust_ksm_nr_node_ids() } as usize;
        // The unstable items left are unlinked lazily, by their old seqnr.
        let per_domain = if across { 1 } else { nodes };
        self.reset_domains(NonZeroUsize::new(per_domain).unwrap_or(NonZeroUsize::MIN));
        self.across = across;
        Ok(())
    }

    /// A new `merge_domain` grouping: as [`Self::set_across_nodes`], only
    /// with no KSM page left (`EBUSY`).
    pub(crate) fn regroup_domains(&mut self) -> Result {
        self.check_no_ksm_pages()?;
        self.reset_domains(self.per_domain);
        Ok(())
    }

    /// `EBUSY` unless no stable node is left once the stale ones are gone.
    fn check_no_ksm_pages(&mut self) -> Result {
        if self.counters.pages_shared != 0 || !self.drop_stale_nodes() {
            return Err(EBUSY);
        }
        Ok(())
    }

    /// A full scan ended: forget the unstable tree (its items are unlinked
    /// lazily: their `seqnr` is now old).
    pub(crate) fn new_scan(&mut self) {
        for root in self.unstable.iter_mut() {
            root.clear();
        }
        self.seqnr = self.seqnr.wrapping_add(1);
    }

    /// Takes `item` out of whichever tree it is in (remove_rmap_item_from_tree()).
    pub(crate) fn remove_item(&mut self, item: &mut RmapItem) {
        let node = match &item.state {
            ItemState::Volatile => return,
            ItemState::Unstable { link, seqnr, tree } => {
                // Items of an older scan are not linked any more.
                if *seqnr == self.seqnr {
                    // SAFETY: the link is in that unstable tree.
                    unsafe { self.unstable_root(usize::from(*tree)).erase(link) };
                }
                self.counters.pages_unshared -= 1;
                item.state = ItemState::Volatile;
                return;
            }
            ItemState::Stable { node, .. } => *node,
        };
        // If the node is stale, get_folio() removes it, and that takes the
        // item out (with its anon_vma reference) already.
        if let Some(_locked) = self.get_folio_locked(node) {
            // SAFETY: scan lock and folio lock held.
            let items = unsafe { &mut *node.as_ref().items.get() };
            let me = ptr::from_mut(item);
            if let Some(i) = items.iter().position(|p| p.as_ptr() == me) {
                rmap::take_item(items, i);
                // SAFETY: the node is alive (its folio is locked).
                let tree = unsafe { node.as_ref() }.tree();
                self.count_mapping(tree, items.is_empty(), false);
                // SAFETY: the item's mm is allocated.
                unsafe { (*item.mm.as_ptr()).__bindgen_anon_1.ksm_merging_pages -= 1 };
                // Still under the folio lock (the walk reads the state).
                // Dropping the old state puts the anon_vma reference taken
                // at merge.
                item.state = ItemState::Volatile;
            }
        }
    }

    /// Counts a mapping appended to (`added`) or taken from a node of tree
    /// `tree`, which is the node's only one (`only`): `pages_shared` or
    /// `pages_sharing`, globally and in the node's domain.
    pub(super) fn count_mapping(&mut self, tree: usize, only: bool, added: bool) {
        let global = &mut self.counters;
        let (g, d) = match self.domains.get_mut(tree / self.per_domain) {
            Some(Some(d)) if only => (&mut global.pages_shared, Some(&mut d.pages_shared)),
            Some(Some(d)) => (&mut global.pages_sharing, Some(&mut d.pages_sharing)),
            _ if only => (&mut global.pages_shared, None),
            _ => (&mut global.pages_sharing, None),
        };
        for count in Iterator::chain(core::iter::once(g), d) {
            *count = if added { *count + 1 } else { *count - 1 };
        }
    }
}
