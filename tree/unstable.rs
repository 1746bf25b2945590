// SPDX-License-Identifier: GPL-2.0

//! The unstable tree: rmap items whose pages did not change between two
//! scans, ordered by (checksum, contents), rebuilt every full scan
//! (unstable_tree_search_insert()).

use super::Trees;
use crate::bindings;
use crate::kmm::page::{self, PageRef};
use crate::rmap::{ItemState, RmapItem};
use core::ptr::{self, NonNull};
use kernel::prelude::*;
use kernel::types::Opaque;

impl Trees {
    /// The unstable tree of `nid`.
    pub(super) fn unstable_root(&mut self, nid: usize) -> &mut bindings::rb_root {
        if self.across_nodes() {
            &mut self.unstable_one
        } else {
            &mut self.unstable_per_node[nid]
        }
    }

    pub(super) fn unstable_item(&self, rb: *mut bindings::rb_node) -> NonNull<RmapItem> {
        // SAFETY: every node of the unstable tree is the link of an item.
        unsafe {
            NonNull::new_unchecked(
                rb.cast::<u8>()
                    .sub(self.unstable_link_offset)
                    .cast::<RmapItem>(),
            )
        }
    }

    /// The page of an unstable item, if it is still mapped and mergeable.
    pub(super) fn item_page(item: &RmapItem) -> Option<PageRef> {
        item.with_vma(|vma| vma.anon_page_at(item.address).ok_or(EFAULT))
            .ok()
    }

    /// unstable_tree_search_insert(): an item with the same contents as
    /// `page` (whose checksum is `item.checksum`), with its page; or insert
    /// `item` and return None.
    ///
    /// The tree is ordered by (checksum, contents): the checksum an item had
    /// when inserted never changes while it is in the tree, so the search
    /// compares integers and reads another page (taking its mm's mmap lock)
    /// only on a checksum match.  Upstream orders by contents alone.
    pub(crate) fn unstable_search_insert(
        &mut self,
        item: &mut RmapItem,
        page: &PageRef,
    ) -> Option<(NonNull<RmapItem>, PageRef)> {
        use core::cmp::Ordering::{Equal, Less};
        let nid = self.tree_nid(page);
        let mut parent = ptr::null_mut();
        let mut link: *mut *mut bindings::rb_node = &mut self.unstable_root(nid).rb_node;
        // SAFETY: `link` points into the tree we own.
        while !unsafe { *link }.is_null() {
            // SAFETY: as above.
            parent = unsafe { *link };
            let tree_item = self.unstable_item(parent);
            // SAFETY: items in the tree are alive (scan-lock owned).
            let tree_sum = unsafe { tree_item.as_ref() }.checksum;
            let order = match item.checksum.cmp(&tree_sum) {
                Equal => {
                    // SAFETY: as above.
                    let tree_page = Self::item_page(unsafe { tree_item.as_ref() })?;
                    if tree_page.page() == page.page() {
                        // Don't merge a page with itself (a forked page).
                        return None;
                    }
                    match page::compare(page, &tree_page).cmp(&0) {
                        // A page migrated to another node since it went in
                        // merges only across nodes (upstream: it moves to
                        // its node's tree next scan).
                        Equal if nid != self.tree_nid(&tree_page) => return None,
                        Equal => return Some((tree_item, tree_page)),
                        order => order,
                    }
                }
                order => order,
            };
            // SAFETY: `parent` is a node of the tree.
            link = unsafe {
                match order {
                    Less => &mut (*parent).rb_left,
                    _ => &mut (*parent).rb_right,
                }
            };
        }
        item.state = ItemState::Unstable {
            link: Opaque::uninit(),
            seqnr: self.seqnr,
            nid: nid as u16,
        };
        let ItemState::Unstable { link: node, .. } = &item.state else {
            unreachable!()
        };
        // SAFETY: `node` is the item's link, in place for as long as the item
        // lives in its mm's list; `link` and `parent` come from the search.
        unsafe {
            bindings::rust_ksm_rb_link_node(node.get(), parent, link);
            bindings::rb_insert_color(node.get(), self.unstable_root(nid));
        }
        self.counters.pages_unshared += 1;
        None
    }
}
