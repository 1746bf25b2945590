// SPDX-License-Identifier: GPL-2.0

//! Unit tests of the module's pure logic, compiled for the host with the
//! standard test harness (scripts/host-tests, run by make check).  The files
//! tested are the module's own, included by path: they use no unsafe code
//! (`#![deny(unsafe_code)]`) and of the `kernel` crate only its error
//! codes, which [`prelude`] stands in for, which is what lets them build
//! here unchanged.

#[allow(dead_code)]
#[path = "../../scan/smart.rs"]
mod smart;

#[allow(dead_code)]
#[path = "../../advisor.rs"]
mod advisor;

#[allow(dead_code)]
#[path = "../../control.rs"]
mod control;

#[allow(dead_code)]
#[path = "../../kmm/words.rs"]
mod words;

#[allow(dead_code)]
#[path = "../../scan/domain.rs"]
mod domain;

#[path = "../../offline_gate.rs"]
mod offline_gate;

// OWNERS, the module's one filter, is not used here.
#[allow(dead_code)]
#[path = "../../scan/owner_watch.rs"]
mod owner_watch;

// `kernel::prelude::*` in the included files is this crate's `prelude`.
extern crate self as kernel;

/// What the included files take from the kernel crate's prelude.
pub mod prelude {
    /// A negative errno, as `kernel::error::Error`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Error(i32);

    pub type Result<T = (), E = Error> = core::result::Result<T, E>;

    pub const EBUSY: Error = Error(-16);
    pub const EINVAL: Error = Error(-22);
}

/// `crate::scan::ScanParams`, which control.rs fills in (the module's is in
/// a file that needs the kernel), and the scanner's pure files.
mod scan {
    pub(crate) use super::domain::DomainMode;

    #[allow(dead_code)]
    pub(crate) struct ScanParams {
        pub(crate) pages: u32,
        pub(crate) max_page_sharing: usize,
        pub(crate) use_zero_pages: bool,
        pub(crate) smart_scan: bool,
        pub(crate) chains_prune_millisecs: u32,
        pub(crate) rehome_all: bool,
    }
}

mod smart_scan {
    use super::smart::{should_skip, skip_age};

    /// The scans (1-based) at which a page that never merges is looked at.
    fn looked_at(scans: u32) -> Vec<u32> {
        let (mut age, mut remaining) = (0u8, 0u8);
        (1..=scans)
            .filter(|_| !should_skip(&mut age, &mut remaining))
            .collect()
    }

    #[test]
    fn schedule_matches_upstream() {
        // Every scan until the fourth, then gaps of 1, 2, 4 and from then
        // on 8 skipped scans (mm/ksm.c: skip_age()).
        assert_eq!(looked_at(50), vec![1, 2, 3, 4, 6, 9, 14, 23, 32, 41, 50]);
    }

    #[test]
    fn skip_age_steps() {
        let steps: Vec<u8> = (0..=12).map(skip_age).collect();
        assert_eq!(steps, vec![1, 1, 1, 1, 2, 2, 4, 4, 4, 8, 8, 8, 8]);
        assert_eq!(skip_age(u8::MAX), 8);
    }

    #[test]
    fn age_saturates() {
        let (mut age, mut remaining) = (u8::MAX - 1, 0u8);
        for _ in 0..20 {
            should_skip(&mut age, &mut remaining);
        }
        assert_eq!(age, u8::MAX);
        // Still one look in nine.
        let looks = (0..90)
            .filter(|_| !should_skip(&mut age, &mut remaining))
            .count();
        assert_eq!(looks, 10);
    }
}

mod scan_time_advisor {
    use super::advisor::{Advisor, Limits};

    const S: i64 = 1_000_000_000;

    /// One full scan of `secs` seconds using `cpu_secs` of CPU, at
    /// `pages_to_scan` = `pages`; the advisor's next `pages_to_scan`.
    fn scan(
        a: &mut Advisor,
        at: &mut (i64, u64),
        secs: i64,
        cpu_secs: u64,
        pages: u64,
        l: Limits,
    ) -> u64 {
        a.start_scan(at.0);
        at.0 += secs * S;
        at.1 += cpu_secs * S as u64;
        a.end_scan(at.0, at.1, pages, l).pages
    }

    const LIMITS: Limits = Limits {
        max_cpu: 70,
        max_pages: 30_000,
        target_scan_time: 200,
    };

    #[test]
    fn reports_scan_time_and_cpu() {
        // What the ksm_advisor tracepoint shows: 10 s, 10% CPU.
        let mut a = Advisor::default();
        a.start_scan(0);
        let advice = a.end_scan(10 * S, S as u64, 100, LIMITS);
        assert_eq!((advice.scan_time, advice.cpu_percent), (10, 10));
    }

    #[test]
    fn first_scan_keeps_the_cpu_floor() {
        // 10 s, 10% CPU, 100 pages: scan_time_advisor() gives
        // 100 * 100 / 2000 = 5, times the EWMA change 30% = 1, raised to
        // the 10% CPU floor: (100 / 10) * 10 = 100.
        let mut a = Advisor::default();
        assert_eq!(scan(&mut a, &mut (0, 0), 10, 1, 100, LIMITS), 100);
    }

    #[test]
    fn converges_to_the_target_scan_time() {
        // A scan of half the target time, 50% CPU: the smoothed change
        // climbs to 100% and pages_to_scan settles at half (500 of 1000).
        let mut a = Advisor::default();
        let mut at = (0, 0);
        let mut next = 0;
        for _ in 0..40 {
            next = scan(&mut a, &mut at, 100, 50, 1000, LIMITS);
        }
        assert!((480..=500).contains(&next), "{next}");
    }

    #[test]
    fn capped_by_cpu_and_max_pages() {
        // Scans ten times the target: the rate would grow tenfold, but
        // 100% CPU at 1000 pages allows 10 pages per CPU percent, 70% of
        // them: 700.
        let mut a = Advisor::default();
        let mut at = (0, 0);
        let slow = Limits {
            target_scan_time: 10,
            ..LIMITS
        };
        for _ in 0..40 {
            assert!(scan(&mut a, &mut at, 100, 100, 1000, slow) <= 700);
        }
        // And by advisor_max_pages_to_scan.
        let few = Limits {
            max_pages: 300,
            ..slow
        };
        assert_eq!(scan(&mut a, &mut at, 100, 100, 1000, few), 300);
    }
}

/// The knobs' rules: the values and errors of /sys/kernel/mm/ksm.
mod knobs {
    use super::control::{across_nodes_from_knob, parse_advisor_mode, Control, Run};
    use super::prelude::{EBUSY, EINVAL};

    #[test]
    fn run_takes_0_1_2() {
        assert!(Run::from_knob(0) == Ok(Run::Stop));
        assert!(Run::from_knob(1) == Ok(Run::Merge));
        assert!(Run::from_knob(2) == Ok(Run::Unmerge));
        assert!(Run::from_knob(3).is_err());
    }

    #[test]
    fn advisor_mode_words() {
        assert_eq!(parse_advisor_mode(b"scan-time"), Ok(true));
        assert_eq!(parse_advisor_mode(b"scan-time\n"), Ok(true));
        assert_eq!(parse_advisor_mode(b"none\n"), Ok(false));
        for bad in [
            &b""[..],
            b"\n",
            b"scan-time\n\n",
            b"Scan-time",
            b"none ",
            b"[none]",
        ] {
            assert_eq!(parse_advisor_mode(bad), Err(EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn merge_across_nodes_is_0_or_1() {
        assert_eq!(across_nodes_from_knob(0), Ok(false));
        assert_eq!(across_nodes_from_knob(1), Ok(true));
        assert_eq!(across_nodes_from_knob(2), Err(EINVAL));
        assert_eq!(across_nodes_from_knob(u64::MAX), Err(EINVAL));
    }

    #[test]
    fn max_page_sharing_at_least_2_and_busy_while_shared() {
        let mut c = Control::new();
        assert_eq!(c.set_max_page_sharing(1, 0), Err(EINVAL));
        assert_eq!(c.set_max_page_sharing(0, 0), Err(EINVAL));
        assert_eq!(c.set_max_page_sharing(2, 0), Ok(()));
        assert_eq!(c.max_page_sharing, 2);
        // A change while pages are shared: EBUSY, nothing changes ...
        assert_eq!(c.set_max_page_sharing(3, 5), Err(EBUSY));
        assert_eq!(c.max_page_sharing, 2);
        // ... but writing the same value is fine (upstream compares first).
        assert_eq!(c.set_max_page_sharing(2, 5), Ok(()));
    }

    #[test]
    fn advisor_owns_pages_to_scan() {
        let mut c = Control::new();
        assert_eq!(c.pages_to_scan, 100);
        assert_eq!(c.set_pages_to_scan(1000), Ok(()));
        c.set_advisor_mode(true);
        // set_advisor_defaults(): the advisor starts at its minimum ...
        assert_eq!(c.pages_to_scan, 500);
        assert!(c.take_advisor_reset());
        assert!(!c.take_advisor_reset());
        // ... and a write of pages_to_scan is refused while it runs.
        assert_eq!(c.set_pages_to_scan(7), Err(EINVAL));
        assert_eq!(c.pages_to_scan, 500);
        c.set_advised_pages_to_scan(4000);
        assert_eq!(c.pages_to_scan, 4000);
        // Turned off: back to the default, and writable.
        c.set_advisor_mode(false);
        assert_eq!(c.pages_to_scan, 100);
        // An advice computed before the switch is dropped.
        c.set_advised_pages_to_scan(4000);
        assert_eq!(c.pages_to_scan, 100);
        assert_eq!(c.set_pages_to_scan(7), Ok(()));
    }

    #[test]
    fn advisor_target_scan_time_at_least_1() {
        let mut c = Control::new();
        assert_eq!(c.set_advisor_target_scan_time(0), Err(EINVAL));
        assert_eq!(c.advisor_target_scan_time, 200);
        assert_eq!(c.set_advisor_target_scan_time(1), Ok(()));
        assert_eq!(c.advisor_target_scan_time, 1);
    }
}

mod page_compare {
    use super::words::{all_zero, compare, Words};

    const PAGE_WORDS: usize = 512;

    #[derive(Clone, Copy)]
    struct Page<'a>(&'a [u64]);

    impl Words for Page<'_> {
        fn word(self, i: usize) -> u64 {
            self.0[i]
        }
    }

    fn bytes(p: &[u64]) -> Vec<u8> {
        p.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    /// The sign of a bytewise memcmp(), the order compare() must give.
    fn memcmp_sign(a: &[u64], b: &[u64]) -> i32 {
        match bytes(a).cmp(&bytes(b)) {
            core::cmp::Ordering::Less => -1,
            core::cmp::Ordering::Equal => 0,
            core::cmp::Ordering::Greater => 1,
        }
    }

    /// A page of a repeating pattern.
    fn page(seed: u64) -> Vec<u64> {
        (0..PAGE_WORDS as u64)
            .map(|i| (i + seed).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect()
    }

    #[test]
    fn equal_pages_compare_equal() {
        let (a, b) = (page(1), page(1));
        assert_eq!(compare(Page(&a), Page(&b), PAGE_WORDS), 0);
    }

    #[test]
    fn order_is_memcmp_order_at_every_byte() {
        // One byte differs, in each position of the page, each way; and
        // two bytes differ, the first deciding even where the second,
        // later in the same word or block, goes the other way.
        let base = page(7);
        let bytes_per_page = PAGE_WORDS * 8;
        for pos in 0..bytes_per_page {
            for delta in [1u8, 0x80] {
                let mut b = bytes(&base);
                b[pos] = b[pos].wrapping_add(delta);
                if pos + 1 < bytes_per_page {
                    b[pos + 1] = b[pos + 1].wrapping_sub(delta);
                }
                let other: Vec<u64> = b
                    .chunks_exact(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                    .collect();
                let want = memcmp_sign(&base, &other);
                assert_eq!(
                    compare(Page(&base), Page(&other), PAGE_WORDS),
                    want,
                    "byte {pos}"
                );
                assert_eq!(
                    compare(Page(&other), Page(&base), PAGE_WORDS),
                    -want,
                    "byte {pos}"
                );
            }
        }
    }

    #[test]
    fn zero_pages() {
        let mut p = vec![0u64; PAGE_WORDS];
        assert!(all_zero(Page(&p), PAGE_WORDS));
        for i in [0, 7, 8, 255, PAGE_WORDS - 1] {
            p[i] = 1 << 63;
            assert!(!all_zero(Page(&p), PAGE_WORDS), "word {i}");
            p[i] = 0;
        }
    }
}

mod merge_domain_knob {
    use super::prelude::EINVAL;
    use super::scan::DomainMode;

    #[test]
    fn words() {
        assert_eq!(DomainMode::parse(b"global"), Ok(DomainMode::Global));
        assert_eq!(DomainMode::parse(b"user\n"), Ok(DomainMode::User));
        assert_eq!(DomainMode::parse(b"cgroup"), Ok(DomainMode::Cgroup));
        for bad in [
            &b""[..],
            b"Global",
            b"user\n\n",
            b"cgroups",
            b" cgroup",
            b"1",
        ] {
            assert_eq!(DomainMode::parse(bad), Err(EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn shown_with_the_current_one_in_brackets() {
        for mode in [DomainMode::Global, DomainMode::User, DomainMode::Cgroup] {
            let shown = mode.knob();
            let current: Vec<&str> = shown
                .split(' ')
                .filter(|w| w.starts_with('['))
                .map(|w| w.trim_matches(|c| c == '[' || c == ']'))
                .collect();
            assert_eq!(current.len(), 1, "{shown}");
            assert_eq!(
                DomainMode::parse(current[0].as_bytes()),
                Ok(mode),
                "{shown}"
            );
        }
    }
}

/// The memory notifier's rule (offline_gate.rs): the scan lock is closed
/// from a MEM_GOING_OFFLINE to its end, and an end without its begin opens
/// nothing.  A counter instead of the gate wrapped at the first such end
/// (issue 21 item 1: rust_ksmd, run=0/2, domains reads and rmmod hung).
mod offline {
    use super::offline_gate::OfflineGate;

    const A: (usize, usize) = (0x10_0000, 0x10_8000);
    const B: (usize, usize) = (0x10_8000, 0x11_0000);

    #[test]
    fn begin_then_end_or_cancel() {
        let mut g = OfflineGate::new();
        assert!(!g.is_closed());
        g.begin(A);
        assert!(g.is_closed());
        assert!(g.end(A));
        assert!(!g.is_closed());
        // The cancel of a refused offline is an end like MEM_OFFLINE.
        g.begin(B);
        assert!(g.end(B));
        assert!(!g.is_closed());
    }

    #[test]
    fn end_never_begun_changes_nothing() {
        // insmod during an offline: the end arrives without its begin.
        let mut g = OfflineGate::new();
        assert!(!g.end(A));
        assert!(!g.is_closed());
        // Then an offline of our own still closes and opens the gate.
        g.begin(A);
        assert!(g.is_closed());
        assert!(g.end(A));
        assert!(!g.is_closed());
    }

    #[test]
    fn cancel_after_a_refused_begin_does_not_open_another() {
        // An earlier notifier refused B's MEM_GOING_OFFLINE (we never saw
        // it) but every notifier gets its MEM_CANCEL_OFFLINE; meanwhile the
        // gate is closed for A, which has not ended.
        let mut g = OfflineGate::new();
        g.begin(A);
        assert!(!g.end(B));
        assert!(g.is_closed());
        assert!(g.end(A));
        assert!(!g.is_closed());
    }

    #[test]
    fn second_end_is_ignored() {
        let mut g = OfflineGate::new();
        g.begin(A);
        assert!(g.end(A));
        assert!(!g.end(A));
        assert!(!g.is_closed());
    }
}

mod owner_changes {
    use super::owner_watch::{OwnerSet, OwnerWatch};

    /// task_struct-like addresses: slab objects ~10 KiB apart.
    fn task(i: usize) -> usize {
        0xffff_8880_0400_0000 + i * 0x2880
    }

    #[test]
    fn a_watched_owner_is_always_seen() {
        let w = OwnerWatch::new();
        for i in 0..1000 {
            w.watch(task(i), None);
        }
        assert!((0..1000).all(|i| w.may_be_watched(task(i))));
        // No owner (an exiting mm) sets nothing.
        let empty = OwnerWatch::new();
        empty.watch(0, None);
        assert!(!(0..1000).any(|i| empty.may_be_watched(task(i))));
    }

    #[test]
    fn few_false_alarms_for_other_exits() {
        // 50 owners watched: exits of 10,000 other tasks wake the scanner
        // rarely (4096 bits: about 1.2% of them).
        let w = OwnerWatch::new();
        for i in 0..50 {
            w.watch(task(i), None);
        }
        let alarms = (1000..11_000)
            .filter(|&i| w.may_be_watched(task(i)))
            .count();
        assert!(alarms < 400, "{alarms} false alarms in 10,000 exits");
    }

    #[test]
    fn replace_keeps_the_owners_met_and_drops_the_rest() {
        let w = OwnerWatch::new();
        let mut set = OwnerSet::new();
        for i in 0..100 {
            w.watch(task(i), (i % 2 == 0).then_some(&mut set));
        }
        w.replace(&set);
        assert!((0..100).step_by(2).all(|i| w.may_be_watched(task(i))));
        let kept = (1..100)
            .step_by(2)
            .filter(|&i| w.may_be_watched(task(i)))
            .count();
        assert!(kept < 10, "{kept} of 50 dropped owners still watched");
    }
}
