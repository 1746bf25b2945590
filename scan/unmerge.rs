// SPDX-License-Identifier: GPL-2.0

//! Unmerging everything (`run=2`, unload): every registered mm's
//! mergeable VMAs, then what the rmap walk still finds of each stable node.
//!
//! Two passes, and only then the nodes go:
//!
//! 1. every registered mm's mergeable VMAs (`merge::unmerge`, the batched
//!    range walk);
//! 2. every stable node's remaining mappings, one at a time: the rmap walk
//!    (folio locked) finds a VMA that really maps the page
//!    (`page_vma_mapped_walk()`), then the folio is unlocked and that
//!    address unshared under the mmap lock.  This finds mms that never
//!    registered (`ksm_fork()` is best effort: a child whose registration
//!    failed maps the parent's KSM pages) and mms registered behind the
//!    cursor.
//!
//! Nothing on this path allocates.  Nodes whose page is no longer mapped
//! are then removed (their folios keep `PAGE_MAPPING_KSM` alone: a swap-in
//! copies them); a node whose page is still mapped stays, with its items,
//! so the page stays tracked (counted, reclaimable, migratable).  `run=2`
//! stops at a signal with `-ERESTARTSYS` (or `-EBUSY` if a page could not
//! be unmerged), keeping every such node, and a later `run=2` finishes.
//! Unload hands every page to the built-in KSM first (`handover.rs`) and
//! unmerges only what that left (node pass alone); it ignores signals and
//! retries a failing unmerge for five seconds; only then does it clear the
//! node of a page still mapped, with an `INVARIANT:` error in the log
//! (which fails any test run).

#![deny(unsafe_code)]

use super::{MmRegistry, ScanState, Stats};
use crate::kmm;
use crate::merge::{self, unmerge};
use crate::rmap::walk;
use crate::tree::{StableNode, Trees};
use core::ptr::{self, NonNull};
use kernel::prelude::*;
use kernel::sync::Mutex;

/// How [`ScanState::unmerge_all`] runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unmerge {
    /// `run=2`: a signal stops it.
    Interruptible,
    /// Unload: signals are ignored, failures retried by the caller.
    Uninterruptible,
    /// Unload, last round: nodes whose pages are still mapped go too.
    Orphan,
}

/// Breaks the mappings of `node`'s page one at a time: each is found by
/// the rmap walk (folio locked), then unshared (folio unlocked, mmap lock
/// held), until the page is mapped nowhere.
pub(super) fn unmerge_node(
    trees: &mut Trees,
    node: NonNull<StableNode>,
    interruptible: bool,
) -> Result {
    let mut last = (ptr::null_mut(), 0);
    loop {
        // Stale (removed by get_folio()) or unmapped: done.
        let Some(kpage) = trees.get_folio_locked(node) else {
            return Ok(());
        };
        // The first VMA that really maps the page (the walk visits every
        // VMA covering its index); its mm grabbed before the anon_vma lock
        // is dropped.
        let mut found = None;
        walk::walk_locked(&kpage, |vma, addr| {
            if !vma.maps(&kpage, addr) {
                return false;
            }
            found = Some((vma.grab_mm(), addr));
            true
        });
        drop(kpage);
        let Some((mm, addr)) = found else {
            return Ok(());
        };
        if interruptible && kmm::signal_pending() {
            return Err(ERESTARTSYS);
        }
        kmm::cond_resched();
        let here = (mm.as_ptr(), addr);
        let Some(users) = mm.users() else {
            // Exiting: exit_mmap() is about to unmap it.
            continue;
        };
        let lock = users.read_lock();
        // Any VMA: a KSM page can outlive VM_MERGEABLE only through a bug,
        // but even then it must not outlive the module.
        let Some(vma) = lock.vma(addr) else {
            // Unmapped meanwhile: look again.
            continue;
        };
        merge::break_ksm(vma, addr)?;
        if here == last {
            // The same mapping twice: the fault cannot unshare it.
            return Err(EBUSY);
        }
        last = here;
    }
}

impl ScanState {
    /// Unmerges everything (`run=2`, unload) and, if that leaves no KSM
    /// page mapped, drops every item and stable node.
    ///
    /// First every registered mm's mergeable VMAs are unmerged (batched
    /// range walks), then every stable node's remaining mappings, found by
    /// the rmap walk: mms that never registered (a child whose registration
    /// failed at fork) or registered behind the cursor.  Nothing here
    /// allocates, so only a signal (`how == Unmerge::Interruptible`) or a
    /// failed unsharing fault can stop it; then, or if a KSM page is still
    /// mapped at the end, the error is returned and every node whose page
    /// is mapped stays, with its items: the pages stay tracked, and a later
    /// `run=2` finishes the job.
    pub(crate) fn unmerge_all(
        &mut self,
        registry: &Mutex<MmRegistry>,
        stats: &Stats,
        how: Unmerge,
    ) -> Result {
        let result = self.unmerge_mappings(registry, how);
        // Whatever happened, drop the nodes whose pages are gone.
        let busy = self.trees.remove_unmapped_nodes(how == Unmerge::Orphan);
        let result = result.and(if busy == 0 || how == Unmerge::Orphan {
            Ok(())
        } else {
            Err(EBUSY)
        });
        if result.is_ok() {
            loop {
                let Some(key) = self.mms.keys().next().copied() else {
                    break;
                };
                self.drop_mm(key);
            }
            self.trees.new_scan();
            // Every node went above (or, unloading, is left to the pages).
            let _ = self.trees.free_idle_domains();
            self.mm_key = 0;
            self.rewind();
        }
        self.publish(stats);
        result
    }

    /// The unmerging part of [`Self::unmerge_all`].
    pub(super) fn unmerge_mappings(
        &mut self,
        registry: &Mutex<MmRegistry>,
        how: Unmerge,
    ) -> Result {
        let interruptible = how == Unmerge::Interruptible;
        let mut key = 0;
        // At unload the pages were handed to the built-in KSM first
        // (`ScanState::hand_back`): the VMAs map those, which must stay
        // merged, and KSM zero pages, which are nobody's to take back.
        // What is left is in our nodes, which the node pass finds.
        #[allow(clippy::while_immutable_condition)] // Left by `break`.
        while interruptible {
            // One mm at a time, by key: no snapshot to allocate.  (Not a
            // `while let`: the registry guard must go before the walk.)
            let Some((k, mm)) = registry.lock().at_or_after(key) else {
                break;
            };
            key = k + 1;
            let Some(users) = mm.users() else {
                continue;
            };
            let lock = users.read_lock();
            let mut addr = 0;
            while let Some(vma) = lock.find_vma(addr) {
                if vma.vm_mergeable() {
                    let r = unmerge::unmerge_range(vma, vma.start(), vma.end(), interruptible);
                    if interruptible {
                        r?;
                    }
                    // At unload a failed fault is retried by the node pass.
                }
                addr = vma.end();
            }
        }
        self.trees.for_each_node(|trees, node| {
            let r = unmerge_node(trees, node, interruptible);
            if interruptible {
                r
            } else {
                // At unload go on with the other nodes: what stays mapped
                // is counted by remove_unmapped_nodes().
                Ok(())
            }
        })
    }
}
