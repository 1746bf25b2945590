// SPDX-License-Identifier: GPL-2.0

//! Page contents compared a block at a time.
//!
//! The compares are the largest part of a merge's CPU (`make bench`'s
//! breakdown).  The generic memcmp_pages() that the built-in KSM uses takes
//! one word and one branch per loop iteration; these read 64 bytes per
//! iteration with one branch, and look for the first differing byte only in
//! a block that differs.  Pure logic over a [`Words`] source, so that the
//! host tests (selftests/host) check the order against a bytewise memcmp.

#![deny(unsafe_code)]

/// Words per block: 64 bytes.
const BLOCK: usize = 8;

/// Something that reads the `i`-th 64-bit word of a page's contents.
pub(crate) trait Words: Copy {
    fn word(self, i: usize) -> u64;
}

#[inline(always)]
fn block<W: Words>(w: W, first: usize) -> [u64; BLOCK] {
    core::array::from_fn(|i| w.word(first + i))
}

/// Orders the first `words` words of `a` and `b` as memcmp() orders their
/// bytes: negative, zero or positive.  `words` is a multiple of 8.
pub(crate) fn compare<W: Words>(a: W, b: W, words: usize) -> i32 {
    for first in (0..words).step_by(BLOCK) {
        let (x, y) = (block(a, first), block(b, first));
        let diff = x.iter().zip(y.iter()).fold(0, |acc, (p, q)| acc | (p ^ q));
        if diff == 0 {
            continue;
        }
        for (p, q) in x.iter().zip(y.iter()) {
            if p != q {
                // memcmp() orders by the first differing byte, the lowest
                // addressed: on a little-endian machine the least
                // significant one, which to_be() makes the most.
                return if p.to_be() < q.to_be() { -1 } else { 1 };
            }
        }
    }
    0
}

/// Whether the first `words` words of `a` are all zero (a multiple of 8).
pub(crate) fn all_zero<W: Words>(a: W, words: usize) -> bool {
    (0..words)
        .step_by(BLOCK)
        .all(|first| block(a, first).iter().fold(0, |acc, w| acc | w) == 0)
}
