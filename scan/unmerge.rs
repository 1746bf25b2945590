// SPDX-License-Identifier: GPL-2.0

//! Unmerging everything (`run=2`, unload): every registered mm's
//! mergeable VMAs, then what the rmap walk still finds of each stable node.

use super::{free_all, MmRegistry, ScanState, Stats};
use crate::bindings;
use crate::kmm::{self, MmGrab};
use crate::merge::{self, unmerge};
use crate::tree::{StableNode, Trees};
use core::ptr::{self, NonNull};
use kernel::ffi::{c_ulong, c_void};
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

/// One place a folio is mapped, found by [`find_mapping_one`].
pub(super) struct Mapping {
    mm: Option<MmGrab>,
    addr: usize,
}

/// rmap_one callback of [`unmerge_node`]: stop at the first VMA that
/// really maps the folio (the walk visits every VMA covering its index).
///
/// # Safety
///
/// Called by the rmap walk with the folio locked, `vma` stable (anon_vma
/// lock held) and `arg` a [`Mapping`].
pub(super) unsafe extern "C" fn find_mapping_one(
    folio: *mut bindings::folio,
    vma: *mut bindings::vm_area_struct,
    addr: c_ulong,
    arg: *mut c_void,
) -> bool {
    let mut pvmw = core::mem::MaybeUninit::<bindings::page_vma_mapped_walk>::zeroed();
    // SAFETY: as the rmap walk guarantees; `pvmw` is ours and finished
    // before we return.
    let mapped = unsafe {
        bindings::rust_ksm_pvmw_init(pvmw.as_mut_ptr(), folio, vma, addr);
        let mapped = bindings::page_vma_mapped_walk(pvmw.as_mut_ptr());
        if mapped {
            bindings::rust_ksm_pvmw_done(pvmw.as_mut_ptr());
        }
        mapped
    };
    if !mapped {
        return true;
    }
    // SAFETY: `arg` is the caller's `Mapping`; the VMA (so its mm) is
    // stable, and the mm is grabbed before the anon_vma lock is dropped.
    unsafe {
        let found = &mut *arg.cast::<Mapping>();
        found.mm = Some(MmGrab::new(NonNull::new_unchecked((*vma).vm_mm)));
        found.addr = addr;
    }
    false
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
        let mut found = Mapping { mm: None, addr: 0 };
        // SAFETY: all-zero is a valid (empty) walk control.
        let mut rwc: bindings::rmap_walk_control = unsafe { core::mem::zeroed() };
        rwc.arg = ptr::from_mut(&mut found).cast::<c_void>();
        rwc.rmap_one = Some(find_mapping_one);
        // SAFETY: our KSM folio, locked; `rwc` and `found` outlive the walk.
        unsafe { crate::rmap::walk::rmap_walk(kpage.folio(), &mut rwc) };
        drop(kpage);
        let Some(mm) = found.mm else {
            return Ok(());
        };
        if interruptible && kmm::signal_pending() {
            return Err(ERESTARTSYS);
        }
        kmm::cond_resched();
        let here = (mm.as_ptr(), found.addr);
        let Some(users) = mm.users() else {
            // Exiting: exit_mmap() is about to unmap it.
            continue;
        };
        let lock = users.read_lock();
        // Any VMA: a KSM page can outlive VM_MERGEABLE only through a bug,
        // but even then it must not outlive the module.
        let Some(vma) = lock.vma(found.addr) else {
            // Unmapped meanwhile: look again.
            continue;
        };
        merge::break_ksm(vma, found.addr)?;
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
                if let Some(mut mm) = self.mms.remove(&key) {
                    free_all(&mut self.trees, &mut mm.items);
                }
            }
            self.trees.new_scan();
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
        loop {
            // One mm at a time, by key: no snapshot to allocate.
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
                if vma.flags() & bindings::VM_MERGEABLE as c_ulong != 0 {
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
