// SPDX-License-Identifier: GPL-2.0

//! smart_scan's schedule (upstream's should_skip_rmap_item() and
//! skip_age()): a page scanned a few times without merging is looked at
//! less and less often.  Pure arithmetic on the item's two counters, unit
//! tested on the host (selftests/host).
//!
//! Each item counts its scans (`age`) and the scans it may still be skipped
//! for (`remaining_skips`), two bytes in the item's padding; a page that is
//! not a KSM page is skipped from its fourth scan on, every other scan at
//! first, one in nine in the end, exactly as should_skip_rmap_item(), and
//! leaves the trees when skipped.  `rust_ksm_merge` 21 checks the count
//! against a model of that rule, which the built-in KSM matches too.

#![deny(unsafe_code)]

/// How many scans a page that has been scanned `age` times without merging
/// may be skipped for before it is looked at again.
pub(crate) fn skip_age(age: u8) -> u8 {
    match age {
        ..=3 => 1,
        4..=5 => 2,
        6..=8 => 4,
        _ => 8,
    }
}

/// One scan of a page that is not a KSM page (those are never skipped):
/// ages the page and tells whether to skip it this time.  After its third
/// scan it is skipped every other scan, from its sixth one in three, from
/// its ninth one in five, from then on one in nine.
pub(crate) fn should_skip(age: &mut u8, remaining_skips: &mut u8) -> bool {
    let seen = *age;
    *age = seen.saturating_add(1);
    // Young pages get their chance at every phase of merging.
    if seen < 3 {
        return false;
    }
    if *remaining_skips == 0 {
        *remaining_skips = skip_age(seen);
        return false;
    }
    *remaining_skips -= 1;
    true
}
