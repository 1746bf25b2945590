// SPDX-License-Identifier: GPL-2.0

//! rmap items: what rust_ksm knows about one scanned page of one mm.
//!
//! Each mm's items form a singly linked list in address order, which is the
//! scan order ([`ItemList`], upstream's `rmap_list`): the scanner keeps a
//! cursor in it and steps on in O(1) per page.  Items are boxed and never
//! move, so the trees can link to them by pointer.  Only `rust_ksmd` (or
//! `run=2`, under the same scan lock) creates, changes or frees items.
//!
//! What the rmap walk needs of a stable item (its mm, and the anon_vma and
//! linear page index of its mapping, [`StableRmap`]) is in the item, in the
//! room the unstable-tree link leaves in [`ItemState`]; the stable node
//! lists its items.  The walk runs in other tasks under the KSM folio's lock
//! only, while `rust_ksmd` may hold `&mut RmapItem` for an item it reads:
//! so an item's state is written only with the scan lock *and* the folio
//! lock held (or once no folio points to the node any more), its `mm` never
//! changes, and the walk reads exactly those two fields through raw
//! pointers ([`RmapItem::stable_rmap`]).  `RmapItem` is `!Unpin`, like the
//! kernel's `Opaque` wrappers, so that `&mut RmapItem` makes no `noalias`
//! promise the walk's reads would break.  The index exists only while the
//! item is stable, so it cannot outlive the item's time in the stable tree
//! (the lifetime the upstream review of the rmap-walk series worried
//! about).  An item is one 64-byte allocation (upstream's size, asserted
//! below), which `general_profit` and `ksm_stat` charge; a merged page costs
//! 8 bytes more, its entry in the node's list.  (A separate 32-byte entry
//! per mapping, read by the walk instead of the item, made the metadata of a
//! merged page 1.36x the built-in's in `make bench`.)

mod node;
pub(crate) mod walk;

pub(crate) use node::StableNode;

use crate::bindings;
use crate::kmm::rbtree::RbLink;
use crate::kmm::{AnonVmaRef, MmGrab, VmaRef};
use core::marker::PhantomPinned;
use core::ptr::{self, NonNull};
use kernel::ffi::c_void;
use kernel::prelude::*;

/// Where an item stands.
pub(crate) enum ItemState {
    /// Scanned; its page changed since the previous scan, or it just arrived.
    Volatile,
    /// In the unstable tree of index `tree` (`crate::tree`: its merge
    /// domain's, and in that its NUMA node's) of scan `seqnr`, linked
    /// through `link`.
    Unstable { link: RbLink, seqnr: u32, tree: u16 },
    /// Maps the KSM page of `node`, whose list of items has the item; the
    /// rmap walk reads `rmap` (see the module documentation).
    Stable {
        node: NonNull<StableNode>,
        rmap: StableRmap,
    },
}

/// Where a stable item's mapping of its KSM page is, for the rmap walk.
pub(crate) struct StableRmap {
    /// The anon_vma of the merged VMA, referenced while the item is stable.
    pub(crate) anon_vma: AnonVmaRef,
    /// The page's linear page index in `anon_vma`
    /// (`vm_pgoff + (addr - vm_start) / PAGE_SIZE` when it was merged): the
    /// rmap walk looks the page up by it, because after mremap the address
    /// says nothing about the index.
    pub(crate) index: usize,
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
    /// `&mut RmapItem` must not be `noalias`: the rmap walk reads `mm` and
    /// `state` of stable items concurrently (see the module documentation).
    _pin: PhantomPinned,
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
            _pin: PhantomPinned,
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

impl RmapItem {
    /// The mm and [`StableRmap`] of a stable item, for the rmap walk;
    /// None if the item is not stable.
    ///
    /// # Safety
    ///
    /// `item` is in the item list of a stable node whose KSM folio the
    /// caller has locked (or the caller holds the scan lock), and the
    /// returned reference does not outlive that.  Under the folio lock the
    /// item's `state` does not change and the item is not freed (both need
    /// the folio lock while a folio points to the node); `mm` never changes.
    /// The reads go through raw pointers to those two fields only, so the
    /// scanner's `&mut` to the item (`!Unpin`: not `noalias`), which writes
    /// other fields meanwhile, is not touched.
    pub(crate) unsafe fn stable_rmap<'a>(
        item: NonNull<RmapItem>,
    ) -> Option<(NonNull<bindings::mm_struct>, &'a StableRmap)> {
        let item = item.as_ptr();
        // SAFETY: by the function's safety requirements the item is alive
        // and these fields are not written meanwhile.
        let (mm, state) = unsafe {
            (
                ptr::addr_of!((*item).mm).read(),
                &*ptr::addr_of!((*item).state),
            )
        };
        match state {
            ItemState::Stable { rmap, .. } => Some((mm, rmap)),
            _ => None,
        }
    }
}

/// Removes the `i`-th item of a stable node's list, moving the last one into
/// its place (the list is unordered).
pub(crate) fn take_item(items: &mut KVec<NonNull<RmapItem>>, i: usize) {
    let last = items.len() - 1;
    items.as_mut_slice().swap(i, last);
    // SAFETY: shrinking: the entry past the new length is a plain pointer,
    // nothing to drop.
    unsafe { items.set_len(last) };
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

impl ItemList {
    /// Links `items`, leaked boxes in increasing address order that the
    /// caller owns, into the list by address (one pass).  An item whose
    /// address the list holds already is not linked: `dup` gets it back.
    pub(crate) fn merge(
        &mut self,
        items: &[NonNull<RmapItem>],
        mut dup: impl FnMut(NonNull<RmapItem>),
    ) {
        let mut cursor = ItemCursor::HEAD;
        for &item in items {
            // SAFETY: the caller's item, alive.
            let addr = unsafe { item.as_ref() }.address;
            // SAFETY: `cursor` is a place in this list (HEAD, or after an
            // item of it), and so is every place it moves to.
            while let Some(next) = unsafe { self.peek(cursor) } {
                // SAFETY: the list owns `next`.
                if unsafe { next.as_ref() }.address >= addr {
                    break;
                }
                cursor = ItemCursor::after(next);
            }
            // SAFETY: as above.
            let next = unsafe { self.peek(cursor) };
            let taken = Iterator::chain(next.into_iter(), cursor.0).any(|i| {
                // SAFETY: the list owns them.
                unsafe { i.as_ref() }.address == addr
            });
            if taken {
                dup(item);
                continue;
            }
            // SAFETY: as above.
            let link = unsafe { self.link(cursor) };
            // INVARIANT: the list now owns the caller's leaked box, between
            // a lower address and a higher one.
            // SAFETY: the caller's item, in no list.
            unsafe { (*item.as_ptr()).next = link.take() };
            *link = Some(item);
            cursor = ItemCursor::after(item);
        }
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
