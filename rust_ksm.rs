// SPDX-License-Identifier: GPL-2.0

//! rust_ksm: Kernel Samepage Merging as a module.
//!
//! The module registers as the kernel's KSM engine (the `ksm_engine_ops` of
//! the project's kernel patches), so every KSM hook of `<linux/ksm.h>` comes
//! here while it is loaded.  This file holds the lifecycle: the engine hooks,
//! the `rust_ksmd` thread and the sysfs knobs under /sys/kernel/mm/rust_ksm,
//! which are named and behave like those of /sys/kernel/mm/ksm.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::c_str;
use kernel::error::to_result;
use kernel::ffi::{c_char, c_int, c_uint, c_void};
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::{new_condvar, new_mutex, CondVar, Mutex};

mod advisor;
mod control;
mod engine;
mod kmm;
mod ksmd;
mod merge;
mod rmap;
mod scan;
mod tree;

use control::{Control, Run};
use core::sync::atomic::{AtomicBool, AtomicUsize};
use engine::EngineRegistration;
use ksmd::Ksmd;
use scan::{MmGrab, MmRegistry, ScanState, Stats, Unmerge};

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
    /// Set while everything is being unmerged: swap-in must copy.
    unmerging: AtomicBool,
    /// Memory blocks going offline (see [`Ksm::scan_lock`]); changed under
    /// the control lock, and `offline_done` is signalled when it drops.
    offlining: AtomicUsize,
    #[pin]
    offline_done: CondVar,
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
            unmerging: AtomicBool::new(false),
            offlining: AtomicUsize::new(0),
            offline_done <- new_condvar!(),
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
            if self.offlining.load(Ordering::Acquire) == 0 {
                return scan;
            }
            drop(scan);
            let mut control = self.control.lock();
            while self.offlining.load(Ordering::Acquire) != 0 {
                self.offline_done.wait(&mut control);
            }
        }
    }

    /// MEM_GOING_OFFLINE: keep everyone off the nodes, and wait for whoever
    /// holds the scan lock now.
    fn offline_begin(&self) {
        let control = self.control.lock();
        self.offlining.fetch_add(1, Ordering::AcqRel);
        drop(control);
        drop(self.scan.lock());
    }

    /// MEM_OFFLINE (with the range) or MEM_CANCEL_OFFLINE: prune the nodes
    /// of the range, then let everyone back.
    fn offline_end(&self, range: Option<(usize, usize)>) {
        if let Some((start, end)) = range {
            let mut scan = self.scan.lock();
            scan.trees.remove_nodes_in(start, end);
            scan.publish(&self.stats);
        }
        let control = self.control.lock();
        self.offlining.fetch_sub(1, Ordering::AcqRel);
        drop(control);
        self.offline_done.notify_all();
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

    /// Forgets an exiting mm.
    fn exit(&self, mm: *mut bindings::mm_struct) {
        let removed = self.registry.lock().remove(mm);
        // The scanner holds `mm_users` while it walks, so no walk can be in
        // this mm's page tables any more: nothing else to wait for.
        drop(removed);
    }

    /// Unmerges everything (`run=2`, unload; see [`ScanState::unmerge_all`]).
    fn unmerge_all(&self, how: Unmerge) -> Result {
        self.unmerging.store(true, Ordering::Relaxed);
        let result = self
            .scan_lock()
            .unmerge_all(&self.registry, &self.stats, how);
        self.unmerging.store(false, Ordering::Relaxed);
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
// sysfs: /sys/kernel/mm/rust_ksm
// ---------------------------------------------------------------------------

/// Parses a sysfs write like the kernel's `kstrtouint(buf, 10, ...)`.
///
/// # Safety
///
/// `buf` is a NUL-terminated string (sysfs guarantees it for stores).
unsafe fn parse_u32(buf: *const c_char) -> Result<u32> {
    let mut value: c_uint = 0;
    // SAFETY: `buf` is NUL-terminated by the safety requirements.
    let err = unsafe { bindings::kstrtouint(buf, 10, &mut value) };
    if err != 0 {
        // Upstream turns every parse error, overflow included, into EINVAL.
        return Err(EINVAL);
    }
    Ok(value)
}

/// Parses a sysfs write like the kernel's `kstrtobool()` (1/0, y/n, on/off).
///
/// # Safety
///
/// `buf` is a NUL-terminated string (sysfs guarantees it for stores).
unsafe fn parse_bool(buf: *const c_char) -> Result<bool> {
    let mut value = false;
    // SAFETY: `buf` is NUL-terminated by the safety requirements.
    if unsafe { bindings::kstrtobool(buf, &mut value) } != 0 {
        return Err(EINVAL);
    }
    Ok(value)
}

/// Parses a sysfs write like the kernel's `kstrtoul(buf, 10, ...)`.
///
/// # Safety
///
/// `buf` is a NUL-terminated string (sysfs guarantees it for stores).
unsafe fn parse_u64(buf: *const c_char) -> Result<u64> {
    let mut value: u64 = 0;
    // SAFETY: `buf` is NUL-terminated by the safety requirements.
    if unsafe { bindings::kstrtoull(buf, 10, &mut value) } != 0 {
        return Err(EINVAL);
    }
    Ok(value)
}

/// Parses an `advisor_mode` write: `scan-time` (true) or `none` (false),
/// with an optional trailing newline, as upstream's sysfs_streq().
///
/// # Safety
///
/// `buf` is a NUL-terminated string (sysfs guarantees it for stores).
unsafe fn parse_advisor_mode(buf: *const c_char) -> Result<bool> {
    // SAFETY: both strings are NUL-terminated.
    let is = |s: &CStr| unsafe { bindings::sysfs_streq(buf, s.as_char_ptr()) };
    if is(c_str!("scan-time")) {
        Ok(true)
    } else if is(c_str!("none")) {
        Ok(false)
    } else {
        Err(EINVAL)
    }
}

/// A value a sysfs file shows, printed as upstream prints it.
trait Emit {
    /// # Safety
    ///
    /// `buf` is a sysfs show buffer (PAGE_SIZE bytes).
    unsafe fn emit(self, buf: *mut c_char) -> isize;
}

impl Emit for u64 {
    unsafe fn emit(self, buf: *mut c_char) -> isize {
        // SAFETY: `buf` is a sysfs buffer; the format takes one u64.
        unsafe { bindings::sysfs_emit(buf, c_str!("%llu\n").as_char_ptr(), self) as isize }
    }
}

/// A string a sysfs file shows.
type StaticStr = &'static CStr;

impl Emit for StaticStr {
    unsafe fn emit(self, buf: *mut c_char) -> isize {
        // SAFETY: `buf` is a sysfs buffer; the format takes one string.
        unsafe {
            bindings::sysfs_emit(buf, c_str!("%s\n").as_char_ptr(), self.as_char_ptr()) as isize
        }
    }
}

impl Emit for i64 {
    unsafe fn emit(self, buf: *mut c_char) -> isize {
        // SAFETY: `buf` is a sysfs buffer; the format takes one i64.
        unsafe { bindings::sysfs_emit(buf, c_str!("%lld\n").as_char_ptr(), self) as isize }
    }
}

/// Defines a sysfs show callback `$name` returning `$value(&Ksm) -> u64`
/// (or another [`Emit`] type `$ty`).
macro_rules! show {
    ($name:ident, $value:expr) => {
        show!($name, u64, $value);
    };
    ($name:ident, $ty:ty, $value:expr) => {
        /// # Safety
        ///
        /// Called by sysfs with a PAGE_SIZE buffer.
        unsafe extern "C" fn $name(
            _kobj: *mut bindings::kobject,
            _attr: *mut bindings::kobj_attribute,
            buf: *mut c_char,
        ) -> isize {
            let value: fn(&Ksm) -> $ty = $value;
            // SAFETY: sysfs passes its buffer.
            unsafe { value(ksm()).emit(buf) }
        }
    };
}

/// Defines a sysfs store callback `$name` applying `$apply(&Ksm, u32)` (or
/// `$apply(&Ksm, $ty)` with the value parsed by `$parse`).
macro_rules! store {
    ($name:ident, $apply:expr) => {
        store!($name, parse_u32, u32, $apply);
    };
    ($name:ident, $parse:ident, $ty:ty, $apply:expr) => {
        /// # Safety
        ///
        /// Called by sysfs with a NUL-terminated buffer of `count` bytes.
        unsafe extern "C" fn $name(
            _kobj: *mut bindings::kobject,
            _attr: *mut bindings::kobj_attribute,
            buf: *const c_char,
            count: usize,
        ) -> isize {
            let apply: fn(&Ksm, $ty) -> Result = $apply;
            // SAFETY: sysfs NUL-terminates store buffers.
            match unsafe { $parse(buf) }.and_then(|v| apply(ksm(), v)) {
                Ok(()) => count as isize,
                Err(e) => e.to_errno() as isize,
            }
        }
    };
}

/// Defines the show and store callbacks of a knob that is a plain field
/// of `Control`: any value `$parse` accepts is stored as is.
macro_rules! control_knob {
    ($show:ident, $store:ident, $field:ident, $parse:ident, $ty:ty) => {
        show!($show, |k| u64::from(k.control.lock().$field));
        store!($store, $parse, $ty, |k, v| {
            k.update(|c| c.$field = v);
            Ok(())
        });
    };
}

/// Defines a sysfs show callback for a counter of `Stats`.
macro_rules! show_counter {
    ($name:ident, $field:ident) => {
        show!($name, |k| k.stats.$field.load(Ordering::Relaxed) as u64);
    };
}

show!(run_show, |k| k.control.lock().run as u64);
store!(run_store, |k, v| {
    let run = Run::from_knob(v)?;
    k.update(|c| c.run = run);
    if run == Run::Stop {
        // As upstream: return once the batch in progress is done, so the
        // counters stand still from here on.
        drop(k.scan_lock());
    }
    if run == Run::Unmerge {
        // As upstream: unmerge synchronously; on failure run goes back to 0.
        if let Err(e) = k.unmerge_all(Unmerge::Interruptible) {
            k.update(|c| c.run = Run::Stop);
            return Err(e);
        }
    }
    Ok(())
});
show!(max_page_sharing_show, |k| u64::from(
    k.control.lock().max_page_sharing
));
store!(max_page_sharing_store, |k, v| {
    if v < 2 {
        return Err(EINVAL);
    }
    let stats = &k.stats;
    let mut control = k.control.lock();
    if control.max_page_sharing != v {
        if stats.pages_shared.load(Ordering::Relaxed) != 0 {
            return Err(EBUSY);
        }
        control.max_page_sharing = v;
    }
    Ok(())
});
show_counter!(pages_shared_show, pages_shared);
show_counter!(pages_sharing_show, pages_sharing);
show_counter!(pages_unshared_show, pages_unshared);
show!(pages_volatile_show, |k| {
    let s = &k.stats;
    let merged = s.pages_shared.load(Ordering::Relaxed)
        + s.pages_sharing.load(Ordering::Relaxed)
        + s.pages_unshared.load(Ordering::Relaxed);
    s.rmap_items.load(Ordering::Relaxed).saturating_sub(merged) as u64
});
show_counter!(stable_node_chains_show, stable_node_chains);
show_counter!(stable_node_dups_show, stable_node_dups);
show!(general_profit_show, i64, |k| {
    let s = &k.stats;
    // SAFETY: reads an atomic counter.
    let zero_pages = unsafe { bindings::rust_ksm_zero_pages() } as i64;
    (s.pages_sharing.load(Ordering::Relaxed) as i64 + zero_pages) * PAGE_SIZE as i64
        - (s.rmap_items.load(Ordering::Relaxed) * rmap::RMAP_ITEM_BYTES) as i64
});
control_knob!(
    use_zero_pages_show,
    use_zero_pages_store,
    use_zero_pages,
    parse_bool,
    bool
);
// The core keeps the count (it drops as KSM zero PTEs are unmapped); while
// rust_ksm is the engine, every KSM zero page is one it placed.
show!(ksm_zero_pages_show, i64, |_| {
    // SAFETY: reads an atomic counter.
    unsafe { bindings::rust_ksm_zero_pages() as i64 }
});
control_knob!(
    smart_scan_show,
    smart_scan_store,
    smart_scan,
    parse_bool,
    bool
);
show_counter!(pages_skipped_show, pages_skipped);
control_knob!(
    stable_node_chains_prune_millisecs_show,
    stable_node_chains_prune_millisecs_store,
    stable_node_chains_prune_millisecs,
    parse_u32,
    u32
);
show!(pages_to_scan_show, |k| u64::from(
    k.control.lock().pages_to_scan
));
store!(pages_to_scan_store, |k, v| k
    .update(|c| c.set_pages_to_scan(v)));
show!(advisor_mode_show, StaticStr, |k| {
    if k.control.lock().advisor_scan_time {
        c_str!("none [scan-time]")
    } else {
        c_str!("[none] scan-time")
    }
});
store!(
    advisor_mode_store,
    parse_advisor_mode,
    bool,
    |k, scan_time| {
        k.update(|c| c.set_advisor_mode(scan_time));
        Ok(())
    }
);
show!(merge_across_nodes_show, |k| u64::from(
    k.control.lock().merge_across_nodes
));
store!(merge_across_nodes_store, parse_u64, u64, |k, v| {
    if v > 1 {
        return Err(EINVAL);
    }
    // The trees change only with no stable node left (EBUSY otherwise),
    // under the scan lock, like upstream's under ksm_thread_mutex.
    let mut scan = k.scan_lock();
    scan.trees.set_across_nodes(v == 1)?;
    k.update(|c| c.merge_across_nodes = v == 1);
    drop(scan);
    Ok(())
});
control_knob!(
    advisor_max_cpu_show,
    advisor_max_cpu_store,
    advisor_max_cpu,
    parse_u64,
    u64
);
control_knob!(
    advisor_min_pages_to_scan_show,
    advisor_min_pages_to_scan_store,
    advisor_min_pages_to_scan,
    parse_u64,
    u64
);
control_knob!(
    advisor_max_pages_to_scan_show,
    advisor_max_pages_to_scan_store,
    advisor_max_pages_to_scan,
    parse_u64,
    u64
);
show!(advisor_target_scan_time_show, |k| k
    .control
    .lock()
    .advisor_target_scan_time);
store!(advisor_target_scan_time_store, parse_u64, u64, |k, v| {
    if v < 1 {
        return Err(EINVAL);
    }
    k.update(|c| c.advisor_target_scan_time = v);
    Ok(())
});
control_knob!(
    sleep_millisecs_show,
    sleep_millisecs_store,
    sleep_millisecs,
    parse_u32,
    u32
);
show!(pages_scanned_show, |k| k
    .stats
    .pages_scanned
    .load(Ordering::Relaxed));
show!(full_scans_show, |k| k
    .stats
    .full_scans
    .load(Ordering::Relaxed));

type ShowFn = unsafe extern "C" fn(
    *mut bindings::kobject,
    *mut bindings::kobj_attribute,
    *mut c_char,
) -> isize;
type StoreFn = unsafe extern "C" fn(
    *mut bindings::kobject,
    *mut bindings::kobj_attribute,
    *const c_char,
    usize,
) -> isize;

const fn attr(
    name: &'static CStr,
    show: ShowFn,
    store: Option<StoreFn>,
) -> bindings::kobj_attribute {
    // SAFETY: all-zero is a valid `kobj_attribute` (NULL pointers, no lockdep key).
    let mut attr: bindings::kobj_attribute = unsafe { core::mem::zeroed() };
    attr.attr.name = name.as_char_ptr();
    attr.attr.mode = if store.is_some() { 0o644 } else { 0o444 };
    attr.show = Some(show);
    attr.store = store;
    attr
}

const NR_ATTRS: usize = 24;

/// The attributes and their group, in static storage: lockdep wants static
/// keys for sysfs attributes, which `kobj_attribute` embeds.
struct SysfsTables {
    attrs: [bindings::kobj_attribute; NR_ATTRS],
    list: [*mut bindings::attribute; NR_ATTRS + 1],
    group: bindings::attribute_group,
}

/// Interior-mutable static: sysfs takes `*mut` pointers into the tables.
struct SysfsStatic(core::cell::UnsafeCell<SysfsTables>);

// SAFETY: only the module's init and exit touch the tables, and the kernel
// only reads them.
unsafe impl Sync for SysfsStatic {}

static SYSFS: SysfsStatic = SysfsStatic(core::cell::UnsafeCell::new(SysfsTables {
    attrs: [
        attr(c_str!("run"), run_show, Some(run_store)),
        attr(
            c_str!("pages_to_scan"),
            pages_to_scan_show,
            Some(pages_to_scan_store),
        ),
        attr(
            c_str!("sleep_millisecs"),
            sleep_millisecs_show,
            Some(sleep_millisecs_store),
        ),
        attr(c_str!("pages_scanned"), pages_scanned_show, None),
        attr(c_str!("full_scans"), full_scans_show, None),
        attr(
            c_str!("max_page_sharing"),
            max_page_sharing_show,
            Some(max_page_sharing_store),
        ),
        attr(c_str!("pages_shared"), pages_shared_show, None),
        attr(c_str!("pages_sharing"), pages_sharing_show, None),
        attr(c_str!("pages_unshared"), pages_unshared_show, None),
        attr(c_str!("pages_volatile"), pages_volatile_show, None),
        attr(c_str!("general_profit"), general_profit_show, None),
        attr(c_str!("stable_node_chains"), stable_node_chains_show, None),
        attr(c_str!("stable_node_dups"), stable_node_dups_show, None),
        attr(
            c_str!("use_zero_pages"),
            use_zero_pages_show,
            Some(use_zero_pages_store),
        ),
        attr(c_str!("ksm_zero_pages"), ksm_zero_pages_show, None),
        attr(
            c_str!("smart_scan"),
            smart_scan_show,
            Some(smart_scan_store),
        ),
        attr(c_str!("pages_skipped"), pages_skipped_show, None),
        attr(
            c_str!("stable_node_chains_prune_millisecs"),
            stable_node_chains_prune_millisecs_show,
            Some(stable_node_chains_prune_millisecs_store),
        ),
        attr(
            c_str!("merge_across_nodes"),
            merge_across_nodes_show,
            Some(merge_across_nodes_store),
        ),
        attr(
            c_str!("advisor_mode"),
            advisor_mode_show,
            Some(advisor_mode_store),
        ),
        attr(
            c_str!("advisor_max_cpu"),
            advisor_max_cpu_show,
            Some(advisor_max_cpu_store),
        ),
        attr(
            c_str!("advisor_min_pages_to_scan"),
            advisor_min_pages_to_scan_show,
            Some(advisor_min_pages_to_scan_store),
        ),
        attr(
            c_str!("advisor_max_pages_to_scan"),
            advisor_max_pages_to_scan_show,
            Some(advisor_max_pages_to_scan_store),
        ),
        attr(
            c_str!("advisor_target_scan_time"),
            advisor_target_scan_time_show,
            Some(advisor_target_scan_time_store),
        ),
    ],
    list: [ptr::null_mut(); NR_ATTRS + 1],
    // SAFETY: all-zero is a valid (empty, unnamed) attribute group.
    group: unsafe { core::mem::zeroed() },
}));

/// /sys/kernel/mm/rust_ksm; removed on drop.
///
/// # Invariants
///
/// `kobj` is a kobject we created, with `SYSFS`'s group on it.
struct Sysfs {
    kobj: NonNull<bindings::kobject>,
}

// SAFETY: kobject references may be dropped from any thread.
unsafe impl Send for Sysfs {}

// SAFETY: `&Sysfs` gives access to nothing.
unsafe impl Sync for Sysfs {}

impl Sysfs {
    fn new() -> Result<Self> {
        let tables = SYSFS.0.get();
        // SAFETY: module init runs once, before sysfs can read the tables.
        unsafe {
            for i in 0..NR_ATTRS {
                (*tables).list[i] = ptr::addr_of_mut!((*tables).attrs[i].attr);
            }
            (*tables).group.attrs = ptr::addr_of_mut!((*tables).list).cast();
        }
        // SAFETY: `mm_kobj` is /sys/kernel/mm, exported by the patch series.
        let kobj = unsafe {
            bindings::kobject_create_and_add(c_str!("rust_ksm").as_char_ptr(), bindings::mm_kobj)
        };
        let kobj = NonNull::new(kobj).ok_or(ENOMEM)?;
        // SAFETY: `kobj` is ours; the group is static.
        let err =
            unsafe { bindings::sysfs_create_group(kobj.as_ptr(), ptr::addr_of!((*tables).group)) };
        if err != 0 {
            // SAFETY: drop the reference `kobject_create_and_add` gave us.
            unsafe { bindings::kobject_put(kobj.as_ptr()) };
            return Err(Error::from_errno(err));
        }
        // INVARIANT: created with the group above.
        Ok(Self { kobj })
    }
}

impl Drop for Sysfs {
    fn drop(&mut self) {
        // SAFETY: by the type invariant; removal waits for running callbacks.
        unsafe {
            bindings::sysfs_remove_group(self.kobj.as_ptr(), ptr::addr_of!((*SYSFS.0.get()).group));
            bindings::kobject_put(self.kobj.as_ptr());
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
    _ksm: KsmOwner,
}

/// `Sync` wrapper for the memory notifier block, which the notifier chain
/// links through.
struct NotifierBlock(core::cell::UnsafeCell<bindings::notifier_block>);

// SAFETY: the block is only changed by the notifier chain, under its lock.
unsafe impl Sync for NotifierBlock {}

static MEMORY_NB: NotifierBlock =
    NotifierBlock(core::cell::UnsafeCell::new(bindings::notifier_block {
        notifier_call: Some(memory_callback),
        next: ptr::null_mut(),
        priority: 0,
    }));

/// Memory hotplug events (see [`Ksm::scan_lock`]).
///
/// # Safety
///
/// Called by the memory notifier chain; for MEM_OFFLINE `data` is a
/// `struct memory_notify`.
unsafe extern "C" fn memory_callback(
    _nb: *mut bindings::notifier_block,
    action: kernel::ffi::c_ulong,
    data: *mut c_void,
) -> c_int {
    match action as bindings::memory_block_state {
        bindings::memory_block_state_MEM_GOING_OFFLINE => ksm().offline_begin(),
        bindings::memory_block_state_MEM_OFFLINE => {
            // SAFETY: as the chain guarantees for this action.
            let arg = unsafe { &*data.cast::<bindings::memory_notify>() };
            ksm().offline_end(Some((arg.start_pfn, arg.start_pfn + arg.nr_pages)));
        }
        bindings::memory_block_state_MEM_CANCEL_OFFLINE => ksm().offline_end(None),
        _ => {}
    }
    bindings::NOTIFY_OK as c_int
}

/// Registration of [`memory_callback`]; unregistered on drop, after the
/// last unmerge (which may wait for an offline to end).
struct MemoryNotifier;

impl MemoryNotifier {
    fn new() -> Result<Self> {
        // SAFETY: the block is static; its callback only needs `KSM`, set
        // for as long as this registration lives (see `RustKsm`).
        to_result(unsafe { bindings::register_memory_notifier(MEMORY_NB.0.get()) })?;
        Ok(Self)
    }
}

impl Drop for MemoryNotifier {
    fn drop(&mut self) {
        // SAFETY: registered in `new`; this waits for a running callback.
        unsafe { bindings::unregister_memory_notifier(MEMORY_NB.0.get()) };
    }
}

/// /sys/kernel/debug/rust_ksm: internal counts for the tests (not ABI).
/// `registered_mms` is how many mms the engine holds.
struct Debugfs(*mut bindings::dentry);

// SAFETY: a debugfs dentry may be removed from any thread.
unsafe impl Send for Debugfs {}

// SAFETY: `&Debugfs` gives access to nothing.
unsafe impl Sync for Debugfs {}

impl Debugfs {
    fn new() -> Self {
        // SAFETY: plain calls; debugfs errors are not failures (the
        // functions take error pointers and do nothing with them).  The
        // counter is a static, valid for as long as the file exists.
        unsafe {
            let dir =
                bindings::debugfs_create_dir(c_str!("rust_ksm").as_char_ptr(), ptr::null_mut());
            bindings::debugfs_create_ulong(
                c_str!("registered_mms").as_char_ptr(),
                0o444,
                dir,
                scan::REGISTERED_MMS.as_ptr().cast(),
            );
            Self(dir)
        }
    }
}

impl Drop for Debugfs {
    fn drop(&mut self) {
        // SAFETY: created in `new`; removal waits for open readers.
        unsafe { bindings::debugfs_remove(self.0) };
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

/// Tells the thread to stop, stops it (see `Control::stopping`), then
/// unmerges everything: no KSM page may point into the module once the
/// engine is unregistered.
struct KsmdStopper {
    ksmd: Option<Ksmd>,
}

impl Drop for KsmdStopper {
    fn drop(&mut self) {
        ksm().update(|c| c.stopping = true);
        drop(self.ksmd.take());
        ksm().unmerge_all_at_unload();
    }
}

impl kernel::Module for RustKsm {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // On an error below, what was set up already is torn down, in
        // reverse order, by its drop.
        let ksm = KsmOwner::new()?;
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
            _ksm: ksm,
        })
    }
}
