// SPDX-License-Identifier: GPL-2.0

//! rust_ksm: Kernel Samepage Merging as a module.
//!
//! The module registers as the kernel's KSM engine (the `ksm_engine_ops` of
//! the project's kernel patches), so every KSM hook of `<linux/ksm.h>` comes
//! here while it is loaded.  This file holds the engine state everything
//! shares ([`Ksm`]) and the module's lifecycle ([`RustKsm`]); the rest is
//! one job a file:
//!
//! - `engine.rs`: the hooks the KSM core calls;
//! - `ksmd.rs`: the `rust_ksmd` thread;
//! - `sysfs.rs`: the knobs under /sys/kernel/mm/rust_ksm, which are named
//!   and behave like those of /sys/kernel/mm/ksm;
//! - `control.rs`: the knobs' values; `advisor.rs`: the scan-time advisor;
//! - `hotplug.rs`: memory going offline; `domain_events.rs`: cgroup moves
//!   (merge domains); `debugfs.rs`: counts for tests;
//! - `kmm/`, `merge/`, `scan/`, `rmap/`, `tree/`: the mm layer, merging,
//!   the scanner, the rmap items and the trees.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use kernel::prelude::*;
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::{new_condvar, new_mutex, CondVar, Mutex};

mod advisor;
mod control;
mod debugfs;
mod domain_events;
mod engine;
mod hotplug;
mod kmm;
mod ksmd;
mod merge;
mod offline_gate;
mod rmap;
mod scan;
mod sysfs;
mod tree;

use control::Control;
use debugfs::Debugfs;
use domain_events::DomainEvents;
use engine::EngineRegistration;
use hotplug::MemoryNotifier;
use kmm::MmGrab;
use ksmd::Ksmd;
use offline_gate::OfflineGate;
use scan::{DomainMode, MmRegistry, ScanState, Stats, Unmerge};
use sysfs::Sysfs;

/// Kernel API beyond `kernel::bindings`, generated from rust_ksm_bindings.h.
#[allow(
    dead_code,
    improper_ctypes,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod bindings {
    pub(crate) use kernel::bindings::*;
    use kernel::ffi;
    include!("bindings_generated.rs");
}

module! {
    type: RustKsm,
    name: "rust_ksm",
    author: "rust_ksm developers",
    description: "Kernel Samepage Merging in Rust",
    license: "GPL",
}

/// The engine: everything the hooks, the thread and sysfs share.
///
/// Locking:
///
/// | lock | protects | order |
/// |---|---|---|
/// | `scan` (mutex) | cursor, items, trees | outermost: `rust_ksmd` for a batch, `run=2`/unload to unmerge, `run=0` to wait for a batch; taken through [`Ksm::scan_lock`], which waits while memory goes offline |
/// | `control` (mutex) | knobs, `stopping`; `wake` waits on it | before `registry` |
/// | `registry` (mutex) | the mm registry | innermost of ours |
/// | `events` (mutex) | the cgroup event probes | under `scan` (a `merge_domain` write), nothing under it |
/// | the core's `ksm_thread_mutex` | the built-in KSM; held while it calls `adopt` at registration, and by the handback at unload | before `scan` |
/// | `offline` (mutex) | the offline gate; `offline_done` waits on it | taken with no other lock of ours held (the memory notifier, `scan_lock` while it waits) |
/// | mmap lock (read) | VMAs during a walk | taken with no lock of ours held |
///
/// `rust_ksmd` never holds `control` or `registry` across a walk or an
/// `mmput()`.  Below these, the kernel's own: a KSM folio's lock keeps its
/// stable node's item list and those items' state still (the rmap walk
/// reads them under that lock alone), and an anon_vma's lock its interval
/// tree.
#[pin_data]
struct Ksm {
    /// Knobs; `wake` is signalled whenever they change.
    #[pin]
    control: Mutex<Control>,
    #[pin]
    wake: CondVar,
    /// Registered mms. Lock order: `control` before `registry`.
    #[pin]
    registry: Mutex<MmRegistry>,
    /// rmap items and trees: held by rust_ksmd for a batch, by `run=2` and
    /// unload to unmerge, briefly by `run=0` to wait for a batch.  Taken
    /// with no other lock of ours held; `control` and `registry` may be
    /// taken under it.
    #[pin]
    scan: Mutex<ScanState>,
    /// How many `run=2` or unload unmerges are under way (waiting for the
    /// scan lock or holding it): while any is, swap-in must copy.  A count,
    /// not a flag: of two `run=2` writers, the first to finish cleared the
    /// flag while the second still waited, which then unmerged with swap-in
    /// mapping KSM pages behind it (a spurious `EBUSY`).
    unmerging: AtomicUsize,
    /// An mm left the registry: the scanner still holds its rmap items
    /// (freed as a pass ends), and must run a batch to free them even if
    /// no mm is left to scan (upstream's ksmd runs until it has reaped the
    /// exited mm's slot).
    reap: AtomicBool,
    /// A process moved to another cgroup or was forked into one
    /// (`domain_events.rs`): the thread re-homes before it sleeps again.
    domains_changed: AtomicBool,
    /// The cgroup event probes, attached only while `merge_domain=cgroup`
    /// (see [`Ksm::follow_domain_events`]).
    #[pin]
    events: Mutex<Option<DomainEvents>>,
    /// Whether both event probes are attached; if not, every batch looks up
    /// every mm's domain.
    domain_events: AtomicBool,
    /// Whether memory is going offline (see [`Ksm::scan_lock`]), and
    /// which; `offline_done` is signalled when the gate opens.
    #[pin]
    offline: Mutex<OfflineGate>,
    #[pin]
    offline_done: CondVar,
    /// `offline.is_closed()`, readable without the lock; written under it.
    offlining: AtomicBool,
    stats: Stats,
}

/// The engine of the loaded module, for callbacks that carry no context.
///
/// Set before the engine is registered and sysfs appears; cleared after both
/// are gone, which waits for every callback (SRCU in the core, kernfs active
/// references for sysfs).  So a callback always finds it set.
static KSM: AtomicPtr<Ksm> = AtomicPtr::new(ptr::null_mut());

fn ksm() -> &'static Ksm {
    let ksm = KSM.load(Ordering::Acquire);
    // SAFETY: callbacks run only while `KSM` is set (see its comment), and
    // the pinned `Ksm` it points to outlives them.
    unsafe { &*ksm }
}

impl Ksm {
    fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            control <- new_mutex!(Control::new()),
            wake <- new_condvar!(),
            registry <- new_mutex!(MmRegistry::new()),
            scan <- new_mutex!(ScanState::new()),
            unmerging: AtomicUsize::new(0),
            reap: AtomicBool::new(false),
            domains_changed: AtomicBool::new(false),
            events <- new_mutex!(None),
            domain_events: AtomicBool::new(false),
            offline <- new_mutex!(OfflineGate::new()),
            offline_done <- new_condvar!(),
            offlining: AtomicBool::new(false),
            stats: Stats::default(),
        })
    }

    /// Changes the knobs under the control lock and wakes the thread.
    fn update<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        let mut control = self.control.lock();
        let result = f(&mut control);
        drop(control);
        self.wake.notify_all();
        result
    }

    /// The scan lock, once no memory is going offline.
    ///
    /// Stable nodes keep the pfn of their page; a stale one (its page freed)
    /// keeps it until a search happens to look, and by then the memory may
    /// have gone offline, its memmap poisoned or removed.  So, as upstream's
    /// ksm_memory_callback() holds ksm_thread_mutex, nobody takes the scan
    /// lock (to look at nodes) from MEM_GOING_OFFLINE until the nodes of the
    /// range are pruned at MEM_OFFLINE, or the offline is cancelled.
    fn scan_lock(&self) -> Guard<'_, ScanState, MutexBackend> {
        loop {
            let scan = self.scan.lock();
            if !self.offlining.load(Ordering::Acquire) {
                return scan;
            }
            drop(scan);
            let mut gate = self.offline.lock();
            while gate.is_closed() {
                self.offline_done.wait(&mut gate);
            }
        }
    }

    /// Registers an mm that became mergeable.
    fn enter(&self, mm: NonNull<bindings::mm_struct>) -> Result {
        let slot = scan::MmSlotReservation::new(GFP_KERNEL)?;
        // SAFETY: the hook's `mm` is valid for the call.
        let mm = unsafe { MmGrab::new(mm) };
        let mut registry = self.registry.lock();
        // Adopted at registration while exiting: nothing to scan.  Checked
        // under the registry lock: `mm_users` drops to 0 before the exit
        // hook takes this lock to unregister the mm, so either we see it
        // exiting here or the exit hook sees it registered and removes it.
        // (Checked before the lock, an exit in between left the mm
        // registered and grabbed until rmmod.)
        if mm.exiting() {
            drop(registry);
            return Ok(());
        }
        let was_empty = registry.is_empty();
        let unused = registry.insert(mm, slot);
        drop(registry);
        drop(unused);
        if was_empty {
            // The thread may be idle for want of mms.
            self.update(|_| ());
        }
        Ok(())
    }

    /// A merge domain may have changed under a process (see
    /// `domain_events.rs`).  Any context: a tracepoint probe calls it.
    fn domain_event(&self) {
        self.domains_changed.store(true, Ordering::Release);
        self.wake.notify_all();
    }

    /// Attaches the cgroup event probes for `merge_domain=cgroup`, and
    /// detaches them for any other mode: an attached `cgroup_attach_task`
    /// probe makes every cgroup migration on the system format its
    /// destination's path under a global spinlock (the tracepoint's
    /// `TRACE_CGROUP_PATH`), a cost for nothing when no domain is a cgroup.
    /// The first batch after a change looks up every mm's domain.
    fn follow_domain_events(&self, mode: DomainMode) {
        let mut events = self.events.lock();
        if mode != DomainMode::Cgroup {
            // Detaching waits for running probes.
            drop(events.take());
        } else if events.is_none() {
            *events = Some(DomainEvents::new());
        }
        let attached = events.as_ref().is_some_and(DomainEvents::attached);
        self.domain_events.store(attached, Ordering::Relaxed);
        drop(events);
        self.domain_event();
    }

    /// Forgets an exiting mm.
    fn exit(&self, mm: *mut bindings::mm_struct) {
        let removed = self.registry.lock().remove(mm);
        // The scanner holds `mm_users` while it walks, so no walk can be in
        // this mm's page tables any more: nothing else to wait for.
        if removed.is_some() {
            // Its items go at the end of a pass: make sure one comes, even
            // if this was the last mm (the thread then idles).
            self.reap.store(true, Ordering::Release);
            self.update(|_| ());
        }
        drop(removed);
    }

    /// Adopts a page of the built-in KSM at registration (the `adopt`
    /// hook; see `scan/handover.rs`).  Called before `rust_ksmd` and sysfs
    /// exist, by the registering task: nobody else takes the scan lock
    /// (the memory notifier waits for the core's ksm_thread_mutex, held
    /// meanwhile), so taking it under the core's folio lock is safe.
    fn adopt(&self, page: &kmm::PageRef, maps: &[kmm::handback::Mapping]) -> Result {
        self.scan.lock().adopt(&self.registry, page, maps)
    }

    /// Files the adopted pages' items once registration is done.
    fn file_adopted(&self) {
        self.scan.lock().file_adopted(&self.stats);
    }

    /// At unload: hands every KSM page of ours to the built-in KSM, then
    /// unmerges the ones it could not take (none, unless memory ran out)
    /// and forgets everything.
    fn unload(&self) {
        // The core's ksm_thread_mutex before our scan lock, as at
        // registration (the core holds it while it calls `adopt`).
        let section = kmm::handback::Handback::begin();
        let (handed, left) = self.scan_lock().hand_back(&section, &self.stats);
        drop(section);
        if handed != 0 || left != 0 {
            pr_info!(
                "handed {} KSM pages to the built-in KSM, unmerging {}\n",
                handed,
                left
            );
        }
        self.unmerge_all_at_unload();
    }

    /// Unmerges everything (`run=2`, unload; see [`ScanState::unmerge_all`]).
    fn unmerge_all(&self, how: Unmerge) -> Result {
        self.unmerging.fetch_add(1, Ordering::Relaxed);
        let result = self
            .scan_lock()
            .unmerge_all(&self.registry, &self.stats, how);
        self.unmerging.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// Unmerging at unload: it must not fail, nor leave a KSM page pointing
    /// into the module.  Signals are ignored; a failure (an unsharing fault
    /// that ran out of memory, say) is retried for a while; in the end the
    /// pages that could not be unmerged lose their stable node (they stay
    /// shared, but nothing tracks them: reported as an engine invariant
    /// failure).
    fn unmerge_all_at_unload(&self) {
        const TRIES: u32 = 50;
        for _ in 0..TRIES {
            match self.unmerge_all(Unmerge::Uninterruptible) {
                Ok(()) => return,
                // SAFETY: plain call, no lock held.
                Err(_) => unsafe { bindings::msleep(100) },
            }
        }
        if let Err(e) = self.unmerge_all(Unmerge::Orphan) {
            pr_err!("INVARIANT: unmerging at unload failed ({e:?}): KSM pages left untracked\n");
        }
    }
}

// ---------------------------------------------------------------------------
// The module
// ---------------------------------------------------------------------------

/// The loaded module.  Fields drop in declaration order, which is the
/// teardown order: sysfs first, then the thread, then the engine hooks; the
/// state they all use goes last.
struct RustKsm {
    _debugfs: Debugfs,
    _sysfs: Sysfs,
    _ksmd: KsmdStopper,
    _engine: EngineRegistration,
    _memory: MemoryNotifier,
    _domain_events: DomainEventsDetach,
    _ksm: KsmOwner,
}

/// Detaches the cgroup event probes, if attached, before the state they
/// use goes.
struct DomainEventsDetach;

impl Drop for DomainEventsDetach {
    fn drop(&mut self) {
        drop(ksm().events.lock().take());
    }
}

/// Owns the engine state and publishes it in [`KSM`] for its lifetime.
struct KsmOwner(Pin<KBox<Ksm>>);

impl KsmOwner {
    fn new() -> Result<Self> {
        let ksm = KBox::pin_init(Ksm::new(), GFP_KERNEL)?;
        KSM.store(ptr::from_ref(&*ksm).cast_mut(), Ordering::Release);
        Ok(Self(ksm))
    }
}

impl Drop for KsmOwner {
    fn drop(&mut self) {
        // Every user is gone (see `RustKsm`); the registry's mm references
        // drop with the state.
        KSM.store(ptr::null_mut(), Ordering::Release);
    }
}

/// Tells the thread to stop, stops it (see `Control::stopping`), then hands
/// every KSM page to the built-in KSM (or unmerges it): no KSM page may
/// point into the module once the engine is unregistered.
struct KsmdStopper {
    ksmd: Option<Ksmd>,
}

impl Drop for KsmdStopper {
    fn drop(&mut self) {
        ksm().update(|c| c.stopping = true);
        drop(self.ksmd.take());
        ksm().unload();
    }
}

impl kernel::Module for RustKsm {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // On an error below, what was set up already is torn down, in
        // reverse order, by its drop.
        let ksm = KsmOwner::new()?;
        // merge_domain starts as global: no probe attached yet.
        let domain_events = DomainEventsDetach;
        let memory = MemoryNotifier::new()?;
        let engine = EngineRegistration::new()?;
        let ksmd = KsmdStopper {
            ksmd: Some(Ksmd::start(&ksm.0)?),
        };
        let sysfs = Sysfs::new()?;
        pr_info!("rust_ksm loaded\n");
        Ok(RustKsm {
            _debugfs: Debugfs::new(),
            _sysfs: sysfs,
            _ksmd: ksmd,
            _engine: engine,
            _memory: memory,
            _domain_events: domain_events,
            _ksm: ksm,
        })
    }
}
