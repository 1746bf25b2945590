// SPDX-License-Identifier: GPL-2.0

//! Referenced pages, their folio lock and their contents.

use super::words;
use crate::bindings;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use kernel::ffi::c_void;
use kernel::page::PAGE_SIZE;

/// A page with a reference held on its folio.
///
/// # Invariants
///
/// `page` is valid and we own one reference on its folio.
pub(crate) struct PageRef {
    page: NonNull<bindings::page>,
}

impl PageRef {
    /// Takes a reference on `page`'s folio.
    ///
    /// # Safety
    ///
    /// `page` must be a valid page whose folio cannot be freed during the
    /// call (mapped under a held PTL, or already referenced).
    pub(crate) unsafe fn get(page: NonNull<bindings::page>) -> Self {
        // SAFETY: by the function's safety requirements.
        unsafe { bindings::rust_ksm_folio_get(bindings::rust_ksm_page_folio(page.as_ptr())) };
        // INVARIANT: reference taken above.
        Self { page }
    }

    /// Takes a reference on `folio` (its first page).
    ///
    /// # Safety
    ///
    /// `folio` must be valid and referenced by the caller for the call.
    pub(crate) unsafe fn of_folio(folio: *mut bindings::folio) -> Self {
        // SAFETY: a valid folio's first page.
        let page = unsafe { bindings::rust_ksm_folio_page(folio) };
        // SAFETY: valid, and referenced by the caller.
        unsafe { Self::get(NonNull::new_unchecked(page)) }
    }

    /// The folio at `pfn`, referenced, if its `mapping` is `mapping`: the
    /// "keyhole reference" of mm/ksm.c's ksm_get_folio().
    ///
    /// A stable node holds no reference on its KSM folio: if it did,
    /// reclaim could not free a swapped-out KSM page until the scanner came
    /// round again, seconds or minutes later.  It keeps the pfn, and the
    /// folio's `mapping` points back to the node while the folio is its.
    /// So: read `mapping` (the folio may be free, or reused: a `struct
    /// folio` at a valid pfn is always readable), try to take a reference
    /// (fails on a free folio, refcount 0), and check `mapping` again now
    /// that the folio cannot be freed under us.  A refcount frozen at 0
    /// with the folio in the swap cache is migration or reclaim in
    /// progress: the folio may still be ours, so wait for it.
    pub(crate) fn get_if_mapping(pfn: usize, mapping: *mut c_void) -> Option<Self> {
        // SAFETY: the pfn was a KSM folio's, so it has a memmap entry (the
        // memory notifier drops nodes before their memory goes offline).
        let folio = unsafe { bindings::rust_ksm_pfn_folio(pfn) };
        // SAFETY: `folio` is a readable struct folio, maybe free; the
        // reference, once taken, pins it.
        unsafe {
            if bindings::rust_ksm_folio_mapping(folio) != mapping {
                return None;
            }
            while !bindings::rust_ksm_folio_try_get(folio) {
                if !bindings::rust_ksm_folio_test_swapcache(folio) {
                    return None;
                }
                bindings::rust_ksm_cond_resched();
            }
            if bindings::rust_ksm_folio_mapping(folio) != mapping {
                bindings::rust_ksm_folio_put(folio);
                return None;
            }
            // INVARIANT: the reference taken above.
            Some(Self {
                page: NonNull::new_unchecked(bindings::rust_ksm_folio_page(folio)),
            })
        }
    }

    pub(crate) fn page(&self) -> *mut bindings::page {
        self.page.as_ptr()
    }

    /// The page's pfn.
    pub(crate) fn pfn(&self) -> usize {
        // SAFETY: a referenced page (type invariant).
        unsafe { bindings::rust_ksm_page_to_pfn(self.page()) }
    }

    /// The page's current folio (it changes when a large folio is split).
    pub(crate) fn folio(&self) -> *mut bindings::folio {
        // SAFETY: the reference keeps the page's folio association stable
        // but for splits, which keep the reference on the page's new folio.
        unsafe { bindings::rust_ksm_page_folio(self.page()) }
    }

    /// Whether the folio is anonymous (KSM folios included).
    pub(crate) fn is_anon(&self) -> bool {
        // SAFETY: referenced folio (type invariant).
        unsafe { bindings::rust_ksm_folio_test_anon(self.folio()) }
    }

    /// Whether the folio is large (a THP not split yet).
    pub(crate) fn is_large(&self) -> bool {
        // SAFETY: referenced folio (type invariant).
        unsafe { bindings::rust_ksm_folio_test_large(self.folio()) }
    }

    /// Whether the folio is a KSM folio.
    pub(crate) fn is_ksm(&self) -> bool {
        // SAFETY: referenced folio (type invariant).
        unsafe { bindings::rust_ksm_folio_test_ksm(self.folio()) }
    }

    /// The folio's `mapping` word (for a KSM folio: its stable node, with
    /// the `PAGE_MAPPING_KSM` bits).
    pub(crate) fn mapping_word(&self) -> *mut c_void {
        // SAFETY: referenced folio (type invariant).
        unsafe { bindings::rust_ksm_folio_mapping(self.folio()) }
    }

    /// Sets the folio's `mapping` word back to `word`.
    ///
    /// # Safety
    ///
    /// The folio is locked, and `word` is what it held before the caller
    /// changed it under that lock.
    pub(crate) unsafe fn set_mapping_word(&self, word: *mut c_void) {
        // SAFETY: by the function's safety requirements.
        unsafe { bindings::rust_ksm_folio_set_mapping(self.folio(), word) };
    }

    /// Locks the folio, sleeping until it is free.
    pub(crate) fn lock(&self) -> FolioLock<'_> {
        // SAFETY: referenced folio (type invariant); the lock is released
        // by the guard.
        unsafe { bindings::rust_ksm_folio_lock(self.folio()) };
        // INVARIANT: locked above; referenced for as long as `self` is
        // borrowed.
        FolioLock {
            folio: self.folio(),
            _ref: PhantomData,
        }
    }

    /// Locks the folio if no one else holds its lock.
    pub(crate) fn try_lock(&self) -> Option<FolioLock<'_>> {
        // SAFETY: referenced folio (type invariant).
        if !unsafe { bindings::rust_ksm_folio_trylock(self.folio()) } {
            return None;
        }
        // INVARIANT: locked above; referenced while `self` is borrowed.
        Some(FolioLock {
            folio: self.folio(),
            _ref: PhantomData,
        })
    }
}

impl Clone for PageRef {
    /// Another reference on the same folio.
    fn clone(&self) -> Self {
        // SAFETY: referenced (type invariant): the folio cannot be freed
        // during the call.
        unsafe { Self::get(self.page) }
    }
}

impl Drop for PageRef {
    fn drop(&mut self) {
        // SAFETY: the type invariant says we own a reference.
        unsafe { bindings::rust_ksm_folio_put(self.folio()) };
    }
}

/// The lock of a folio, held until drop.
///
/// # Invariants
///
/// `folio` is locked by this object and referenced for `'a`.
pub(crate) struct FolioLock<'a> {
    folio: *mut bindings::folio,
    _ref: PhantomData<&'a PageRef>,
}

impl<'a> FolioLock<'a> {
    /// The locked folio.
    pub(crate) fn folio(&self) -> *mut bindings::folio {
        self.folio
    }

    /// folio_mark_accessed().
    pub(crate) fn mark_accessed(&self) {
        // SAFETY: locked and referenced folio (type invariant).
        unsafe { bindings::folio_mark_accessed(self.folio) };
    }

    /// Marks the folio dirty unless it is already.
    pub(crate) fn mark_dirty(&self) {
        // SAFETY: locked and referenced folio (type invariant).
        unsafe {
            if !bindings::rust_ksm_folio_test_dirty(self.folio) {
                bindings::folio_mark_dirty(self.folio);
            }
        }
    }

    /// Splits the locked large folio of `page` into small ones; the lock
    /// follows `page` into its new folio, as do the references.  False if
    /// the split failed (the folio is unchanged).
    pub(crate) fn split(&mut self, page: &PageRef) -> bool {
        debug_assert!(page.folio() == self.folio);
        // SAFETY: `page`'s folio is locked (type invariant) and referenced.
        let ok = unsafe { bindings::rust_ksm_split_huge_page(page.page()) } == 0;
        // INVARIANT: split_huge_page() leaves the page's new folio locked.
        self.folio = page.folio();
        ok
    }
}

impl Drop for FolioLock<'_> {
    fn drop(&mut self) {
        // SAFETY: the type invariant says we hold the lock.
        unsafe { bindings::folio_unlock(self.folio) };
    }
}

/// A referenced page whose folio we hold locked: on drop the folio is
/// unlocked, then the reference put.  For a folio locked across calls
/// (where a [`FolioLock`] borrowing a [`PageRef`] cannot be returned).
///
/// # Invariants
///
/// The folio of `page` is locked by this object.
pub(crate) struct LockedPage {
    page: PageRef,
}

impl LockedPage {
    /// Locks `page`'s folio, sleeping until it is free.
    pub(crate) fn lock(page: PageRef) -> Self {
        // SAFETY: referenced folio (type invariant of `PageRef`).
        unsafe { bindings::rust_ksm_folio_lock(page.folio()) };
        // INVARIANT: locked above.
        Self { page }
    }

    pub(crate) fn folio(&self) -> *mut bindings::folio {
        self.page.folio()
    }
}

impl Drop for LockedPage {
    fn drop(&mut self) {
        // SAFETY: the type invariant says we hold the lock; the reference
        // (the field) is put after this.
        unsafe { bindings::folio_unlock(self.page.folio()) };
    }
}

/// A page that stays allocated: a referenced one or the zero page.
trait Contents {
    fn raw(&self) -> *mut bindings::page;
}

impl Contents for PageRef {
    fn raw(&self) -> *mut bindings::page {
        self.page()
    }
}

/// The zero page that would be mapped at an address.
pub(crate) struct ZeroPage(*mut bindings::page);

impl ZeroPage {
    /// The zero page for `addr` (architectures may color it).
    pub(crate) fn at(addr: usize) -> Self {
        // SAFETY: the zero page is always there.
        Self(unsafe { bindings::rust_ksm_zero_page(addr) })
    }

    pub(crate) fn pfn(&self) -> usize {
        // SAFETY: the zero page is always there.
        unsafe { bindings::rust_ksm_page_to_pfn(self.0) }
    }
}

impl Contents for ZeroPage {
    fn raw(&self) -> *mut bindings::page {
        self.0
    }
}

/// xxhash of a page's whole contents (upstream's calc_checksum()): a stable
/// node's identity among equal keys, and the test for an all-zero page.
pub(crate) fn hash(page: &PageRef) -> u64 {
    hash_of(page)
}

/// The hash of an all-zero page.
pub(crate) fn zero_hash() -> u64 {
    hash_of(&ZeroPage::at(0))
}

/// Bytes of a page that [`key`] reads: `KEY_CHUNKS` runs of `KEY_CHUNK`.
const KEY_CHUNK: usize = 32;
const KEY_CHUNKS: usize = 8;

/// The stable tree's key: xxhash of 256 bytes sampled across the page,
/// first and last bytes included.  Equal pages have equal keys; unequal
/// pages usually differ in it too, and where they do not, the tree orders
/// them by contents.  A sixteenth of the cost of hashing the whole page,
/// which a page merged into the stable tree then never needs.
pub(crate) fn key(page: &PageRef) -> u64 {
    key_of(page)
}

/// The key of an all-zero page.
pub(crate) fn zero_key() -> u64 {
    key_of(&ZeroPage::at(0))
}

fn key_of(page: &impl Contents) -> u64 {
    let mut sample = [0u8; KEY_CHUNK * KEY_CHUNKS];
    // SAFETY: the page stays allocated (`Contents`); every chunk lies inside
    // it; the mapping is released below.
    unsafe {
        let addr = bindings::rust_ksm_kmap_local_page(page.raw()).cast::<u8>();
        for (i, chunk) in sample.chunks_exact_mut(KEY_CHUNK).enumerate() {
            let offset = i * (PAGE_SIZE - KEY_CHUNK) / (KEY_CHUNKS - 1);
            ptr::copy_nonoverlapping(addr.add(offset), chunk.as_mut_ptr(), KEY_CHUNK);
        }
        bindings::rust_ksm_kunmap_local(addr.cast());
        bindings::xxh64(sample.as_ptr().cast(), sample.len(), 0)
    }
}

fn hash_of(page: &impl Contents) -> u64 {
    // SAFETY: the page stays allocated (`Contents`); the mapping is
    // released below.
    unsafe {
        let addr = bindings::rust_ksm_kmap_local_page(page.raw());
        let sum = bindings::xxh64(addr, PAGE_SIZE, 0);
        bindings::rust_ksm_kunmap_local(addr);
        sum
    }
}

/// Orders two pages' contents as memcmp() does: negative, zero or
/// positive.  On x86 by [`words::compare`], a block at a time; other
/// architectures keep their memcmp_pages() (arm64's also tells apart pages
/// with MTE tags).
pub(crate) fn compare(a: &PageRef, b: &PageRef) -> i32 {
    #[cfg(CONFIG_X86)]
    {
        with_mapped(a, |pa| {
            with_mapped(b, |pb| words::compare(pa, pb, PAGE_WORDS))
        })
    }
    #[cfg(not(CONFIG_X86))]
    // SAFETY: both pages are referenced.
    unsafe {
        bindings::memcmp_pages(a.page(), b.page())
    }
}

/// Does `page` hold only zeroes (upstream compares it with the zero page
/// for `addr`)?
pub(crate) fn is_zero_filled(page: &PageRef, addr: usize) -> bool {
    #[cfg(CONFIG_X86)]
    {
        let _ = addr;
        with_mapped(page, |p| words::all_zero(p, PAGE_WORDS))
    }
    #[cfg(not(CONFIG_X86))]
    // SAFETY: the page is referenced; the zero page is always there.
    unsafe {
        bindings::memcmp_pages(page.page(), ZeroPage::at(addr).raw()) == 0
    }
}

const PAGE_WORDS: usize = PAGE_SIZE / core::mem::size_of::<u64>();

/// The contents of a page mapped for [`with_mapped`]'s closure.
///
/// # Invariants
///
/// Points to `PAGE_SIZE` readable bytes, page aligned, for `'a`: the call
/// of the closure (the lifetime is higher-ranked, so the value cannot leave
/// it).  The bytes may change under it (a process writes to its page), so
/// they are read with volatile loads, as READ_ONCE() would.
#[derive(Clone, Copy)]
struct Mapped<'a>(*const u64, PhantomData<&'a ()>);

impl words::Words for Mapped<'_> {
    #[inline(always)]
    fn word(self, i: usize) -> u64 {
        assert!(i < PAGE_WORDS);
        // SAFETY: in the page (checked above; INVARIANT of `Mapped`), 8-byte
        // aligned; volatile because the contents may change meanwhile.
        unsafe { ptr::read_volatile(self.0.add(i)) }
    }
}

/// Runs `f` on `page`'s contents, mapped with kmap_local_page().
fn with_mapped<R>(page: &impl Contents, f: impl for<'a> FnOnce(Mapped<'a>) -> R) -> R {
    // SAFETY: the page stays allocated (`Contents`) while it is mapped;
    // local mappings nest, and a nested call unmaps before this one does.
    let addr = unsafe { bindings::rust_ksm_kmap_local_page(page.raw()) };
    // INVARIANT: a local mapping of a whole page, until the unmap below,
    // after `f` returned.
    let ret = f(Mapped(addr.cast(), PhantomData));
    // SAFETY: mapped above, and every mapping made since is gone.
    unsafe { bindings::rust_ksm_kunmap_local(addr) };
    ret
}
