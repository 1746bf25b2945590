// SPDX-License-Identifier: GPL-2.0

//! The module's debugfs directory (see [`Debugfs`]).

use crate::{bindings, domain_events, scan};
use core::ptr;
use kernel::c_str;

/// /sys/kernel/debug/rust_ksm: internal counts for the tests (not ABI).
/// `registered_mms` is how many mms the engine holds, `event_probes` how
/// many cgroup event probes are attached (`domain_events.rs`).
pub(crate) struct Debugfs(*mut bindings::dentry);

// SAFETY: a debugfs dentry may be removed from any thread.
unsafe impl Send for Debugfs {}

// SAFETY: `&Debugfs` gives access to nothing.
unsafe impl Sync for Debugfs {}

impl Debugfs {
    pub(crate) fn new() -> Self {
        // SAFETY: plain calls; debugfs errors are not failures (the
        // functions take error pointers and do nothing with them).  The
        // counters are statics, valid for as long as the file exists.
        unsafe {
            let dir =
                bindings::debugfs_create_dir(c_str!("rust_ksm").as_char_ptr(), ptr::null_mut());
            bindings::debugfs_create_ulong(
                c_str!("registered_mms").as_char_ptr(),
                0o444,
                dir,
                scan::REGISTERED_MMS.as_ptr().cast(),
            );
            bindings::debugfs_create_ulong(
                c_str!("event_probes").as_char_ptr(),
                0o444,
                dir,
                domain_events::EVENT_PROBES.as_ptr().cast(),
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
