// SPDX-License-Identifier: GPL-2.0

//! Cgroup moves as they happen: with `merge_domain=cgroup` a process moved
//! to another cgroup, or forked into one (`clone3(CLONE_INTO_CGROUP)`), is
//! re-homed at once (`ScanState::check_domains`) instead of at the
//! scanner's next batch, up to `sleep_millisecs` later.
//!
//! The core calls KSM on neither event, and a hook in the cgroup core would
//! be a patch to another subsystem for one module's sake; the two
//! tracepoints that fire for them, `cgroup:cgroup_attach_task` (after a
//! migration through `cgroup.procs` or `cgroup.threads`) and
//! `task:task_newtask` (after `cgroup_post_fork()`, before the child first
//! runs), are built in wherever cgroups are, and a module may attach probes
//! to them (`for_each_kernel_tracepoint()`, `tracepoint_probe_register()`,
//! both exported).  A probe runs with preemption off (and the cgroup one
//! under a spinlock): it only raises `Ksm::domains_changed` and wakes the
//! thread, which does the work.  Without them (not found, or registration
//! failed) re-homing still happens at every batch.
//!
//! They are attached only while `merge_domain=cgroup`
//! (`Ksm::follow_domain_events`): with a probe on `cgroup_attach_task`,
//! every cgroup migration on the system formats its destination's path
//! under a global spinlock (`TRACE_CGROUP_PATH`), which no other mode
//! needs.  `make bench` measures that cost (`BENCH cgroup_migrate_us`).
//!
//! An owner change raises none either: `mm_update_next_owner()` hands an
//! mm to another task when its owner exits, and `sched:sched_process_exit`
//! (after `exit_mm()`) is the nearest event.  It fires for every exit on
//! the system, so its probe asks a lock-free filter of the owners mms were
//! homed by (`scan/owner_watch.rs`) before it wakes anyone.
//!
//! A plain fork raises no event and needs none: the child's mm reaches the
//! engine before the child joins its cgroup, and the scanner leaves it
//! unhomed until fork has woken the child (`OwnerKey::Forking`); the next
//! batch homes it.  `task_newtask` would not help there: it fires before
//! that wake-up.

use crate::{bindings, ksm};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use kernel::c_str;
use kernel::ffi::{c_char, c_ulong, c_void};
use kernel::prelude::*;
use kernel::str::CStr;

/// A probe of `cgroup:cgroup_attach_task`.
///
/// # Safety
///
/// Called by the tracepoint, with its arguments, while registered.
unsafe extern "C" fn attach_probe(
    _data: *mut c_void,
    _dst_cgrp: *mut bindings::cgroup,
    _path: *const c_char,
    _task: *mut bindings::task_struct,
    _threadgroup: bool,
) {
    ksm().domain_event();
}

/// A probe of `task:task_newtask`.
///
/// # Safety
///
/// Called by the tracepoint, with its arguments, while registered.
unsafe extern "C" fn newtask_probe(
    _data: *mut c_void,
    _task: *mut bindings::task_struct,
    clone_flags: c_ulong,
) {
    // `unsigned long` is 64 bits wherever clone3() has this flag.
    if clone_flags as u64 & bindings::CLONE_INTO_CGROUP != 0 {
        ksm().domain_event();
    }
}

/// A probe of `sched:sched_process_exit`: if the exiting task may own a
/// registered mm, `exit_mm()` has just handed that mm to another task
/// (maybe in another cgroup), or is ending it.
///
/// # Safety
///
/// Called by the tracepoint, with its arguments, while registered.
unsafe extern "C" fn exit_probe(_data: *mut c_void, task: *mut bindings::task_struct) {
    if crate::scan::OWNERS.may_be_watched(task as usize) {
        ksm().domain_event();
    }
}

/// How many probes are attached (debugfs `event_probes`, for the tests).
pub(crate) static EVENT_PROBES: AtomicUsize = AtomicUsize::new(0);

/// The tracepoints and their probes.
const PROBES: [(&CStr, *mut c_void); 3] = [
    (c_str!("cgroup_attach_task"), attach_probe as *mut c_void),
    (c_str!("task_newtask"), newtask_probe as *mut c_void),
    (c_str!("sched_process_exit"), exit_probe as *mut c_void),
];

/// The probes registered, each with its tracepoint; unregistered on drop.
pub(crate) struct DomainEvents {
    registered: [Option<ptr::NonNull<bindings::tracepoint>>; PROBES.len()],
}

/// `for_each_kernel_tracepoint()` callback: remembers the tracepoint whose
/// name `data` (a `(&CStr, AtomicPtr)`) asks for.
///
/// # Safety
///
/// `tp` is a built-in tracepoint; `data` the pair passed by [`find`].
unsafe extern "C" fn match_name(tp: *mut bindings::tracepoint, data: *mut c_void) {
    // SAFETY: `data` is the pair `find` passes, alive during the iteration.
    let (name, found) = unsafe { &*data.cast::<(&CStr, AtomicPtr<bindings::tracepoint>)>() };
    // SAFETY: `tp` is valid; its name is a static NUL-terminated string.
    let tp_name = unsafe { CStr::from_char_ptr(bindings::rust_ksm_tracepoint_name(tp)) };
    if tp_name.as_bytes() == name.as_bytes() {
        found.store(tp, Ordering::Relaxed);
    }
}

/// The built-in tracepoint called `name`, if there is one.
fn find(name: &CStr) -> Option<ptr::NonNull<bindings::tracepoint>> {
    let pair = (name, AtomicPtr::new(ptr::null_mut()));
    // SAFETY: `match_name` takes `pair` as it is passed; the iteration ends
    // before `pair` goes.
    unsafe {
        bindings::for_each_kernel_tracepoint(
            Some(match_name),
            ptr::from_ref(&pair).cast_mut().cast(),
        )
    };
    ptr::NonNull::new(pair.1.load(Ordering::Relaxed))
}

impl DomainEvents {
    /// Attaches the probes it can; a missing tracepoint is reported, not an
    /// error (the per-batch check still re-homes).
    pub(crate) fn new() -> Self {
        let mut registered = [None; PROBES.len()];
        for (slot, (name, probe)) in registered.iter_mut().zip(PROBES) {
            let Some(tp) = find(name) else {
                pr_info!(
                    "no tracepoint {}: cgroup moves re-homed at the next batch\n",
                    name
                );
                continue;
            };
            let (tp_ptr, data) = (tp.as_ptr(), ptr::null_mut());
            // SAFETY: `probe` has the tracepoint's prototype, the data
            // pointer first (include/trace/events/{cgroup,task,sched}.h; the
            // exact types, as kCFI checks them); it only needs `KSM`, set
            // for as long as this registration lives (see `RustKsm`).
            let err = unsafe { bindings::tracepoint_probe_register(tp_ptr, probe, data) };
            if err == 0 {
                *slot = Some(tp);
                EVENT_PROBES.fetch_add(1, Ordering::Relaxed);
            } else {
                pr_info!(
                    "tracepoint {}: error {}: cgroup moves re-homed at the next batch\n",
                    name,
                    err
                );
            }
        }
        Self { registered }
    }
}

impl DomainEvents {
    /// Whether every probe is attached.
    pub(crate) fn attached(&self) -> bool {
        self.registered.iter().all(Option::is_some)
    }
}

impl Drop for DomainEvents {
    fn drop(&mut self) {
        for (tp, (_, probe)) in self.registered.iter().zip(PROBES) {
            if let Some(tp) = tp {
                // SAFETY: registered with this probe in `new`.
                unsafe {
                    bindings::tracepoint_probe_unregister(tp.as_ptr(), probe, ptr::null_mut())
                };
                EVENT_PROBES.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // Wait for probes still running.
        // SAFETY: plain call, sleeps.
        unsafe { bindings::rust_ksm_tracepoint_synchronize_unregister() };
    }
}

// SAFETY: the tracepoint pointers are to static kernel objects, usable from
// any thread.
unsafe impl Send for DomainEvents {}
// SAFETY: as above; nothing is changed through `&self`.
unsafe impl Sync for DomainEvents {}
