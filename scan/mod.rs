// SPDX-License-Identifier: GPL-2.0

//! The scanner: which mms are mergeable, and the walk over their pages.
//!
//! Like ksmd, `rust_ksmd` visits the registered mms round robin and, in each,
//! the present anonymous pages of its `VM_MERGEABLE` VMAs, at most
//! `pages_to_scan` of them per batch.  The walk is `walk_page_range()`, so
//! page-table holes cost nothing: a 32 TiB mapping with one page populated is
//! one page of work, not eight billion lookups.

pub(crate) mod advisor;

pub(crate) use crate::kmm::MmGrab;

use crate::bindings;
use crate::kmm::walk::{self, Entry, Step, Visitor};
use crate::kmm::{self, mm::MmapReadGuard, page, AnonVmaRef, PageRef, VmaRef};
use crate::merge::{self, RunPage, RunState, Target};
use crate::rmap::{ItemCursor, ItemList, ItemState, RmapItem};
use crate::tree::{Search, StableNode, Trees};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use kernel::ffi::{c_ulong, c_void};
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;
use kernel::rbtree::{self, RBTree, RBTreeNodeReservation};
use kernel::sync::Mutex;

/// How many mms the registry holds (debugfs `registered_mms`, for tests).
pub(crate) static REGISTERED_MMS: AtomicUsize = AtomicUsize::new(0);

/// The mms that became mergeable (`__ksm_enter()`), keyed by address.
///
/// Keying by address gives a round-robin order in which the scanner's cursor
/// is a plain key: it stays meaningful when the mm under it goes away.
pub(crate) struct MmRegistry {
    mms: RBTree<usize, MmGrab>,
}

/// A registry slot allocated before taking the registry lock.
pub(crate) type MmSlotReservation = RBTreeNodeReservation<usize, MmGrab>;

impl MmRegistry {
    pub(crate) fn new() -> Self {
        Self { mms: RBTree::new() }
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

    fn contains(&self, key: usize) -> bool {
        self.mms.get(&key).is_some()
    }

    /// The first mm at or after `key`, if any.
    fn at_or_after(&mut self, key: usize) -> Option<(usize, MmGrab)> {
        let cursor = self.mms.cursor_lower_bound(&key)?;
        let (key, mm) = cursor.current();
        Some((*key, mm.clone()))
    }
}

/// Counters shown in sysfs, published by the scan-lock holder.
#[derive(Default)]
pub(crate) struct Stats {
    /// Pages visited (`pages_scanned`).
    pub(crate) pages_scanned: AtomicU64,
    /// Completed passes over all registered mms (`full_scans`).
    pub(crate) full_scans: AtomicU64,
    /// Pages smart scan passed over (`pages_skipped`).
    pub(crate) pages_skipped: AtomicU64,
    pub(crate) pages_shared: AtomicUsize,
    pub(crate) pages_sharing: AtomicUsize,
    pub(crate) pages_unshared: AtomicUsize,
    pub(crate) rmap_items: AtomicUsize,
    pub(crate) stable_node_chains: AtomicUsize,
    pub(crate) stable_node_dups: AtomicUsize,
}

/// The items of one mm the scanner has seen.
struct MmScan {
    mm: MmGrab,
    items: ItemList,
}

/// Everything the scanner owns: cursor, per-mm items, trees.  Lives in the
/// scan lock, which `rust_ksmd` holds for a batch and `run=2` for unmerging.
pub(crate) struct ScanState {
    /// The mm being scanned (its registry key) and where the next walk
    /// starts in it.
    mm_key: usize,
    address: usize,
    /// The scanner's place in that mm's item list: just after the item of
    /// the page scanned last.  Reset to the head whenever `address` is.
    cursor: ItemCursor,
    mms: RBTree<usize, MmScan>,
    /// What an all-zero page hashes to, fully and by key (use_zero_pages).
    zero_hash: u64,
    zero_key: u64,
    pub(crate) trees: Trees,
    /// Pages of the current walk batch the stable tree takes, merged
    /// together when the run ends (see [`Run`]).
    run: Run,
}

/// Where a batch was in the passes over all mms.
#[derive(Default, Clone, Copy)]
pub(crate) struct PassMarks {
    /// A full scan began in the batch.
    pub(crate) began: bool,
    /// A full scan ended with the batch.
    pub(crate) ended: bool,
}

/// Knob values a batch runs with.
#[derive(Clone, Copy)]
pub(crate) struct ScanParams {
    pub(crate) pages: u32,
    pub(crate) max_page_sharing: usize,
    pub(crate) use_zero_pages: bool,
    pub(crate) smart_scan: bool,
    /// `stable_node_chains_prune_millisecs`.
    pub(crate) chains_prune_millisecs: u32,
}

impl ScanParams {
    /// What a stable tree search needs of the knobs.
    fn search(&self) -> crate::tree::SearchLimits {
        crate::tree::SearchLimits {
            max_sharing: self.max_page_sharing,
            chains_prune_ns: i64::from(self.chains_prune_millisecs) * 1_000_000,
        }
    }
}

impl ScanState {
    pub(crate) fn new() -> Self {
        Self {
            mm_key: 0,
            address: 0,
            cursor: ItemCursor::HEAD,
            mms: RBTree::new(),
            zero_hash: page::zero_hash(),
            zero_key: page::zero_key(),
            trees: Trees::new(),
            run: Run::new(),
        }
    }

    pub(crate) fn publish(&self, stats: &Stats) {
        let c = &self.trees.counters;
        stats.pages_shared.store(c.pages_shared, Ordering::Relaxed);
        stats
            .pages_sharing
            .store(c.pages_sharing, Ordering::Relaxed);
        stats
            .pages_unshared
            .store(c.pages_unshared, Ordering::Relaxed);
        stats.rmap_items.store(c.rmap_items, Ordering::Relaxed);
        stats.stable_node_chains.store(c.chains, Ordering::Relaxed);
        stats.stable_node_dups.store(c.dups, Ordering::Relaxed);
    }

    /// Scans up to `params.pages` pages, merging what it can.  Ends early
    /// at the end of a full scan, as ksmd does.
    pub(crate) fn scan_batch(
        &mut self,
        registry: &Mutex<MmRegistry>,
        stats: &Stats,
        params: ScanParams,
    ) -> PassMarks {
        let mut marks = PassMarks::default();
        let mut budget = params.pages;
        while budget > 0 {
            let Some(mm) = self.current_mm(registry, stats, &mut marks) else {
                break;
            };
            // Collect a run of pages in one walk (one mmap lock round trip),
            // then merge them one by one with no lock held.
            let mut walk = WalkState::new(budget.min(WALK_BATCH as u32) as usize);
            if let Some(users) = mm.users() {
                walk.run(&users.read_lock(), self.address, usize::MAX);
            }
            let more = walk.stopped;
            for (addr, page) in walk.take() {
                self.address = addr + PAGE_SIZE;
                let Some(item) = self.next_item(addr) else {
                    budget -= 1;
                    continue;
                };
                // SAFETY: the item lives in its mm's list, which nothing
                // else touches while we hold the scan lock.
                let item = unsafe { &mut *item.as_ptr() };
                if params.smart_scan && self.should_skip(item, &page) {
                    // Skipped pages do not count against the batch, as
                    // upstream's scan_get_next_rmap_item() passes them by.
                    stats.pages_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                budget -= 1;
                stats.pages_scanned.fetch_add(1, Ordering::Relaxed);
                self.cmp_and_merge(item, page, params);
                // SAFETY: no spinlock held.
                unsafe { bindings::rust_ksm_cond_resched() };
            }
            // Before the cursor leaves these items behind (or frees any).
            self.flush_run(params);
            if !more {
                // Done with this mm: drop items past the last page.
                self.prune_rest();
                self.mm_key = self.mm_key.wrapping_add(1);
                self.rewind();
            }
            self.publish(stats);
        }
        self.publish(stats);
        marks
    }

    /// The mm under the cursor, or the next one.  Past the last mm a full
    /// scan is complete: count it, reset the unstable tree, forget the items
    /// of mms that went away, rewind and end the batch (None).
    fn current_mm(
        &mut self,
        registry: &Mutex<MmRegistry>,
        stats: &Stats,
        marks: &mut PassMarks,
    ) -> Option<MmGrab> {
        let mut reg = registry.lock();
        let Some((key, mm)) = reg.at_or_after(self.mm_key) else {
            if self.mm_key != 0 && !reg.is_empty() {
                stats.full_scans.fetch_add(1, Ordering::Relaxed);
                marks.ended = true;
            }
            drop(reg);
            self.mm_key = 0;
            self.rewind();
            self.trees.new_scan();
            self.drop_gone_mms(registry);
            return None;
        };
        drop(reg);
        if self.mm_key == 0 {
            marks.began = true;
            self.trees.rehome_migrated();
            // A pass begins.  Freshly faulted pages sit in per-CPU LRU
            // batches, whose references make write_protect_page() refuse
            // them: drain them, as ksmd does.
            // SAFETY: plain call, no lock held.
            unsafe { bindings::lru_add_drain_all() };
        }
        if key != self.mm_key {
            self.mm_key = key;
            self.rewind();
        }
        if self.mms.get(&key).is_none() {
            let node = RBTreeNodeReservation::new(GFP_KERNEL).ok()?;
            self.mms.insert(node.into_node(
                key,
                MmScan {
                    mm: mm.clone(),
                    items: ItemList::new(),
                },
            ));
        }
        Some(mm)
    }

    /// Frees the items of mms no longer registered (they exited).
    fn drop_gone_mms(&mut self, registry: &Mutex<MmRegistry>) {
        loop {
            let gone = {
                let reg = registry.lock();
                self.mms.keys().copied().find(|k| !reg.contains(*k))
            };
            let Some(key) = gone else {
                return;
            };
            if let Some(mut mm) = self.mms.remove(&key) {
                free_all(&mut self.trees, &mut mm.items);
            }
        }
    }

    /// Puts the cursor back at the start of the current mm.
    fn rewind(&mut self) {
        self.address = 0;
        self.cursor = ItemCursor::HEAD;
    }

    /// Frees the current mm's items after the cursor: their pages are gone.
    fn prune_rest(&mut self) {
        if let Some(mm) = self.mms.get_mut(&self.mm_key) {
            // SAFETY: the cursor is a place in the current mm's list.
            while let Some(item) = unsafe { mm.items.take(self.cursor) } {
                free_item(&mut self.trees, item);
            }
        }
    }

    /// get_next_rmap_item(): the current mm's item for `addr`, created if
    /// needed, with the cursor moved past it.  Items the cursor steps over
    /// are of pages gone since the previous scan: they are freed.
    fn next_item(&mut self, addr: usize) -> Option<NonNull<RmapItem>> {
        let mm = self.mms.get_mut(&self.mm_key)?;
        // The cursor is a place in the current mm's list (reset whenever the
        // mm changes) and only moves to items of that list.
        // SAFETY: so it is a place in `mm.items`.
        while let Some(next) = unsafe { mm.items.peek(self.cursor) } {
            // SAFETY: the list owns `next`; scan-lock held.
            let next_addr = unsafe { next.as_ref() }.address;
            if next_addr == addr {
                self.cursor = ItemCursor::after(next);
                return Some(next);
            }
            if next_addr > addr {
                break;
            }
            // SAFETY: as above.
            if let Some(gone) = unsafe { mm.items.take(self.cursor) } {
                free_item(&mut self.trees, gone);
            }
        }
        let mm_ptr = NonNull::new(mm.mm.as_ptr())?;
        let item = KBox::new(RmapItem::new(mm_ptr, addr), GFP_KERNEL).ok()?;
        // SAFETY: as above; `addr` lies between the cursor's item and the
        // next (the loop stopped before a higher address).
        let item = unsafe { mm.items.insert(self.cursor, item) };
        self.cursor = ItemCursor::after(item);
        // SAFETY: the mm is allocated.
        unsafe { (*mm_ptr.as_ptr()).__bindgen_anon_1.ksm_rmap_items += 1 };
        self.trees.counters.rmap_items += 1;
        Some(item)
    }

    /// should_skip_rmap_item() (smart_scan): a page that has been scanned
    /// a few times without merging is looked at less and less often: after
    /// its third scan every other scan, from its sixth one in three, from
    /// its ninth one in five, from then on one in nine.  KSM pages are
    /// never skipped.  A skipped page leaves the trees, as upstream's does.
    fn should_skip(&mut self, item: &mut RmapItem, page: &PageRef) -> bool {
        // SAFETY: referenced folio.
        if unsafe { bindings::rust_ksm_folio_test_ksm(page.folio()) } {
            return false;
        }
        let age = item.age;
        item.age = age.saturating_add(1);
        // Young pages get their chance at every phase of merging.
        if age < 3 {
            return false;
        }
        if item.remaining_skips == 0 {
            item.remaining_skips = match age {
                ..=3 => 1,
                4..=5 => 2,
                6..=8 => 4,
                _ => 8,
            };
            return false;
        }
        item.remaining_skips -= 1;
        self.trees.remove_item(item);
        true
    }

    /// cmp_and_merge_page(): the heart of KSM, after mm/ksm.c.  A page
    /// that the stable tree takes joins the run (merged by
    /// [`Self::flush_run`]); anything else is done here and now.
    fn cmp_and_merge(&mut self, item: &mut RmapItem, page: PageRef, params: ScanParams) {
        // Already merged with this very page?
        if let ItemState::Stable { node, .. } = item.state {
            // SAFETY: referenced page.
            if unsafe { StableNode::of_folio(page.folio()) } == Some(node) {
                return;
            }
        }
        let key = page::key(&page);
        // All-zero candidates (use_zero_pages) take the one-page path, which
        // tries the zero page first.
        if params.use_zero_pages && key == self.zero_key {
            self.cmp_and_merge_one(item, &page, key, Some(Search::Fast), params);
            return;
        }
        let Some((node, kpage)) =
            self.trees
                .stable_search(&page, key, &params.search(), Search::Fast)
        else {
            // Fast found nothing: neither would Exact, which only tells
            // apart nodes that share the key.
            self.cmp_and_merge_one(item, &page, key, None, params);
            return;
        };
        if let Err(page) = self.run_add(item, page, node, kpage, params) {
            // Not for a run (a KSM page itself, a huge page, or the node
            // full after the run merged): on its own, from the search,
            // which the run may have changed.
            self.cmp_and_merge_one(item, &page, key, Some(Search::Fast), params);
        }
    }

    /// cmp_and_merge_page() for one page, starting with a stable tree
    /// search of kind `first` (`Exact` after a run found a key that lied;
    /// None: known to find nothing).
    fn cmp_and_merge_one(
        &mut self,
        item: &mut RmapItem,
        page: &PageRef,
        key: u64,
        first: Option<Search>,
        params: ScanParams,
    ) {
        // The full hash: the unstable-tree gate, and a new stable node's
        // identity.  Only pages that do not merge into the stable tree
        // need it.
        let mut hash = None;
        // use_zero_pages: an all-zero page whose checksum held since the
        // previous scan maps the zero page instead (before the stable tree,
        // as upstream).
        if params.use_zero_pages && key == self.zero_key && !page.is_ksm() {
            let full = *hash.insert(page::hash(page));
            if full == self.zero_hash && item.checksum == full as u32 {
                self.trees.remove_item(item);
                if merge_with_zero(item, page).is_ok() {
                    return;
                }
            }
        }
        // First trust the key (the merge compares in full); search exactly
        // only if that node's contents turn out to differ.
        let searches: &[Search] = match first {
            Some(Search::Fast) => &[Search::Fast, Search::Exact],
            Some(Search::Exact) => &[Search::Exact],
            None => &[],
        };
        for &search in searches {
            let found = self
                .trees
                .stable_search(page, key, &params.search(), search);
            self.trees.remove_item(item);
            let Some((node, kpage)) = found else {
                break;
            };
            match merge_with(item, page, Some(Target::Ksm(&kpage))) {
                Ok((anon_vma, index)) => {
                    self.append(item, node, &kpage, anon_vma, index);
                    return;
                }
                Err(e) if e == ENOENT => continue,
                Err(_) => return,
            }
        }
        self.trees.remove_item(item);

        // Pages that change between scans stay out of the unstable tree.
        let hash = hash.unwrap_or_else(|| page::hash(page));
        let sum = hash as u32;
        if item.checksum != sum {
            item.checksum = sum;
            return;
        }

        let Some((tree_item, tree_page)) = self.trees.unstable_search_insert(item, page) else {
            return;
        };
        // SAFETY: unstable items live in their mm's list, scan-lock owned;
        // `tree_item` is not `item` (it was found in the tree, `item` not).
        let tree_item = unsafe { &mut *tree_item.as_ptr() };
        // Two subpages of one huge page: splitting it fails while we hold
        // both references, so merging fails; split with one dropped.
        let same_huge = page.folio() == tree_page.folio() && page.is_large();
        let Ok((av_item, idx_item)) = merge_with(item, page, None) else {
            if same_huge {
                drop(tree_page);
                split_huge(page);
            }
            return;
        };
        let Ok((av_tree, idx_tree)) = merge_with(tree_item, &tree_page, Some(Target::Ksm(page)))
        else {
            drop(av_item);
            break_cow(item);
            return;
        };
        self.trees.remove_item(tree_item);
        // Locked for the stable tree insert.
        let locked = page.lock();
        // The node's identity comes from the KSM page as it is now, write-
        // protected in every mapping, so fixed: `key` and `hash` were read
        // before, and both pages may have changed alike in between.
        let (key, hash) = (page::key(page), page::hash(page));
        // Each append keeps its anon_vma reference, or puts it on failure;
        // one not tried is put when it goes out of scope.
        let appended = match self.trees.stable_insert(page, key, hash) {
            // SAFETY: the folio is locked; items alive.
            Ok(node) => unsafe {
                self.trees
                    .stable_append(tree_item, node, av_tree, idx_tree)
                    .is_ok()
                    && self
                        .trees
                        .stable_append(item, node, av_item, idx_item)
                        .is_ok()
            },
            Err(_) => false,
        };
        drop(locked);
        if !appended {
            // Leave no KSM page outside the stable tree.
            for it in [&mut *tree_item, &mut *item] {
                self.trees.remove_item(it);
                break_cow(it);
            }
        }
    }

    /// Defers the merge of `item`'s `page` into the stable node `node`
    /// (page `kpage`) to the run, flushing the run first if it cannot
    /// take the page.  Gives the page back if it is not for a run (the run
    /// is flushed then, so that no merge into its node is pending).
    fn run_add(
        &mut self,
        item: &mut RmapItem,
        page: PageRef,
        node: NonNull<StableNode>,
        kpage: PageRef,
        params: ScanParams,
    ) -> core::result::Result<(), PageRef> {
        let folio = page.folio();
        // A KSM page (forked, or this node's) or a huge page needs the
        // one-page path.
        // SAFETY: referenced folio.
        if unsafe {
            bindings::rust_ksm_folio_test_ksm(folio) || bindings::rust_ksm_folio_test_large(folio)
        } {
            self.flush_run(params);
            return Err(page);
        }
        let addr = item.address;
        let fits = self.run.pages.first().map_or(true, |head| {
            (head.addr ^ addr) >> bindings::PMD_SHIFT == 0 && self.run.pages.len() < WALK_BATCH
        });
        if !fits {
            self.flush_run(params);
        }
        if self.run.room(node, params.max_page_sharing) == 0 {
            // Full, or full once the run is merged.
            self.flush_run(params);
            if self.run.room(node, params.max_page_sharing) == 0 {
                return Err(page);
            }
        }
        if self.run.pages.is_empty()
            && (self.run.pages.reserve(WALK_BATCH, GFP_KERNEL).is_err()
                || self.run.items.reserve(WALK_BATCH, GFP_KERNEL).is_err()
                || self.run.nodes.reserve(WALK_BATCH, GFP_KERNEL).is_err())
        {
            return Err(page);
        }
        // Out of either tree before its page changes hands, as the one-page
        // path does after its search.
        self.trees.remove_item(item);
        // Cannot fail: room was reserved for a whole batch.
        let _ = self.run.items.push(NonNull::from(item), GFP_KERNEL);
        let _ = self.run.nodes.push(node, GFP_KERNEL);
        let _ = self
            .run
            .pages
            .push(RunPage::new(addr, page, kpage), GFP_KERNEL);
        Ok(())
    }

    /// Merges the run (try_to_merge_with_ksm_page() and
    /// stable_tree_append() for each of its pages, batched), then gives the
    /// pages it could not merge the one-page path where mm/ksm.c would go on
    /// with them.
    fn flush_run(&mut self, params: ScanParams) {
        let Some(head_addr) = self.run.pages.first().map(|p| p.addr) else {
            return;
        };
        let mut pages = core::mem::take(&mut self.run.pages);
        let mut items = core::mem::take(&mut self.run.items);
        let mut nodes = core::mem::take(&mut self.run.nodes);
        // The anon_vma (referenced once per page merged) and the linear
        // page index of the first page: all pages are in one VMA.
        let mut refs: [Option<AnonVmaRef>; WALK_BATCH] = core::array::from_fn(|_| None);
        // INVARIANT (Run): the items are alive in the current mm's list.
        // SAFETY: so the first is.
        let merged = unsafe { items[0].as_ref() }.with_vma(|vma| {
            // The pages past this VMA (it shares the PMD with another)
            // stay `Todo`.
            let n = pages
                .iter()
                .take_while(|p| p.addr >= vma.start() && p.addr < vma.end())
                .count();
            // The pages are as merge_run() wants (see run_add()), each
            // `kpage` its node's KSM page.
            merge::merge_run(vma, &mut pages[..n]);
            for (p, r) in pages[..n].iter().zip(refs.iter_mut()) {
                if matches!(p.state, RunState::Merged) {
                    *r = vma.get_anon_vma();
                }
            }
            Ok(vma.linear_page_index(head_addr))
        });
        let len = pages.len();
        // Merged but not appended: to be broken again.
        let mut undo = [false; WALK_BATCH];
        if let Ok(head_index) = merged {
            // Append node by node, each under one lock of its folio.
            let mut done = [false; WALK_BATCH];
            for first in 0..len {
                if done[first] || !matches!(pages[first].state, RunState::Merged) {
                    continue;
                }
                let node = nodes[first];
                let locked = pages[first].kpage.lock();
                // The node may have lost the folio (stale) since the search.
                // SAFETY: referenced, locked folio.
                let live = unsafe { StableNode::of_folio(locked.folio()) } == Some(node);
                for i in first..len {
                    if done[i] || nodes[i] != node || !matches!(pages[i].state, RunState::Merged) {
                        continue;
                    }
                    done[i] = true;
                    let index = head_index + (pages[i].addr - head_addr) / PAGE_SIZE;
                    // Merged pages have their reference (the VMA had an
                    // anon_vma: it is mergeable).
                    let appended = match (live, refs[i].take()) {
                        (true, Some(anon_vma)) => {
                            // SAFETY: INVARIANT (Run): a live item, ours
                            // under the scan lock; the KSM folio is locked.
                            let item = unsafe { &mut *items[i].as_ptr() };
                            // SAFETY: as above.
                            unsafe { self.trees.stable_append(item, node, anon_vma, index) }.is_ok()
                        }
                        _ => false,
                    };
                    undo[i] = !appended;
                }
            }
        }
        for (i, p) in pages.iter().enumerate() {
            // SAFETY: INVARIANT (Run): a live item.
            let item = unsafe { &mut *items[i].as_ptr() };
            match p.state {
                // Leave no KSM page mapped outside the stable tree.
                RunState::Merged if undo[i] => break_cow(item),
                // The key lied: search again, comparing.
                RunState::Failed(e) if e == ENOENT => {
                    let key = page::key(&p.page);
                    self.cmp_and_merge_one(item, &p.page, key, Some(Search::Exact), params);
                }
                // Not in the run's VMA: from the start.
                RunState::Todo => {
                    let key = page::key(&p.page);
                    self.cmp_and_merge_one(item, &p.page, key, Some(Search::Fast), params);
                }
                // Merged, or failed as mm/ksm.c gives up on a page.
                _ => {}
            }
        }
        // Keep the vectors' room for the next run.
        // SAFETY: the pages are dropped in place right after, and not
        // reachable through the vector any more (as Vec::clear()).
        unsafe {
            pages.set_len(0);
            ptr::drop_in_place(ptr::slice_from_raw_parts_mut(pages.as_mut_ptr(), len));
            // Plain pointers: nothing to drop.
            items.set_len(0);
            nodes.set_len(0);
        }
        self.run.pages = pages;
        self.run.items = items;
        self.run.nodes = nodes;
    }

    /// stable_tree_append() under the KSM folio's lock.
    fn append(
        &mut self,
        item: &mut RmapItem,
        node: NonNull<crate::tree::StableNode>,
        kpage: &PageRef,
        anon_vma: AnonVmaRef,
        index: usize,
    ) {
        let locked = kpage.lock();
        // The node may have lost the folio (stale) since the search.
        // SAFETY: referenced, locked folio.
        let ok = unsafe { StableNode::of_folio(locked.folio()) } == Some(node)
            // SAFETY: folio locked, item alive.  On failure the reference
            // is put.
            && unsafe { self.trees.stable_append(item, node, anon_vma, index) }.is_ok();
        drop(locked);
        if !ok {
            break_cow(item);
        }
    }

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
    fn unmerge_mappings(&mut self, registry: &Mutex<MmRegistry>, how: Unmerge) -> Result {
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
            // SAFETY: the mmap lock is held.
            while let Some(vma) = NonNull::new(unsafe { bindings::find_vma(lock.mm(), addr) }) {
                // SAFETY: the VMA is stable under the mmap lock.
                let (start, end, flags) = unsafe {
                    (
                        bindings::rust_ksm_vma_start(vma.as_ptr()),
                        bindings::rust_ksm_vma_end(vma.as_ptr()),
                        bindings::rust_ksm_vm_flags(vma.as_ptr()),
                    )
                };
                if flags & bindings::VM_MERGEABLE as c_ulong != 0 {
                    // SAFETY: mmap lock held.
                    let r = unsafe { unmerge_range(vma, start, end, false, interruptible) };
                    if interruptible {
                        r?;
                    }
                    // At unload a failed fault is retried by the node pass.
                }
                addr = end;
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

/// Pages of one walk batch, in one PMD, that the stable tree sends to
/// stable nodes: [`merge::merge_run`] merges them under one page table
/// lock per step, and [`ScanState::flush_run`] appends them to their nodes
/// under one lock of each node's folio.
///
/// # Invariants
///
/// `items[i]` is the item of `pages[i]`, taken out of both trees, alive
/// in the current mm's list behind the scanner's cursor (a run is flushed
/// before the cursor moves past its walk batch); `nodes[i]` is the node
/// whose page is `pages[i].kpage`.  A node's pages in the run never
/// outnumber the mappings it takes before it is full (`max_page_sharing`).
struct Run {
    pages: KVec<RunPage>,
    items: KVec<NonNull<RmapItem>>,
    nodes: KVec<NonNull<StableNode>>,
}

// SAFETY: a `Run` is part of the `ScanState`, used only by the holder of
// the scan lock; its items and nodes belong to the same state, and its
// page references are folio references, which any thread may drop.
unsafe impl Send for Run {}

impl Run {
    fn new() -> Self {
        Self {
            pages: KVec::new(),
            items: KVec::new(),
            nodes: KVec::new(),
        }
    }

    /// How many more mappings `node` takes, counting those in the run.
    fn room(&self, node: NonNull<StableNode>, max_sharing: usize) -> usize {
        // SAFETY: scan lock held: the node is alive, its list stable.
        let used = unsafe { node.as_ref().mappings() }.len();
        let pending = self.nodes.iter().filter(|n| **n == node).count();
        max_sharing.saturating_sub(used + pending)
    }
}

/// Frees an item taken off its list, first taking it out of `trees`.
fn free_item(trees: &mut Trees, mut item: KBox<RmapItem>) {
    trees.remove_item(&mut item);
    trees.counters.rmap_items -= 1;
    // SAFETY: the item's mm is allocated (MmScan's MmGrab).
    unsafe { (*item.mm.as_ptr()).__bindgen_anon_1.ksm_rmap_items -= 1 };
}

/// Frees every item of `items`.
fn free_all(trees: &mut Trees, items: &mut ItemList) {
    // SAFETY: the head is a place in every list.
    while let Some(item) = unsafe { items.take(ItemCursor::HEAD) } {
        free_item(trees, item);
    }
}

/// try_to_merge_with_ksm_page(): merge `item`'s page into `target` (or make
/// it a KSM page), returning the anon_vma (referenced) and linear page
/// index its stable mapping keeps (see [`crate::rmap::Mapping`]).
fn merge_with(
    item: &RmapItem,
    page: &PageRef,
    target: Option<Target<'_>>,
) -> Result<(AnonVmaRef, usize)> {
    item.with_vma(|vma| {
        // VM_LOCKED needs nothing special (as in 6.12's mm/ksm.c):
        // replace_page() maps the KSM folio with folio_add_anon_rmap_pte(),
        // which mlocks it for a locked VMA, and folio_remove_rmap_pte()
        // munlocks the old one.
        merge::merge_one_page(vma, page, target, item.address)?;
        // A mergeable VMA has an anon_vma.
        let anon_vma = vma.get_anon_vma().ok_or(EFAULT)?;
        Ok((anon_vma, vma.linear_page_index(item.address)))
    })
}

/// try_to_merge_with_zero_page(): map the zero page instead of `item`'s
/// (all-zero) page.  The item stays out of the trees: the next scan finds
/// no page there and frees it, as upstream.
fn merge_with_zero(item: &RmapItem, page: &PageRef) -> Result {
    item.with_vma(|vma| merge::merge_one_page(vma, page, Some(Target::Zero), item.address))
}

/// Splits the huge page `page` is part of, if its folio lock is free.
fn split_huge(page: &PageRef) {
    if let Some(mut locked) = page.try_lock() {
        locked.split(page);
    }
}

/// break_cow(): undo a merge of `item`'s page.
fn break_cow(item: &RmapItem) {
    let _ = item.with_vma(|vma| merge::break_ksm(vma, item.address));
}

/// The unmerge_range hook ([`merge::unmerge::unmerge_range`]).
///
/// # Safety
///
/// The mmap lock of the VMA's mm must be held (for write with `lock_vma`).
pub(crate) unsafe fn unmerge_range(
    vma: NonNull<bindings::vm_area_struct>,
    start: usize,
    end: usize,
    lock_vma: bool,
    interruptible: bool,
) -> Result {
    if lock_vma {
        // SAFETY: the mmap lock is held for write when `lock_vma` is set.
        unsafe { bindings::rust_ksm_vma_start_write(vma.as_ptr()) };
    }
    // SAFETY: the mmap lock is held (the function's safety requirements).
    let vma = unsafe { VmaRef::from_raw(vma) };
    merge::unmerge::unmerge_range(vma, start, end, interruptible)
}

/// Pages collected by one walk.
const WALK_BATCH: usize = 32;

/// The scanning walk's catch: the anonymous pages found, referenced, in
/// address order.
struct WalkState {
    /// Stop after this many (at most `WALK_BATCH`).
    max: usize,
    len: usize,
    pages: [Option<(usize, PageRef)>; WALK_BATCH],
    /// The walk stopped before the end (batch full, or a huge page).
    stopped: bool,
}

impl WalkState {
    fn new(max: usize) -> Self {
        Self {
            max: max.clamp(1, WALK_BATCH),
            len: 0,
            pages: [const { None }; WALK_BATCH],
            stopped: false,
        }
    }

    /// Walks the mergeable VMAs of the mm `guard` has locked, from `start`.
    fn run(&mut self, guard: &MmapReadGuard<'_>, start: usize, end: usize) {
        self.stopped = walk::walk_mm(guard, start, end, self);
    }

    /// The pages found, in order, leaving the batch empty.
    fn take(&mut self) -> impl Iterator<Item = (usize, PageRef)> + '_ {
        let len = core::mem::take(&mut self.len);
        self.pages[..len].iter_mut().filter_map(Option::take)
    }
}

impl Visitor for WalkState {
    /// Only `VM_MERGEABLE` VMAs that have anonymous pages.
    fn wants_vma(&mut self, vma: VmaRef<'_>) -> bool {
        vma.is_mergeable()
    }

    fn visit(&mut self, addr: usize, entry: Entry<'_>) -> Step {
        let (Entry::Pte(page) | Entry::HugePmd(page)) = entry else {
            return Step::Go;
        };
        if !page.is_anon() {
            return Step::Go;
        }
        self.pages[self.len] = Some((addr, page.get()));
        self.len += 1;
        // One subpage of a huge page ends the batch: merging splits it,
        // which fails while we hold references on other subpages.
        if page.is_large() || self.len >= self.max {
            Step::Stop
        } else {
            Step::Go
        }
    }
}

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
struct Mapping {
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
unsafe extern "C" fn find_mapping_one(
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
fn unmerge_node(trees: &mut Trees, node: NonNull<StableNode>, interruptible: bool) -> Result {
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
