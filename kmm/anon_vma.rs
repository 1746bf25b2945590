// SPDX-License-Identifier: GPL-2.0

//! A referenced `anon_vma`, its read lock, and the VMAs its interval tree
//! holds at a page index ([`RmapVma`]).

use super::mm::MmGrab;
use super::page::LockedPage;
use crate::bindings;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use kernel::page::PAGE_SHIFT;

/// A reference on an `anon_vma` (`get_anon_vma()`), put on drop.
///
/// Every mapping of a KSM page keeps one for as long as it exists: the rmap
/// walk looks the page up in that anon_vma, which must outlive the VMA it
/// was found through (munmap, exit).  Dropping the last reference frees the
/// anon_vma and may take its root's rwsem: never drop one under a spinlock.
///
/// # Invariants
///
/// `self.0` points to an `anon_vma` on which this object owns one reference.
pub(crate) struct AnonVmaRef(NonNull<bindings::anon_vma>);

// SAFETY: the reference is an atomic count; put_anon_vma() may be called
// from any task.
unsafe impl Send for AnonVmaRef {}

// SAFETY: `&AnonVmaRef` only reads the pointer.
unsafe impl Sync for AnonVmaRef {}

impl AnonVmaRef {
    /// Takes a reference on `anon_vma`.
    ///
    /// # Safety
    ///
    /// `anon_vma` must stay allocated during the call: the anon_vma of a VMA
    /// whose mmap lock is held, or one the caller holds a reference on.
    pub(crate) unsafe fn get(anon_vma: NonNull<bindings::anon_vma>) -> Self {
        // SAFETY: by the function's safety requirements.
        unsafe { bindings::rust_ksm_get_anon_vma(anon_vma.as_ptr()) };
        // INVARIANT: the reference was just taken.
        Self(anon_vma)
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::anon_vma {
        self.0.as_ptr()
    }
}

impl Drop for AnonVmaRef {
    fn drop(&mut self) {
        // SAFETY: the type invariant says we own this reference.
        unsafe { bindings::rust_ksm_put_anon_vma(self.as_ptr()) };
    }
}

impl AnonVmaRef {
    /// Takes the anon_vma's lock for read, unless it is contended.
    pub(crate) fn try_read(&self) -> Option<AnonVmaReadGuard<'_>> {
        // SAFETY: referenced anon_vma (type invariant).
        if !unsafe { bindings::rust_ksm_anon_vma_trylock_read(self.as_ptr()) } {
            return None;
        }
        // INVARIANT: locked above.
        Some(AnonVmaReadGuard { anon_vma: self })
    }

    /// Takes the anon_vma's lock for read, sleeping until it is free.
    pub(crate) fn read(&self) -> AnonVmaReadGuard<'_> {
        // SAFETY: referenced anon_vma (type invariant).
        unsafe { bindings::rust_ksm_anon_vma_lock_read(self.as_ptr()) };
        // INVARIANT: locked above.
        AnonVmaReadGuard { anon_vma: self }
    }
}

/// The lock of an anon_vma, held for read until drop: its interval tree
/// and the VMAs in it stay put meanwhile.
///
/// # Invariants
///
/// The lock of `anon_vma` is held for read by this object.
pub(crate) struct AnonVmaReadGuard<'a> {
    anon_vma: &'a AnonVmaRef,
}

impl AnonVmaReadGuard<'_> {
    /// The VMAs of the anon_vma that map linear page index `index`
    /// (anon_vma_interval_tree_foreach()).  Each is stable while the guard
    /// lives; the iterator holds no lock of its own.
    pub(crate) fn vmas_at(&self, index: usize) -> VmasAt<'_> {
        // SAFETY: the tree is stable under the lock (type invariant).
        let next = unsafe {
            bindings::anon_vma_interval_tree_iter_first(
                &mut (*self.anon_vma.as_ptr()).rb_root,
                index,
                index,
            )
        };
        VmasAt {
            next,
            index,
            _guard: core::marker::PhantomData,
        }
    }
}

impl Drop for AnonVmaReadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: locked for read (type invariant).
        unsafe { bindings::rust_ksm_anon_vma_unlock_read(self.anon_vma.as_ptr()) };
    }
}

/// Iterator of [`AnonVmaReadGuard::vmas_at`].
///
/// # Invariants
///
/// `next` is NULL or a chain entry of the interval tree locked for `'g`.
pub(crate) struct VmasAt<'g> {
    next: *mut bindings::anon_vma_chain,
    index: usize,
    _guard: core::marker::PhantomData<&'g AnonVmaReadGuard<'g>>,
}

impl<'g> Iterator for VmasAt<'g> {
    type Item = RmapVma<'g>;

    fn next(&mut self) -> Option<Self::Item> {
        let avc = NonNull::new(self.next)?;
        // SAFETY: a chain entry of the locked tree (type invariant).
        let vma = unsafe {
            // INVARIANT: the next entry of the same locked tree, or NULL.
            self.next =
                bindings::anon_vma_interval_tree_iter_next(avc.as_ptr(), self.index, self.index);
            (*avc.as_ptr()).vma
        };
        // INVARIANT: a VMA of the tree locked for 'g.
        NonNull::new(vma).map(|vma| RmapVma {
            vma,
            _lock: PhantomData,
        })
    }
}

/// A VMA found in an anon_vma's interval tree, whose lock (held for `'g`)
/// keeps the VMA, and so its mm, from going away: what the rmap walk sees.
/// Not the mmap lock: the page tables may change, the VMA's range may not.
///
/// # Invariants
///
/// `vma` is in the interval tree of an anon_vma read-locked for `'g`.
#[derive(Clone, Copy)]
pub(crate) struct RmapVma<'g> {
    vma: NonNull<bindings::vm_area_struct>,
    _lock: PhantomData<&'g ()>,
}

impl RmapVma<'_> {
    pub(crate) fn as_ptr(&self) -> *mut bindings::vm_area_struct {
        self.vma.as_ptr()
    }

    /// The VMA's mm.
    pub(crate) fn mm(&self) -> *mut bindings::mm_struct {
        // SAFETY: a stable VMA (type invariant).
        unsafe { (*self.as_ptr()).vm_mm }
    }

    /// A reference that keeps the mm allocated after the lock is dropped.
    pub(crate) fn grab_mm(&self) -> MmGrab {
        // SAFETY: a stable VMA's mm is valid (type invariant); a VMA always
        // has one.
        unsafe { MmGrab::new(NonNull::new_unchecked(self.mm())) }
    }

    /// The address of page `index` in the VMA, if the VMA covers it
    /// (vma_address(): anon pages keep the index of the address they were
    /// first mapped at, which mremap does not change).
    pub(crate) fn address_of(&self, index: usize) -> Option<usize> {
        // SAFETY: a stable VMA (type invariant).
        let (start, end, pgoff) = unsafe {
            (
                bindings::rust_ksm_vma_start(self.as_ptr()) as usize,
                bindings::rust_ksm_vma_end(self.as_ptr()) as usize,
                (*self.as_ptr()).vm_pgoff,
            )
        };
        let addr = start.checked_add(index.checked_sub(pgoff)? << PAGE_SHIFT)?;
        (addr < end).then_some(addr)
    }

    /// Whether the VMA really maps `page` at `addr`
    /// (`page_vma_mapped_walk()`): a VMA covering the index may map another
    /// page there (COW broken, unmapped).
    pub(crate) fn maps(&self, page: &LockedPage, addr: usize) -> bool {
        let mut pvmw = MaybeUninit::<bindings::page_vma_mapped_walk>::zeroed();
        // SAFETY: a stable VMA (type invariant), a locked and referenced
        // folio; `pvmw` is ours and finished (its lock dropped) before we
        // return.
        unsafe {
            bindings::rust_ksm_pvmw_init(pvmw.as_mut_ptr(), page.folio(), self.as_ptr(), addr);
            let mapped = bindings::page_vma_mapped_walk(pvmw.as_mut_ptr());
            if mapped {
                bindings::rust_ksm_pvmw_done(pvmw.as_mut_ptr());
            }
            mapped
        }
    }
}
