// SPDX-License-Identifier: GPL-2.0

//! Walks over every stable node: dropping stale nodes (`merge_across_nodes`
//! changes), moving nodes to their page's NUMA node's tree after migration,
//! memory going offline, and the teardown of `run=2` and unload.

use super::Trees;
use crate::bindings;
use crate::kmm::rbtree::RbRoot;
use crate::rmap::StableNode;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;
use kernel::ffi::c_void;
use kernel::prelude::*;

impl Trees {
    /// Removes every stale stable node; true if none is left.
    pub(super) fn drop_stale_nodes(&mut self) -> bool {
        // get_folio() removes a stale node.
        let _ = self.for_each_node(|trees, node| {
            drop(trees.get_folio(node));
            Ok(())
        });
        self.stable_roots().all(RbRoot::is_empty)
    }

    /// With `merge_across_nodes=0`, after a migration of one of our KSM
    /// pages: moves each stable node whose page is now on another NUMA node
    /// into that node's tree, so its pages merge with it from now on (as
    /// upstream does through its migrate_nodes list).  Called as a pass
    /// begins.
    pub(crate) fn rehome_migrated(&mut self) {
        if self.across_nodes() || !StableNode::take_migrated() {
            return;
        }
        let _ = self.for_each_node(|trees, node| {
            // A stale node is removed.
            let Some(kpage) = trees.get_folio(node) else {
                return Ok(());
            };
            // SAFETY: nodes in the tree are alive.
            let from = unsafe { node.as_ref() }.tree();
            // The same domain's tree for the page's node now.
            let to = from - from % trees.per_domain + Self::nid_of(false, &kpage);
            if to != from {
                // SAFETY: as above.
                trees.unlink_node(unsafe { node.as_ref() });
                // SAFETY: as above; the node is in no tree now.  (A node
                // moved to a later tree is met again there, and stays.)
                unsafe {
                    node.as_ref().tree.store(to as u16, Ordering::Relaxed);
                    trees.link_node(node, &kpage);
                }
            }
            Ok(())
        });
    }

    /// Calls `f` on every stable node, in tree order.  `f` may remove the
    /// node it is given (and no other); an error stops the walk.
    pub(crate) fn for_each_node(
        &mut self,
        f: impl FnMut(&mut Self, NonNull<StableNode>) -> Result,
    ) -> Result {
        self.for_each_node_in(0..self.stable.len(), f)
    }

    /// [`Self::for_each_node`] over the stable trees `trees` only.
    pub(super) fn for_each_node_in(
        &mut self,
        trees: core::ops::Range<usize>,
        mut f: impl FnMut(&mut Self, NonNull<StableNode>) -> Result,
    ) -> Result {
        for tree in trees {
            let mut next = self.stable_root(tree).first();
            while let Some(link) = next {
                // SAFETY: `link` is linked (nodes in the tree are alive);
                // its successor stays linked while `f` removes at most it.
                next = unsafe { link.as_ref().next() };
                f(self, Self::node_of(link))?;
            }
        }
        Ok(())
    }

    /// ksm_check_stable_tree(): memory `[start, end)` (pfns) went offline.
    /// A node whose pfn lies there is stale, because a live KSM page there
    /// was migrated away first, moving its node's pfn; and the memmap there
    /// may be poisoned or gone, so the node goes by its pfn alone.
    pub(crate) fn remove_nodes_in(&mut self, start: usize, end: usize) {
        let _ = self.for_each_node(|trees, node| {
            // SAFETY: nodes in the tree are alive.
            if (start..end).contains(&unsafe { node.as_ref() }.pfn()) {
                trees.remove_node(node);
            }
            Ok(())
        });
    }

    /// remove_all_stable_nodes() (`run=2`, unload): removes every node whose
    /// folio is no longer mapped.  Such a folio (only in the swap cache, or
    /// on its way to being freed) keeps `PAGE_MAPPING_KSM` alone, which the
    /// core treats as a KSM page that belongs to nobody: a swap-in copies
    /// it.  A node whose folio is still mapped stays, with its items, so
    /// that the rmap walk still finds every mapping and a later unmerge can
    /// break them (as upstream's remove_stable_node() returns `EBUSY`).
    /// Returns how many nodes were still mapped.
    ///
    /// `orphan` is for unload alone, when unmerging failed for good: the
    /// module is going away, so every node goes, and a mapped folio keeps
    /// a KSM page that nothing tracks rather than a pointer into freed
    /// memory.
    pub(crate) fn remove_unmapped_nodes(&mut self, orphan: bool) -> usize {
        let mut busy = 0;
        let _ = self.for_each_node(|trees, node| {
            // Stale: get_folio() removed it.
            let Some(kpage) = trees.get_folio_locked(node) else {
                return Ok(());
            };
            let folio = kpage.folio();
            // SAFETY: locked and referenced.  Under the folio lock no new
            // mapping can appear (fork needs the page mapped already; the
            // scanner is us), so an unmapped folio stays unmapped.
            unsafe {
                if bindings::rust_ksm_folio_mapped(folio) {
                    busy += 1;
                    if !orphan {
                        return Ok(());
                    }
                }
                bindings::rust_ksm_folio_set_mapping(
                    folio,
                    bindings::PAGE_MAPPING_KSM as usize as *mut c_void,
                );
            }
            drop(kpage);
            trees.remove_node(node);
            Ok(())
        });
        busy
    }
}
