// SPDX-License-Identifier: GPL-2.0

//! Re-homing: keeping every process's KSM pages in its merge domain.
//!
//! A process changes domain when it moves to another cgroup or its owner
//! changes uid, and a child forked into another cgroup (`CLONE_INTO_CGROUP`)
//! starts out mapping its parent's KSM pages.  Any forked child's mm is
//! registered before the child joins its cgroup (`cgroup_post_fork()`): it
//! is homed only once fork has woken the child, at the first batch after
//! (see `OwnerKey::Forking`), or it would be homed in the root cgroup's
//! domain and lose its parent's KSM pages.  The core calls no engine hook
//! for any of these, so at the start of every batch (with `merge_domain`
//! other than `global`) the scanner looks up the domain of every registered
//! mm and re-homes those whose domain is not the one it has them in, and the
//! ones registered since it last looked:
//!
//! - their items leave every tree (the pages are looked at afresh as the
//!   scanner meets them), so no page of another domain merges with them
//!   through the old domain's unstable or stable tree;
//! - every KSM page they map whose node is in another domain's trees gets
//!   a private copy (KSM zero pages stay: their contents are public).
//!
//! An owner change (`mm_update_next_owner()`, when the owner exits while
//! others use the mm) is caught by the exit probe (`owner_watch.rs`).
//!
//! So a process shares no page with another domain from at most one batch
//! (`sleep_millisecs` plus the batch) after the change, where waiting for
//! the scanner to come round to it took up to a full scan; a cgroup move
//! or fork into a cgroup wakes the thread at once (`domain_events.rs`).
//! A check costs a domain lookup per registered mm (a few pointer loads
//! under RCU) and a page-table walk per new or moved one.  With `user` it
//! runs every batch (a uid change has no event); with `cgroup` and the
//! events attached, only in a batch after an event or a new registration.

#![deny(unsafe_code)]

use super::owner_watch::{OwnerSet, OWNERS};
use super::{free_all, home_of, DomainMode, MmRegistry, ScanState};
use crate::kmm::walk::Entry;
use crate::kmm::MmGrab;
use crate::merge::unmerge;
use kernel::sync::Mutex;

impl ScanState {
    /// Re-homes each registered mm that is not (or not known to be) in the
    /// domain it belongs to now; see the module head.
    pub(super) fn check_domains(&mut self, registry: &Mutex<MmRegistry>, all: bool) {
        if self.domain_mode == DomainMode::Global {
            return;
        }
        let inserted = registry.lock().inserted();
        if self.domain_mode == DomainMode::Cgroup
            && !all
            && inserted == self.domains_checked
            && !self.domains_pending
        {
            // No event, no new mm, none waiting: nobody changed cgroup.
            return;
        }
        self.domains_checked = inserted;
        self.domains_pending = false;
        // The owners met: the exit probe's filter is rebuilt from them.
        let mut owners = OwnerSet::new();
        let mut next = 0;
        loop {
            // One mm at a time, by key: no snapshot to allocate.
            let Some((key, mm)) = registry.lock().at_or_after(next) else {
                break;
            };
            next = key + 1;
            let Some(now) = home_of(self.domain_mode, self.domain_depth, &mm, Some(&mut owners))
            else {
                // A child whose fork has not finished: it is not in its
                // cgroup yet (homed now, it would land in the root's
                // domain and lose its parent's KSM pages).  Next batch.
                self.domains_pending = true;
                continue;
            };
            let known = self.mms.get(&key).is_some_and(|s| {
                // Regrouped since: no KSM page is left (the knobs refuse a
                // regroup while one is), and the scanner looks it up anew.
                s.epoch != self.trees.domain_epoch || s.home == now
            });
            if !known {
                self.rehome(key, &mm, now);
            }
        }
        if self.domain_mode == DomainMode::Cgroup {
            OWNERS.replace(&owners);
        }
    }

    /// Moves the mm at `key` into domain `now` (None: no domain, nothing
    /// of it merges): its items out of every tree, its KSM pages of other
    /// domains unshared.
    fn rehome(&mut self, key: usize, mm: &MmGrab, now: Option<u64>) {
        let epoch = self.trees.domain_epoch;
        if let Some(s) = self.mms.get_mut(&key) {
            free_all(&mut self.trees, &mut s.items);
            if let (Some(slot), true) = (s.domain.take(), s.epoch == epoch) {
                self.trees.domain_put(slot);
            }
        } else if self.add_mm(key, mm).is_err() {
            // The scanner looks it up when it gets there.
            return;
        }
        if key == self.mm_key {
            // The cursor was in the items just freed.
            self.rewind();
        }
        let slot = now.and_then(|k| self.trees.domain_get(k).ok());
        if let Some(s) = self.mms.get_mut(&key) {
            (s.domain, s.epoch, s.home) = (slot, epoch, now);
        }

        let Some(users) = mm.users() else {
            // Exiting: nothing to unshare.
            return;
        };
        let lock = users.read_lock();
        let trees = &self.trees;
        let foreign = |entry: &Entry<'_>| match entry {
            Entry::KsmZero => false,
            // Its node cannot be seen: unshared to be sure (it merges
            // again in its domain).
            Entry::KsmMigrating => true,
            Entry::Pte(page) | Entry::HugePmd(page) => {
                now.is_none() || trees.page_domain_key(page) != now
            }
        };
        let mut addr = 0;
        while let Some(vma) = lock.find_vma(addr) {
            if vma.vm_mergeable() {
                // A page that cannot be unshared (out of memory) stays
                // until the scanner meets it (ScanState::cmp_and_merge).
                let _ = unmerge::unmerge_range_where(vma, vma.start(), vma.end(), false, &foreign);
            }
            addr = vma.end();
        }
    }
}
