// SPDX-License-Identifier: GPL-2.0

//! Handing KSM pages between engines without unmerging them.
//!
//! A KSM folio belongs to the engine whose stable node its `mapping`
//! points to, and the core sends each per-folio hook (rmap walk,
//! migration, swap-in) to that engine.  So pages change hands one at a
//! time, under the folio lock: at registration the core offers every page
//! the built-in KSM merged to the `adopt` hook (`crate::engine`), and before
//! unregistering the engine hands each of its own to the built-in KSM
//! ([`Handback::hand_back`]).  Nothing is copied, and a page that cannot
//! change hands (out of memory) stays tracked by the engine it had.

use super::LockedPage;
use crate::bindings;
use core::ptr::NonNull;
use kernel::error::to_result;
use kernel::prelude::*;

/// One mapping of a KSM page, as the core's `struct ksm_mapping`.
pub(crate) type Mapping = bindings::ksm_mapping;

/// A mapping at `address` of `mm`, in a VMA of `anon_vma`, at linear page
/// index `pgoff` there.
pub(crate) fn mapping(
    mm: NonNull<bindings::mm_struct>,
    address: usize,
    anon_vma: *mut bindings::anon_vma,
    pgoff: usize,
) -> Mapping {
    Mapping {
        mm: mm.as_ptr(),
        address,
        anon_vma,
        pgoff: pgoff as _,
    }
}

/// A handback in progress (`ksm_handback_begin()` to
/// `ksm_handback_end()`): memory offlining waits meanwhile.
///
/// # Invariants
///
/// `ksm_handback_begin()` was called and `ksm_handback_end()` was not yet.
pub(crate) struct Handback(());

impl Handback {
    /// Starts a handback; sleeps while memory goes offline.
    pub(crate) fn begin() -> Self {
        // SAFETY: plain call; paired with the end in `drop`.
        unsafe { bindings::ksm_handback_begin() };
        // INVARIANT: begun above.
        Self(())
    }

    /// The built-in KSM takes over the KSM page `page`, one of ours,
    /// with `maps`: from now on the folio points to the built-in's stable
    /// node, and ours may go.  `ENOMEM` changes nothing; `ENOENT` if no
    /// mapping is in an mm the built-in KSM knows.
    pub(crate) fn hand_back(&self, page: &LockedPage, maps: &[Mapping]) -> Result {
        let nr = u32::try_from(maps.len()).map_err(|_| EINVAL)?;
        // SAFETY: a handback is in progress (type invariant); the folio is
        // locked and referenced (`LockedPage`) and a KSM folio of ours (the
        // caller's node); `maps` points to `nr` mappings whose mms and
        // anon_vmas our items keep alive during the call.
        to_result(unsafe { bindings::ksm_handback_folio(page.folio(), maps.as_ptr(), nr) })
    }
}

impl Drop for Handback {
    fn drop(&mut self) {
        // SAFETY: begun (type invariant).
        unsafe { bindings::ksm_handback_end() };
    }
}
