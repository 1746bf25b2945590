// SPDX-License-Identifier: GPL-2.0

//! The scanner: which mms are mergeable, and the walk over their pages.
//!
//! Like ksmd, `rust_ksmd` visits the registered mms round robin and, in each,
//! the present anonymous pages of its `VM_MERGEABLE` VMAs, at most
//! `pages_to_scan` of them per batch.  The walk is `walk_page_range()`, so
//! page-table holes cost nothing: a 32 TiB mapping with one page populated is
//! one page of work, not eight billion lookups.

mod mm;

pub(crate) use mm::MmGrab;

use crate::bindings;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::ffi::{c_int, c_ulong, c_void};
use kernel::page::PAGE_SIZE;
use kernel::rbtree::{self, RBTree, RBTreeNodeReservation};
use kernel::sync::Mutex;

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
                None
            }
            rbtree::Entry::Occupied(_) => Some(mm),
        }
    }

    /// Unregisters `mm`, returning its reference to be dropped unlocked.
    pub(crate) fn remove(&mut self, mm: *mut bindings::mm_struct) -> Option<MmGrab> {
        self.mms.remove(&(mm as usize))
    }

    /// The first mm at or after `key`, if any.
    fn at_or_after(&mut self, key: usize) -> Option<(usize, MmGrab)> {
        let cursor = self.mms.cursor_lower_bound(&key)?;
        let (key, mm) = cursor.current();
        Some((*key, mm.clone()))
    }
}

/// Scanner statistics shown in sysfs.
#[derive(Default)]
pub(crate) struct Stats {
    /// Pages visited (`pages_scanned`).
    pub(crate) pages_scanned: AtomicU64,
    /// Completed passes over all registered mms (`full_scans`).
    pub(crate) full_scans: AtomicU64,
}

/// Where the scan resumes: an mm (by registry key) and an address in it.
pub(crate) struct Scanner {
    mm_key: usize,
    address: usize,
}

impl Scanner {
    pub(crate) fn new() -> Self {
        Self {
            mm_key: 0,
            address: 0,
        }
    }

    /// Scans up to `budget` pages, moving on through the mms as each is
    /// finished.  Returns early at the end of a full scan.
    pub(crate) fn scan_batch(&mut self, registry: &Mutex<MmRegistry>, stats: &Stats, budget: u32) {
        let mut budget = budget;
        while budget > 0 {
            let Some(mm) = self.current_mm(registry, stats) else {
                return;
            };
            let mut walk = WalkState {
                budget,
                visited: 0,
                resume: 0,
            };
            // An exiting mm has nothing left to scan; the exit hook removes
            // it from the registry.
            let finished = match mm.users() {
                None => true,
                Some(users) => {
                    let lock = users.read_lock();
                    // SAFETY: the mmap lock is held for read, as SCAN_OPS
                    // says (PGWALK_RDLOCK); `walk` outlives the call.
                    let ret = unsafe {
                        bindings::walk_page_range(
                            lock.mm(),
                            self.address as c_ulong,
                            c_ulong::MAX,
                            &SCAN_OPS,
                            ptr::from_mut(&mut walk).cast::<c_void>(),
                        )
                    };
                    drop(lock);
                    // `users` drops here, outside every lock: if it was the
                    // last user, the exit hook runs from this thread.
                    ret != WALK_BUDGET_SPENT
                }
            };
            stats
                .pages_scanned
                .fetch_add(u64::from(walk.visited), Ordering::Relaxed);
            budget -= walk.visited.min(budget);
            if finished {
                self.mm_key = self.mm_key.wrapping_add(1);
                self.address = 0;
            } else {
                self.address = walk.resume;
            }
            // SAFETY: plain call, we hold no spinlock.
            unsafe { bindings::rust_ksm_cond_resched() };
        }
    }

    /// The mm under the cursor, or the next one.  Past the last mm a full
    /// scan is complete: count it, rewind, and end the batch (None), as
    /// ksmd does, so that a pass over mms with few pages still sleeps.
    fn current_mm(&mut self, registry: &Mutex<MmRegistry>, stats: &Stats) -> Option<MmGrab> {
        let mut reg = registry.lock();
        let Some((key, mm)) = reg.at_or_after(self.mm_key) else {
            if self.mm_key != 0 && !reg.is_empty() {
                stats.full_scans.fetch_add(1, Ordering::Relaxed);
            }
            self.mm_key = 0;
            self.address = 0;
            return None;
        };
        if key != self.mm_key {
            self.mm_key = key;
            self.address = 0;
        }
        Some(mm)
    }
}

/// `walk_page_range()` callbacks return this to stop with the budget spent.
const WALK_BUDGET_SPENT: c_int = 1;

/// The walk's private data.
struct WalkState {
    /// Pages still to visit in this batch.
    budget: u32,
    /// Pages visited so far.
    visited: u32,
    /// Where to resume when the budget ran out.
    resume: usize,
}

impl WalkState {
    /// Counts `nr` pages from `addr`; true when the budget is spent.
    fn visit(&mut self, addr: usize, nr: u32) -> bool {
        let nr = nr.min(self.budget - self.visited);
        self.visited += nr;
        self.resume = addr + nr as usize * PAGE_SIZE;
        self.visited == self.budget
    }
}

static SCAN_OPS: bindings::mm_walk_ops = bindings::mm_walk_ops {
    test_walk: Some(scan_test_walk),
    pmd_entry: Some(scan_pmd_entry),
    walk_lock: bindings::page_walk_lock_PGWALK_RDLOCK,
    // SAFETY: all other callbacks absent (NULL) is valid.
    ..unsafe { core::mem::zeroed() }
};

/// Walk only `VM_MERGEABLE` VMAs that have anonymous pages.
///
/// # Safety
///
/// Called by `walk_page_range()` with a valid `walk`.
unsafe extern "C" fn scan_test_walk(
    _start: c_ulong,
    _end: c_ulong,
    walk: *mut bindings::mm_walk,
) -> c_int {
    // SAFETY: `walk` and its VMA are valid during the callback.
    let vma = unsafe { (*walk).vma };
    // SAFETY: as above; the mmap lock keeps the VMA stable.
    let (flags, anon_vma) = unsafe { (bindings::rust_ksm_vm_flags(vma), (*vma).anon_vma) };
    let mergeable = flags & bindings::VM_MERGEABLE as c_ulong != 0;
    // Non-zero skips the VMA; without an anon_vma it has no anonymous pages.
    c_int::from(!mergeable || anon_vma.is_null())
}

/// Is `page` an anonymous page KSM could merge?
///
/// # Safety
///
/// `page` must be a page mapped under a held page-table lock.
unsafe fn mergeable_page(page: *mut bindings::page) -> bool {
    if page.is_null() {
        return false;
    }
    // SAFETY: a mapped page has a valid folio while the PTL is held.
    unsafe {
        let folio = bindings::rust_ksm_page_folio(page);
        !bindings::rust_ksm_folio_is_zone_device(folio) && bindings::rust_ksm_folio_test_anon(folio)
    }
}

/// Visits the present anonymous pages mapped by one PMD, like mm/ksm.c's
/// ksm_next_page_pmd_entry(): huge PMDs are counted in place (no split).
///
/// # Safety
///
/// Called by `walk_page_range()` with valid arguments, mmap lock held.
unsafe extern "C" fn scan_pmd_entry(
    pmdp: *mut bindings::pmd_t,
    addr: c_ulong,
    end: c_ulong,
    walk: *mut bindings::mm_walk,
) -> c_int {
    // SAFETY: `walk` is valid during the callback.
    let walk = unsafe { &mut *walk };
    // SAFETY: `private` is the `WalkState` passed by `Scanner::scan_batch`.
    let state = unsafe { &mut *walk.private.cast::<WalkState>() };
    let (mm, vma) = (walk.mm, walk.vma);

    // SAFETY: no spinlock held here.
    unsafe { bindings::rust_ksm_cond_resched() };

    // SAFETY: `pmdp` is a valid PMD of `mm`, whose mmap lock is held.
    let pmd = unsafe { bindings::rust_ksm_pmdp_get_lockless(pmdp) };
    // SAFETY: `pmd` is a value.
    if !unsafe { bindings::rust_ksm_pmd_present(pmd) } {
        return 0;
    }

    // SAFETY: as above.
    if cfg!(CONFIG_TRANSPARENT_HUGEPAGE) && unsafe { bindings::rust_ksm_pmd_leaf(pmd) } {
        // SAFETY: `pmdp` belongs to `mm`.
        let ptl = unsafe { bindings::rust_ksm_pmd_lock(mm, pmdp) };
        // SAFETY: re-read under the PMD lock.
        let pmd = unsafe { bindings::rust_ksm_pmdp_get(pmdp) };
        // SAFETY: `pmd` is a value.
        if unsafe { bindings::rust_ksm_pmd_present(pmd) && bindings::rust_ksm_pmd_leaf(pmd) } {
            // SAFETY: the PMD lock is held, so the mapping is stable.
            let head = unsafe { bindings::vm_normal_page_pmd(vma, addr as c_ulong, pmd) };
            // SAFETY: as above.
            let spent = unsafe { mergeable_page(head) }
                && state.visit(addr, ((end - addr) / PAGE_SIZE) as u32);
            // SAFETY: we took it above.
            unsafe { bindings::spin_unlock(ptl) };
            return if spent { WALK_BUDGET_SPENT } else { 0 };
        }
        // Split meanwhile: fall through to the PTEs.
        // SAFETY: we took it above.
        unsafe { bindings::spin_unlock(ptl) };
    }

    let mut ptl = ptr::null_mut();
    // SAFETY: `pmdp` belongs to `mm`, whose mmap lock is held.
    let Some(ptes) = NonNull::new(unsafe {
        bindings::rust_ksm_pte_offset_map_lock(mm, pmdp, addr as c_ulong, &mut ptl)
    }) else {
        return 0;
    };
    let mut spent = false;
    for (i, page_addr) in (addr..end).step_by(PAGE_SIZE).enumerate() {
        // SAFETY: the PTE table covers `addr..end` and is locked.
        let pte = unsafe { bindings::rust_ksm_ptep_get(ptes.as_ptr().add(i)) };
        // SAFETY: `pte` is a value.
        if !unsafe { bindings::rust_ksm_pte_present(pte) } {
            continue;
        }
        // SAFETY: the PTE lock is held, so the mapping is stable.
        let page = unsafe { bindings::vm_normal_page(vma, page_addr as c_ulong, pte) };
        // SAFETY: as above.
        if unsafe { mergeable_page(page) } && state.visit(page_addr, 1) {
            spent = true;
            break;
        }
    }
    // SAFETY: mapped and locked above.
    unsafe { bindings::rust_ksm_pte_unmap_unlock(ptes.as_ptr(), ptl) };
    if spent {
        WALK_BUDGET_SPENT
    } else {
        0
    }
}
