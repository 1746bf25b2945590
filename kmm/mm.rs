// SPDX-License-Identifier: GPL-2.0

//! References on `mm_struct`s and the mmap lock, as owned Rust types.
//!
//! KSM keeps two kinds of reference on a process's mm, with different rules:
//! [`MmGrab`] (`mm_count`) keeps the `mm_struct` itself allocated, and is what
//! the engine holds for every registered mm; [`MmUsers`] (`mm_users`) keeps
//! the address space alive, and is taken only while the scanner walks it, so
//! that `exit_mmap()` cannot free page tables under the walk.

use crate::bindings;
use core::ptr::NonNull;

/// What an mm's owner (`mm->owner`) says of the merge domain it is in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum OwnerKey {
    /// The owner's uid or cgroup id.
    Key(u64),
    /// No owner: the mm is exiting (or the kernel keeps no owner).
    NoOwner,
    /// The owner is a child that fork has not woken yet: it joins its
    /// parent's cgroup only at the end of the fork (`cgroup_post_fork()`),
    /// after its mm reached the engine.  Ask again later.
    Forking,
}

/// A `mm_count` reference on an `mm_struct` (`mmgrab()`).
///
/// # Invariants
///
/// `self.0` points to an `mm_struct` on which this object owns one
/// `mm_count` reference.
pub(crate) struct MmGrab(NonNull<bindings::mm_struct>);

// SAFETY: `mm_count` references are plain atomic counts; they may be dropped
// from any thread.
unsafe impl Send for MmGrab {}

// SAFETY: The only operations through `&MmGrab` are atomic reads and taking
// further references, which are thread-safe.
unsafe impl Sync for MmGrab {}

impl MmGrab {
    /// Takes a `mm_count` reference on `mm`.
    ///
    /// # Safety
    ///
    /// `mm` must point to a valid `mm_struct` for the duration of the call
    /// (as a hook argument or a pointer the caller holds a reference on does).
    pub(crate) unsafe fn new(mm: NonNull<bindings::mm_struct>) -> Self {
        // SAFETY: `mm` is valid by the safety requirements.
        unsafe { bindings::rust_ksm_mmgrab(mm.as_ptr()) };
        // INVARIANT: we just took the reference.
        Self(mm)
    }

    /// The `mm_struct`, as a key or for comparisons.
    pub(crate) fn as_ptr(&self) -> *mut bindings::mm_struct {
        self.0.as_ptr()
    }

    /// Whether the process is exiting (`mm_users` is 0), as `ksm_test_exit()`.
    pub(crate) fn exiting(&self) -> bool {
        // SAFETY: the type invariant keeps the `mm_struct` allocated.
        unsafe { bindings::rust_ksm_mm_exiting(self.as_ptr()) }
    }

    /// The uid of the task that owns the memory (`mm->owner`), in the
    /// initial user namespace; None if there is none.
    pub(crate) fn owner_uid(&self) -> Option<u64> {
        // SAFETY: the type invariant keeps the `mm_struct` allocated; the
        // helper reads the owner under RCU.
        let uid = unsafe { bindings::rust_ksm_mm_owner_uid(self.as_ptr()) };
        (uid != bindings::RUST_KSM_NO_DOMAIN as u64).then_some(uid)
    }

    /// Which task owns the memory now (`mm->owner`), as an identity to
    /// compare and hash, never to follow; 0 if none.
    pub(crate) fn owner_identity(&self) -> usize {
        // SAFETY: the type invariant keeps the `mm_struct` allocated; the
        // helper reads the pointer's value only.
        unsafe { bindings::rust_ksm_mm_owner(self.as_ptr()) }
    }

    /// The id of the cgroup (v2) of the task that owns the memory, or of its
    /// ancestor at `depth` (0: the root) if it is deeper.
    pub(crate) fn owner_cgroup_id(&self, depth: u32) -> OwnerKey {
        // SAFETY: as in `owner_uid`.
        let id = unsafe { bindings::rust_ksm_mm_owner_cgroup_id(self.as_ptr(), depth) };
        match id {
            x if x == bindings::RUST_KSM_NO_DOMAIN as u64 => OwnerKey::NoOwner,
            x if x == bindings::RUST_KSM_DOMAIN_FORKING as u64 => OwnerKey::Forking,
            _ => OwnerKey::Key(id),
        }
    }

    /// The process's `ksm_rmap_items` and `ksm_zero_pages` (`ksm_stat`).
    pub(crate) fn ksm_counts(&self) -> (usize, i64) {
        // SAFETY: the type invariant keeps the `mm_struct` allocated; plain
        // reads of counters (the zero pages one is atomic).
        unsafe {
            let mm = &*self.as_ptr();
            (
                mm.__bindgen_anon_1.ksm_rmap_items,
                bindings::rust_ksm_mm_zero_pages(self.as_ptr()) as i64,
            )
        }
    }

    /// Pins the address space, unless the process is already exiting.
    pub(crate) fn users(&self) -> Option<MmUsers<'_>> {
        // SAFETY: the type invariant keeps the `mm_struct` allocated.
        if unsafe { bindings::rust_ksm_mmget_not_zero(self.as_ptr()) } {
            // INVARIANT: `mmget_not_zero()` succeeded.
            Some(MmUsers { mm: self })
        } else {
            None
        }
    }
}

impl Clone for MmGrab {
    fn clone(&self) -> Self {
        // SAFETY: the type invariant keeps the `mm_struct` allocated.
        unsafe { Self::new(self.0) }
    }
}

impl Drop for MmGrab {
    fn drop(&mut self) {
        // SAFETY: the type invariant says we own this reference.
        unsafe { bindings::rust_ksm_mmdrop(self.as_ptr()) };
    }
}

/// A `mm_users` reference (`mmget()`): the address space stays until drop.
///
/// Dropping it may be the last `mmput()`, which tears the address space down
/// and calls the engine's exit hook: never drop one with a lock held that the
/// exit hook takes.
///
/// # Invariants
///
/// This object owns one `mm_users` reference on `self.mm`.
pub(crate) struct MmUsers<'a> {
    mm: &'a MmGrab,
}

impl MmUsers<'_> {
    /// Takes the mmap lock for read for the lifetime of the returned guard.
    pub(crate) fn read_lock(&self) -> MmapReadGuard<'_> {
        // SAFETY: the address space is alive (type invariant).
        unsafe { bindings::rust_ksm_mmap_read_lock(self.as_ptr()) };
        // INVARIANT: we just took the lock.
        MmapReadGuard { mm: self }
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::mm_struct {
        self.mm.as_ptr()
    }
}

impl Drop for MmUsers<'_> {
    fn drop(&mut self) {
        // SAFETY: the type invariant says we own this reference.
        unsafe { bindings::mmput(self.as_ptr()) };
    }
}

/// The mmap lock of an address space, held for read.
///
/// # Invariants
///
/// The mmap lock of `self.mm` is held for read by this object.
pub(crate) struct MmapReadGuard<'a> {
    mm: &'a MmUsers<'a>,
}

impl MmapReadGuard<'_> {
    pub(crate) fn mm(&self) -> *mut bindings::mm_struct {
        self.mm.as_ptr()
    }
}

impl Drop for MmapReadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: the type invariant says we hold the lock.
        unsafe { bindings::rust_ksm_mmap_read_unlock(self.mm()) };
    }
}
