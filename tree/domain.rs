// SPDX-License-Identifier: GPL-2.0

//! Merge domains (`merge_domain`): which processes' pages may merge.
//!
//! KSM is a side channel: a process can tell whether another holds a page
//! with given contents by timing a write to its own copy (a merged page
//! takes a copy-on-write fault).  With `merge_domain=global` (the default,
//! upstream's behaviour) every mergeable page may merge with every other;
//! with `user` only pages of processes whose owner has the same uid, with
//! `cgroup` only pages of processes in the same cgroup v2 subtree at depth
//! `merge_domain_depth` (1: one subtree per child of the root, e.g. per
//! tenant or VM).  All-zero pages (`use_zero_pages`) merge with the zero
//! page whatever the domain: their contents are public.
//!
//! A domain is a slot with its own trees, as NUMA nodes have with
//! `merge_across_nodes=0`: tree index = slot * trees per slot + the node's
//! tree within it, so every item and node names its tree as before.  A
//! slot is taken when the first mm of a domain is scanned or re-homed and
//! given back once no mm is in it and its stable trees are empty (stale
//! nodes dropped: see [`Trees::free_idle_domains`]).  A process that
//! changes domain is re-homed by `scan/rehome.rs`; as a backstop the
//! scanner looks the domain up again each time it begins an mm, and a page
//! it finds mapping a KSM page of another domain gets its own copy
//! (`ScanState::cmp_and_merge`).

use super::Trees;
use crate::kmm::rbtree::RbRoot;
use crate::kmm::walk::MappedPage;
use crate::rmap::StableNode;
use core::num::NonZeroUsize;
use kernel::prelude::*;

/// Tree indexes are `u16` in items and nodes.
const MAX_TREES: usize = 1 << 16;

/// One merge domain's slot.
pub(crate) struct Domain {
    /// 0 (global), the owner's uid (user) or the cgroup's id (cgroup).
    pub(crate) key: u64,
    /// The mms the scanner has in it.
    mms: usize,
    /// KSM pages (nodes with mappings) and the mappings beyond the first.
    pub(crate) pages_shared: usize,
    pub(crate) pages_sharing: usize,
}

impl Trees {
    /// The domain slot whose key is `key`, taken once more (a new slot,
    /// with empty trees, if none has it); `ENOSPC` if no tree index is left.
    pub(crate) fn domain_get(&mut self, key: u64) -> Result<usize> {
        let found = self
            .domains
            .iter()
            .position(|d| d.as_ref().is_some_and(|d| d.key == key));
        let slot = match found {
            Some(slot) => slot,
            None => {
                let slot = match self.domains.iter().position(Option::is_none) {
                    Some(slot) => slot,
                    None => {
                        let per = self.per_domain.get();
                        if (self.domains.len() + 1) * per > MAX_TREES {
                            return Err(ENOSPC);
                        }
                        // Reserved first, so that the pushes below cannot
                        // fail half way.
                        self.stable.reserve(per, GFP_KERNEL)?;
                        self.unstable.reserve(per, GFP_KERNEL)?;
                        self.domains.reserve(1, GFP_KERNEL)?;
                        for _ in 0..per {
                            self.stable.push(RbRoot::EMPTY, GFP_KERNEL)?;
                            self.unstable.push(RbRoot::EMPTY, GFP_KERNEL)?;
                        }
                        self.domains.push(None, GFP_KERNEL)?;
                        self.domains.len() - 1
                    }
                };
                // A free slot's trees are empty: the stable ones by the
                // rule that frees it, the unstable ones since the full scan
                // that freed it began anew.
                self.domains[slot] = Some(Domain {
                    key,
                    mms: 0,
                    pages_shared: 0,
                    pages_sharing: 0,
                });
                slot
            }
        };
        if let Some(d) = self.domains[slot].as_mut() {
            d.mms += 1;
        }
        Ok(slot)
    }

    /// The key of domain `slot`, if taken.
    pub(crate) fn domain_key(&self, slot: usize) -> Option<u64> {
        Some(self.domains.get(slot)?.as_ref()?.key)
    }

    /// The key of the domain whose trees hold the stable node of the KSM
    /// page `page` (None if the node is not ours, or its slot is free).
    pub(crate) fn page_domain_key(&self, page: &MappedPage<'_>) -> Option<u64> {
        // SAFETY: `page` is mapped, under its page-table lock, while
        // borrowed (`MappedPage`'s invariant), so its folio is valid.
        let node = unsafe { StableNode::of_mapping(page.mapping()) }?;
        // SAFETY: the node of a mapped KSM folio is alive while the trees
        // are borrowed: only the scan-lock holder, which owns them, frees
        // nodes.
        self.domain_key(unsafe { node.as_ref() }.tree() / self.per_domain)
    }

    /// An mm leaves domain `slot` (taken with [`Self::domain_get`]).
    pub(crate) fn domain_put(&mut self, slot: usize) {
        if let Some(Some(d)) = self.domains.get_mut(slot) {
            d.mms -= 1;
        }
    }

    /// The trees a page of domain `slot` goes in from now on (the scanner
    /// sets it for each mm it scans).
    pub(crate) fn enter_domain(&mut self, slot: usize) {
        self.cur_domain = slot;
    }

    /// Whether `node` is in the current domain's trees.
    pub(crate) fn in_current_domain(&self, node: &StableNode) -> bool {
        node.tree() / self.per_domain == self.cur_domain
    }

    /// The first tree index of the current domain.
    pub(super) fn domain_base(&self) -> usize {
        self.cur_domain * self.per_domain.get()
    }

    /// The domains in use, by slot.
    pub(crate) fn domains(&self) -> impl Iterator<Item = (usize, &Domain)> {
        self.domains
            .iter()
            .enumerate()
            .filter_map(|(slot, d)| Some((slot, d.as_ref()?)))
    }

    /// Gives back the slots no mm is in, once their stable trees are empty
    /// (their unstable trees are: cleared at the last full scan's end, and
    /// an mm's items inserted since were taken out when it left).  A node
    /// left in such a slot is usually stale, its page freed after its last
    /// item went (an exiting mm is unregistered before its pages are
    /// unmapped), and no scan of the domain will come to find it so: such
    /// nodes are dropped here.  True if a slot stays for a node whose page
    /// is still there: the caller tries again later.
    pub(crate) fn free_idle_domains(&mut self) -> bool {
        let mut waiting = false;
        for slot in 0..self.domains.len() {
            if !self.domains[slot].as_ref().is_some_and(|d| d.mms == 0) {
                continue;
            }
            let per = self.per_domain.get();
            let trees = slot * per..(slot + 1) * per;
            // get_folio() removes a stale node.
            let _ = self.for_each_node_in(trees.clone(), |trees, node| {
                drop(trees.get_folio(node));
                Ok(())
            });
            if self.stable[trees].iter().all(RbRoot::is_empty) {
                self.domains[slot] = None;
            } else {
                waiting = true;
            }
        }
        waiting
    }

    /// A new grouping (`merge_domain`, `merge_domain_depth`) or a new tree
    /// layout (`merge_across_nodes`): every slot and tree goes; the scanner
    /// looks every mm's domain up again.  The caller made sure no stable
    /// node is left.
    pub(super) fn reset_domains(&mut self, per_domain: NonZeroUsize) {
        self.new_scan();
        self.domains = KVec::new();
        self.stable = KVec::new();
        self.unstable = KVec::new();
        self.per_domain = per_domain;
        self.cur_domain = 0;
        self.domain_epoch = self.domain_epoch.wrapping_add(1);
    }
}
