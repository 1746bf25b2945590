// SPDX-License-Identifier: GPL-2.0

//! The knobs' values: what /sys/kernel/mm/rust_ksm sets and `rust_ksmd`
//! reads, under the engine's control lock.  Plain data and the rules that
//! tie knobs together; no locks, no kernel calls.

#![deny(unsafe_code)]

use crate::advisor;
use crate::scan::{DomainMode, ScanParams};
use kernel::prelude::*;

/// `run` values, as /sys/kernel/mm/ksm/run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    Stop = 0,
    Merge = 1,
    Unmerge = 2,
}

impl Run {
    pub(crate) fn from_knob(value: u32) -> Result<Self> {
        match value {
            0 => Ok(Run::Stop),
            1 => Ok(Run::Merge),
            2 => Ok(Run::Unmerge),
            _ => Err(EINVAL),
        }
    }
}

/// An `advisor_mode` write: `scan-time` (true) or `none` (false), compared
/// as upstream's sysfs_streq() compares (a trailing newline is allowed).
pub(crate) fn parse_advisor_mode(buf: &[u8]) -> Result<bool> {
    let word = buf.strip_suffix(b"\n").unwrap_or(buf);
    match word {
        b"scan-time" => Ok(true),
        b"none" => Ok(false),
        _ => Err(EINVAL),
    }
}

/// A `merge_across_nodes` write: 0 or 1 (upstream parses an unsigned long
/// and refuses anything else).
pub(crate) fn across_nodes_from_knob(value: u64) -> Result<bool> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(EINVAL),
    }
}

/// `pages_to_scan` at load, and again when the advisor is turned off.
const DEFAULT_PAGES_TO_SCAN: u32 = 100;

/// Knob values, read by the thread under the control lock.
pub(crate) struct Control {
    pub(crate) run: Run,
    pub(crate) pages_to_scan: u32,
    pub(crate) sleep_millisecs: u32,
    pub(crate) max_page_sharing: u32,
    pub(crate) use_zero_pages: bool,
    pub(crate) smart_scan: bool,
    pub(crate) stable_node_chains_prune_millisecs: u32,
    /// A copy of the trees' setting, changed under the scan lock.
    pub(crate) merge_across_nodes: bool,
    /// Copies of the scanner's settings, changed under the scan lock.
    pub(crate) merge_domain: DomainMode,
    pub(crate) merge_domain_depth: u32,
    /// `advisor_mode`: whether the scan-time advisor sets `pages_to_scan`.
    pub(crate) advisor_scan_time: bool,
    /// Set when `advisor_mode` changes: the thread starts a new advisor.
    advisor_reset: bool,
    pub(crate) advisor_max_cpu: u64,
    pub(crate) advisor_min_pages_to_scan: u64,
    pub(crate) advisor_max_pages_to_scan: u64,
    pub(crate) advisor_target_scan_time: u64,
    /// Set once at unload, before the thread is stopped.
    pub(crate) stopping: bool,
}

impl Control {
    /// The knobs at load.
    pub(crate) const fn new() -> Self {
        Self {
            run: Run::Stop,
            pages_to_scan: DEFAULT_PAGES_TO_SCAN,
            sleep_millisecs: 20,
            max_page_sharing: 256,
            use_zero_pages: false,
            smart_scan: true,
            stable_node_chains_prune_millisecs: 2000,
            merge_across_nodes: true,
            merge_domain: DomainMode::Global,
            merge_domain_depth: 1,
            advisor_scan_time: false,
            advisor_reset: false,
            advisor_max_cpu: 70,
            advisor_min_pages_to_scan: 500,
            advisor_max_pages_to_scan: 30000,
            advisor_target_scan_time: 200,
            stopping: false,
        }
    }

    /// A `pages_to_scan` write.
    pub(crate) fn set_pages_to_scan(&mut self, pages: u32) -> Result {
        // The scan-time advisor owns it (as upstream).
        if self.advisor_scan_time {
            return Err(EINVAL);
        }
        self.pages_to_scan = pages;
        Ok(())
    }

    /// A `max_page_sharing` write: at least 2 (a KSM page that cannot be
    /// shared saves nothing); a change needs no page shared (`EBUSY`), as
    /// the stable tree's chains are laid out for the old value.
    pub(crate) fn set_max_page_sharing(&mut self, value: u32, pages_shared: usize) -> Result {
        if value < 2 {
            return Err(EINVAL);
        }
        if self.max_page_sharing != value {
            if pages_shared != 0 {
                return Err(EBUSY);
            }
            self.max_page_sharing = value;
        }
        Ok(())
    }

    /// An `advisor_target_scan_time` write, in seconds: at least 1.
    pub(crate) fn set_advisor_target_scan_time(&mut self, seconds: u64) -> Result {
        if seconds < 1 {
            return Err(EINVAL);
        }
        self.advisor_target_scan_time = seconds;
        Ok(())
    }

    /// An `advisor_mode` write.
    pub(crate) fn set_advisor_mode(&mut self, scan_time: bool) {
        if self.advisor_scan_time != scan_time {
            // Upstream's set_advisor_defaults().
            self.advisor_scan_time = scan_time;
            self.advisor_reset = true;
            self.pages_to_scan = if scan_time {
                u32::try_from(self.advisor_min_pages_to_scan).unwrap_or(u32::MAX)
            } else {
                DEFAULT_PAGES_TO_SCAN
            };
        }
    }

    /// Whether `advisor_mode` changed since the last call: the thread then
    /// starts a new advisor.
    pub(crate) fn take_advisor_reset(&mut self) -> bool {
        core::mem::take(&mut self.advisor_reset)
    }

    /// The advisor's `pages_to_scan` at the end of a full scan, taken
    /// unless `advisor_mode` changed meanwhile.
    pub(crate) fn set_advised_pages_to_scan(&mut self, pages: u64) {
        if self.advisor_scan_time && !self.advisor_reset {
            self.pages_to_scan = u32::try_from(pages).unwrap_or(u32::MAX);
        }
    }

    /// The knobs a batch runs with.
    pub(crate) fn scan_params(&self) -> ScanParams {
        ScanParams {
            pages: self.pages_to_scan,
            max_page_sharing: self.max_page_sharing as usize,
            use_zero_pages: self.use_zero_pages,
            smart_scan: self.smart_scan,
            chains_prune_millisecs: self.stable_node_chains_prune_millisecs,
            rehome_all: false,
        }
    }

    /// The advisor's knobs, when the scan-time advisor is on.
    pub(crate) fn advisor_limits(&self) -> Option<advisor::Limits> {
        self.advisor_scan_time.then_some(advisor::Limits {
            max_cpu: self.advisor_max_cpu,
            max_pages: self.advisor_max_pages_to_scan,
            target_scan_time: self.advisor_target_scan_time,
        })
    }
}
