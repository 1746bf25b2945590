// SPDX-License-Identifier: GPL-2.0

//! The unstable tree: rmap items whose pages did not change between two
//! scans, ordered by (checksum, contents), rebuilt every full scan
//! (unstable_tree_search_insert()).

use super::Trees;
use crate::kmm::page::{self, PageRef};
use crate::kmm::rbtree::{RbLink, RbRoot, Step};
use crate::rmap::{ItemState, RmapItem};
use core::cmp::Ordering::{Equal, Less};
use core::ptr::NonNull;
use kernel::prelude::*;

impl Trees {
    /// The unstable tree of index `tree` (see [`Self::tree_of`]).
    pub(super) fn unstable_root(&mut self, tree: usize) -> &mut RbRoot {
        &mut self.unstable[tree]
    }

    /// The item whose link `link` is.
    fn unstable_item(link: NonNull<RbLink>, offset: usize) -> NonNull<RmapItem> {
        // SAFETY: every link of the unstable tree is the one of an item's
        // `ItemState::Unstable`, at `offset` (`Trees::unstable_link_offset`).
        unsafe { NonNull::new_unchecked(link.as_ptr().cast::<u8>().sub(offset).cast::<RmapItem>()) }
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
    ///
    /// `item` is out of every tree (`ItemState::Volatile`).
    pub(crate) fn unstable_search_insert(
        &mut self,
        item: &mut RmapItem,
        page: &PageRef,
    ) -> Option<(NonNull<RmapItem>, PageRef)> {
        let tree = self.tree_of(page);
        let nid = Self::nid_of(self.across, page);
        let (across, offset, checksum) = (self.across, self.unstable_link_offset, item.checksum);
        item.state = ItemState::Unstable {
            link: RbLink::new(),
            seqnr: self.seqnr,
            tree: tree as u16,
        };
        let ItemState::Unstable { link, .. } = &item.state else {
            unreachable!()
        };
        let step = |tree_link| {
            let tree_item = Self::unstable_item(tree_link, offset);
            // SAFETY: items in the tree are alive (scan-lock owned).
            let tree_item_ref = unsafe { tree_item.as_ref() };
            let order = match checksum.cmp(&tree_item_ref.checksum) {
                Equal => {
                    let Some(tree_page) = Self::item_page(tree_item_ref) else {
                        return Step::Stop(None);
                    };
                    if tree_page.page() == page.page() {
                        // Don't merge a page with itself (a forked page).
                        return Step::Stop(None);
                    }
                    match page::compare(page, &tree_page).cmp(&0) {
                        // A page migrated to another node since it went in
                        // merges only across nodes (upstream: it moves to
                        // its node's tree next scan).
                        Equal if nid != Self::nid_of(across, &tree_page) => {
                            return Step::Stop(None)
                        }
                        Equal => return Step::Stop(Some((tree_item, tree_page))),
                        order => order,
                    }
                }
                order => order,
            };
            if order == Less {
                Step::Left
            } else {
                Step::Right
            }
        };
        // SAFETY: the link is new; the item stays in its mm's list, in
        // place, until remove_item() takes it out of the tree or the tree is
        // cleared (new_scan()).
        let found = unsafe { self.unstable_root(tree).insert(link, step) };
        match found {
            Some(found) => {
                item.state = ItemState::Volatile;
                found
            }
            None => {
                self.counters.pages_unshared += 1;
                None
            }
        }
    }
}
