// SPDX-License-Identifier: GPL-2.0

//! The scanner: which mms are mergeable, and the walk over their pages.
//!
//! Like ksmd, `rust_ksmd` visits the registered mms round robin and, in each,
//! the present anonymous pages of its `VM_MERGEABLE` VMAs, at most
//! `pages_to_scan` of them per batch.  The walk is `walk_page_range()`, so
//! page-table holes cost nothing: a 32 TiB mapping with one page populated is
//! one page of work, not eight billion lookups.

mod batch;
mod cmp_and_merge;
mod domain;
mod handover;
mod owner_watch;
mod registry;
mod rehome;
mod smart;
mod unmerge;

use batch::MergeBatch;
use owner_watch::OwnerSet;
pub(crate) use owner_watch::OWNERS;
pub(crate) use registry::{MmRegistry, MmSlotReservation, REGISTERED_MMS};
pub(crate) use unmerge::Unmerge;

use crate::bindings;
use crate::kmm::walk::{self, Entry, Step, Visitor};
use crate::kmm::{mm::MmapReadGuard, page, trace, MmGrab, OwnerKey, PageRef, VmaRef};
use crate::rmap::{ItemCursor, ItemList, RmapItem};
pub(crate) use domain::DomainMode;

use crate::tree::Trees;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};
use kernel::sync::Mutex;

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

/// One line of `/sys/kernel/mm/rust_ksm/domains`.
pub(crate) struct DomainStat {
    pub(crate) mode: DomainMode,
    /// The uid or cgroup id (0 for `global`).
    pub(crate) key: u64,
    pub(crate) pages_shared: usize,
    pub(crate) pages_sharing: usize,
    /// As the global `general_profit`, for the domain's processes.
    pub(crate) general_profit: i64,
}

/// The items of one mm the scanner has seen.
struct MmScan {
    mm: MmGrab,
    items: ItemList,
    /// Its merge domain's slot (`Trees::domain_get`), taken in
    /// `Trees::domain_epoch` `epoch`; None if it has none (its owner is
    /// gone, or no slot was left): its pages are not scanned.
    domain: Option<usize>,
    epoch: u32,
    /// The domain key `domain` was looked up for (kept when no slot could
    /// be had, so that a failure is not retried every batch).
    home: Option<u64>,
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
    /// together when the batch ends (see [`MergeBatch`]).
    batch: MergeBatch,
    /// `merge_domain` and `merge_domain_depth`.
    domain_mode: DomainMode,
    domain_depth: u32,
    /// `MmRegistry::inserted` when the domains were last checked.
    domains_checked: u64,
    /// An mm was left unhomed because its owner was still being forked
    /// (`OwnerKey::Forking`): the next batch checks the domains again.
    domains_pending: bool,
    /// Items of pages adopted at registration, until filed (`handover.rs`).
    adopted: handover::Adopted,
}

/// Where a batch was in the passes over all mms.
#[derive(Default, Clone, Copy)]
pub(crate) struct PassMarks {
    /// A full scan began in the batch.
    pub(crate) began: bool,
    /// A full scan ended with the batch.
    pub(crate) ended: bool,
    /// A merge domain with no mm left waits for its last KSM page to be
    /// freed (see `Trees::free_idle_domains`): another batch should come
    /// even with no mm registered.
    pub(crate) domains_waiting: bool,
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
    /// Look up every mm's merge domain, not only new mms' (see
    /// `ScanState::check_domains`).
    pub(crate) rehome_all: bool,
}

impl ScanParams {
    /// What a stable tree search needs of the knobs.
    fn search(&self) -> crate::tree::SearchLimits {
        crate::tree::SearchLimits {
            max_sharing: self.max_page_sharing,
            chains_prune_jiffies: kernel::time::msecs_to_jiffies(self.chains_prune_millisecs)
                as usize,
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
            batch: MergeBatch::new(),
            domain_mode: DomainMode::Global,
            domain_depth: 1,
            domains_checked: 0,
            domains_pending: false,
            adopted: handover::Adopted::new(),
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
        self.check_domains(registry, params.rehome_all);
        let mut budget = params.pages;
        while budget > 0 {
            let Some(mm) = self.current_mm(registry, stats, &mut marks) else {
                break;
            };
            if !self.in_domain() {
                // No merge domain: on to the next mm.
                self.mm_key = self.mm_key.wrapping_add(1);
                self.rewind();
                continue;
            }
            // Collect a batch of pages in one walk (one mmap lock round trip),
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
            self.flush_batch(params);
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
                trace::stop_scan(self.trees.seqnr, self.trees.counters.rmap_items);
            }
            drop(reg);
            self.mm_key = 0;
            self.rewind();
            self.trees.new_scan();
            marks.domains_waiting = self.drop_gone_mms(registry);
            return None;
        };
        drop(reg);
        if self.mm_key == 0 {
            marks.began = true;
            trace::start_scan(self.trees.seqnr, self.trees.counters.rmap_items);
            self.trees.rehome_migrated();
            // A pass begins.  Freshly faulted pages sit in per-CPU LRU
            // batches, whose references make write_protect_page() refuse
            // them: drain them, as ksmd does.
            // SAFETY: plain call, no lock held.
            unsafe { bindings::lru_add_drain_all() };
        }
        let begins = key != self.mm_key;
        if begins {
            self.mm_key = key;
            self.rewind();
        }
        if self.mms.get(&key).is_none() {
            self.add_mm(key, &mm).ok()?;
        }
        self.enter_domain(key, begins);
        Some(mm)
    }

    /// Starts keeping items for the mm at `key`, its domain not looked up
    /// yet (an epoch that is not the current one says so).
    fn add_mm(&mut self, key: usize, mm: &MmGrab) -> Result {
        let node = RBTreeNodeReservation::new(GFP_KERNEL)?;
        self.mms.insert(node.into_node(
            key,
            MmScan {
                mm: mm.clone(),
                items: ItemList::new(),
                domain: None,
                epoch: self.trees.domain_epoch.wrapping_sub(1),
                home: None,
            },
        ));
        Ok(())
    }

    /// Points the trees at the merge domain of the mm at `key`, looking it
    /// up again when the scanner `begins` the mm in a pass (a process moved
    /// to another cgroup, or whose owner changed uid, is re-homed there) or
    /// when the domains were regrouped since.
    fn enter_domain(&mut self, key: usize, begins: bool) {
        let Some(mm) = self.mms.get_mut(&key) else {
            return;
        };
        let stale = mm.epoch != self.trees.domain_epoch;
        if begins || stale {
            let Some(domain_key) = home_of(self.domain_mode, self.domain_depth, &mm.mm, None)
            else {
                // Its owner is still being forked (a new child's mm): not
                // scanned until it is in its cgroup, and looked up again
                // then (its epoch stays stale, or it keeps its domain).
                self.domains_pending = true;
                if stale {
                    mm.domain = None;
                }
                return;
            };
            let same = !stale
                && match (mm.domain, domain_key) {
                    (Some(slot), Some(k)) => self.trees.domain_key(slot) == Some(k),
                    (None, None) => true,
                    _ => false,
                };
            if !same {
                if let (Some(slot), false) = (mm.domain, stale) {
                    self.trees.domain_put(slot);
                }
                mm.domain = domain_key.and_then(|k| self.trees.domain_get(k).ok());
                mm.epoch = self.trees.domain_epoch;
                mm.home = domain_key;
            }
        }
        if let Some(slot) = mm.domain {
            self.trees.enter_domain(slot);
        }
    }

    /// Whether the current mm has a merge domain (if not, its pages are
    /// not scanned).
    fn in_domain(&self) -> bool {
        self.mms
            .get(&self.mm_key)
            .is_some_and(|mm| mm.domain.is_some())
    }

    /// Forgets the mm at `key`: frees its items, leaves its domain.
    fn drop_mm(&mut self, key: usize) {
        if let Some(mut mm) = self.mms.remove(&key) {
            free_all(&mut self.trees, &mut mm.items);
            if let (Some(slot), true) = (mm.domain, mm.epoch == self.trees.domain_epoch) {
                self.trees.domain_put(slot);
            }
        }
    }

    /// What `/sys/kernel/mm/rust_ksm/domains` shows: each merge domain in
    /// use, with its counters.
    pub(crate) fn domain_stats(&self) -> Result<KVec<DomainStat>> {
        let mut out = KVec::new();
        for (slot, d) in self.trees.domains() {
            let (mut items, mut zero) = (0usize, 0i64);
            let epoch = self.trees.domain_epoch;
            for (_, mm) in self.mms.iter() {
                if mm.domain == Some(slot) && mm.epoch == epoch {
                    let (i, z) = mm.mm.ksm_counts();
                    items += i;
                    zero += z;
                }
            }
            out.push(
                DomainStat {
                    mode: self.domain_mode,
                    key: d.key,
                    pages_shared: d.pages_shared,
                    pages_sharing: d.pages_sharing,
                    general_profit: (d.pages_sharing as i64 + zero) * PAGE_SIZE as i64
                        - (items * crate::rmap::RMAP_ITEM_BYTES) as i64,
                },
                GFP_KERNEL,
            )?;
        }
        Ok(out)
    }

    /// `merge_domain` / `merge_domain_depth` writes: `EBUSY` while a KSM
    /// page is left (as `merge_across_nodes`), else every mm's domain is
    /// looked up again as the scanner meets it.
    pub(crate) fn set_merge_domain(&mut self, mode: DomainMode, depth: u32) -> Result {
        if (mode, depth) == (self.domain_mode, self.domain_depth) {
            return Ok(());
        }
        self.trees.regroup_domains()?;
        (self.domain_mode, self.domain_depth) = (mode, depth);
        Ok(())
    }

    /// Frees the items of mms no longer registered (they exited), at the
    /// end of a full scan, and the merge domains they leave empty (the
    /// scanner may not run another pass: no mm may be left).  True if a
    /// domain waits for a page to go (`Trees::free_idle_domains`).
    fn drop_gone_mms(&mut self, registry: &Mutex<MmRegistry>) -> bool {
        loop {
            let gone = {
                let reg = registry.lock();
                self.mms.keys().copied().find(|k| !reg.contains(*k))
            };
            let Some(key) = gone else {
                break;
            };
            self.drop_mm(key);
        }
        self.trees.free_idle_domains()
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
        // SAFETY: just linked; the scan lock is held.
        count_new_item(&mut self.trees, unsafe { &*item.as_ptr() });
        Some(item)
    }

    /// should_skip_rmap_item() (smart_scan, see [`smart`]).  KSM pages are
    /// never skipped.  A skipped page leaves the trees, as upstream's does.
    fn should_skip(&mut self, item: &mut RmapItem, page: &PageRef) -> bool {
        if page.is_ksm() || !smart::should_skip(&mut item.age, &mut item.remaining_skips) {
            return false;
        }
        self.trees.remove_item(item);
        true
    }
}

/// Counts a new item (`rmap_items`, the mm's `ksm_rmap_items`), as
/// [`free_item`] counts it out.
fn count_new_item(trees: &mut Trees, item: &RmapItem) {
    trees.counters.rmap_items += 1;
    // SAFETY: the item's mm is allocated (its MmScan's MmGrab).
    unsafe { (*item.mm.as_ptr()).__bindgen_anon_1.ksm_rmap_items += 1 };
}

/// Frees an item taken off its list, first taking it out of `trees`.
fn free_item(trees: &mut Trees, mut item: KBox<RmapItem>) {
    trees.remove_item(&mut item);
    trees.counters.rmap_items -= 1;
    // SAFETY: the item's mm is allocated (MmScan's MmGrab).
    unsafe { (*item.mm.as_ptr()).__bindgen_anon_1.ksm_rmap_items -= 1 };
}

/// The key of the merge domain `mm` is in now: `Some(None)` if it has none
/// (its owner is gone), None if that cannot be known yet (its owner is a
/// child still being forked, see [`OwnerKey::Forking`]).
///
/// With `cgroup` the owner is watched first (`owner_watch.rs`), into
/// `owners` during a full re-check: a later owner change wakes the scanner.
fn home_of(
    mode: DomainMode,
    depth: u32,
    mm: &MmGrab,
    mut owners: Option<&mut OwnerSet>,
) -> Option<Option<u64>> {
    let owner = match mode {
        DomainMode::Global => OwnerKey::Key(0),
        // A child has its parent's credentials before its mm is copied.
        DomainMode::User => mm.owner_uid().map_or(OwnerKey::NoOwner, OwnerKey::Key),
        DomainMode::Cgroup => loop {
            let task = mm.owner_identity();
            OWNERS.watch(task, owners.as_deref_mut());
            let key = mm.owner_cgroup_id(depth);
            // The cgroup found is the watched task's, unless the owner
            // changed in between: then watch the new one.
            if mm.owner_identity() == task {
                break key;
            }
        },
    };
    match owner {
        OwnerKey::Key(key) => Some(Some(key)),
        OwnerKey::NoOwner => Some(None),
        OwnerKey::Forking => None,
    }
}

/// Frees every item of `items`.
fn free_all(trees: &mut Trees, items: &mut ItemList) {
    // SAFETY: the head is a place in every list.
    while let Some(item) = unsafe { items.take(ItemCursor::HEAD) } {
        free_item(trees, item);
    }
}

/// Pages collected by one walk; a merge batch is at most one walk's pages.
const WALK_BATCH: usize = crate::merge::BATCH_MAX;

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
