// SPDX-License-Identifier: GPL-2.0
//! Guest selftests for rust_ksm, written from a different angle than the C
//! ones: property-style loops over /sys/kernel/mm/rust_ksm checked against a
//! model of kstrtouint, counter invariants sampled while scanning, and fork.
//!
//! Prints TAP ("TAP version 13", "1..N", "ok N name", "# Totals: ...") and
//! exits 0 only if no test failed.  Needs rust_ksm loaded and no other
//! process in the guest with MADV_MERGEABLE memory.  Leaves run=0 and the
//! default knobs.  Set RUST_KSM_SEED=<n> to replay a run's random choices.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::thread::sleep;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- libc ----

mod sys {
    use std::os::raw::{c_int, c_long, c_void};

    pub const PROT_READ: c_int = 1;
    pub const PROT_WRITE: c_int = 2;
    pub const MAP_PRIVATE: c_int = 0x02;
    pub const MAP_ANONYMOUS: c_int = 0x20;
    pub const MADV_MERGEABLE: c_int = 12;
    pub const MADV_NOHUGEPAGE: c_int = 15;
    pub const SC_PAGESIZE: c_int = 30;
    pub const SIGKILL: c_int = 9;

    extern "C" {
        pub fn mmap(
            addr: *mut c_void,
            len: usize,
            prot: c_int,
            flags: c_int,
            fd: c_int,
            off: i64,
        ) -> *mut c_void;
        pub fn munmap(addr: *mut c_void, len: usize) -> c_int;
        pub fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
        pub fn sysconf(name: c_int) -> c_long;
        pub fn fork() -> c_int;
        pub fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
        pub fn kill(pid: c_int, sig: c_int) -> c_int;
        pub fn pipe(fds: *mut c_int) -> c_int;
        pub fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize;
        pub fn close(fd: c_int) -> c_int;
        pub fn _exit(status: c_int) -> !;
    }
}

const EINVAL: i32 = 22;
const EIO: i32 = 5;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn page_size() -> usize {
    // SAFETY: sysconf() has no memory effects.
    let ps = unsafe { sys::sysconf(sys::SC_PAGESIZE) };
    if ps > 0 {
        ps as usize
    } else {
        4096
    }
}

/// A populated private anonymous mapping (4 KiB pages only), unmapped on drop.
struct Region {
    addr: *mut u8,
    len: usize,
}

impl Region {
    fn new(pages: usize, fill: u8) -> Result<Region, String> {
        let len = pages * page_size();
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let p = unsafe {
            sys::mmap(
                std::ptr::null_mut(),
                len,
                sys::PROT_READ | sys::PROT_WRITE,
                sys::MAP_PRIVATE | sys::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p as isize == -1 {
            return Err(format!("mmap {} pages: errno {}", pages, errno()));
        }
        // SAFETY: `p` maps `len` writable bytes (checked above).
        unsafe {
            sys::madvise(p, len, sys::MADV_NOHUGEPAGE);
            std::ptr::write_bytes(p as *mut u8, fill, len);
        }
        Ok(Region {
            addr: p as *mut u8,
            len,
        })
    }

    fn mergeable(&self) -> Result<(), String> {
        // SAFETY: the range is this region's own mapping.
        if unsafe { sys::madvise(self.addr as *mut _, self.len, sys::MADV_MERGEABLE) } != 0 {
            return Err(format!("madvise(MADV_MERGEABLE): errno {}", errno()));
        }
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps only this region's own mapping, once.
        unsafe { sys::munmap(self.addr as *mut _, self.len) };
    }
}

// --------------------------------------------------------------- sysfs ----

/// The directory under test; RUST_KSM_SYSFS=/sys/kernel/mm/ksm points the
/// tests at upstream KSM instead (to check the tests themselves).
fn rksm() -> &'static str {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        std::env::var("RUST_KSM_SYSFS").unwrap_or_else(|_| "/sys/kernel/mm/rust_ksm".into())
    })
}
const DEFAULTS: [(&str, u64); 3] = [("run", 0), ("pages_to_scan", 100), ("sleep_millisecs", 20)];

/// Read a knob; it must be exactly "<decimal>\n".
fn get(knob: &str) -> Result<u64, String> {
    let path = format!("{}/{}", rksm(), knob);
    let mut s = String::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|e| format!("read {}: {}", path, e))?;
    let digits = s
        .strip_suffix('\n')
        .ok_or_else(|| format!("{}: no newline in {:?}", path, s))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{}: malformed {:?}", path, s));
    }
    digits
        .parse()
        .map_err(|e| format!("{}: {:?}: {}", path, s, e))
}

/// One open + one write(2) of the whole buffer: Ok, or the errno.
fn put_raw(knob: &str, buf: &[u8]) -> Result<(), i32> {
    let path = format!("{}/{}", rksm(), knob);
    let mut f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| e.raw_os_error().unwrap_or(EIO))?;
    match f.write(buf) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(_) => Err(EIO),
        Err(e) => Err(e.raw_os_error().unwrap_or(EIO)),
    }
}

fn put(knob: &str, v: u64) -> Result<(), String> {
    put_raw(knob, v.to_string().as_bytes())
        .map_err(|e| format!("write {} to {}: errno {}", v, knob, e))
}

fn reset_defaults() {
    for (k, v) in DEFAULTS {
        if let Err(e) = put(k, v) {
            diag(&e);
        }
    }
}

/// Poll until `knob` >= target; the last value read, or an error on timeout.
fn wait_ge(knob: &str, target: u64, timeout: Duration) -> Result<u64, String> {
    let start = Instant::now();
    loop {
        let v = get(knob)?;
        if v >= target {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "{} stuck at {} (< {}) after {:?}",
                knob, v, target, timeout
            ));
        }
        sleep(Duration::from_millis(2));
    }
}

/// Model of the kernel's kstrtouint(s, 10): what a knob write must do.
fn kstrtouint(s: &[u8]) -> Option<u32> {
    let s = s.strip_prefix(b"+").unwrap_or(s);
    let ndigits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if ndigits == 0 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in &s[..ndigits] {
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    let rest = &s[ndigits..];
    let rest = rest.strip_prefix(b"\n").unwrap_or(rest);
    if !rest.is_empty() {
        return None;
    }
    u32::try_from(v).ok()
}

#[cfg(test)]
mod model_tests {
    use super::kstrtouint;

    #[test]
    fn accepts() {
        for (s, v) in [
            ("0", 0),
            ("+7", 7),
            ("010", 10),
            ("5\n", 5),
            ("+0\n", 0),
            ("4294967295", u32::MAX),
        ] {
            assert_eq!(kstrtouint(s.as_bytes()), Some(v), "{:?}", s);
        }
    }

    #[test]
    fn rejects() {
        for s in super::INVALID {
            assert_eq!(kstrtouint(s.as_bytes()), None, "{:?}", s);
        }
        assert_eq!(kstrtouint(b""), None);
    }
}

// ----------------------------------------------------------------- TAP ----

fn diag(msg: &str) {
    for line in msg.lines() {
        println!("# {}", line);
    }
}

/// Per-test context: check() records a failure and goes on.
struct T {
    failed: bool,
    skip: Option<String>,
    rng: Rng,
}

impl T {
    fn check(&mut self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            diag(&format!("check failed: {}", msg()));
            self.failed = true;
        }
    }

    /// Record an Err as a failure; Some(value) on Ok.
    fn ok<V>(&mut self, r: Result<V, String>) -> Option<V> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.check(false, || e);
                None
            }
        }
    }
}

/// xorshift64*: reproducible "random" inputs (seed printed at start).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A u32 biased towards the interesting ends of the range.
    fn u32(&mut self) -> u32 {
        match self.below(4) {
            0 => self.below(1000) as u32,
            1 => u32::MAX - self.below(1000) as u32,
            _ => self.next() as u32,
        }
    }
}

/// The same number in one of several spellings kstrtouint accepts.
fn spell(rng: &mut Rng, v: u64) -> String {
    match rng.below(5) {
        0 => v.to_string(),
        1 => format!("{}\n", v),
        2 => format!("+{}", v),
        3 => format!("{}{}", "0".repeat(1 + rng.below(5) as usize), v),
        _ => format!("+{}{}\n", "0".repeat(rng.below(3) as usize), v),
    }
}

// --------------------------------------------------------------- tests ----

fn round_trips(t: &mut T, knob: &str) {
    for i in 0..300 {
        let v = if i == 0 {
            u32::MAX
        } else if i == 1 {
            0
        } else {
            t.rng.u32()
        } as u64;
        let s = spell(&mut t.rng, v);
        let w = put_raw(knob, s.as_bytes());
        t.check(w.is_ok(), || format!("{} <- {:?}: errno {:?}", knob, s, w));
        let got = get(knob);
        t.check(got == Ok(v), || {
            format!("{} <- {:?} reads back {:?}", knob, s, got)
        });
        if t.failed {
            return;
        }
    }
}

fn test_round_trip_pages_to_scan(t: &mut T) {
    round_trips(t, "pages_to_scan");
}

fn test_round_trip_sleep_millisecs(t: &mut T) {
    round_trips(t, "sleep_millisecs");
}

const INVALID: &[&str] = &[
    " 5",
    "5 5",
    "0x10",
    "1e3",
    "99999999999999999999",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "-0",
    "--5",
    "+-5",
    "++5",
    "+",
    "-",
    "abc",
    "1x",
    "x1",
    "\n",
    "\n5",
    "5\n\n",
    "5\r\n",
    "5 ",
    "\t5",
    "5\t",
    "1,000",
    "1_000",
    "1.0",
    "0b1",
    "0o7",
    "\u{ff15}",
    "5\u{a0}",
    "nan",
    "inf",
    " ",
];
const INVALID_RUN: &[&str] = &["3", "+3", "03\n", "4", "10", "255", "256", "4294967295"];

fn rejects(t: &mut T, knob: &str, marker: u64, input: &[u8]) {
    let w = put_raw(knob, input);
    t.check(w == Err(EINVAL), || {
        format!(
            "{} <- {:?}: {:?}, want EINVAL",
            knob,
            String::from_utf8_lossy(input),
            w
        )
    });
    let got = get(knob);
    t.check(got == Ok(marker), || {
        format!(
            "{} <- {:?} changed {} to {:?}",
            knob,
            String::from_utf8_lossy(input),
            marker,
            got
        )
    });
}

fn test_invalid_table(t: &mut T) {
    for knob in ["pages_to_scan", "sleep_millisecs", "run"] {
        let marker = if knob == "run" {
            t.rng.below(3)
        } else {
            t.rng.u32() as u64
        };
        if t.ok(put(knob, marker)).is_none() {
            return;
        }
        for s in INVALID {
            rejects(t, knob, marker, s.as_bytes());
        }
        if knob == "run" {
            for s in INVALID_RUN {
                rejects(t, knob, marker, s.as_bytes());
            }
        }
    }
}

/// Random short strings over a nasty alphabet; the kernel must agree with
/// the kstrtouint model (plus run's 0..=2 range) on every one.
fn test_fuzz_against_model(t: &mut T) {
    const ALPHABET: &[u8] = b"0123456789000999+-+ \n\tx.e";
    let mut accepted = 0;
    let mut rejected = 0;
    for i in 0..600 {
        let knob = ["pages_to_scan", "sleep_millisecs", "run"][i % 3];
        let len = 1 + t.rng.below(12) as usize;
        let input: Vec<u8> = (0..len)
            .map(|_| ALPHABET[t.rng.below(ALPHABET.len() as u64) as usize])
            .collect();
        let before = match t.ok(get(knob)) {
            Some(v) => v,
            None => return,
        };
        let want = kstrtouint(&input).filter(|&v| knob != "run" || v <= 2);
        let w = put_raw(knob, &input);
        let got = get(knob);
        let shown = String::from_utf8_lossy(&input).into_owned();
        match want {
            Some(v) => {
                accepted += 1;
                t.check(w.is_ok(), || {
                    format!("{} <- {:?} (= {}): errno {:?}", knob, shown, v, w)
                });
                t.check(got == Ok(v as u64), || {
                    format!("{} <- {:?} reads {:?}, want {}", knob, shown, got, v)
                });
            }
            None => {
                rejected += 1;
                t.check(w == Err(EINVAL), || {
                    format!("{} <- {:?}: {:?}, want EINVAL", knob, shown, w)
                });
                t.check(got == Ok(before), || {
                    format!("{} <- {:?} changed {} to {:?}", knob, shown, before, got)
                });
            }
        }
        if t.failed {
            break;
        }
        if knob == "run" {
            let _ = put("run", 0);
        }
    }
    diag(&format!(
        "{} inputs accepted, {} rejected",
        accepted, rejected
    ));
}

fn test_run_transitions(t: &mut T) {
    for from in 0..3u64 {
        for to in 0..3u64 {
            t.ok(put("run", from));
            t.check(get("run") == Ok(from), || {
                format!("run={} does not read back", from)
            });
            let s = spell(&mut t.rng, to);
            let w = put_raw("run", s.as_bytes());
            t.check(w.is_ok(), || {
                format!("run {} -> {:?}: errno {:?}", from, s, w)
            });
            let got = get("run");
            t.check(got == Ok(to), || {
                format!("run {} -> {:?} reads back {:?}", from, s, got)
            });
        }
    }
}

fn test_counters_monotonic(t: &mut T) {
    const PAGES: u64 = 512;
    let region = match t.ok(Region::new(PAGES as usize, 0x42)) {
        Some(r) => r,
        None => return,
    };
    if t.ok(region.mergeable()).is_none() {
        return;
    }
    for (k, v) in [("pages_to_scan", 64), ("sleep_millisecs", 0), ("run", 1)] {
        t.ok(put(k, v));
    }
    let (ps_start, fs_start) = match (t.ok(get("pages_scanned")), t.ok(get("full_scans"))) {
        (Some(p), Some(f)) => (p, f),
        _ => return,
    };
    // full_scans read before each pages_scanned reading, and after it.
    let (mut ps_prev, mut fs_before_prev, mut fs_prev) = (ps_start, fs_start, fs_start);
    let start = Instant::now();
    let mut samples = 0;
    while samples < 200 || (fs_prev < fs_start + 5 && start.elapsed() < Duration::from_secs(20)) {
        let (fs_before, ps, fs) = match (
            t.ok(get("full_scans")),
            t.ok(get("pages_scanned")),
            t.ok(get("full_scans")),
        ) {
            (Some(a), Some(p), Some(f)) => (a, p, f),
            _ => return,
        };
        samples += 1;
        t.check(ps >= ps_prev, || {
            format!("pages_scanned went back {} -> {}", ps_prev, ps)
        });
        t.check(fs_before >= fs_prev && fs >= fs_before, || {
            format!(
                "full_scans went back {} -> {} -> {}",
                fs_prev, fs_before, fs
            )
        });
        // One region: between two pages_scanned readings at most one page
        // per page per pass, for the passes that ended between the
        // full_scans readings around them, plus a partial one at either
        // end.  (A fast scanner ends passes between two sysfs reads.)
        let (dp, df) = (ps.wrapping_sub(ps_prev), fs.wrapping_sub(fs_before_prev));
        t.check(dp <= (df + 2) * PAGES, || {
            format!(
                "pages_scanned +{} while full_scans +{} ({} pages)",
                dp, df, PAGES
            )
        });
        if t.failed {
            return;
        }
        ps_prev = ps;
        fs_before_prev = fs_before;
        fs_prev = fs;
        sleep(Duration::from_millis(3));
    }
    diag(&format!(
        "{} samples in {:?}: pages_scanned +{} full_scans +{}",
        samples,
        start.elapsed(),
        ps_prev - ps_start,
        fs_prev - fs_start
    ));
    t.check(fs_prev >= fs_start + 5, || {
        "fewer than 5 passes in 20 s".into()
    });
    t.check(ps_prev - ps_start >= 4 * PAGES, || {
        format!(
            "only {} pages scanned over {} passes",
            ps_prev - ps_start,
            fs_prev - fs_start
        )
    });

    // run=0: both counters freeze.
    t.ok(put("run", 0));
    sleep(Duration::from_millis(200));
    let frozen = (get("pages_scanned"), get("full_scans"));
    for _ in 0..50 {
        sleep(Duration::from_millis(10));
        let now = (get("pages_scanned"), get("full_scans"));
        t.check(now == frozen, || {
            format!("counters moved at run=0: {:?} -> {:?}", frozen, now)
        });
        if t.failed {
            return;
        }
    }
    drop(region);
}

/// Pages scanned per full pass, averaged over `passes` passes measured from
/// pass boundary to pass boundary.
fn pages_per_pass(passes: u64) -> Result<f64, String> {
    let fs = get("full_scans")?;
    let timeout = Duration::from_secs(30);
    let fs0 = wait_ge("full_scans", fs + 1, timeout)?;
    let ps0 = get("pages_scanned")?;
    let fs1 = wait_ge("full_scans", fs0 + passes, timeout)?;
    let ps1 = get("pages_scanned")?;
    Ok((ps1 - ps0) as f64 / (fs1 - fs0) as f64)
}

struct Child {
    pid: i32,
    go: i32,
}

/// Fork a child that keeps the parent's memory (and so its MADV_MERGEABLE
/// region) until `go` is closed.
fn fork_sleeper() -> Result<Child, String> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { sys::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: errno {}", errno()));
    }
    std::io::stdout().flush().ok();
    // SAFETY: fork() in a single-threaded test process.
    let pid = unsafe { sys::fork() };
    if pid < 0 {
        return Err(format!("fork: errno {}", errno()));
    }
    if pid == 0 {
        // SAFETY: the child only uses async-signal-safe calls before _exit.
        unsafe {
            sys::close(fds[1]);
            let mut b = 0u8;
            while sys::read(fds[0], &mut b as *mut u8 as *mut _, 1) > 0 {}
            sys::_exit(0);
        }
    }
    // SAFETY: closes our own read end once.
    unsafe { sys::close(fds[0]) };
    Ok(Child { pid, go: fds[1] })
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: our own pipe end and child, each released once.
        unsafe {
            sys::close(self.go);
            let mut status = 0;
            if sys::waitpid(self.pid, &mut status, 0) != self.pid {
                sys::kill(self.pid, sys::SIGKILL);
                sys::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

fn test_fork_picked_up(t: &mut T) {
    const PAGES: u64 = 1000;
    const PASSES: u64 = 10;
    let region = match t.ok(Region::new(PAGES as usize, 0x17)) {
        Some(r) => r,
        None => return,
    };
    if t.ok(region.mergeable()).is_none() {
        return;
    }
    // One batch per pass (a batch ends with the pass), then a sleep: the
    // two counters are read while the scanner stands still, whatever the
    // speed of a pass.
    for (k, v) in [
        ("pages_to_scan", 100000),
        ("sleep_millisecs", 50),
        ("run", 1),
    ] {
        t.ok(put(k, v));
    }
    let before = match t.ok(pages_per_pass(PASSES)) {
        Some(v) => v,
        None => return,
    };
    let child = match t.ok(fork_sleeper()) {
        Some(c) => c,
        None => return,
    };
    // Let the child be registered and fully covered by a pass.
    if t.ok(get("full_scans").and_then(|f| wait_ge("full_scans", f + 2, Duration::from_secs(30))))
        .is_none()
    {
        return;
    }
    let with_child = t.ok(pages_per_pass(PASSES));
    drop(child);
    let fs = get("full_scans").unwrap_or(0);
    let _ = wait_ge("full_scans", fs + 2, Duration::from_secs(30));
    let after = t.ok(pages_per_pass(PASSES));
    diag(&format!(
        "pages per pass: {:.1} alone, {:?} with the child, {:?} after it exited \
                   ({} pages)",
        before, with_child, after, PAGES
    ));
    let n = PAGES as f64;
    t.check((before - n).abs() <= 0.25 * n, || {
        format!("{:.1} pages per pass for a {}-page region", before, PAGES)
    });
    if let Some(w) = with_child {
        t.check((w - before - n).abs() <= 0.25 * n, || {
            format!(
                "fork grew pages per pass by {:.1}, want about {}",
                w - before,
                PAGES
            )
        });
    }
    if let Some(a) = after {
        t.check((a - before).abs() <= 0.25 * n, || {
            format!(
                "after the child exited: {:.1} pages per pass, before fork {:.1}",
                a, before
            )
        });
    }
    drop(region);
}

// ---------------------------------------------------------------- main ----

// --------------------------------------------------------------- merging ----

/// Sum of `pages_shared` + `pages_sharing` etc. read together.
fn merge_counters() -> Result<[u64; 4], String> {
    Ok([
        get("pages_shared")?,
        get("pages_sharing")?,
        get("pages_unshared")?,
        get("pages_volatile")?,
    ])
}

/// What the counters must read for pages with these contents: each group of
/// g >= 2 equal pages takes ceil(g / max_sharing) KSM pages.
fn expected_merge(pages: &[Vec<u8>], max_sharing: u64) -> (u64, u64, u64) {
    let mut sorted: Vec<&Vec<u8>> = pages.iter().collect();
    sorted.sort();
    let (mut shared, mut sharing, mut single) = (0, 0, 0);
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j] == sorted[i] {
            j += 1;
        }
        let g = (j - i) as u64;
        if g == 1 {
            single += 1;
        } else {
            let nodes = g.div_ceil(max_sharing);
            shared += nodes;
            sharing += g - nodes;
        }
        i = j;
    }
    (shared, sharing, single)
}

/// Full scans, then compare counters and every byte with the model.
fn check_against_model(t: &mut T, region: &Region, model: &[Vec<u8>], what: &str) {
    let ps = page_size();
    let fs = match get("full_scans") {
        Ok(v) => v,
        Err(e) => return t.check(false, || e),
    };
    if t.ok(put("run", 1)).is_none()
        || t.ok(wait_ge("full_scans", fs + 3, Duration::from_secs(30)))
            .is_none()
    {
        return;
    }
    let (shared, sharing, single) = expected_merge(model, 256);
    // Three passes merge fresh pages; an address whose rmap item is older
    // (a page of an earlier test was there) may be skipped a few passes
    // more by smart_scan, as upstream's: give it up to 60 passes.
    let start = Instant::now();
    while let Ok([s, sh, un, vol]) = merge_counters() {
        let passes = get("full_scans").unwrap_or(u64::MAX);
        if (s, sh, un + vol) == (shared, sharing, single)
            || passes >= fs + 60
            || start.elapsed() > Duration::from_secs(30)
        {
            break;
        }
        sleep(Duration::from_millis(5));
    }
    let _ = put("run", 0);
    if let Some([s, sh, un, vol]) = t.ok(merge_counters()) {
        diag(&format!("{what}: shared {s} sharing {sh} unshared {un} volatile {vol}; model {shared}/{sharing}/{single}"));
        t.check(s == shared && sh == sharing, || {
            format!("{what}: shared/sharing {s}/{sh}, model {shared}/{sharing}")
        });
        t.check(un + vol == single, || {
            format!(
                "{what}: unshared+volatile {}, model {single} single pages",
                un + vol
            )
        });
    }
    for (i, want) in model.iter().enumerate() {
        // SAFETY: the page lies inside the live mapping.
        let got = unsafe { std::slice::from_raw_parts(region.addr.add(i * ps), ps) };
        if got != &want[..] {
            t.check(false, || format!("{what}: page {i} differs from the model"));
            return;
        }
    }
}

fn test_merge_model(t: &mut T) {
    let ps = page_size();
    let n = 384;
    let patterns = 2 + t.rng.below(14) as usize;
    let unique = t.rng.below(64) as usize;
    let region = match t.ok(Region::new(n, 0)) {
        Some(r) => r,
        None => return,
    };
    // Page i holds pattern (random) or, for the last `unique`, its own.
    let mut model: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let tag = if i >= n - unique {
                1000 + i as u64
            } else {
                t.rng.below(patterns as u64)
            };
            let mut page = vec![(tag % 251) as u8 + 1; ps];
            page[..8].copy_from_slice(&tag.to_le_bytes());
            page
        })
        .collect();
    for (i, page) in model.iter().enumerate() {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(page.as_ptr(), region.addr.add(i * ps), ps) };
    }
    diag(&format!("{n} pages: {patterns} patterns, {unique} unique"));
    if t.ok(put("pages_to_scan", 1000)).is_none()
        || t.ok(put("sleep_millisecs", 0)).is_none()
        || t.ok(region.mergeable()).is_none()
    {
        return;
    }
    check_against_model(t, &region, &model, "merged");

    // Random single-byte writes: each breaks sharing of its page only.
    for _ in 0..64 {
        let (i, off) = (
            t.rng.below(n as u64) as usize,
            8 + t.rng.below(ps as u64 - 8) as usize,
        );
        let v = t.rng.next() as u8;
        model[i][off] = v;
        // SAFETY: inside the mapping.
        unsafe { *region.addr.add(i * ps + off) = v };
    }
    check_against_model(t, &region, &model, "after 64 random writes");
    let _ = put("run", 2);
    let _ = put("run", 0);
}

fn main() {
    let seed = std::env::var("RUST_KSM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    let tests: &[(&str, fn(&mut T))] = &[
        (
            "pages_to_scan round-trips 300 random u32 spellings",
            test_round_trip_pages_to_scan,
        ),
        (
            "sleep_millisecs round-trips 300 random u32 spellings",
            test_round_trip_sleep_millisecs,
        ),
        (
            "invalid input table: EINVAL, value unchanged",
            test_invalid_table,
        ),
        (
            "600 random strings agree with a kstrtouint model",
            test_fuzz_against_model,
        ),
        ("run transition table 0/1/2 x 0/1/2", test_run_transitions),
        (
            "counters monotonic while scanning, frozen at run=0",
            test_counters_monotonic,
        ),
        (
            "forked child's MADV_MERGEABLE pages are scanned too",
            test_fork_picked_up,
        ),
        (
            "random pages merge as a content model predicts, before and after writes",
            test_merge_model,
        ),
    ];

    println!("TAP version 13");
    println!("1..{}", tests.len());
    diag(&format!("RUST_KSM_SEED={}", seed));
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    let mut rng = Rng(seed);
    for (i, (name, f)) in tests.iter().enumerate() {
        let mut t = T {
            failed: false,
            skip: None,
            rng: Rng(rng.next() | 1),
        };
        f(&mut t);
        reset_defaults();
        match (t.failed, t.skip) {
            (true, _) => {
                fail += 1;
                println!("not ok {} {}", i + 1, name);
            }
            (false, Some(why)) => {
                skip += 1;
                println!("ok {} {} # SKIP {}", i + 1, name, why);
            }
            (false, None) => {
                pass += 1;
                println!("ok {} {}", i + 1, name);
            }
        }
        std::io::stdout().flush().ok();
    }
    println!(
        "# Totals: pass:{} fail:{} xfail:0 xpass:0 skip:{} error:0",
        pass, fail, skip
    );
    std::io::stdout().flush().ok();
    std::process::exit(if fail > 0 { 1 } else { 0 });
}
