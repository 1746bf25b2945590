// SPDX-License-Identifier: GPL-2.0

//! /sys/kernel/mm/rust_ksm: the knobs and counters, named and behaving like
//! those of /sys/kernel/mm/ksm (same values, same errors).

use crate::control::{self, Run};
use crate::scan::{DomainMode, DomainStat, Unmerge};
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

/// Parses a `merge_domain` write (see [`DomainMode::parse`]).
///
/// # Safety
///
/// `buf` is a NUL-terminated string (sysfs guarantees it for stores).
unsafe fn parse_merge_domain(buf: *const c_char) -> Result<DomainMode> {
    // SAFETY: `buf` is NUL-terminated by the safety requirements, and not
    // changed during the store.
    DomainMode::parse(unsafe { CStr::from_char_ptr(buf) }.as_bytes())
}

/// Parses an `advisor_mode` write (see [`control::parse_advisor_mode`]).
///
/// # Safety
///
/// `buf` is a NUL-terminated string (sysfs guarantees it for stores).
unsafe fn parse_advisor_mode(buf: *const c_char) -> Result<bool> {
    // SAFETY: `buf` is NUL-terminated by the safety requirements, and not
    // changed during the store.
    control::parse_advisor_mode(unsafe { CStr::from_char_ptr(buf) }.as_bytes())
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

/// A string of static Rust text (NUL added when shown).
impl Emit for &'static str {
    unsafe fn emit(self, buf: *mut c_char) -> isize {
        // SAFETY: `buf` is a sysfs buffer; "%.*s" takes a length and a
        // pointer to at least that many bytes.
        unsafe {
            bindings::sysfs_emit(
                buf,
                c_str!("%.*s\n").as_char_ptr(),
                self.len() as i32,
                self.as_ptr(),
            ) as isize
        }
    }
}

/// The `domains` listing: a line per merge domain, as many as fit.
impl Emit for Result<KVec<DomainStat>> {
    unsafe fn emit(self, buf: *mut c_char) -> isize {
        let domains = match self {
            Ok(domains) => domains,
            Err(e) => return e.to_errno() as isize,
        };
        let mut at = 0;
        for d in domains.iter() {
            let word = d.mode.word();
            // SAFETY: `buf` is a sysfs buffer and `at` what was written to
            // it so far; the format's arguments match it.
            at += unsafe {
                bindings::sysfs_emit_at(
                    buf,
                    at,
                    c_str!("%.*s %llu pages_shared %lu pages_sharing %lu general_profit %lld\n")
                        .as_char_ptr(),
                    word.len() as i32,
                    word.as_ptr(),
                    d.key,
                    d.pages_shared,
                    d.pages_sharing,
                    d.general_profit,
                )
            };
        }
        at as isize
    }
}

impl Emit for i64 {
    unsafe fn emit(self, buf: *mut c_char) -> isize {
        // SAFETY: `buf` is a sysfs buffer; the format takes one i64.
        unsafe { bindings::sysfs_emit(buf, c_str!("%lld\n").as_char_ptr(), self) as isize }
    }
}

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

/// Defines the callbacks of the sysfs file `$name` (`$name_show`, and
/// `$name_store` if it is writable), or with `@attr` gives its attribute.
/// The kinds of file are those of [`sysfs_table!`].
macro_rules! sysfs_file {
    (knob $name:ident ($parse:ident, $ty:ty)) => {
        sysfs_file!(rw $name {
            show(k) -> u64 { u64::from(k.control.lock().$name) }
            store(k, v: $ty = $parse) {
                k.update(|c| c.$name = v);
                Ok(())
            }
        });
    };
    (counter $name:ident ()) => {
        sysfs_file!(ro $name {
            show(k) -> u64 { k.stats.$name.load(Ordering::Relaxed) as u64 }
        });
    };
    (ro $name:ident { show($k:tt) -> $ty:ty $show:block }) => {
        kernel::macros::paste! {
            /// # Safety
            ///
            /// Called by sysfs with a PAGE_SIZE buffer.
            unsafe extern "C" fn [<$name _show>](
                _kobj: *mut bindings::kobject,
                _attr: *mut bindings::kobj_attribute,
                buf: *mut c_char,
            ) -> isize {
                let value: fn(&Ksm) -> $ty = |$k| $show;
                // SAFETY: sysfs passes its buffer.
                unsafe { value(ksm()).emit(buf) }
            }
        }
    };
    (rw $name:ident {
        show($k:tt) -> $ty:ty $show:block
        store($sk:ident, $v:ident: $vty:ty = $parse:ident) $store:block
    }) => {
        sysfs_file!(ro $name { show($k) -> $ty $show });
        kernel::macros::paste! {
            /// # Safety
            ///
            /// Called by sysfs with a NUL-terminated buffer of `count` bytes.
            unsafe extern "C" fn [<$name _store>](
                _kobj: *mut bindings::kobject,
                _attr: *mut bindings::kobj_attribute,
                buf: *const c_char,
                count: usize,
            ) -> isize {
                let apply: fn(&Ksm, $vty) -> Result = |$sk, $v| $store;
                // SAFETY: sysfs NUL-terminates store buffers.
                match unsafe { $parse(buf) }.and_then(|v| apply(ksm(), v)) {
                    Ok(()) => count as isize,
                    Err(e) => e.to_errno() as isize,
                }
            }
        }
    };
    (@attr $kind:ident $name:ident) => {
        kernel::macros::paste!(attr(
            c_str!(stringify!($name)),
            [<$name _show>],
            sysfs_file!(@store $kind [<$name _store>]),
        ))
    };
    (@store knob $store:ident) => { Some($store) };
    (@store rw $store:ident) => { Some($store) };
    (@store counter $store:ident) => { None };
    (@store ro $store:ident) => { None };
}

/// Defines the files of /sys/kernel/mm/rust_ksm, one entry each, as
/// `name: kind`:
///
/// - `knob(parse, T)`: the field `name` of `Control`, shown as a number;
///   a write stores any value `parse` accepts (a `T`).
/// - `counter()`: the counter `name` of `Stats`, read-only.
/// - `ro { show(k) -> T { value } }`: read-only, shows `value` (an [`Emit`]
///   type `T`) computed from `k: &Ksm`.
/// - `rw { show(k) -> T { value } store(k, v: V = parse) { apply } }`: also
///   writable: `v` is the value `parse` read, `apply` returns a `Result`.
///
/// Writable files have mode 0644, the others 0444.  Gives the callbacks,
/// `NR_ATTRS` and `SYSFS`, the attributes in the order of the entries.
macro_rules! sysfs_table {
    ($($name:ident: $kind:ident $def:tt),* $(,)?) => {
        $(sysfs_file!($kind $name $def);)*

        const NR_ATTRS: usize = [$(stringify!($name)),*].len();

        static SYSFS: SysfsStatic = SysfsStatic(core::cell::UnsafeCell::new(SysfsTables {
            attrs: [$(sysfs_file!(@attr $kind $name)),*],
            list: [ptr::null_mut(); NR_ATTRS + 1],
            // SAFETY: all-zero is a valid (empty, unnamed) attribute group.
            group: unsafe { core::mem::zeroed() },
        }));
    };
}

sysfs_table! {
    run: rw {
        show(k) -> u64 { k.control.lock().run as u64 }
        store(k, v: u32 = parse_u32) {
            let run = Run::from_knob(v)?;
            k.update(|c| c.run = run);
            if run == Run::Stop {
                // As upstream: return once the batch in progress is done, so
                // the counters stand still from here on.
                drop(k.scan_lock());
            }
            if run == Run::Unmerge {
                // As upstream: unmerge synchronously; on failure run goes
                // back to 0.
                if let Err(e) = k.unmerge_all(Unmerge::Interruptible) {
                    k.update(|c| c.run = Run::Stop);
                    return Err(e);
                }
            }
            Ok(())
        }
    },
    pages_to_scan: rw {
        show(k) -> u64 { u64::from(k.control.lock().pages_to_scan) }
        store(k, v: u32 = parse_u32) { k.update(|c| c.set_pages_to_scan(v)) }
    },
    sleep_millisecs: knob(parse_u32, u32),
    pages_scanned: counter(),
    full_scans: counter(),
    max_page_sharing: rw {
        show(k) -> u64 { u64::from(k.control.lock().max_page_sharing) }
        store(k, v: u32 = parse_u32) {
            let shared = k.stats.pages_shared.load(Ordering::Relaxed);
            k.control.lock().set_max_page_sharing(v, shared)
        }
    },
    pages_shared: counter(),
    pages_sharing: counter(),
    pages_unshared: counter(),
    pages_volatile: ro {
        show(k) -> u64 {
            let s = &k.stats;
            let merged = s.pages_shared.load(Ordering::Relaxed)
                + s.pages_sharing.load(Ordering::Relaxed)
                + s.pages_unshared.load(Ordering::Relaxed);
            s.rmap_items.load(Ordering::Relaxed).saturating_sub(merged) as u64
        }
    },
    general_profit: ro {
        show(k) -> i64 {
            let s = &k.stats;
            // SAFETY: reads an atomic counter.
            let zero_pages = unsafe { bindings::rust_ksm_zero_pages() } as i64;
            (s.pages_sharing.load(Ordering::Relaxed) as i64 + zero_pages) * PAGE_SIZE as i64
                - (s.rmap_items.load(Ordering::Relaxed) * rmap::RMAP_ITEM_BYTES) as i64
        }
    },
    stable_node_chains: counter(),
    stable_node_dups: counter(),
    use_zero_pages: knob(parse_bool, bool),
    // The core keeps the count (it drops as KSM zero PTEs are unmapped);
    // while rust_ksm is the engine, every KSM zero page is one it placed.
    ksm_zero_pages: ro {
        show(_) -> i64 {
            // SAFETY: reads an atomic counter.
            unsafe { bindings::rust_ksm_zero_pages() as i64 }
        }
    },
    smart_scan: knob(parse_bool, bool),
    pages_skipped: counter(),
    stable_node_chains_prune_millisecs: knob(parse_u32, u32),
    merge_across_nodes: rw {
        show(k) -> u64 { u64::from(k.control.lock().merge_across_nodes) }
        store(k, v: u64 = parse_u64) {
            let across = control::across_nodes_from_knob(v)?;
            // The trees change only with no stable node left (EBUSY
            // otherwise), under the scan lock, like upstream's under
            // ksm_thread_mutex.
            let mut scan = k.scan_lock();
            scan.trees.set_across_nodes(across)?;
            k.update(|c| c.merge_across_nodes = across);
            drop(scan);
            Ok(())
        }
    },
    // merge_domain and merge_domain_depth change the trees only with no
    // KSM page left (EBUSY otherwise), under the scan lock, as
    // merge_across_nodes.
    merge_domain: rw {
        show(k) -> &'static str { k.control.lock().merge_domain.knob() }
        store(k, mode: DomainMode = parse_merge_domain) {
            let mut scan = k.scan_lock();
            let depth = k.control.lock().merge_domain_depth;
            scan.set_merge_domain(mode, depth)?;
            k.follow_domain_events(mode);
            k.update(|c| c.merge_domain = mode);
            drop(scan);
            Ok(())
        }
    },
    merge_domain_depth: rw {
        show(k) -> u64 { u64::from(k.control.lock().merge_domain_depth) }
        store(k, depth: u32 = parse_u32) {
            let mut scan = k.scan_lock();
            let mode = k.control.lock().merge_domain;
            scan.set_merge_domain(mode, depth)?;
            k.update(|c| c.merge_domain_depth = depth);
            drop(scan);
            Ok(())
        }
    },
    domains: ro {
        show(k) -> Result<KVec<DomainStat>> { k.scan_lock().domain_stats() }
    },
    advisor_mode: rw {
        show(k) -> StaticStr {
            if k.control.lock().advisor_scan_time {
                c_str!("none [scan-time]")
            } else {
                c_str!("[none] scan-time")
            }
        }
        store(k, scan_time: bool = parse_advisor_mode) {
            k.update(|c| c.set_advisor_mode(scan_time));
            Ok(())
        }
    },
    advisor_max_cpu: knob(parse_u64, u64),
    advisor_min_pages_to_scan: knob(parse_u64, u64),
    advisor_max_pages_to_scan: knob(parse_u64, u64),
    advisor_target_scan_time: rw {
        show(k) -> u64 { k.control.lock().advisor_target_scan_time }
        store(k, v: u64 = parse_u64) {
            k.update(|c| c.set_advisor_target_scan_time(v))
        }
    },
}

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
