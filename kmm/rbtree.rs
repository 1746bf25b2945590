// SPDX-License-Identifier: GPL-2.0

//! Intrusive red-black trees whose order the caller decides during the
//! descent (`rb_root`/`rb_node` with `rb_link_node()`/`rb_insert_color()`,
//! as mm/ksm.c uses them).
//!
//! KSM's trees are ordered by page contents, which are read (and for the
//! unstable tree may even change) while descending, so there is no `Ord`
//! for `kernel::rbtree` to use; and their elements (stable nodes, rmap
//! items) live elsewhere and are linked in place.  The descent is a closure
//! that looks at one element at a time and says [`Step::Left`],
//! [`Step::Right`] or [`Step::Stop`]; the closure cannot change the tree
//! (it is borrowed), so a closure that finds the tree needs changing (a
//! stale node to remove) stops with that and its caller restarts.

use crate::bindings;
use core::ptr::{self, NonNull};
use kernel::types::Opaque;

/// Which way a descent goes from the element it was shown.
pub(crate) enum Step<T> {
    Left,
    Right,
    /// End the descent with this answer (nothing is linked).
    Stop(T),
}

/// The `rb_node` an element embeds to be linked into an [`RbRoot`].
#[repr(transparent)]
pub(crate) struct RbLink(Opaque<bindings::rb_node>);

impl RbLink {
    /// A link in no tree.
    pub(crate) const fn new() -> Self {
        Self(Opaque::uninit())
    }

    fn as_ptr(&self) -> *mut bindings::rb_node {
        self.0.get()
    }

    fn from_raw(rb: *mut bindings::rb_node) -> Option<NonNull<RbLink>> {
        // `RbLink` is a transparent `rb_node`.
        NonNull::new(rb.cast::<RbLink>())
    }

    /// The next link in tree order (`rb_next()`).
    ///
    /// # Safety
    ///
    /// `self` is linked in a tree that does not change meanwhile.
    pub(crate) unsafe fn next(&self) -> Option<NonNull<RbLink>> {
        // SAFETY: linked, by the function's safety requirements.
        Self::from_raw(unsafe { bindings::rb_next(self.as_ptr()) })
    }

    /// The previous link in tree order (`rb_prev()`).
    ///
    /// # Safety
    ///
    /// `self` is linked in a tree that does not change meanwhile.
    pub(crate) unsafe fn prev(&self) -> Option<NonNull<RbLink>> {
        // SAFETY: linked, by the function's safety requirements.
        Self::from_raw(unsafe { bindings::rb_prev(self.as_ptr()) })
    }
}

/// The root of an intrusive red-black tree.
///
/// # Invariants
///
/// Every node reachable from the root is the [`RbLink`] of an element that
/// stays in place while linked (see [`RbRoot::insert`]), so the descent and
/// [`RbRoot::first`] only ever see live links.
pub(crate) struct RbRoot(bindings::rb_root);

impl RbRoot {
    /// An empty tree.
    pub(crate) const EMPTY: Self = Self(bindings::rb_root {
        rb_node: ptr::null_mut(),
    });

    pub(crate) fn is_empty(&self) -> bool {
        self.0.rb_node.is_null()
    }

    /// Forgets every element at once, without unlinking them one by one
    /// (the unstable tree, whose items then count as unlinked by their scan
    /// number).
    pub(crate) fn clear(&mut self) {
        *self = Self::EMPTY;
    }

    /// The first link in tree order (`rb_first()`).
    pub(crate) fn first(&self) -> Option<NonNull<RbLink>> {
        // SAFETY: `rb_first()` only reads the tree, whose nodes are live
        // (type invariant); it does not write through the pointer.
        RbLink::from_raw(unsafe { bindings::rb_first(ptr::from_ref(&self.0)) })
    }

    /// Walks down from the root, showing `step` one link at a time, until
    /// it stops (`Some` answer) or the walk falls off a leaf (`None`).
    pub(crate) fn search<T>(&self, mut step: impl FnMut(NonNull<RbLink>) -> Step<T>) -> Option<T> {
        let mut rb = self.0.rb_node;
        while let Some(link) = RbLink::from_raw(rb) {
            let node = link.as_ptr().cast::<bindings::rb_node>();
            // SAFETY: a node of the tree, live (type invariant); the tree
            // is borrowed, so it does not change during the walk.
            let (left, right) = unsafe { ((*node).rb_left, (*node).rb_right) };
            rb = match step(link) {
                Step::Left => left,
                Step::Right => right,
                Step::Stop(answer) => return Some(answer),
            };
        }
        None
    }

    /// Like [`Self::search`], but a walk that falls off a leaf links `new`
    /// there (and returns `None`); a stopped walk links nothing.
    ///
    /// # Safety
    ///
    /// `new` is in no tree, and stays in place (is neither moved nor freed)
    /// until it is erased from this tree or the tree is cleared.
    pub(crate) unsafe fn insert<T>(
        &mut self,
        new: &RbLink,
        mut step: impl FnMut(NonNull<RbLink>) -> Step<T>,
    ) -> Option<T> {
        let mut parent = ptr::null_mut();
        let mut link: *mut *mut bindings::rb_node = &mut self.0.rb_node;
        // SAFETY: `link` points to the root or into a live node of the tree
        // (type invariant), which is exclusively borrowed.
        while let Some(node) = RbLink::from_raw(unsafe { *link }) {
            parent = node.as_ptr().cast::<bindings::rb_node>();
            let left = match step(node) {
                Step::Left => true,
                Step::Right => false,
                Step::Stop(answer) => return Some(answer),
            };
            // SAFETY: `parent` is a live node of the tree, as above.
            link = unsafe {
                if left {
                    &mut (*parent).rb_left
                } else {
                    &mut (*parent).rb_right
                }
            };
        }
        // SAFETY: `parent` and `link` come from the descent just made in
        // this (borrowed, unchanged) tree; `new` stays in place while linked
        // (the function's safety requirements), which keeps the invariant.
        unsafe {
            bindings::rust_ksm_rb_link_node(new.as_ptr(), parent, link);
            bindings::rb_insert_color(new.as_ptr(), &mut self.0);
        }
        None
    }

    /// Unlinks `link` (`rb_erase()`).
    ///
    /// # Safety
    ///
    /// `link` is linked in this tree.
    pub(crate) unsafe fn erase(&mut self, link: &RbLink) {
        // SAFETY: by the function's safety requirements.
        unsafe { bindings::rb_erase(link.as_ptr(), &mut self.0) };
    }
}
