/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers for the merge selftests and the benchmark, parameterized by the
 * KSM sysfs directory so that the same code runs against the built-in KSM
 * (/sys/kernel/mm/ksm, kthread ksmd) and rust_ksm (/sys/kernel/mm/rust_ksm,
 * kthread rust_ksmd).  Built on ksm_util.h.
 */
#ifndef RUST_KSM_MERGE_UTIL_H
#define RUST_KSM_MERGE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Parse and remove "--ksm-dir DIR" and "--kthread NAME" from argv; the
 * environment variables KSM_DIR (or RUST_KSM_SYSFS) and RUST_KSM_KTHREAD
 * are the defaults.  Sets rksm_dir / kthread_name (ksm_util.h); the
 * kthread defaults to "ksmd" for a directory named .../ksm, else
 * "rust_ksmd".  Returns the remaining argc.
 */
int ksm_parse_args(int argc, char **argv);

/* The knob values a test may change, saved at start and restored after. */
struct ksm_knobs {
	unsigned long long pages_to_scan, sleep_millisecs, max_page_sharing;
	bool have_max_page_sharing;
};
void ksm_knobs_save(const char *dir, struct ksm_knobs *k);
void ksm_knobs_restore(const char *dir, const struct ksm_knobs *k);

/* The counters of DIR (KNOB_ERR / LONG_MIN where unreadable). */
struct ksm_counters {
	unsigned long long shared, sharing, unshared, volatile_, chains, dups,
		full_scans, pages_scanned;
	long long general_profit;
};
void ksm_counters_read(const char *dir, struct ksm_counters *c);
void ksm_counters_diag(const char *what, const struct ksm_counters *c);

/* A knob that may be negative (general_profit): 0 or -errno. */
int knob_read_signed(const char *dir, const char *knob, long long *val);

/* Write KNOB=V, with a diagnostic on failure; 0 or -errno. */
int ksm_set(const char *dir, const char *knob, unsigned long long v);

/* run=2 then run=0: everything unmerged, the scanner stopped. */
int ksm_unmerge_stop(const char *dir);

/* pages_to_scan=PTS sleep_millisecs=0. */
int ksm_fast(const char *dir, unsigned int pts);

/*
 * run=1 and wait until full_scans has advanced by SCANS, at most
 * TIMEOUT_MS.  0, or -1 (with a diagnostic) on timeout / error.
 * Upstream's criterion is 2 scans after a run=2 (which restarts the scan
 * cursor); with the scanner already running mid-pass use 3.
 */
int ksm_run_scans(const char *dir, unsigned int scans, unsigned int timeout_ms);

/* Wait (scanner running) until pages_shared + pages_sharing == N. Returns
 * the ms waited, or -1 on timeout (the last sum in *last). */
long ksm_wait_merged(const char *dir, unsigned long long n,
		     unsigned int timeout_ms, unsigned long long *last);

/* Poll until pages_shared == SHARED and pages_sharing == SHARING, at most
 * TIMEOUT_MS: for when no scan may come (the built-in ksmd drops an mm
 * with no VM_MERGEABLE VMA left and idles with an empty list, so
 * full_scans stops).  ms waited, or -1 (with a diagnostic). */
long ksm_wait_counters(const char *dir, unsigned long long shared,
		       unsigned long long sharing, unsigned int timeout_ms);

/* PFN of the page at ADDR in /proc/PID/pagemap (pid 0: self): the PFN,
 * 0 if not present, -1 on error. */
long long pagemap_pfn(pid_t pid, const void *addr);
/* /proc/kpageflags of PFN (LRU, THP, ...), ~0 if unknown.  (6.12 sets
 * KPF_KSM on every anonymous page: tell KSM pages by shared PFNs.) */
uint64_t kpageflags(unsigned long long pfn);
/* The PFNs of the N pages at ADDR in PID (0: self), in one read, as
 * pagemap_pfn() gives them (0: not present): 0 or -1. */
int pagemap_pfns(pid_t pid, const void *addr, size_t n, long long *pfns);

/* The raw pagemap entry of ADDR in PID (0: self) into *ENT: 0 or -1. */
int pagemap_read(pid_t pid, const void *addr, uint64_t *ent);
/* The same, 0 on error (as for an unmapped address). */
uint64_t pagemap_entry(pid_t pid, const void *addr);
/*
 * (No /proc/kpageflags KPF_KSM helper: 6.12's stable_page_flags() tests
 * `mapping & PAGE_MAPPING_KSM`, a 2-bit mask, so it reports every anonymous
 * page as KSM.  Merged = same PFN + counters.)
 */

/* Number of distinct non-zero PFNs among the NPAGES pages at ADDR (and
 * how many pages are not present, if np is not NULL). */
size_t distinct_pfns(const void *addr, size_t npages, size_t *np);

/* /proc/PID/ksm_stat (pid 0: self).  0 or -errno. */
struct ksm_stat {
	long long rmap_items, zero_pages, merging_pages, process_profit;
};
int ksm_stat_read(pid_t pid, struct ksm_stat *st);
/* /proc/PID/ksm_merging_pages (pid 0: self), -1 on error. */
long long ksm_merging_pages(pid_t pid);

/* Anonymous private mapping, MADV_NOHUGEPAGE, not populated.  NULL on
 * failure (with a diagnostic). */
void *map_anon(size_t pages);

/* Fill a page with the content of pattern P (never all zero) / check it.
 * Unique pages: pattern = a large number, e.g. 1000000 + index. */
void fill_pattern(void *page, unsigned long p);
bool check_pattern(const void *page, unsigned long p);
unsigned char pattern_byte(unsigned long p, size_t off);

/* xorshift64 PRNG. */
uint64_t rnd_next(uint64_t *state);

/* A test of a binary parameterized by the KSM directory. */
struct ksm_test {
	const char *name;
	int (*fn)(const char *dir);
};

/*
 * main() of such a binary: parses [--ksm-dir DIR] [--kthread NAME] [test
 * numbers...], then runs the selected tests, each after run=2, run=0 and
 * fast knobs, and followed by run=2, the knobs as found, run=0.  Calls
 * done() (if not NULL) before exiting with the TAP verdict.  ROOT_FOR says
 * what root is needed for.
 */
void __attribute__((noreturn))
ksm_tests_main(int argc, char **argv, const struct ksm_test *tests, size_t n,
	       const char *root_for, void (*done)(void));

/* NUMA: move_pages(2); the node of the page at ADDR in PID (0: self) or
 * -errno; whether the machine has nodes 0 and 1. */
#define MPOL_MF_MOVE_	(1 << 1)	/* <linux/mempolicy.h> */
#define MPOL_MF_MOVE_ALL_	(1 << 2)
long sys_move_pages(pid_t pid, unsigned long n, void **pages, const int *nodes,
		    int *status, int flags);
int page_node(pid_t pid, void *addr);
bool two_nodes(void);

/*
 * Swap for tests that swap pages out: swap_setup() turns it on (zram0 set
 * up and swapped on if no swap is active): 0, or -1 with swap_why saying
 * why not.  swap_teardown() undoes what swap_setup() did.
 */
extern char swap_why[160];
int swap_setup(void);
void swap_teardown(void);

#endif /* RUST_KSM_MERGE_UTIL_H */
