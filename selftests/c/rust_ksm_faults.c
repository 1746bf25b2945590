// SPDX-License-Identifier: GPL-2.0
/*
 * Faults of the engine handover, of teardown and of unmerging races
 * (issue 9).  Each test names the item it covers and how it was seen to
 * fail before its fix.  Merged pages are told by shared PFNs in pagemap:
 * 6.12's /proc/kpageflags sets KPF_KSM on every anonymous page.
 *
 * Every test starts and ends with rust_ksm loaded and stopped (after()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

#define RK		"/sys/kernel/mm/rust_ksm"
#define BK		KSM_DIR
#define PM_SWAP		(1ULL << 62)	/* pagemap: swapped out */
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT	21
#endif
#define TIMEOUT_MS	60000
#define ps		page_size

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return (x > y) - (x < y);
}

/*
 * Pages of the N at P (in PID, 0: self) whose PFN another of them shares:
 * 0 exactly when every present page is private.  *absent (if given) gets
 * the pages not present.  SIZE_MAX on error.
 */
static size_t shared_pages(pid_t pid, const char *p, size_t n, size_t *absent)
{
	long long *pfn = calloc(n, sizeof(*pfn));
	size_t i, j, shared = 0, np = 0;

	if (!pfn || pagemap_pfns(pid, p, n, pfn)) {
		free(pfn);
		return SIZE_MAX;
	}
	for (i = 0; i < n; i++)
		np += !pfn[i];
	qsort(pfn, n, sizeof(*pfn), cmp_ll);
	for (i = 0; i < n; i = j) {
		for (j = i + 1; j < n && pfn[j] == pfn[i]; j++)
			;
		if (pfn[i] && j - i > 1)
			shared += j - i;
	}
	free(pfn);
	if (absent)
		*absent = np;
	return shared;
}

static size_t shared_self(const char *p, size_t n)
{
	return shared_pages(0, p, n, NULL);
}

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), err = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, s, strlen(s)) < 0)
		err = -errno;
	close(fd);
	return err;
}

static int mount_debugfs(void)
{
	return mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
}

/* Page i of the N at P holds pattern BASE + i % NPAT. */
static bool patterns_ok(const char *p, size_t n, size_t base, size_t npat)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!check_pattern(p + i * ps, base + i % npat))
			return false;
	return true;
}

static bool all_pattern(const char *p, size_t n, size_t npat)
{
	return patterns_ok(p, n, 0, npat);
}

/* Map N pages of NPAT patterns, MADV_MERGEABLE, and let rust_ksm merge
 * them all (NPAT KSM pages).  NULL on failure, with a diagnostic. */
static char *merged_area(size_t n, size_t npat)
{
	char *p = map_anon(n);
	size_t i, np, d;

	if (!p)
		return NULL;
	for (i = 0; i < n; i++)
		fill_pattern(p + i * ps, i % npat);
	if (madvise(p, n * ps, MADV_MERGEABLE) || ksm_fast(RK, 4096) ||
	    ksm_run_scans(RK, 2, TIMEOUT_MS) ||
	    ksm_wait_merged(RK, n, TIMEOUT_MS, NULL) < 0 || ksm_set(RK, "run", 0)) {
		tap_diag("merging %zu pages failed", n);
		munmap(p, n * ps);
		return NULL;
	}
	d = distinct_pfns(p, n, &np);
	if (d != npat || np) {
		tap_diag("merged area: %zu PFNs (%zu absent), want %zu", d, np, npat);
		munmap(p, n * ps);
		return NULL;
	}
	return p;
}

/*
 * A child holding mappings: it waits for a command byte on a pipe, 'c'
 * checks N pages at P against patterns BASE + i % NPAT (answer 'y' or
 * 'n'), 'q' quits.
 */
struct kid {
	pid_t pid;
	int cmd, ans;
};

static void kid_main(int cmd, int ans, const char *p, size_t n, size_t base,
		     size_t npat)
{
	char c, r;

	while (read(cmd, &c, 1) == 1 && c != 'q') {
		r = patterns_ok(p, n, base, npat) ? 'y' : 'n';
		if (write(ans, &r, 1) != 1)
			break;
	}
	_exit(0);
}

static int kid_start(struct kid *k, const char *p, size_t n, size_t base,
		     size_t npat)
{
	int a[2], b[2];

	if (pipe(a) || pipe(b))
		return -1;
	k->pid = fork();
	if (k->pid < 0)
		return -1;
	if (!k->pid) {
		close(a[1]);
		close(b[0]);
		kid_main(a[0], b[1], p, n, base, npat);
	}
	close(a[0]);
	close(b[1]);
	k->cmd = a[1];
	k->ans = b[0];
	return 0;
}

static bool kid_data_ok(struct kid *k)
{
	char c = 'c', r = 0;

	return write(k->cmd, &c, 1) == 1 && read(k->ans, &r, 1) == 1 && r == 'y';
}

static void kid_stop(struct kid *k)
{
	if (k->pid <= 0)
		return;
	kill(k->pid, SIGKILL);
	waitpid(k->pid, NULL, 0);
	close(k->cmd);
	close(k->ans);
	k->pid = 0;
}

/* The built-in KSM stopped, unmerged (when no engine holds it off) and
 * at its default knobs again, after a test that used it. */
static void builtin_reset(void)
{
	ksm_set(BK, "run", 0);
	if (!module_loaded()) {
		ksm_set(BK, "run", 2);
		ksm_set(BK, "run", 0);
	}
	ksm_set(BK, "pages_to_scan", DEF_PAGES_TO_SCAN);
	ksm_set(BK, "sleep_millisecs", DEF_SLEEP_MILLISECS);
}

/*
 * Item 1: a built-in stable node that outlives the counters.  The built-in
 * KSM merges two pages of this process; a forked child maps the KSM page
 * too; the parent unmaps its copies and a built-in pass frees the parent's
 * rmap items before it reaches the child's.  Now pages_shared,
 * pages_sharing and ksm_zero_pages read 0 while the child maps a KSM folio
 * whose mapping points to a built-in stable node.  The engine must never
 * read that node as its own: insmod leaves the page to the built-in (no
 * item knows a mapping to hand over), and rust_ksm's scanner unshares the
 * child's mappings of it.
 *
 * The order is forced: the two pages are the last of the area, after NY
 * unique ones; the built-in scanner is stopped half way through those
 * before the fork (the child's mm slot goes in before the scanner's, so
 * it is scanned after the rest of this mm), and once the rest of this mm
 * is scanned the items of the unmapped pages are gone, while the child's
 * copy of the two pages still lies NY pages ahead of the scanner.
 *
 * Seen failing before the fix (old patch and module, this test): insmod
 * succeeded with the child's two pages still on one built-in KSM page
 * ("child's pages still merged after insmod"), and rust_ksmd then oopsed
 * in Trees::remove_node() from stable_search() (KASAN: user-memory-access):
 * it had read the built-in node as its own.
 */
static int test_handover_child(void)
{
	const size_t ny = 1024, n = ny + 2;
	unsigned long long sum = 0, fs, scanned;
	int ret = TAP_PASS;
	struct kid kid = { 0 };
	char *p, *x;
	uint64_t t0;
	size_t i, absent;

	if (module_unload())
		return TAP_FAIL;
	p = map_anon(n);
	if (!p)
		return TAP_FAIL;
	x = p + ny * ps;
	for (i = 0; i < ny; i++)
		fill_pattern(p + i * ps, 100 + i);
	fill_pattern(x, 1);
	fill_pattern(x + ps, 1);
	if (madvise(p, n * ps, MADV_MERGEABLE) || ksm_fast(BK, 4096) ||
	    ksm_set(BK, "run", 1) || ksm_wait_merged(BK, 2, TIMEOUT_MS, NULL) < 0) {
		FAILED("the built-in KSM did not merge the two pages");
		goto out;
	}
	/* Stop the scanner half way through the unique pages. */
	fs = knob_get(BK, "full_scans");
	if (ksm_set(BK, "pages_to_scan", 16) || ksm_set(BK, "sleep_millisecs", 20) ||
	    wait_knob_ge(BK, "full_scans", fs + 1, TIMEOUT_MS, NULL) < 0) {
		FAILED("built-in scanner did not go round");
		goto out;
	}
	scanned = knob_get(BK, "pages_scanned");
	if (wait_knob_ge(BK, "pages_scanned", scanned + ny / 2, TIMEOUT_MS, NULL) < 0 ||
	    ksm_set(BK, "run", 0)) {
		FAILED("built-in scanner stalled");
		goto out;
	}
	if (kid_start(&kid, x, 2, 1, 1)) {
		FAILED("fork: %s", strerror(errno));
		goto out;
	}
	munmap(x, 2 * ps);
	if (ksm_set(BK, "run", 1)) {
		FAILED("built-in run=1");
		goto out;
	}
	t0 = now_ms();
	do {
		msleep(1);
		sum = knob_get(BK, "pages_shared") + knob_get(BK, "pages_sharing");
	} while (sum && now_ms() - t0 < TIMEOUT_MS);
	ksm_set(BK, "run", 0);
	CHECK(!sum, "built-in counters did not drop to 0");
	CHECK(shared_pages(kid.pid, x, 2, &absent) == 2 && !absent,
	      "setup: the child's pages are not on one KSM page any more");
	CHECK(knob_get(BK, "pages_shared") == 0 && knob_get(BK, "pages_sharing") == 0 &&
	      knob_get(BK, "ksm_zero_pages") == 0, "built-in counters not 0");
	if (ret != TAP_PASS)
		goto out;

	/* Since the handover (issue 22) insmod adopts the built-in's pages;
	 * this one no rmap item knows a mapping of, so the built-in keeps it,
	 * and rust_ksm's scanner gives the child's mappings copies, which it
	 * merges again.  (Before, insmod unmerged it.) */
	CHECK(module_load() == 0, "insmod failed");
	CHECK(kid_data_ok(&kid), "child's data changed over insmod");
	/* The engine at work on the child: merge, migrate, unload. */
	if (ksm_fast(RK, 4096) || ksm_run_scans(RK, 3, TIMEOUT_MS))
		FAILED("rust_ksm did not scan");
	ksm_set(RK, "run", 0);
	CHECK(shared_pages(kid.pid, x, 2, NULL) == 2, "rust_ksm did not merge the child's pages");
	if (two_nodes()) {
		void *addr = x;
		int node = page_node(kid.pid, addr), status = -1;

		node = node == 0 ? 1 : 0;
		CHECK(!sys_move_pages(kid.pid, 1, &addr, &node, &status, MPOL_MF_MOVE_ALL_) &&
		      status == node, "move_pages of the child's KSM page: status %d", status);
		CHECK(shared_pages(kid.pid, x, 2, NULL) == 2, "migration split the KSM page");
	}
	CHECK(kid_data_ok(&kid), "child's data changed under rust_ksm");
	CHECK(module_unload() == 0, "rmmod failed");
	CHECK(shared_pages(kid.pid, x, 2, &absent) == 2 && !absent,
	      "child's pages unmerged by rmmod (the built-in should have them)");
	CHECK(kid_data_ok(&kid), "child's data changed over rmmod");
out:
	kid_stop(&kid);
	builtin_reset();
	munmap(p, n * ps);
	return ret;
}

/* Wait (the scanner running) until every page of the N at P shares its
 * PFN with another: the counters may still count items of pages that were
 * unmerged, until the scanner visits them again. */
static bool wait_all_merged(const char *p, size_t n)
{
	uint64_t t0 = now_ms();

	while (shared_self(p, n) != n) {
		if (now_ms() - t0 > TIMEOUT_MS) {
			tap_diag("%zu of %zu pages merged after %u ms", shared_self(p, n), n,
				 TIMEOUT_MS);
			return false;
		}
		msleep(5);
	}
	return true;
}

/* Write "2" to rust_ksm's run from a child, SIGKILLed after DELAY_MS.
 * Returns the child's wait status. */
static int killed_run2(unsigned int delay_ms)
{
	int status = 0;
	pid_t pid = fork();

	if (!pid)
		_exit(knob_write_str(RK, "run", "2") ? 1 : 0);
	if (pid < 0)
		return -1;
	msleep(delay_ms);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return status;
}

/*
 * Item 2: run=2 interrupted by a signal half way through.  The pages it
 * did not reach must stay tracked: counted, found by the rmap walk (so
 * migration moves every mapping), and unmerged by a second run=2.
 *
 * Seen failing before the fix (old module, this test): all 16,384 pages
 * still merged after the killed run=2 while pages_shared + pages_sharing
 * read 0, and move_pages() failed for each of the 64 KSM pages (the rmap
 * walk found no mapping).
 */
static int test_run2_killed(void)
{
	/* 256 copies of each pattern: one KSM page each (max_page_sharing). */
	const size_t n = 16384, npat = 64;
	static const unsigned int delays[] = { 30, 10, 100, 300 };
	double t0 = tap_seconds();
	int ret = TAP_PASS;
	size_t left = 0, i;
	char *p = NULL;

	for (i = 0; i < ARRAY_SIZE(delays); i++) {
		p = merged_area(n, npat);
		if (!p)
			return TAP_FAIL;
		killed_run2(delays[i]);
		ksm_set(RK, "run", 0);
		left = shared_self(p, n);
		if (left)
			break;
		tap_diag("run=2 finished within %u ms: try again", delays[i]);
		munmap(p, n * ps);
		p = NULL;
	}
	if (!p)
		return tap_skip_because("run=2 always finished before the signal");
	tap_diag("%zu pages still merged after the killed run=2 (%.1f s in)", left,
		 tap_seconds() - t0);
	CHECK(knob_get(RK, "pages_shared") + knob_get(RK, "pages_sharing") > 0,
	      "merged pages left, but pages_shared + pages_sharing is 0");

	if (two_nodes()) {
		/* Each KSM page left, moved through one of its mappings: every
		 * mapping must follow it (the rmap walk finds them all).  The
		 * PFNs of the whole area are read at once, before and after
		 * each move. */
		long long *before = calloc(n, sizeof(*before)), *after = calloc(n, sizeof(*after));
		size_t moved = 0, bad = 0;
		bool read = before && after && !pagemap_pfns(0, p, n, before);

		CHECK(read, "reading pagemap failed");
		for (i = 0; i < npat && read; i++) {
			long long old = before[i];
			void *addr = p + i * ps;
			int node, status = -1;
			size_t j, peers = 0, followed = 0;

			for (j = i + npat; j < n; j += npat)
				peers += before[j] == old;
			if (!peers)
				continue;
			node = page_node(0, addr) == 0 ? 1 : 0;
			if (sys_move_pages(0, 1, &addr, &node, &status, MPOL_MF_MOVE_ALL_) ||
			    status != node) {
				tap_diag("move_pages of pattern %zu: status %d", i, status);
				bad++;
				continue;
			}
			if (pagemap_pfns(0, p, n, after)) {
				FAILED("reading pagemap");
				break;
			}
			for (j = i + npat; j < n; j += npat)
				followed += before[j] == old && after[j] == after[i];
			if (followed != peers) {
				tap_diag("pattern %zu: %zu of %zu mappings followed the migration",
					 i, followed, peers);
				bad++;
			}
			moved++;
		}
		free(before);
		free(after);
		CHECK(!bad, "%zu KSM pages left did not migrate with every mapping (%zu did)",
		      bad, moved);
		tap_diag("%zu KSM pages migrated (%.1f s in)", moved, tap_seconds() - t0);
	}
	CHECK(!ksm_set(RK, "run", 2), "second run=2 failed");
	tap_diag("second run=2 done (%.1f s in)", tap_seconds() - t0);
	ksm_set(RK, "run", 0);
	CHECK(shared_self(p, n) == 0, "pages still merged after the second run=2");
	CHECK(knob_get(RK, "pages_shared") == 0 && knob_get(RK, "pages_sharing") == 0,
	      "counters not 0 after the second run=2");
	CHECK(all_pattern(p, n, npat), "data changed");
	munmap(p, n * ps);
	return ret;
}

/*
 * Item 2: rmmod interrupted by a signal.  Unloading cannot fail, so it
 * ignores signals: every page must be tracked afterwards.  Since the
 * handover (issue 22) rmmod gives every page to the built-in KSM, so they
 * stay merged, counted by the built-in; before it, rmmod unmerged them and
 * the test asked for every page to be private.
 *
 * Seen failing before the fix (old module, this test): rmmod SIGKILLed
 * after 50 ms unloaded the module with all 16,384 pages still on shared
 * PFNs, tracked by nothing.
 */
static int test_rmmod_killed(void)
{
	const size_t n = 16384, npat = 64;
	int ret = TAP_PASS, status;
	uint64_t t0;
	char *p = merged_area(n, npat);
	pid_t pid;

	if (!p)
		return TAP_FAIL;
	pid = fork();
	if (!pid)
		_exit(syscall(SYS_delete_module, MODULE_NAME, O_NONBLOCK) ? 1 : 0);
	msleep(50);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	t0 = now_ms();
	while (module_loaded() && now_ms() - t0 < TIMEOUT_MS)
		msleep(10);
	CHECK(!module_loaded(), "module still loaded");
	CHECK(shared_self(p, n) == n, "%zu pages merged after an interrupted rmmod, want %zu",
	      shared_self(p, n), n);
	CHECK(knob_get(BK, "pages_shared") + knob_get(BK, "pages_sharing") == n,
	      "the built-in tracks %llu pages, want %zu",
	      knob_get(BK, "pages_shared") + knob_get(BK, "pages_sharing"), n);
	CHECK(all_pattern(p, n, npat), "data changed");
	munmap(p, n * ps);
	return ret;
}

/*
 * Item 2: rmmod with a forked child that never registered.  ksm_fork() is
 * best effort: if registering the child fails (here: fault injection
 * makes one allocation of the fork fail, the first N for which fork still
 * succeeds and the child ends up unknown to rust_ksm), the child maps the
 * parent's KSM pages unregistered.  Unload must find those mappings
 * through the stable nodes' rmap walk, not only in registered mms.  Since
 * the handover (issue 22) rmmod gives the pages to the built-in KSM, whose
 * rmap walk must find the child's mappings through the parent's anon_vmas:
 * migrating the parent's KSM pages moves the child's mappings too.
 *
 * Seen failing before the fix (old module, this test): fail-nth 160 gave
 * an unregistered child, and after rmmod its pages were still on shared
 * PFNs (then the test asked for them to be unmerged).
 */
static int test_rmmod_unregistered_child(void)
{
	const size_t n = 64, npat = 4;
	const char *nth = "/proc/thread-self/fail-nth";
	int ret = TAP_PASS, i;
	struct ksm_stat st;
	struct kid kid = { 0 };
	char buf[32], *p;

	if (access(nth, F_OK))
		return tap_skip_missing("fail-nth", "no fail-nth (CONFIG_FAULT_INJECTION)");
	if (access("/sys/kernel/debug/failslab", F_OK))
		mount_debugfs();
	if (write_str("/sys/kernel/debug/failslab/ignore-gfp-wait", "N") ||
	    write_str("/sys/kernel/debug/failslab/verbose", "0"))
		return tap_skip_missing("failslab", "no failslab (CONFIG_FAILSLAB, debugfs)");
	p = merged_area(n, npat);
	if (!p)
		return TAP_FAIL;
	for (i = 1; i < 2000 && !kid.pid; i++) {
		snprintf(buf, sizeof(buf), "%d", i);
		if (write_str(nth, buf))
			break;
		if (kid_start(&kid, p, n, 0, npat))
			kid.pid = 0;
		if (read_text(nth, buf, sizeof(buf)) < 0)
			break;
		write_str(nth, "0");
		if (!kid.pid)
			continue;		/* fork failed */
		if (atoi(buf)) {
			tap_diag("no failure left to inject into fork after %d", i);
			kid_stop(&kid);
			break;
		}
		/* A failure hit the fork, which succeeded: is the child
		 * unknown to rust_ksm?  A registered child gets an rmap item
		 * for every page once scanned. */
		if (ksm_run_scans(RK, 2, TIMEOUT_MS) || ksm_set(RK, "run", 0) ||
		    ksm_stat_read(kid.pid, &st) || st.rmap_items != 0)
			kid_stop(&kid);
	}
	if (!kid.pid) {
		FAILED("no fork left an unregistered child");
		goto out;
	}
	tap_diag("fail-nth %d: child %d maps KSM pages unregistered", i - 1, kid.pid);
	CHECK(shared_pages(kid.pid, p, n, NULL) == n, "the child does not map the KSM pages");
	CHECK(module_unload() == 0, "rmmod failed");
	CHECK(shared_pages(kid.pid, p, n, NULL) == n,
	      "the unregistered child's pages were unmerged by rmmod");
	if (two_nodes()) {
		size_t bad = 0;

		for (size_t j = 0; j < npat; j++) {
			void *addr = p + j * ps;
			int node = page_node(0, addr) == 0 ? 1 : 0, status = -1;

			sys_move_pages(0, 1, &addr, &node, &status, MPOL_MF_MOVE_ALL_);
			bad += status != node;
		}
		CHECK(!bad, "%zu KSM pages did not migrate under the built-in", bad);
		CHECK(shared_pages(kid.pid, p, n, NULL) == n,
		      "the child's mappings did not follow the migration");
	}
	CHECK(kid_data_ok(&kid), "child's data changed");
	CHECK(all_pattern(p, n, npat), "parent's data changed");
out:
	kid_stop(&kid);
	write_str("/sys/kernel/debug/failslab/ignore-gfp-wait", "Y");
	munmap(p, n * ps);
	return ret;
}

/*
 * Item 4: MADV_UNMERGEABLE racing migration.  A KSM page behind a
 * migration entry must be waited for and unmerged, not passed over: the
 * VMA loses VM_MERGEABLE, and nothing would unmerge it again.
 *
 * madvise() holds this mm's mmap lock for write, and move_pages() of this
 * mm takes it for read, so the migration must come from elsewhere: a
 * forked child maps the same KSM pages and migrates them through its own
 * mappings, which turns this mm's PTEs into migration entries too.
 *
 * Seen failing before the fix (old module, multi-threaded TCG, this
 * test): "round 5: 26 pages still merged (0 absent) after
 * MADV_UNMERGEABLE".  (With move_pages() on this mm the race cannot
 * happen, and the test passed on the old module.)
 */
static int test_unmerge_vs_migration(void)
{
	/* Many KSM pages in one move_pages() call: migration unmaps the
	 * whole batch before it copies any, so most pages sit behind
	 * migration entries most of the time. */
	const size_t n = 512, npat = 256;
	volatile int *ctl;
	int ret = TAP_PASS, round;
	pid_t mover;
	char *p;

	if (!two_nodes())
		return tap_skip_missing("numa2", "one NUMA node");
	ctl = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (ctl == MAP_FAILED)
		return TAP_FAIL;
	p = merged_area(n, npat);
	if (!p)
		return TAP_FAIL;
	/* ctl[0]: 1 = move, 0 = pause, 2 = quit; ctl[1]: 1 while moving. */
	ctl[0] = 0;
	mover = fork();
	if (!mover) {
		void **addrs = calloc(n, sizeof(*addrs));
		int *nodes = calloc(n, sizeof(int)), *status = calloc(n, sizeof(int));
		int target = 0;
		size_t i;

		/* One address per KSM page: the calls are mostly migration,
		 * so the pages spend most of the time behind migration
		 * entries. */
		for (i = 0; i < npat; i++)
			addrs[i] = p + i * ps;
		while (ctl[0] != 2) {
			if (ctl[0] != 1) {
				ctl[1] = 0;
				usleep(100);
				continue;
			}
			ctl[1] = 1;
			target ^= 1;
			for (i = 0; i < npat; i++)
				nodes[i] = target;
			sys_move_pages(0, npat, addrs, nodes, status, MPOL_MF_MOVE_ALL_);
		}
		_exit(0);
	}
	for (round = 0; round < 40 && ret == TAP_PASS; round++) {
		size_t left, absent;

		ctl[0] = 1;
		while (!ctl[1])
			usleep(50);
		usleep(200 + 97 * round % 900);
		CHECK(!madvise(p, n * ps, MADV_UNMERGEABLE), "MADV_UNMERGEABLE: %s",
		      strerror(errno));
		ctl[0] = 0;
		while (ctl[1])
			usleep(50);
		left = shared_pages(0, p, n, &absent);
		CHECK(left == 0 && !absent, "round %d: %zu pages still merged (%zu absent)"
		      " after MADV_UNMERGEABLE", round, left, absent);
		CHECK(all_pattern(p, n, npat), "round %d: data changed", round);
		if (madvise(p, n * ps, MADV_MERGEABLE) || ksm_set(RK, "run", 1) ||
		    !wait_all_merged(p, n) || ksm_set(RK, "run", 0)) {
			FAILED("round %d: merging again failed", round);
			break;
		}
	}
	ctl[0] = 2;
	waitpid(mover, NULL, 0);
	munmap(p, n * ps);
	munmap((void *)ctl, ps);
	return ret;
}

/* /sys/kernel/debug/rust_ksm/registered_mms, or -1. */
static long long registered_mms(void)
{
	unsigned long long v;

	if (access("/sys/kernel/debug/rust_ksm", F_OK))
		mount_debugfs();
	if (knob_read("/sys/kernel/debug/rust_ksm", "registered_mms", &v))
		return -1;
	return (long long)v;
}

/*
 * Item 5: adoption racing exit.  Short-lived processes become mergeable
 * (prctl) and exit while rust_ksm is loaded and unloaded over and over;
 * insmod adopts the mergeable mms it finds.  An mm adopted while its
 * process exits must not stay registered (and grabbed) until rmmod.
 * Afterwards the engine holds as many mms as a fresh load adopts.
 *
 * The race window is a few instructions wide (enter() checked mm_users
 * before taking the registry lock).  Seen failing with that old order
 * and the window widened by a 200 ms msleep() between check and lock:
 * "1 mms of exited processes still registered"; with the fixed order and
 * the same delay after the lock it passes.  (A first version of this
 * test, one short-lived child at a time, did not fail even so: insmod's
 * snapshot never caught a child alive.)
 */
static int test_adopt_race(void)
{
	long long held, fresh;
	int ret = TAP_PASS, status;
	uint64_t t0;
	pid_t spawner;

	if (registered_mms() < 0)
		return tap_skip_missing("debugfs", "no /sys/kernel/debug/rust_ksm/registered_mms");
	spawner = fork();
	if (!spawner) {
		t0 = now_ms();
		/* Four at a time, each mergeable for up to 4 ms before it
		 * exits: insmod's snapshot of the mergeable mms then holds
		 * some that exit while they are being adopted. */
		int live = 0;

		while (now_ms() - t0 < 3000) {
			pid_t c = fork();

			if (!c) {
				prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0);
				usleep((getpid() % 5) * 1000);
				_exit(0);
			}
			if (c > 0)
				live++;
			while (live >= 4 && wait(NULL) > 0)
				live--;
		}
		while (wait(NULL) > 0)
			;
		_exit(0);
	}
	t0 = now_ms();
	while (now_ms() - t0 < 3000) {
		CHECK(module_unload() == 0, "rmmod failed");
		CHECK(module_load() == 0, "insmod failed");
		if (ret != TAP_PASS)
			break;
	}
	waitpid(spawner, &status, 0);
	if (!module_loaded())
		module_load();
	held = registered_mms();
	CHECK(module_unload() == 0 && module_load() == 0, "reload failed");
	fresh = registered_mms();
	tap_diag("registered mms: %lld after the storm, %lld after a fresh load", held, fresh);
	CHECK(held == fresh, "%lld mms of exited processes still registered", held - fresh);
	return ret;
}

/* Memory blocks (hotplug): the block of PFN, its size, its state file. */
static unsigned long long block_bytes(void)
{
	char buf[64];

	if (read_text("/sys/devices/system/memory/block_size_bytes", buf, sizeof(buf)) < 0)
		return 0;
	return strtoull(buf, NULL, 16);
}

/* Set a memory block's state.  Offlining retries for ever while a page
 * will not migrate, until a signal: it runs in a child killed after
 * 20 s.  0 or -errno. */
static int block_set(unsigned long long block, const char *state)
{
	char path[96];
	int status = 0;
	pid_t pid;

	snprintf(path, sizeof(path), "/sys/devices/system/memory/memory%llu/state", block);
	pid = fork();
	if (!pid)
		_exit(-write_str(path, state));
	if (pid < 0)
		return -errno;
	for (int i = 0; i < 2000 && waitpid(pid, &status, WNOHANG) == 0; i++)
		msleep(10);
	if (waitpid(pid, &status, WNOHANG) == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		tap_diag("memory%llu %s: still trying after 20 s", block, state);
		return -ETIMEDOUT;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status)) {
		tap_diag("memory%llu %s: %s", block, state, strerror(WEXITSTATUS(status)));
		return -WEXITSTATUS(status);
	}
	return WIFEXITED(status) ? 0 : -EINTR;
}

/*
 * A movable block of node 1 that can go offline, found by taking one
 * offline and online again, or -1.  Movable zones still hold a few pages
 * memblock reserved at boot, which pin their blocks; a block that went
 * offline once has none.  Onlined again, its pages are the last freed,
 * which are the first the allocator hands out: the test's pages land there.
 */
static long long fresh_movable_block(void)
{
	char path[96], zones[64];
	long long b;

	for (b = 4095; b > 0; b--) {
		snprintf(path, sizeof(path), "/sys/devices/system/node/node1/memory%lld", b);
		if (access(path, F_OK))
			continue;
		snprintf(path, sizeof(path), "/sys/devices/system/memory/memory%lld/valid_zones",
			 b);
		if (read_text(path, zones, sizeof(zones)) < 0 || strncmp(zones, "Movable", 7))
			continue;
		if (block_set(b, "offline"))
			continue;
		if (block_set(b, "online_movable"))
			return -1;
		return b;
	}
	return -1;
}

/*
 * The block the memory offline tests use (fresh_movable_block()), or -1
 * with the test's result in *RET: a skip where the kernel lacks memory
 * hotplug or a second node, a failure where no block can go offline.
 */
static long long offline_test_block(unsigned long long bb, int *ret)
{
	long long b;

	if (!bb) {
		*ret = tap_skip_missing("hotplug", "no memory hotplug (CONFIG_MEMORY_HOTPLUG)");
		return -1;
	}
	if (!two_nodes()) {
		*ret = tap_skip_missing("numa2", "one NUMA node");
		return -1;
	}
	b = fresh_movable_block();
	if (b < 0) {
		tap_diag("no movable block of node 1 can go offline (movablecore=?)");
		*ret = TAP_FAIL;
	}
	return b;
}

/*
 * Makes node 1 hand out block B's pages next: hogs node 1's memory (the
 * caller has bound us to it) until the allocator reaches B, whose pages,
 * freed to the tail of the free lists when it was onlined, come last;
 * then lets the chunks that landed in B go again (to the head).  Returns
 * how many chunks of hog[] to free with hog_free() later.
 */
#define HOG_CHUNK	(2UL << 20)
static char *hog[1024];

static size_t hog_all_but(unsigned long long b, unsigned long long bb)
{
	size_t n, in_b = 0;

	for (n = 0; n < ARRAY_SIZE(hog) && in_b < 8; ) {
		char *c = mmap(NULL, HOG_CHUNK, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

		if (c == MAP_FAILED)
			break;
		if ((unsigned long long)pagemap_pfn(0, c) * ps / bb == b) {
			munmap(c, HOG_CHUNK);
			in_b++;
		} else {
			hog[n++] = c;
		}
	}
	tap_diag("hogged %zu MiB of node 1 to reach memory%llu", n * (HOG_CHUNK >> 20), b);
	return n;
}

static void hog_free(size_t n)
{
	while (n--)
		munmap(hog[n], HOG_CHUNK);
}

/* merged_area() with its pages (nearly all: the KSM pages at least) in
 * block B of node 1; the KSM pages in B are counted into *in_b.
 *
 * The steering is not certain: small free fragments elsewhere on the node
 * serve order-0 allocations before B's large free blocks are split, and
 * per-CPU page lists hold pages from anywhere.  Seen in about one run in
 * five ("memory38 holds 0 of the 512 KSM pages"), so an attempt whose KSM
 * pages mostly missed B is dropped and the steering done again, up to 4
 * times.  Enough is MIN_IN_B of them: offlining then migrates dozens of live
 * KSM pages, which is what the test is about; it asked for more than half
 * once, and a fresh-clone make check failed on "memory40 holds 224 of the
 * 512 KSM pages" after four attempts. */
#define MIN_IN_B(npat)	((npat) / 8)
static char *merged_area_in(long long b, size_t n, size_t npat, unsigned long long bb,
			    size_t *in_b)
{
	unsigned long long node1 = 1 << 1;
	size_t nhog, i;
	char *p = NULL;

	for (int attempt = 1; attempt <= 4; attempt++) {
		if (p) {
			tap_diag("attempt %d: memory%lld holds %zu of the %zu KSM pages: again",
				 attempt - 1, b, *in_b, npat);
			munmap(p, n * ps);
		}
		if (syscall(SYS_set_mempolicy, 2 /* MPOL_BIND */, &node1, 64)) {
			tap_diag("set_mempolicy: %s", strerror(errno));
			return NULL;
		}
		nhog = hog_all_but(b, bb);
		p = merged_area(n, npat);
		syscall(SYS_set_mempolicy, 0 /* MPOL_DEFAULT */, NULL, 0);
		hog_free(nhog);
		*in_b = 0;
		for (i = 0; p && i < npat; i++)
			*in_b += pagemap_pfn(0, p + i * ps) * ps / bb == (unsigned long long)b;
		if (!p || *in_b >= MIN_IN_B(npat))
			break;
	}
	return p;
}

/*
 * Item 3: memory offline.  (a) A block holding live KSM pages goes
 * offline: they migrate with every mapping, data intact.  (b) KSM pages
 * are freed (their nodes go stale, still in the tree) and their block
 * goes offline, its memmap poisoned (DEBUG_VM): the nodes must be pruned
 * at MEM_OFFLINE, before a search, a scan or rmmod looks at their pfn.
 *
 * Only a ZONE_MOVABLE block without boot-time reservations can go
 * offline, and none at the top of RAM below 4 GiB (firmware's hole there
 * makes it -EINVAL): scripts/check boots this test with 4.5 GiB and
 * movablecore=3G, and the pages are steered into a block of node 1 that
 * was seen going offline (fresh_movable_block(), hog_all_but()).
 *
 * This test was once thought to hang the guest: its block search read
 * pagemap 512 x 512 times, minutes under TCG, and then met only blocks
 * that cannot go offline.  Seen failing before the fix, with the memory
 * notifier's pruning taken out of the module: in (b), once the block was
 * offline, rust_ksmd oopsed (general protection fault, KASAN
 * null-ptr-deref) reading the folio of a stale node's pfn in the offline
 * block (Trees::get_folio from remove_item), and rmmod then hit a KASAN
 * use-after-free on the dead thread's task_struct.
 */
static int test_memory_offline(void)
{
	const size_t n = 2048, npat = 512;
	unsigned long long bb = block_bytes();
	int ret = TAP_PASS;
	long long b;
	size_t i, absent, in_b;
	char *p;

	b = offline_test_block(bb, &ret);
	if (b < 0)
		return ret;
	/* (a) live KSM pages. */
	p = merged_area_in(b, n, npat, bb, &in_b);
	if (!p)
		return TAP_FAIL;
	tap_diag("memory%lld holds %zu of the %zu KSM pages", b, in_b, npat);
	CHECK(in_b >= MIN_IN_B(npat), "the KSM pages did not land in memory%lld", b);
	CHECK(!block_set(b, "offline"), "offlining memory%lld with live KSM pages", b);
	if (ret != TAP_PASS)
		goto out;
	CHECK(shared_pages(0, p, n, &absent) == n && !absent,
	      "after offline: pages no longer all merged");
	for (i = 0; i < npat; i++)
		CHECK(pagemap_pfn(0, p + i * ps) * ps / bb != (unsigned long long)b,
		      "a KSM page is still in the offline block");
	CHECK(all_pattern(p, n, npat), "data changed over offline");
	CHECK(!block_set(b, "online_movable"), "onlining memory%lld again", b);
	munmap(p, n * ps);
	p = NULL;
	if (ret != TAP_PASS)
		goto out;

	/* (b) stale nodes: the pages freed, their nodes left in the tree
	 * (no scan runs), then their block offline. */
	p = merged_area_in(b, n, npat, bb, &in_b);
	if (!p)
		return TAP_FAIL;
	tap_diag("memory%lld holds %zu of the %zu KSM pages", b, in_b, npat);
	CHECK(in_b >= MIN_IN_B(npat), "the KSM pages did not land in memory%lld", b);
	munmap(p, n * ps);
	p = NULL;
	CHECK(!block_set(b, "offline"), "offlining memory%lld with stale stable nodes", b);
	if (ret != TAP_PASS)
		goto out;
	/* A search over the same contents, a scan, rmmod. */
	p = merged_area(n, npat);
	CHECK(p, "merging the same contents again failed");
	CHECK(module_unload() == 0 && module_load() == 0, "reload failed");
	CHECK(!block_set(b, "online_movable"), "onlining memory%lld again", b);
out:
	if (p)
		munmap(p, n * ps);
	return ret;
}

/* A page of block B of node 1, mapped at the start of a fresh area of
 * *len bytes (the caller munmaps it), or NULL. */
static char *page_in_block(long long b, unsigned long long bb, size_t *len)
{
	unsigned long long node1 = 1 << 1;
	const size_t area = 4UL << 20;

	for (int attempt = 0; attempt < 4; attempt++) {
		size_t nhog, off;
		char *p;

		if (syscall(SYS_set_mempolicy, 2 /* MPOL_BIND */, &node1, 64))
			return NULL;
		nhog = hog_all_but(b, bb);
		p = mmap(NULL, area, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		syscall(SYS_set_mempolicy, 0 /* MPOL_DEFAULT */, NULL, 0);
		hog_free(nhog);
		if (p == MAP_FAILED)
			return NULL;
		for (off = 0; off < area; off += ps) {
			if (pagemap_pfn(0, p + off) * ps / bb != (unsigned long long)b)
				continue;
			/* Move it to the front: unmap what is before it. */
			if (off)
				munmap(p, off);
			*len = area - off;
			return p + off;
		}
		munmap(p, area);
	}
	return NULL;
}

/* Runs "echo VALUE > KNOB" in a child; returns 0 if it finished within
 * MS milliseconds (whatever it returned), -ETIMEDOUT if it still had not
 * (a D-state writer cannot be killed: it is left behind). */
static int knob_write_within(const char *knob, long value, unsigned int ms)
{
	uint64_t t0 = now_ms();
	pid_t pid = fork();

	if (!pid) {
		ksm_set(RK, knob, value);
		_exit(0);
	}
	if (pid < 0)
		return -errno;
	while (waitpid(pid, NULL, WNOHANG) == 0) {
		if (now_ms() - t0 > ms)
			return -ETIMEDOUT;
		msleep(10);
	}
	return 0;
}

/*
 * Issue 21 item 1: insmod while a memory block is going offline.  The
 * module registers its memory notifier before the engine, and the
 * engine's registration waits in wait_while_offlining() until the offline
 * ends: so the module sees MEM_CANCEL_OFFLINE (or MEM_OFFLINE) without the
 * MEM_GOING_OFFLINE that began it.  A page of the block pinned by a pipe
 * (vmsplice) keeps the offline retrying until its writer is killed.
 * Afterwards rust_ksmd must scan, and run=0 must return.
 *
 * Seen failing before the fix (the gate was a count of offlines in
 * progress, decremented at every end): the count wrapped at the cancel;
 * with run=1, full_scans stayed where it was ("full_scans +0 in 10 s"),
 * rust_ksmd sat in D state in scan_lock(), and "echo 0 > run" never
 * returned.  The host test offline::end_never_begun_changes_nothing
 * covers the rule, and the refused-begin path (b) the guest cannot make.
 */
static int test_offline_during_insmod(void)
{
	unsigned long long bb = block_bytes();
	int ret = TAP_PASS, fds[2] = { -1, -1 }, status;
	char path[96], state[32];
	pid_t offliner = -1, loader = -1;
	size_t len = 0;
	long long b;
	uint64_t t0;
	long scans;
	struct iovec iov;
	char *p = NULL, *m = MAP_FAILED;

	b = offline_test_block(bb, &ret);
	if (b < 0)
		return ret;
	p = page_in_block(b, bb, &len);
	if (!p) {
		FAILED("no page of memory%lld could be had", b);
		return ret;
	}
	memset(p, 0x5a, ps);
	iov.iov_base = p;
	iov.iov_len = ps;
	if (pipe(fds) || vmsplice(fds[1], &iov, 1, 0) != (ssize_t)ps) {
		FAILED("vmsplice: %s", strerror(errno));
		goto out;
	}
	CHECK(module_unload() == 0, "rmmod failed");
	if (ret != TAP_PASS)
		goto out;

	snprintf(path, sizeof(path), "/sys/devices/system/memory/memory%lld/state", b);
	offliner = fork();
	if (!offliner)
		_exit(-write_str(path, "offline"));
	/* MEM_GOING_OFFLINE is sent right after the state says so. */
	for (t0 = now_ms(); now_ms() - t0 < 10000; msleep(10))
		if (read_text(path, state, sizeof(state)) > 0 && !strncmp(state, "going-offline", 13))
			break;
	CHECK(!strncmp(state, "going-offline", 13), "memory%lld never went going-offline", b);
	msleep(300);
	CHECK(waitpid(offliner, &status, WNOHANG) == 0, "the offline ended with the page pinned");
	if (ret != TAP_PASS)
		goto out;

	loader = fork();
	if (!loader)
		_exit(module_load() ? 1 : 0);
	msleep(500);
	if (waitpid(loader, &status, WNOHANG) == 0)
		tap_diag("insmod waits for the offline, as it should");
	else
		loader = -1;	/* reaped: it did not wait */
	kill(offliner, SIGKILL);
	waitpid(offliner, &status, 0);
	offliner = -1;
	if (loader > 0) {
		for (t0 = now_ms(); now_ms() - t0 < 20000; msleep(10))
			if (waitpid(loader, &status, WNOHANG) == loader)
				break;
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "insmod after the cancelled offline failed");
	}
	CHECK(module_loaded(), "module not loaded");
	if (ret != TAP_PASS)
		goto out;
	close(fds[0]);
	close(fds[1]);
	fds[0] = fds[1] = -1;

	/* Something to scan: rust_ksmd idles with no mm registered. */
	m = mmap(NULL, 64 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED && !madvise(m, 64 * ps, MADV_MERGEABLE), "mergeable area");
	if (ret != TAP_PASS)
		goto out;
	memset(m, 7, 64 * ps);
	scans = (long)knob_get(RK, "full_scans");
	CHECK(!ksm_set(RK, "pages_to_scan", 1000) && !ksm_set(RK, "sleep_millisecs", 0) &&
	      !ksm_set(RK, "run", 1), "run=1");
	for (t0 = now_ms(); now_ms() - t0 < 10000; msleep(20))
		if ((long)knob_get(RK, "full_scans") >= scans + 2)
			break;
	CHECK((long)knob_get(RK, "full_scans") >= scans + 2, "full_scans +%ld in 10 s",
	      (long)knob_get(RK, "full_scans") - scans);
	CHECK(knob_write_within("run", 0, 10000) == 0, "echo 0 > run did not return in 10 s");
	CHECK(read_text(RK "/domains", state, sizeof(state)) >= 0, "reading domains");
	ksm_set(RK, "sleep_millisecs", 20);
	ksm_set(RK, "pages_to_scan", 100);
out:
	if (m != MAP_FAILED)
		munmap(m, 64 * ps);
	if (offliner > 0) {
		kill(offliner, SIGKILL);
		waitpid(offliner, NULL, 0);
	}
	if (fds[0] >= 0) {
		close(fds[0]);
		close(fds[1]);
	}
	munmap(p, len);
	return ret;
}

/*
 * Item 1, swap-cache variant: a built-in KSM folio left in the swap cache
 * with its PTE swapped out.  A pipe holds a reference (vmsplice), so
 * reclaim writes the folio to zram and unmaps it but cannot free it; a
 * built-in pass then frees the item of the now non-present PTE, and the
 * counters read 0 while the folio still points to its built-in node.
 * insmod must remove that node; then the page is swapped in, migrated,
 * reclaimed and read back under rust_ksm, data intact.
 *
 * Seen failing before the fix (registration as the old patch had it:
 * counters checked, leftovers not removed): the swap-in ran the engine's
 * folio_mappable hook (do_swap_page -> ksm_might_need_to_copy) on the
 * built-in node, and only the module's owner word kept it from reading
 * it as its own: "WARNING: ... KSM folio with a foreign stable node",
 * which fails the boot.
 */
static int test_handover_swapcache(void)
{
	const size_t n = 2;
	int ret = TAP_PASS, fds[2] = { -1, -1 };
	struct iovec iov;
	char *p = NULL;
	uint64_t t0;

	if (swap_setup())
		return tap_skip_missing("zram", swap_why);
	if (module_unload())
		return TAP_FAIL;
	p = map_anon(n);
	if (!p)
		return TAP_FAIL;
	fill_pattern(p, 7);
	fill_pattern(p + ps, 7);
	if (madvise(p, n * ps, MADV_MERGEABLE) || ksm_fast(BK, 4096) ||
	    ksm_set(BK, "run", 1) || ksm_wait_merged(BK, 2, TIMEOUT_MS, NULL) < 0 ||
	    ksm_set(BK, "run", 0)) {
		FAILED("the built-in KSM did not merge the two pages");
		goto out;
	}
	/* A reference the reclaim cannot drop, then one mapping left, so
	 * that MADV_PAGEOUT (which skips pages mapped twice) takes it. */
	iov.iov_base = p;
	iov.iov_len = ps;
	CHECK(!pipe(fds) && vmsplice(fds[1], &iov, 1, 0) == (ssize_t)ps, "vmsplice: %s",
	      strerror(errno));
	munmap(p + ps, ps);
	CHECK(!madvise(p, ps, MADV_PAGEOUT), "MADV_PAGEOUT: %s", strerror(errno));
	CHECK(pagemap_entry(0, p) & PM_SWAP, "setup: the KSM page was not swapped out");
	if (ret != TAP_PASS)
		goto out;
	/* A built-in pass frees the items; the node stays with the folio. */
	CHECK(!ksm_set(BK, "run", 1), "built-in run=1");
	t0 = now_ms();
	while (knob_get(BK, "pages_shared") + knob_get(BK, "pages_sharing") &&
	       now_ms() - t0 < TIMEOUT_MS)
		msleep(5);
	CHECK(!ksm_run_scans(BK, 2, TIMEOUT_MS) && !ksm_set(BK, "run", 0), "built-in scans");
	CHECK(knob_get(BK, "pages_shared") == 0 && knob_get(BK, "pages_sharing") == 0,
	      "setup: built-in counters not 0");
	CHECK(pagemap_entry(0, p) & PM_SWAP, "setup: the page came back in");
	if (ret != TAP_PASS)
		goto out;

	CHECK(module_load() == 0, "insmod failed");
	CHECK(check_pattern(p, 7), "data changed over swap-in");
	if (two_nodes()) {
		void *addr = p;
		int node = page_node(0, addr) == 0 ? 1 : 0, status = -1;

		CHECK(!sys_move_pages(0, 1, &addr, &node, &status, MPOL_MF_MOVE_) &&
		      status == node, "move_pages after swap-in: status %d", status);
	}
	CHECK(!madvise(p, ps, MADV_PAGEOUT), "MADV_PAGEOUT again: %s", strerror(errno));
	CHECK(check_pattern(p, 7), "data changed over migration and reclaim");
	CHECK(module_unload() == 0 && module_load() == 0, "reload failed");
out:
	if (fds[0] >= 0) {
		close(fds[0]);
		close(fds[1]);
	}
	builtin_reset();
	munmap(p, n * ps);
	return ret;
}

static const struct tap_test tests[] = {
	{ "a built-in KSM page only a forked child maps stays the built-in's at insmod",
	  test_handover_child },
	{ "run=2 killed half way: pages left stay tracked, migrate, a second run=2 finishes",
	  test_run2_killed },
	{ "rmmod killed half way: every page handed over, data intact", test_rmmod_killed },
	{ "rmmod hands over a forked child that never registered (fault injection)",
	  test_rmmod_unregistered_child },
	{ "MADV_UNMERGEABLE racing migration leaves no merged page", test_unmerge_vs_migration },
	{ "memory offline: live KSM pages migrate, stale nodes are pruned", test_memory_offline },
	{ "insmod racing exiting mergeable processes leaves no mm registered",
	  test_adopt_race },
	{ "insmod removes a built-in stable node left on a swap-cache folio",
	  test_handover_swapcache },
	{ "insmod during a memory offline: rust_ksmd scans and run=0 returns after it ends",
	  test_offline_during_insmod },
};

static void after(void)
{
	if (!module_loaded() && module_load())
		tap_diag("insmod failed: %s", strerror(errno));
	ksm_unmerge_stop(RK);
	rk_reset();
}

/* rust_ksm_faults [N...]: the default tests, or only tests N (1-based). */
int main(int argc, char **argv)
{
	struct tap_test chosen[ARRAY_SIZE(tests)];
	unsigned int n = 0;
	int i;

	if (geteuid())
		fprintf(stderr, "must run as root (pagemap PFNs)\n");
	if (!module_loaded() && module_load())
		tap_diag("insmod failed");
	for (i = 1; i < argc; i++) {
		unsigned long t = strtoul(argv[i], NULL, 10);

		if (t >= 1 && t <= ARRAY_SIZE(tests) && n < ARRAY_SIZE(chosen))
			chosen[n++] = tests[t - 1];
	}
	if (argc == 1)
		for (i = 0; i < (int)ARRAY_SIZE(tests); i++)
			chosen[n++] = tests[i];
	tap_run(chosen, n, after);
}
