// SPDX-License-Identifier: GPL-2.0

//! The registry of mergeable mms (`__ksm_enter()`), in address order: the
//! scanner's round robin.

#![deny(unsafe_code)]

use crate::bindings;
use crate::kmm::MmGrab;
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::rbtree::{self, RBTree, RBTreeNodeReservation};

/// How many mms the registry holds (debugfs `registered_mms`, for tests).
pub(crate) static REGISTERED_MMS: AtomicUsize = AtomicUsize::new(0);

/// The mms that became mergeable (`__ksm_enter()`), keyed by address.
///
/// Keying by address gives a round-robin order in which the scanner's cursor
/// is a plain key: it stays meaningful when the mm under it goes away.
pub(crate) struct MmRegistry {
    mms: RBTree<usize, MmGrab>,
    /// Registrations so far (the scanner tells new mms by it).
    inserted: u64,
}

/// A registry slot allocated before taking the registry lock.
pub(crate) type MmSlotReservation = RBTreeNodeReservation<usize, MmGrab>;

impl MmRegistry {
    pub(crate) fn new() -> Self {
        Self {
            mms: RBTree::new(),
            inserted: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.mms.iter().next().is_none()
    }

    /// Registers `mm` unless it is there already.
    ///
    /// Returns the reference back when it was not needed, so the caller can
    /// drop it after releasing the lock.
    pub(crate) fn insert(&mut self, mm: MmGrab, slot: MmSlotReservation) -> Option<MmGrab> {
        match self.mms.entry(mm.as_ptr() as usize) {
            rbtree::Entry::Vacant(entry) => {
                entry.insert(mm, slot);
                self.inserted += 1;
                REGISTERED_MMS.fetch_add(1, Ordering::Relaxed);
                None
            }
            rbtree::Entry::Occupied(_) => Some(mm),
        }
    }

    /// Unregisters `mm`, returning its reference to be dropped unlocked.
    pub(crate) fn remove(&mut self, mm: *mut bindings::mm_struct) -> Option<MmGrab> {
        let removed = self.mms.remove(&(mm as usize));
        if removed.is_some() {
            REGISTERED_MMS.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// How many mms were registered so far.
    pub(super) fn inserted(&self) -> u64 {
        self.inserted
    }

    /// The mm registered at `key`, if any.
    pub(super) fn get(&self, key: usize) -> Option<MmGrab> {
        self.mms.get(&key).cloned()
    }

    pub(super) fn contains(&self, key: usize) -> bool {
        self.mms.get(&key).is_some()
    }

    /// The first mm at or after `key`, if any.
    pub(super) fn at_or_after(&mut self, key: usize) -> Option<(usize, MmGrab)> {
        let cursor = self.mms.cursor_lower_bound(&key)?;
        let (key, mm) = cursor.current();
        Some((*key, mm.clone()))
    }
}
