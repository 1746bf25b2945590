// SPDX-License-Identifier: GPL-2.0

//! rmap items: what rust_ksm knows about one scanned page of one mm.
//!
//! Each mm's items form a singly linked list in address order, which is the
//! scan order ([`ItemList`], upstream's `rmap_list`): the scanner keeps a
//! cursor in it and steps on in O(1) per page.  Items are boxed and never
//! move, so the trees can link to them by pointer.  Only `rust_ksmd` (or
//! `run=2`, under the same scan lock) creates, changes or frees items.
//!
//! What the rmap walk needs of a stable item (its mm, anon_vma and the
//! linear page index at merge time) is not in the item but in its
//! [`Mapping`], an entry in the stable node's list: the walk runs in other
//! tasks under the folio lock only, while `rust_ksmd` holds `&mut RmapItem`,
//! and a walk that read items would alias those.  Entries are written only
//! with the scan lock and the folio lock held; the walk never dereferences an
//! item.  The index exists only while the item is stable ([`ItemState`]), so
//! it cannot outlive the item's time in the stable tree (the lifetime the
//! upstream review of the rmap-walk series worried about).  An item is one
//! 64-byte allocation (upstream's size, asserted below), which
//! `general_profit` and `ksm_stat` charge; a mapping entry costs 32 bytes
//! more per merged page, in the node's vector.

mod node;
pub(crate) mod walk;

pub(crate) use node::StableNode;

use crate::bindings;
use crate::kmm::rbtree::RbLink;
use crate::kmm::{AnonVmaRef, MmGrab, VmaRef};
use core::ptr::{self, NonNull};
use kernel::ffi::c_void;
use kernel::prelude::*;

/// Where an item stands.
pub(crate) enum ItemState {
    /// Scanned; its page changed since the previous scan, or it just arrived.
    Volatile,
    /// In the unstable tree of NUMA node `nid` (0 when merging across
    /// nodes) of scan `seqnr`, linked through `link`.
    Unstable { link: RbLink, seqnr: u32, nid: u16 },
    /// Maps the KSM page of `node`, whose list of [`Mapping`]s has an entry
    /// for the item.
    Stable { node: NonNull<StableNode> },
}

/// One scanned page.
pub(crate) struct RmapItem {
    /// The next item of the same mm (higher address); owned by [`ItemList`].
    next: Option<NonNull<RmapItem>>,
    pub(crate) mm: NonNull<bindings::mm_struct>,
    pub(crate) address: usize,
    /// Checksum of the page at the previous scan (unstable-tree gate).
    pub(crate) checksum: u32,
    /// Scans of the page so far, saturating (smart_scan).
    pub(crate) age: u8,
    /// Scans smart_scan still skips the page for.
    pub(crate) remaining_skips: u8,
    pub(crate) state: ItemState,
}

// Upstream's struct ksm_rmap_item is 64 bytes; stay within it.
kernel::static_assert!(core::mem::size_of::<RmapItem>() <= 64);

/// The memory one item costs, as reported in `general_profit` and
/// /proc/PID/ksm_stat: the item is all there is (kmalloc-64).
pub(crate) const RMAP_ITEM_BYTES: usize = core::mem::size_of::<RmapItem>();

// SAFETY: items are only touched under the scan lock; their raw pointers
// are to objects (mm, anon_vma, stable node) whose lifetime the engine manages.
unsafe impl Send for RmapItem {}

impl RmapItem {
    /// The item as the `ksm:*` tracepoints show it (`rmap_item`): its
    /// address, a value only.
    pub(crate) fn trace_id(&self) -> *const c_void {
        ptr::from_ref(self).cast()
    }

    pub(crate) fn new(mm: NonNull<bindings::mm_struct>, address: usize) -> Self {
        Self {
            next: None,
            mm,
            address,
            checksum: 0,
            age: 0,
            remaining_skips: 0,
            state: ItemState::Volatile,
        }
    }

    /// Runs `f` on the mergeable VMA of the item's address, under its mm's
    /// mmap lock (find_mergeable_vma() with the lock taken); `EFAULT` if
    /// the process is exiting or there is no such VMA any more.
    pub(crate) fn with_vma<R>(&self, f: impl FnOnce(VmaRef<'_>) -> Result<R>) -> Result<R> {
        // SAFETY: an item's mm stays allocated while the item exists (the
        // registry holds a reference until the mm's items are freed).
        let mm = unsafe { MmGrab::new(self.mm) };
        let users = mm.users().ok_or(EFAULT)?;
        let lock = users.read_lock();
        f(lock.mergeable_vma(self.address).ok_or(EFAULT)?)
    }
}

/// One mapping of a KSM page: an entry in its stable node's list.
///
/// What the rmap walk needs is kept here rather than in the item, because
/// the walk runs in other tasks (reclaim, migration, memory-failure) under
/// the KSM folio's lock only, while `rust_ksmd` works on the items: if the
/// walk read the item, the scanner's `&mut RmapItem` would alias it.  An
/// entry is written only under the scan lock with the folio locked, so a
/// folio-lock holder reads it undisturbed; the walk never dereferences
/// `item`.
pub(crate) struct Mapping {
    /// The item that maps the page (for the scanner: never read by the walk).
    pub(crate) item: NonNull<RmapItem>,
    /// The item's mm: the walk visits the mappings the items were merged in
    /// first, then those of forked children.
    pub(crate) mm: NonNull<bindings::mm_struct>,
    /// The anon_vma of the merged VMA, referenced for as long as the entry
    /// exists.
    pub(crate) anon_vma: AnonVmaRef,
    /// The page's linear page index in `anon_vma`
    /// (`vm_pgoff + (addr - vm_start) / PAGE_SIZE` when it was merged): the
    /// rmap walk looks the page up by it, because after mremap the address
    /// says nothing about the index.
    pub(crate) index: usize,
}

/// Removes the `i`-th mapping of a stable node's list, moving the last one
/// into its place (the list is unordered), and hands it to the caller.
pub(crate) fn take_mapping(mappings: &mut KVec<Mapping>, i: usize) -> Mapping {
    let last = mappings.len() - 1;
    mappings.as_mut_slice().swap(i, last);
    // SAFETY: `last` is in bounds; the element is read out once and the
    // length shrunk over it right after, so it is not dropped twice.
    unsafe {
        let m = ptr::read(mappings.as_ptr().add(last));
        mappings.set_len(last);
        m
    }
}

/// A place in an [`ItemList`]: at its head, or just after one of its items.
///
/// The scanner holds one for the mm it is walking; the item it names is not
/// freed while the cursor is in use.
#[derive(Clone, Copy)]
pub(crate) struct ItemCursor(Option<NonNull<RmapItem>>);

// SAFETY: a cursor is only used, under the scan lock, with its list.
unsafe impl Send for ItemCursor {}

impl ItemCursor {
    /// The head of any list.
    pub(crate) const HEAD: Self = Self(None);

    /// Just after `item`.
    pub(crate) fn after(item: NonNull<RmapItem>) -> Self {
        Self(Some(item))
    }
}

/// The items of one mm, by address: a singly linked list through
/// `RmapItem::next`.
///
/// INVARIANT: every item reachable from `head` came from `KBox::into_raw()`
/// and belongs to this list alone; addresses strictly increase along it.
pub(crate) struct ItemList {
    head: Option<NonNull<RmapItem>>,
}

// SAFETY: the list owns its items, which are `Send`.
unsafe impl Send for ItemList {}

impl ItemList {
    pub(crate) fn new() -> Self {
        Self { head: None }
    }

    /// The link at `cursor`: the head, or the `next` of the cursor's item.
    ///
    /// # Safety
    ///
    /// `cursor` is a place in this list.
    unsafe fn link(&mut self, cursor: ItemCursor) -> &mut Option<NonNull<RmapItem>> {
        match cursor.0 {
            None => &mut self.head,
            // SAFETY: the item is in this list (the function's safety
            // requirements), which owns it; `&mut self` excludes others.
            Some(prev) => unsafe { &mut (*prev.as_ptr()).next },
        }
    }

    /// The item just after `cursor`.
    ///
    /// # Safety
    ///
    /// `cursor` is a place in this list.
    pub(crate) unsafe fn peek(&mut self, cursor: ItemCursor) -> Option<NonNull<RmapItem>> {
        // SAFETY: by the function's safety requirements.
        *unsafe { self.link(cursor) }
    }

    /// Unlinks the item just after `cursor` and hands it to the caller.
    ///
    /// # Safety
    ///
    /// `cursor` is a place in this list.
    pub(crate) unsafe fn take(&mut self, cursor: ItemCursor) -> Option<KBox<RmapItem>> {
        // SAFETY: by the function's safety requirements.
        let link = unsafe { self.link(cursor) };
        let item = (*link)?;
        // SAFETY: by the type invariant the list owns `item`, which came
        // from `KBox::into_raw()`; unlinking it first keeps the invariant.
        unsafe {
            *link = (*item.as_ptr()).next.take();
            Some(KBox::from_raw(item.as_ptr()))
        }
    }

    /// Links `item` just after `cursor`, returning where it now lives.
    ///
    /// # Safety
    ///
    /// `cursor` is a place in this list; `item`'s address lies between the
    /// cursor's item and the one after it.
    pub(crate) unsafe fn insert(
        &mut self,
        cursor: ItemCursor,
        item: KBox<RmapItem>,
    ) -> NonNull<RmapItem> {
        // SAFETY: by the function's safety requirements.
        let link = unsafe { self.link(cursor) };
        let item = NonNull::from(KBox::leak(item));
        // INVARIANT: the list now owns the leaked box, in address order by
        // the function's safety requirements.
        // SAFETY: `item` is ours, just leaked.
        unsafe { (*item.as_ptr()).next = link.take() };
        *link = Some(item);
        item
    }
}

impl Drop for ItemList {
    fn drop(&mut self) {
        // The owner empties the list first, taking each item out of the
        // trees (which link to them); freeing one still linked would leave
        // a dangling tree node, so leak instead.
        if self.head.is_some() {
            pr_warn!("rust_ksm: rmap item list dropped non-empty, leaking it\n");
        }
    }
}
