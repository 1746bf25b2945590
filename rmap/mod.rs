// SPDX-License-Identifier: GPL-2.0

//! rmap items: what rust_ksm knows about one scanned page of one mm.
//!
//! Items live in their mm's [`MmItems`] (a `kernel::rbtree` keyed by
//! address, which keeps them in scan order and never moves them), so the
//! trees can link to them by pointer.  Only `rust_ksmd` (or `run=2`, under
//! the same scan lock) creates, changes or frees items.

pub(crate) mod walk;

use crate::bindings;
use crate::tree::StableNode;
use core::ptr::NonNull;
use kernel::rbtree::RBTree;
use kernel::types::Opaque;

/// Where an item stands.
pub(crate) enum ItemState {
    /// Scanned; its page changed since the previous scan, or it just arrived.
    Volatile,
    /// In the unstable tree of scan `seqnr` (linked through `link`).
    Unstable {
        link: Opaque<bindings::rb_node>,
        seqnr: u32,
    },
    /// Maps the KSM page of `node`.  `index` is the page's linear page index
    /// in its anon_vma (`vm_pgoff + (addr - vm_start) / PAGE_SIZE` when it
    /// was merged): the rmap walk looks the page up by it, because after
    /// mremap the address says nothing about the index.  It exists only in
    /// this state, so it cannot outlive the item's time in the stable tree.
    Stable {
        node: NonNull<StableNode>,
        anon_vma: NonNull<bindings::anon_vma>,
        index: usize,
    },
}

/// One scanned page.
pub(crate) struct RmapItem {
    pub(crate) mm: NonNull<bindings::mm_struct>,
    pub(crate) address: usize,
    /// Checksum of the page at the previous scan (unstable-tree gate).
    pub(crate) checksum: u32,
    pub(crate) state: ItemState,
}

// Upstream's struct ksm_rmap_item is 64 bytes; stay within it.
kernel::static_assert!(core::mem::size_of::<RmapItem>() <= 64);

/// The size reported in `general_profit` and /proc/PID/ksm_stat: the item
/// plus its node in the per-mm tree.
pub(crate) const RMAP_ITEM_BYTES: usize = core::mem::size_of::<RmapItem>()
    + core::mem::size_of::<bindings::rb_node>()
    + core::mem::size_of::<usize>();

// SAFETY: items are only touched under the scan lock; their raw pointers
// are to objects (mm, anon_vma, stable node) whose lifetime the engine manages.
unsafe impl Send for RmapItem {}

impl RmapItem {
    pub(crate) fn new(mm: NonNull<bindings::mm_struct>, address: usize) -> Self {
        Self {
            mm,
            address,
            checksum: 0,
            state: ItemState::Volatile,
        }
    }

    pub(crate) fn is_stable(&self) -> bool {
        matches!(self.state, ItemState::Stable { .. })
    }
}

/// The items of one mm, by address.
pub(crate) type MmItems = RBTree<usize, RmapItem>;
