// SPDX-License-Identifier: GPL-2.0

//! Unmerging a range of a VMA (MADV_UNMERGEABLE, prctl, mremap, `run=2`,
//! unload): every KSM page (and KSM zero page) in it gets its private copy
//! back through an unsharing fault.
//!
//! Where upstream's break_ksm() looks at each PTE, faults, and looks again
//! (each look a walk from the top of the page table), one walk finds up to
//! 32 KSM pages, each gets one unsharing fault, and one walk over that
//! batch's range looks again; a page still KSM there (the fault raced with
//! migration, say) gets the full look-fault loop.  Nothing can merge
//! meanwhile (`run=2` holds the scan lock, madvise and mremap the mmap lock
//! for write), so the second look sees every page that needs another fault.
//! The walk records KSM pages behind a migration entry too: `break_ksm()`
//! waits for the migration and unshares the page it left, so
//! MADV_UNMERGEABLE, mremap and prctl cannot leave a KSM page in a VMA that
//! is losing `VM_MERGEABLE`.

#![deny(unsafe_code)]

use super::{break_ksm, unshare};
use crate::kmm::walk::{self, Entry, Step, Visitor};
use crate::kmm::{self, VmaRef};
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;

/// KSM pages one walk collects at most.
const BATCH: usize = 32;

/// Whether a walk entry is one to unmerge: a KSM page, a KSM zero page or a
/// KSM page under migration.
fn ksm_entry(entry: &Entry<'_>) -> bool {
    match entry {
        Entry::KsmZero | Entry::KsmMigrating => true,
        Entry::Pte(page) | Entry::HugePmd(page) => page.is_anon() && page.is_ksm(),
    }
}

/// A walk's catch: the addresses of the entries `select` picks (of those
/// [`ksm_entry`] accepts), in order.  Addresses only: break_ksm() must not
/// find our references on the pages.
struct KsmPages<'s, S> {
    len: usize,
    addresses: [usize; BATCH],
    select: &'s S,
}

impl<'s, S: Fn(&Entry<'_>) -> bool> KsmPages<'s, S> {
    fn collect(vma: VmaRef<'_>, start: usize, end: usize, select: &'s S) -> (Self, bool) {
        let mut found = Self {
            len: 0,
            addresses: [0; BATCH],
            select,
        };
        let stopped = walk::walk_vma(vma, start, end, &mut found);
        (found, stopped)
    }

    fn addresses(&self) -> &[usize] {
        &self.addresses[..self.len]
    }
}

impl<S: Fn(&Entry<'_>) -> bool> Visitor for KsmPages<'_, S> {
    /// Unmerging must not pass over a KSM page under migration: its VMA
    /// may lose `VM_MERGEABLE` right after, and then nothing would unmerge
    /// the page again.  break_ksm() waits for the migration and unshares
    /// the page it left.
    fn ksm_entries(&self) -> bool {
        true
    }

    fn visit(&mut self, addr: usize, entry: Entry<'_>) -> Step {
        if ksm_entry(&entry) && (self.select)(&entry) {
            self.addresses[self.len] = addr;
            self.len += 1;
        }
        if self.len == BATCH {
            Step::Stop
        } else {
            Step::Go
        }
    }
}

/// Breaks every KSM page in `[start, end)` of `vma`, visiting only
/// populated page tables.
///
/// break_ksm() per page looks at the PTE, faults, and looks again, each
/// look a walk from the top of the page table.  Here one walk finds up to
/// a batch of KSM pages, each gets one unsharing fault, and one walk over
/// the batch's range looks again: what is still a KSM page (a fault raced
/// with migration, say) gets the full break_ksm() loop.  The same steps
/// per page, in another order, with two walks per batch instead of two
/// per page.
///
/// A pending signal stops it with `ERESTARTSYS` if `interruptible`
/// (madvise, prctl, `run=2`), as upstream; unload is not interruptible.
pub(crate) fn unmerge_range(
    vma: VmaRef<'_>,
    start: usize,
    end: usize,
    interruptible: bool,
) -> Result {
    unmerge_range_where(vma, start, end, interruptible, &|_: &Entry<'_>| true)
}

/// [`unmerge_range`] for the KSM entries `select` picks only (re-homing a
/// process to another merge domain unshares the pages of other domains).
/// The caller holds the scan lock (no page can merge meanwhile) or the
/// mmap lock for write.
pub(crate) fn unmerge_range_where(
    vma: VmaRef<'_>,
    start: usize,
    end: usize,
    interruptible: bool,
    select: &impl Fn(&Entry<'_>) -> bool,
) -> Result {
    let mut addr = start;
    while addr < end {
        let (batch, more) = KsmPages::collect(vma, addr, end, select);
        let (Some(&first), Some(&last)) = (batch.addresses().first(), batch.addresses().last())
        else {
            return Ok(());
        };
        for &a in batch.addresses() {
            if interruptible && kmm::signal_pending() {
                return Err(ERESTARTSYS);
            }
            kmm::cond_resched();
            unshare(vma, a)?;
        }
        // Look again.  No KSM page can appear meanwhile: merging needs
        // the scan lock (run=2 holds it) or the mmap lock for read with
        // VM_MERGEABLE (madvise and mremap hold it for write).
        let (again, _) = KsmPages::collect(vma, first, last + PAGE_SIZE, select);
        for &a in again.addresses() {
            break_ksm(vma, a)?;
        }
        if !more {
            return Ok(());
        }
        addr = last + PAGE_SIZE;
    }
    Ok(())
}
