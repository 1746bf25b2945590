// SPDX-License-Identifier: GPL-2.0

//! `rust_ksmd`: the kernel thread that scans in batches, as ksmd, and runs
//! the scan-time advisor.

use crate::advisor::{self, Advisor};
use crate::control::Run;
use crate::kmm::trace;
use crate::{bindings, scan, Ksm};
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;
use kernel::c_str;
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;
use kernel::time::msecs_to_jiffies;

/// The `rust_ksmd` kernel thread.
///
/// # Invariants
///
/// `task` is a started kthread running [`ksmd_main`] on a `Ksm` that outlives
/// this object, holding a task reference.
pub(crate) struct Ksmd {
    task: NonNull<bindings::task_struct>,
}

// SAFETY: a task reference may be used and dropped from any thread.
unsafe impl Send for Ksmd {}

// SAFETY: `&Ksmd` gives access to nothing.
unsafe impl Sync for Ksmd {}

impl Ksmd {
    pub(crate) fn start(ksm: &Ksm) -> Result<Self> {
        // SAFETY: `ksmd_main` gets `ksm`, which outlives the thread because
        // `Ksmd` is dropped (stopping the thread) before it.
        let task = unsafe {
            bindings::kthread_create_on_node(
                Some(ksmd_main),
                ptr::from_ref(ksm).cast_mut().cast::<c_void>(),
                bindings::NUMA_NO_NODE,
                c_str!("rust_ksmd").as_char_ptr(),
            )
        };
        // SAFETY: plain check of the returned pointer.
        if unsafe { bindings::IS_ERR(task.cast::<c_void>()) } {
            // SAFETY: `task` is an error pointer.
            let err = unsafe { bindings::PTR_ERR(task.cast::<c_void>()) };
            return Err(Error::from_errno(err as c_int));
        }
        // SAFETY: `task` is a valid new kthread; keep a reference for stop.
        unsafe {
            bindings::get_task_struct(task);
            bindings::set_user_nice(task, 5);
            bindings::wake_up_process(task);
        }
        // INVARIANT: started above, with a reference held.
        Ok(Self {
            // SAFETY: not an error pointer, hence not NULL.
            task: unsafe { NonNull::new_unchecked(task) },
        })
    }
}

impl Drop for Ksmd {
    fn drop(&mut self) {
        // SAFETY: the type invariant: a started kthread we hold a reference on.
        unsafe {
            bindings::kthread_stop(self.task.as_ptr());
            bindings::put_task_struct(self.task.as_ptr());
        }
    }
}

/// # Safety
///
/// `data` is the `Ksm` given to [`Ksmd::start`], valid until stopped.
unsafe extern "C" fn ksmd_main(data: *mut c_void) -> c_int {
    // SAFETY: by the function's safety requirements.
    let ksm = unsafe { &*data.cast::<Ksm>() };
    // SAFETY: called from the new kthread itself.
    unsafe { bindings::set_freezable() };
    ksm.thread();
    0
}

impl Ksm {
    /// ksmd_should_run(): merging, and something to merge, or the items of
    /// an exited mm to free (see `Ksm::reap`).
    fn should_scan(&self, run: Run) -> bool {
        run == Run::Merge && (self.reap.load(Ordering::Acquire) || !self.registry.lock().is_empty())
    }

    /// The scan-time advisor's part of a batch: note when a full scan
    /// began, and when one ended set `pages_to_scan` from it (unless
    /// `advisor_mode` changed meanwhile).
    fn advise(
        &self,
        advisor: &mut Advisor,
        limits: advisor::Limits,
        marks: scan::PassMarks,
        batch_start: i64,
        pages: u32,
    ) {
        if marks.began {
            advisor.start_scan(batch_start);
        }
        if !marks.ended {
            return;
        }
        // SAFETY: plain call; `current` is this thread, whose own runtime
        // only it updates.
        let (now, cpu_ns) = unsafe {
            (
                bindings::ktime_get(),
                (*bindings::get_current()).se.sum_exec_runtime,
            )
        };
        let advice = advisor.end_scan(now, cpu_ns, u64::from(pages), limits);
        trace::advisor(advice.scan_time, advice.pages, advice.cpu_percent);
        self.control.lock().set_advised_pages_to_scan(advice.pages);
    }

    /// The body of `rust_ksmd`.
    fn thread(&self) {
        let mut advisor = Advisor::default();
        loop {
            let mut control = self.control.lock();
            if control.stopping {
                return;
            }
            let (run, sleep) = (control.run, control.sleep_millisecs);
            let mut params = control.scan_params();
            if control.take_advisor_reset() {
                advisor = Advisor::default();
            }
            let limits = control.advisor_limits();
            drop(control);

            let scanning = self.should_scan(run);
            if scanning {
                // SAFETY: plain call.
                let batch_start = unsafe { bindings::ktime_get() };
                let mut scan = self.scan_lock();
                // run=0 waits for the batch in progress by taking the scan
                // lock (as upstream's ksm_thread_mutex), so a batch starts
                // only if run is still 1 under it.
                if self.control.lock().run == run {
                    // This batch reaps: a pass with no mm left ends at once
                    // and frees the items of the mms gone.
                    self.reap.store(false, Ordering::Release);
                    // The batch begins by re-homing (ScanState::check_domains).
                    params.rehome_all = self.domains_changed.swap(false, Ordering::AcqRel)
                        || !self.domain_events.load(Ordering::Relaxed);
                    let marks = scan.scan_batch(&self.registry, &self.stats, params);
                    drop(scan);
                    if marks.domains_waiting {
                        // Come back after sleep_millisecs, mms or not.
                        self.reap.store(true, Ordering::Release);
                    }
                    if let Some(limits) = limits {
                        self.advise(&mut advisor, limits, marks, batch_start, params.pages);
                    }
                }
            }
            // SAFETY: called from the freezable kthread with no lock held.
            unsafe { bindings::rust_ksm_try_to_freeze() };

            // Sleep until a knob changes, an mm arrives, or (when scanning)
            // sleep_millisecs pass; then go round to re-read everything.
            let mut control = self.control.lock();
            if control.stopping || control.sleep_millisecs != sleep || control.run != run {
                continue;
            }
            if scanning && self.domains_changed.load(Ordering::Acquire) {
                // A process changed merge domain: re-home it now.  (Raised
                // between here and the wait below it waits for the next
                // batch, as with no event at all.)
                continue;
            }
            if scanning && sleep == 0 {
                // As ksmd: no sleep at all (a zero timeout would still
                // sleep until the next tick).
                drop(control);
                // SAFETY: no lock held.
                unsafe { bindings::rust_ksm_cond_resched() };
            } else if scanning {
                let _ = self
                    .wake
                    .wait_interruptible_timeout(&mut control, msecs_to_jiffies(sleep));
            } else if !self.should_scan(control.run) {
                let _ = self.wake.wait_interruptible(&mut control);
            }
        }
    }
}
