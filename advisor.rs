// SPDX-License-Identifier: GPL-2.0

//! The scan-time advisor (`advisor_mode=scan-time`), after 6.12's
//! scan_time_advisor(): at the end of each full scan it sets
//! `pages_to_scan` so that a full scan takes about
//! `advisor_target_scan_time` seconds, smoothed by an exponentially weighted
//! moving average of the change, and kept within the CPU share
//! (`advisor_max_cpu` percent, at least 10) and `advisor_max_pages_to_scan`.
//!
//! Pure arithmetic: the caller reads the clock and the CPU time.

#![deny(unsafe_code)]

/// Least CPU percent the advisor plans for (upstream's KSM_ADVISOR_MIN_CPU).
const MIN_CPU: u64 = 10;

/// Weight of the newest change, percent (upstream's EWMA_WEIGHT).
const EWMA_WEIGHT: u64 = 30;

/// The advisor's knobs.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    /// `advisor_max_cpu`, percent.
    pub(crate) max_cpu: u64,
    /// `advisor_max_pages_to_scan`.
    pub(crate) max_pages: u64,
    /// `advisor_target_scan_time`, seconds (at least 1).
    pub(crate) target_scan_time: u64,
}

/// What the advisor remembers from one full scan to the next (upstream's
/// `struct advisor_ctx`).  Reset when `advisor_mode` changes.
#[derive(Default)]
pub(crate) struct Advisor {
    /// When the current full scan began (ktime, ns).
    start_ns: i64,
    /// Length of the previous full scan, seconds (0: none yet).
    scan_time: u64,
    /// Smoothed change, percent.
    change: u64,
    /// The scanning thread's CPU time at the end of the previous scan, ns.
    cpu_ns: u64,
}

/// What the advisor decided at the end of a full scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Advice {
    /// The next `pages_to_scan`.
    pub(crate) pages: u64,
    /// The scan's length in whole seconds (at least 1), and the CPU percent
    /// it used: what upstream's `ksm_advisor` tracepoint reports with it.
    pub(crate) scan_time: u64,
    pub(crate) cpu_percent: u64,
}

impl Advisor {
    /// A full scan begins at `now_ns`.
    pub(crate) fn start_scan(&mut self, now_ns: i64) {
        self.start_ns = now_ns;
    }

    /// A full scan ended at `now_ns`, the scanning thread having run for
    /// `cpu_ns` in all; `pages` is the current `pages_to_scan`.  Returns the
    /// next `pages_to_scan`, with what it was computed from.
    pub(crate) fn end_scan(&mut self, now_ns: i64, cpu_ns: u64, pages: u64, l: Limits) -> Advice {
        // Whole seconds, at least one.
        let scan_time = (now_ns.saturating_sub(self.start_ns).max(0) as u64 / 1_000_000_000).max(1);
        let cpu_ms = cpu_ns.saturating_sub(self.cpu_ns) / 1_000_000;
        let cpu_percent = (cpu_ms.saturating_mul(100) / (scan_time * 1000)).max(1);
        let last_scan_time = if self.scan_time != 0 {
            self.scan_time
        } else {
            scan_time
        };
        // Scan time as a percentage of the target, and of the last one.
        let factor = (l.target_scan_time.max(1).saturating_mul(100) / scan_time).max(1);
        let change = (scan_time * 100 / last_scan_time).max(1);
        let change = ((100 - EWMA_WEIGHT) * self.change + EWMA_WEIGHT * change) / 100;

        let mut next = pages.saturating_mul(100) / factor;
        next = next.saturating_mul(change) / 100;
        // Pages per CPU percent in the last scan, to cap the next one's
        // CPU share.
        let per_cpu_percent = (pages / cpu_percent).max(1);
        next = next.min(per_cpu_percent.saturating_mul(l.max_cpu));
        next = next.max(per_cpu_percent.saturating_mul(MIN_CPU));
        next = next.min(l.max_pages);

        self.change = change;
        self.scan_time = scan_time;
        self.cpu_ns = cpu_ns;
        Advice {
            pages: next,
            scan_time,
            cpu_percent,
        }
    }
}
