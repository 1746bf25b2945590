// SPDX-License-Identifier: GPL-2.0

//! Unit tests of the module's pure logic, compiled for the host with the
//! standard test harness (scripts/host-tests, run by make check).  The files
//! tested are the module's own, included by path: they use neither the
//! `kernel` crate nor unsafe code (`#![deny(unsafe_code)]`), which is what
//! lets them build here unchanged.

#[allow(dead_code)]
#[path = "../../scan/smart.rs"]
mod smart;

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
