// SPDX-License-Identifier: GPL-2.0

//! Stable nodes: one per KSM page, the data the rmap walk and the stable
//! tree share (as mm/ksm.c keeps `ksm_stable_node` beside `ksm_rmap_item`).
//! The tree's algorithms are in `crate::tree`.
//!
//! A node is freed only when its folio no longer points at it (stale:
//! freed or migrated, with the `smp_rmb`/`smp_wmb` pairing of upstream's
//! migration check: [`StableNode::folio`], [`StableNode::folio_migrated`])
//! or after its folio's mapping was cleared under the folio lock (`run=2`,
//! unload).  Its item list changes only with both the scan lock and the
//! KSM folio lock held, so the rmap walk, which holds the folio lock, reads
//! it safely.

use super::RmapItem;
use crate::bindings;
use crate::kmm::rbtree::RbLink;
use crate::kmm::PageRef;
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use kernel::ffi::c_void;
use kernel::prelude::*;

/// A KSM page: its folio's `mapping` points here (with `PAGE_MAPPING_KSM`).
///
/// A node stays allocated while its folio may point to it: it is freed only
/// once found stale (the folio freed or moved on) or after its folio's
/// mapping was cleared under the folio lock.
#[repr(C)]
pub(crate) struct StableNode {
    /// Link in the stable tree; first, so a node pointer is a link one.
    pub(crate) rb: RbLink,
    /// The KSM folio's pfn; migration moves it (folio_migrate hook).
    pub(crate) kpfn: AtomicUsize,
    /// The sampled key of the (write-protected, so fixed) contents
    /// (`kmm::page::key`): the tree is ordered by (key, contents).
    pub(crate) key: u64,
    /// [`NODE_OWNER`]: tells our nodes from the built-in KSM's (see
    /// [`StableNode::of_folio`]), at offset 40.
    owner: u64,
    /// The full hash of the contents: nodes of equal contents sit next to
    /// each other, so a run of equal (key, hash) is a chain of dups.
    pub(crate) hash: u64,
    /// The page's stable items, one per mapping, in no order.  Changed only
    /// under the scan lock with the KSM folio locked, so a folio-lock holder
    /// may read it.
    pub(crate) items: UnsafeCell<KVec<NonNull<RmapItem>>>,
    /// When the chain of dups this node is the newest of was last pruned
    /// of stale dups (jiffies); its creation time to begin with.
    pub(crate) pruned_at: AtomicUsize,
    /// The index of the stable tree the node is in (`crate::tree`: its merge
    /// domain's, and in that its NUMA node's).  Changed under the scan lock.
    pub(crate) tree: AtomicU16,
}

/// The `owner` word of every rust_ksm stable node.
///
/// A KSM folio's `mapping` may point to a stable node of the built-in KSM:
/// pages change engines one at a time (`scan/handover.rs`), and a page the
/// built-in could not hand over stays its.  The core sends the rmap walk,
/// migration and swap-in of such a folio to the built-in code, and the
/// scanner leaves it alone; this word is how the two are told apart.
///
/// The check is exact, not a matter of odds: the built-in's
/// `struct ksm_stable_node` (mm/ksm.c, 6.12) is a 40-byte union (an
/// `rb_node`, or a migration list's head pointer, `hlist_dup` and `list`),
/// then `struct hlist_head hlist` at offset 40, which every node a
/// folio can point to (a stable tree node, a dup, a node listed for
/// migration) keeps initialized: NULL or a pointer to an rmap item, so
/// always a multiple of 8.  Ours holds this odd word there.  (Offset 24,
/// where the word was before, lies inside the union and holds whatever the
/// rb_node variant leaves there.)  The built-in node is 64 bytes, so the
/// read stays inside it.
const NODE_OWNER: u64 = 0x4b53_4d5f_5255_5331;

// The layout argument of `NODE_OWNER` holds only where the built-in
// node's `hlist` sits: offset 40.
const _: () = assert!(core::mem::offset_of!(StableNode, owner) == 40);
const _: () = assert!(NODE_OWNER % 8 != 0);

/// Set when a KSM page of ours migrates: with `merge_across_nodes=0` the
/// scanner then moves the nodes whose pages changed NUMA node into their
/// new node's tree (`Trees::rehome_migrated`).
static MIGRATED: AtomicBool = AtomicBool::new(false);

impl StableNode {
    /// A node for the KSM page at `kpfn` with contents `key` and `hash`,
    /// in the stable tree of index `tree`, with no mapping yet.
    pub(crate) fn new(tree: u16, kpfn: usize, key: u64, hash: u64) -> Self {
        Self {
            rb: RbLink::new(),
            kpfn: AtomicUsize::new(kpfn),
            key,
            owner: NODE_OWNER,
            hash,
            items: UnsafeCell::new(KVec::new()),
            pruned_at: AtomicUsize::new(crate::kmm::jiffies()),
            tree: AtomicU16::new(tree),
        }
    }

    /// Whether a KSM page migrated since the last call (and clear it).
    pub(crate) fn take_migrated() -> bool {
        MIGRATED.swap(false, Ordering::AcqRel)
    }

    /// The stable node a KSM folio points to (NULL when it has none).
    ///
    /// # Safety
    ///
    /// `folio` is a valid folio.
    pub(crate) unsafe fn of_folio(folio: *mut bindings::folio) -> Option<NonNull<StableNode>> {
        // SAFETY: by the function's safety requirements.
        let mapping = unsafe { bindings::rust_ksm_folio_mapping(folio) } as usize;
        // SAFETY: read from a valid folio just now.
        unsafe { Self::of_mapping(mapping) }
    }

    /// [`Self::of_folio`] from the folio's `mapping` word.
    ///
    /// # Safety
    ///
    /// `mapping` was read from a folio that is still valid (referenced,
    /// locked, or mapped under a held page-table lock).
    pub(crate) unsafe fn of_mapping(mapping: usize) -> Option<NonNull<StableNode>> {
        if mapping & bindings::PAGE_MAPPING_FLAGS as usize != bindings::PAGE_MAPPING_KSM as usize {
            return None;
        }
        let node =
            NonNull::new((mapping & !(bindings::PAGE_MAPPING_FLAGS as usize)) as *mut StableNode)?;
        // SAFETY: a KSM folio's node pointer is to a live stable node (ours
        // or a built-in one, 64 bytes, see `NODE_OWNER`); `owner` is
        // written before the node is published and never changes.
        let owner = unsafe { ptr::addr_of!((*node.as_ptr()).owner).read() };
        (owner == NODE_OWNER).then_some(node)
    }

    /// Whether `folio` is a KSM folio of the built-in KSM (its node is not
    /// ours): a page it kept when we registered, which we leave alone.
    ///
    /// # Safety
    ///
    /// As [`Self::of_folio`].
    pub(crate) unsafe fn is_builtins(folio: *mut bindings::folio) -> bool {
        // SAFETY: by the function's safety requirements.
        let mapping = unsafe { bindings::rust_ksm_folio_mapping(folio) } as usize;
        let flags = bindings::PAGE_MAPPING_FLAGS as usize;
        mapping & flags == bindings::PAGE_MAPPING_KSM as usize
            && mapping & !flags != 0
            // SAFETY: as above.
            && unsafe { Self::of_mapping(mapping) }.is_none()
    }

    /// What a KSM folio's `mapping` holds when it points to `node`.
    pub(crate) fn mapping(node: NonNull<StableNode>) -> *mut c_void {
        (node.as_ptr() as usize | bindings::PAGE_MAPPING_KSM as usize) as *mut c_void
    }

    /// The page's stable items.
    ///
    /// # Safety
    ///
    /// The caller holds the KSM folio's lock or the scan lock, and nobody
    /// changes the list meanwhile (see `items`).
    pub(crate) unsafe fn items(&self) -> &KVec<NonNull<RmapItem>> {
        // SAFETY: by the function's safety requirements.
        unsafe { &*self.items.get() }
    }

    /// folio_migrate_ksm(): the node of `old`'s KSM page follows it to
    /// `new`, which already carries `old`'s mapping; `old` keeps a KSM
    /// mapping without a node, so that it looks stale.
    ///
    /// # Safety
    ///
    /// Both folios are locked.
    pub(crate) unsafe fn folio_migrated(new: *mut bindings::folio, old: *mut bindings::folio) {
        // SAFETY: `old` is a valid, locked folio.
        let Some(node) = (unsafe { Self::of_folio(old) }) else {
            return;
        };
        // SAFETY: `new` is a valid folio.
        let new_pfn = unsafe { bindings::rust_ksm_folio_pfn(new) };
        // SAFETY: a node a KSM folio points to is alive while the folio is
        // locked.
        unsafe { node.as_ref() }
            .kpfn
            .store(new_pfn, Ordering::Release);
        MIGRATED.store(true, Ordering::Release);
        // SAFETY: plain barrier, then a write to the locked `old`.  The new
        // pfn must be visible before the old folio looks stale: pairs with
        // the read barrier in the stale check (Self::folio).
        unsafe {
            bindings::rust_ksm_smp_wmb();
            bindings::rust_ksm_folio_set_mapping(
                old,
                bindings::PAGE_MAPPING_KSM as usize as *mut c_void,
            );
        }
    }

    /// ksm_get_folio()'s check: the node's folio, referenced, or None if
    /// the node is stale (its folio was freed, or no longer points here).
    /// Removing a stale node is the tree's job (`Trees::get_folio`).
    pub(crate) fn folio(&self) -> Option<PageRef> {
        let expected = Self::mapping(NonNull::from(self));
        loop {
            let kpfn = self.pfn();
            if let Some(page) = PageRef::get_if_mapping(kpfn, expected) {
                return Some(page);
            }
            // Stale, unless migration moved the node meanwhile: the barrier
            // pairs with the one in Self::folio_migrated().
            // SAFETY: plain barrier.
            unsafe { bindings::rust_ksm_smp_rmb() };
            if self.pfn() == kpfn {
                return None;
            }
        }
    }

    /// The index of the stable tree the node is in.
    pub(crate) fn tree(&self) -> usize {
        usize::from(self.tree.load(Ordering::Relaxed))
    }

    pub(crate) fn pfn(&self) -> usize {
        self.kpfn.load(Ordering::Acquire)
    }

    /// Do the two nodes hold the same contents?  (Told by key and full
    /// hash, without reading either page.)
    pub(crate) fn same_contents(&self, other: &StableNode) -> bool {
        self.key == other.key && self.hash == other.hash
    }
}
