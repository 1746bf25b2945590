// SPDX-License-Identifier: GPL-2.0

//! Changing engines without unmerging: the pages the built-in KSM merged
//! become ours at registration ([`ScanState::adopt`], then
//! [`ScanState::file_adopted`]), and ours become the built-in's before we
//! unregister ([`ScanState::hand_back`]).
//!
//! Unmerging on every change of engine gave back at once all the memory
//! merging saved (a copy per mapping), which is the memory spike that
//! keeps hosts relying on KSM from upgrading or switching an engine.  A
//! page changes hands under its folio lock, which every rmap walk,
//! migration and swap-in of it holds, and the core sends those to the
//! engine whose node the folio points to (see `kmm/handback.rs`): no
//! walker can see half of a handover.
//!
//! Adopting: the core hands over a locked KSM folio and the mappings the
//! built-in's rmap items record, each with its linear page index.  The
//! page gets a node in the stable tree of the (global) merge domain, and
//! each mapping in a registered mm an item, kept aside (`adopted`) until
//! the core has offered every page, then filed into its mm's list in
//! address order in one pass per mm ([`ScanState::file_adopted`]): sorting
//! once costs O(n log n) where inserting each into a list would cost O(n)
//! per item.  With a `merge_domain` other than global (not the case at
//! load) the page is refused, so the built-in keeps it.
//!
//! Handing back: each node's page goes to the built-in KSM with its
//! mappings (`ksm_handback_folio()`), and the node goes; its items turn
//! volatile and are freed with the rest of the state.

use super::{count_new_item, free_item, DomainMode, MmRegistry, ScanState, Stats};
use crate::kmm::handback::{self, Handback, Mapping};
use crate::kmm::{page, AnonVmaRef, LockedPage, PageRef};
use crate::rmap::{RmapItem, StableNode};
use core::ptr::NonNull;
use kernel::prelude::*;
use kernel::sync::Mutex;

/// Items of adopted pages, not filed into their mm's list yet.
///
/// # Invariants
///
/// Each came from `KBox::leak()`, is owned by this list alone and is a
/// stable item of an adopted page's node.
///
/// A `KVVec`: one entry per adopted mapping, hundreds of thousands on a
/// large host, more than a kmalloc can be counted on for.
pub(super) struct Adopted(KVVec<NonNull<RmapItem>>);

// SAFETY: items are only touched under the scan lock; see `RmapItem`.
unsafe impl Send for Adopted {}

impl Adopted {
    pub(super) fn new() -> Self {
        Self(KVVec::new())
    }
}

impl ScanState {
    /// The `adopt` hook: the built-in KSM's page `page` (its folio locked
    /// by the core) becomes ours, with an item for each of `maps` in a
    /// registered mm.  `ENOENT` if none is; on any error nothing changed.
    pub(crate) fn adopt(
        &mut self,
        registry: &Mutex<MmRegistry>,
        page: &PageRef,
        maps: &[Mapping],
    ) -> Result {
        if self.domain_mode != DomainMode::Global {
            // Which domain would it go to?  The built-in merged across them.
            return Err(EBUSY);
        }
        // Every mm of a mapping gets the scanner's record first.
        let mut any = None;
        for map in maps {
            let key = map.mm as usize;
            if self.mms.get(&key).is_none() {
                let Some(mm) = registry.lock().get(key) else {
                    continue;
                };
                if self.add_mm(key, &mm).is_err() {
                    continue;
                }
            }
            any.get_or_insert(key);
        }
        let key = any.ok_or(ENOENT)?;
        // The global domain's trees (a new mm's domain is looked up here).
        self.enter_domain(key, false);

        let old = page.mapping_word();
        let node = self
            .trees
            .stable_insert(page, page::key(page), page::hash(page))?;
        // SAFETY: the core holds the folio lock.
        unsafe { self.trees.stable_reserve(node, maps.len()) };
        let mut appended = 0;
        for map in maps {
            let (Some(mm), Some(anon_vma)) = (NonNull::new(map.mm), NonNull::new(map.anon_vma))
            else {
                continue;
            };
            if self.mms.get(&(mm.as_ptr() as usize)).is_none()
                || self.adopted.0.reserve(1, GFP_KERNEL).is_err()
            {
                continue;
            }
            let Ok(item) = KBox::new(RmapItem::new(mm, map.address), GFP_KERNEL) else {
                continue;
            };
            let item = NonNull::from(KBox::leak(item));
            // SAFETY: just leaked: ours alone.
            let it = unsafe { &mut *item.as_ptr() };
            count_new_item(&mut self.trees, it);
            // SAFETY: the anon_vma is referenced by the built-in's item for
            // the duration of the call.
            let anon_vma = unsafe { AnonVmaRef::get(anon_vma) };
            // SAFETY: the folio is locked (by the core); the item is alive
            // and ours.
            if unsafe { self.trees.stable_append(it, node, anon_vma, map.pgoff) }.is_err() {
                // SAFETY: leaked above, in no list or tree.
                free_item(&mut self.trees, unsafe { KBox::from_raw(item.as_ptr()) });
                continue;
            }
            // INVARIANT: a stable item of the adopted page, leaked above;
            // room was reserved.
            let _ = self.adopted.0.push(item, GFP_KERNEL);
            appended += 1;
        }
        if appended == 0 {
            // Leave the page as it was: the built-in's.
            // SAFETY: the core holds the folio lock; `old` is what the
            // folio held on entry, the built-in's node.
            unsafe { page.set_mapping_word(old) };
            self.trees.remove_node(node);
            return Err(ENOMEM);
        }
        Ok(())
    }

    /// Files the adopted items into their mm's lists, in address order.
    /// An item whose mm's list has its address already (the built-in kept
    /// two items for one page) is freed.
    pub(crate) fn file_adopted(&mut self, stats: &Stats) {
        let mut items = core::mem::replace(&mut self.adopted, Adopted::new()).0;
        let key_of = |item: &NonNull<RmapItem>| {
            // SAFETY: the items are alive and ours (`Adopted`'s invariant).
            let it = unsafe { item.as_ref() };
            (it.mm.as_ptr() as usize, it.address)
        };
        items.sort_unstable_by_key(key_of);
        let mut rest = &items[..];
        while let Some(first) = rest.first() {
            let key = key_of(first).0;
            let n = rest.iter().take_while(|i| key_of(i).0 == key).count();
            let (group, after) = rest.split_at(n);
            rest = after;
            let mut dups = KVec::new();
            match self.mms.get_mut(&key) {
                Some(mm) => mm.items.merge(group, |dup| {
                    // Room for every item was not reserved: a duplicate
                    // that cannot be listed is leaked, never freed while
                    // linked (it is in a node).
                    let _ = dups.push(dup, GFP_KERNEL);
                }),
                None => {
                    let _ = dups.extend_from_slice(group, GFP_KERNEL);
                }
            }
            for dup in dups {
                // SAFETY: not linked into any list (`ItemList::merge`
                // handed it back), leaked at adoption.
                free_item(&mut self.trees, unsafe { KBox::from_raw(dup.as_ptr()) });
            }
        }
        self.publish(stats);
    }

    /// Hands every KSM page of ours to the built-in KSM (before we
    /// unregister), in `section`.  Returns how many pages went and how many
    /// stay ours (out of memory, or no mapping in an mm the built-in knows).
    pub(crate) fn hand_back(&mut self, section: &Handback, stats: &Stats) -> (usize, usize) {
        let mut maps: KVec<Mapping> = KVec::new();
        let (mut handed, mut left) = (0, 0);
        let _ = self.trees.for_each_node(|trees, node| {
            let Some(kpage) = trees.get_folio_locked(node) else {
                // Stale: removed.
                return Ok(());
            };
            // SAFETY: plain C structs: nothing to drop.
            unsafe { maps.set_len(0) };
            if collect_mappings(&kpage, node, &mut maps).is_err() {
                left += 1;
                return Ok(());
            }
            if section.hand_back(&kpage, &maps).is_err() {
                left += 1;
                return Ok(());
            }
            handed += 1;
            drop(kpage);
            // The folio points to the built-in's node now: nobody reaches
            // ours.
            trees.remove_node(node);
            Ok(())
        });
        self.publish(stats);
        (handed, left)
    }
}

/// The mappings of `node`'s page that its items record.
fn collect_mappings(
    _locked: &LockedPage,
    node: NonNull<StableNode>,
    maps: &mut KVec<Mapping>,
) -> Result {
    // SAFETY: the node's folio is locked (`_locked`) and the scan lock
    // held: the list
    // and the items' states do not change.
    for &item in unsafe { node.as_ref().items() } {
        // SAFETY: as above.
        let Some((mm, rmap)) = (unsafe { RmapItem::stable_rmap(item) }) else {
            continue;
        };
        // SAFETY: as above; `address` never changes once in the list.
        let address = unsafe { item.as_ref() }.address;
        maps.push(
            handback::mapping(mm, address, rmap.anon_vma.as_ptr(), rmap.index),
            GFP_KERNEL,
        )?;
    }
    Ok(())
}
