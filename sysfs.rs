// SPDX-License-Identifier: GPL-2.0

//! /sys/kernel/mm/rust_ksm: the knobs and counters, named and behaving like
//! those of /sys/kernel/mm/ksm (same values, same errors).

use crate::control::Run;
use crate::scan::Unmerge;
use crate::{bindings, ksm, rmap, Ksm};
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;
use kernel::c_str;
use kernel::ffi::{c_char, c_uint};
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;

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
pub(crate) struct Sysfs {
    kobj: NonNull<bindings::kobject>,
}

// SAFETY: kobject references may be dropped from any thread.
unsafe impl Send for Sysfs {}

// SAFETY: `&Sysfs` gives access to nothing.
unsafe impl Sync for Sysfs {}

impl Sysfs {
    pub(crate) fn new() -> Result<Self> {
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
