// SPDX-License-Identifier: GPL-2.0

//! Unit tests of the module's pure logic, compiled for the host with the
//! standard test harness (scripts/host-tests, run by make check).  The files
//! tested are the module's own, included by path: they use neither the
//! `kernel` crate nor unsafe code (`#![deny(unsafe_code)]`), which is what
//! lets them build here unchanged.

#[allow(dead_code)]
#[path = "../../scan/smart.rs"]
mod smart;

#[allow(dead_code)]
#[path = "../../advisor.rs"]
mod advisor;

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
        a.end_scan(at.0, at.1, pages, l)
    }

    const LIMITS: Limits = Limits {
        max_cpu: 70,
        max_pages: 30_000,
        target_scan_time: 200,
    };

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
