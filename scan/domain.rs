// SPDX-License-Identifier: GPL-2.0

//! The `merge_domain` knob's values (the domains themselves are in
//! `crate::tree`).  Pure logic, host-tested (selftests/host).

#![deny(unsafe_code)]

use kernel::prelude::*;

/// How processes are grouped into merge domains (`merge_domain`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum DomainMode {
    /// Every page may merge with every other (upstream's KSM).
    Global,
    /// Pages of processes whose owner has the same uid.
    User,
    /// Pages of processes in the same cgroup v2 subtree at
    /// `merge_domain_depth`.
    Cgroup,
}

impl DomainMode {
    /// A `merge_domain` write, compared as sysfs_streq() compares (a
    /// trailing newline is allowed).
    pub(crate) fn parse(buf: &[u8]) -> Result<Self> {
        match buf.strip_suffix(b"\n").unwrap_or(buf) {
            b"global" => Ok(Self::Global),
            b"user" => Ok(Self::User),
            b"cgroup" => Ok(Self::Cgroup),
            _ => Err(EINVAL),
        }
    }

    /// What `merge_domain` shows: every value, the current one in brackets
    /// (as `advisor_mode`).
    pub(crate) fn knob(self) -> &'static str {
        match self {
            Self::Global => "[global] user cgroup",
            Self::User => "global [user] cgroup",
            Self::Cgroup => "global user [cgroup]",
        }
    }

    /// The word a `domains` line begins with.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::User => "uid",
            Self::Cgroup => "cgroup",
        }
    }
}
