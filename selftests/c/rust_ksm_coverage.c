// SPDX-License-Identifier: GPL-2.0
/*
 * rust_ksm_coverage: the paths the other tests do not take, for any KSM
 * engine: THP-backed memory, prctl(PR_SET_MEMORY_MERGE), max_page_sharing
 * errors, VMAs KSM must ignore, many processes at once, the default knobs,
 * soft offline of a KSM page shared with a child, and unmerging under
 * userfaultfd write-protection.
 *
 *   rust_ksm_coverage [--ksm-dir DIR] [--kthread NAME] [TEST_NUMBER...]
 *
 * make check runs it against rust_ksm and, booted without the module,
 * against /sys/kernel/mm/ksm: both must pass.  "Merged" means shared PFNs
 * in /proc/self/pagemap (6.12's kpageflags marks every anonymous page KSM).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE	67
#define PR_GET_MEMORY_MERGE	68
#endif
#ifndef MADV_SOFT_OFFLINE
#define MADV_SOFT_OFFLINE	101
#endif
#ifndef MADV_HWPOISON
#define MADV_HWPOISON		100
#endif
#ifndef MAP_HUGETLB
#define MAP_HUGETLB		0x40000
#endif

#define TIMEOUT_MS	60000
#define PS		page_size
#define HUGE		(2UL << 20)
#define KPF_THP		22

static char *self_exe;

/* N pages filled with patterns i % NPAT, mergeable (unless PRCTL). */
static char *patterned(size_t n, size_t npat, bool madv)
{
	char *p = map_anon(n);

	if (!p)
		return NULL;
	for (size_t i = 0; i < n; i++)
		fill_pattern(p + i * PS, i % npat);
	if (madv && madvise(p, n * PS, MADV_MERGEABLE)) {
		tap_diag("MADV_MERGEABLE: %s", strerror(errno));
		munmap(p, n * PS);
		return NULL;
	}
	return p;
}

/* Scanner on, and N pages merged (shared + sharing) within the timeout. */
static bool merged(const char *dir, size_t n)
{
	return !ksm_set(dir, "run", 1) && ksm_wait_merged(dir, n, TIMEOUT_MS, NULL) >= 0;
}

static bool patterns_intact(const char *p, size_t n, size_t npat)
{
	for (size_t i = 0; i < n; i++)
		if (!check_pattern(p + i * PS, i % npat))
			return false;
	return true;
}

/* THP: the subpages of a huge page merge, the huge page is split. */
static int test_thp(const char *dir)
{
	const size_t n = HUGE / PS, npat = 4;
	char *raw, *p;
	size_t d, np;
	uint64_t f;
	int ret = TAP_PASS;

	raw = mmap(NULL, 2 * HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return TAP_FAIL;
	p = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
	if (madvise(p, HUGE, MADV_HUGEPAGE)) {
		munmap(raw, 2 * HUGE);
		return tap_skip_missing("thp", "MADV_HUGEPAGE failed");
	}
	for (size_t i = 0; i < n; i++)
		fill_pattern(p + i * PS, i % npat);
	f = kpageflags((unsigned long long)pagemap_pfn(0, p));
	if (f == ~0ULL || !(f & (1ULL << KPF_THP))) {
		munmap(raw, 2 * HUGE);
		return tap_skip_because("no huge page was faulted in (fragmented memory?)");
	}
	CHECK(!madvise(p, HUGE, MADV_MERGEABLE), "MADV_MERGEABLE: %s", strerror(errno));
	CHECK(merged(dir, n), "the subpages did not merge");
	d = distinct_pfns(p, n, &np);
	CHECK(d == npat && !np, "%zu PFNs for %zu patterns (%zu absent)", d, npat, np);
	f = kpageflags((unsigned long long)pagemap_pfn(0, p + PS));
	CHECK(f != ~0ULL && !(f & (1ULL << KPF_THP)), "the huge page was not split");
	CHECK(patterns_intact(p, n, npat), "data changed");
	munmap(raw, 2 * HUGE);
	return ret;
}

/* prctl(PR_SET_MEMORY_MERGE): merging without madvise, inherited over
 * fork and exec, and 0 unmerges. */
static int test_prctl(const char *dir)
{
	const size_t n = 256, npat = 4;
	int ret = TAP_PASS, status, fds[2];
	char buf[8] = "";
	size_t d, np;
	pid_t pid;
	char *p;

	if (prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0))
		return tap_skip_because("PR_SET_MEMORY_MERGE not supported");
	p = patterned(n, npat, false);
	if (!p) {
		prctl(PR_SET_MEMORY_MERGE, 0, 0, 0, 0);
		return TAP_FAIL;
	}
	CHECK(merged(dir, n), "not merged without madvise");
	d = distinct_pfns(p, n, &np);
	CHECK(d == npat, "%zu PFNs for %zu patterns", d, npat);
	/* fork: the child inherits the flag. */
	pid = fork();
	if (!pid)
		_exit(prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) == 1 ? 0 : 1);
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	      !WEXITSTATUS(status), "the flag was not inherited over fork");
	/* exec: so does the new program. */
	CHECK(!pipe(fds), "pipe");
	pid = fork();
	if (!pid) {
		dup2(fds[1], 1);
		execl(self_exe, self_exe, "--print-memory-merge", NULL);
		_exit(127);
	}
	close(fds[1]);
	CHECK(read(fds[0], buf, sizeof(buf) - 1) > 0 && buf[0] == '1',
	      "the flag was not inherited over exec (read '%s')", buf);
	close(fds[0]);
	waitpid(pid, &status, 0);
	/* 0 unmerges. */
	CHECK(!prctl(PR_SET_MEMORY_MERGE, 0, 0, 0, 0), "PR_SET_MEMORY_MERGE 0: %s",
	      strerror(errno));
	d = distinct_pfns(p, n, &np);
	CHECK(d == n && !np, "after PR_SET_MEMORY_MERGE 0: %zu PFNs for %zu pages", d, n);
	CHECK(patterns_intact(p, n, npat), "data changed");
	munmap(p, n * PS);
	return ret;
}

/* max_page_sharing: EINVAL below 2, EBUSY while pages are merged. */
static int test_max_page_sharing(const char *dir)
{
	unsigned long long old = knob_get(dir, "max_page_sharing");
	const size_t n = 64;
	int ret = TAP_PASS, err;
	char *p;

	if (old == KNOB_ERR)
		return TAP_FAIL;
	CHECK(knob_write_str(dir, "max_page_sharing", "0") == -EINVAL, "0 not EINVAL");
	CHECK(knob_write_str(dir, "max_page_sharing", "1") == -EINVAL, "1 not EINVAL");
	CHECK(knob_write_str(dir, "max_page_sharing", "x") == -EINVAL, "x not EINVAL");
	CHECK(knob_get(dir, "max_page_sharing") == old, "a refused write changed it");
	CHECK(!knob_write_ull(dir, "max_page_sharing", old + 1), "%llu refused", old + 1);
	p = patterned(n, 1, true);
	if (!p)
		return TAP_FAIL;
	CHECK(merged(dir, n), "not merged");
	err = knob_write_ull(dir, "max_page_sharing", old);
	CHECK(err == -EBUSY, "a write while merged returned %d, want -EBUSY", err);
	CHECK(!ksm_set(dir, "run", 2), "run=2");
	CHECK(!knob_write_ull(dir, "max_page_sharing", old), "refused once unmerged");
	CHECK(patterns_intact(p, n, 1), "data changed");
	munmap(p, n * PS);
	return ret;
}

/* MAP_SHARED anon, hugetlb and file-backed private memory: madvise
 * accepts them (as upstream) and nothing in them merges. */
static int test_ignored_vmas(const char *dir)
{
	const size_t n = 64;
	int ret = TAP_PASS, fd;
	char *sh, *file, *huge = MAP_FAILED, *anon;
	size_t d, np;

	sh = mmap(NULL, n * PS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	fd = memfd_create("rust_ksm", 0);
	CHECK(sh != MAP_FAILED && fd >= 0 && !ftruncate(fd, n * PS), "mmap/memfd");
	if (ret != TAP_PASS)
		return ret;
	for (size_t i = 0; i < n; i++) {
		memset(sh + i * PS, 0x77, PS);
		CHECK(pwrite(fd, sh, PS, i * PS) == (ssize_t)PS, "pwrite");
	}
	file = mmap(NULL, n * PS, PROT_READ, MAP_PRIVATE, fd, 0);
	CHECK(file != MAP_FAILED, "mmap of the memfd");
	if (!knob_write_str("/proc/sys/vm", "nr_hugepages", "2"))
		huge = mmap(NULL, 2 * HUGE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (huge != MAP_FAILED)
		memset(huge, 0x77, 2 * HUGE);
	else
		tap_diag("no hugetlb pages: that part is left out");
	/* A mergeable control, so that the scans surely ran. */
	anon = patterned(n, 1, true);
	CHECK(anon, "control area");
	if (ret != TAP_PASS)
		goto out;
	CHECK(!madvise(sh, n * PS, MADV_MERGEABLE), "MAP_SHARED: %s", strerror(errno));
	CHECK(!madvise(file, n * PS, MADV_MERGEABLE), "file: %s", strerror(errno));
	if (huge != MAP_FAILED)
		CHECK(!madvise(huge, 2 * HUGE, MADV_MERGEABLE), "hugetlb: %s", strerror(errno));
	CHECK(merged(dir, n), "the control did not merge");
	CHECK(!ksm_run_scans(dir, 2, TIMEOUT_MS), "scans");
	d = distinct_pfns(sh, n, &np);
	CHECK(d == n, "MAP_SHARED pages merged: %zu PFNs for %zu pages", d, n);
	for (size_t i = 0; i < n; i++)		/* fault the file pages in */
		d += ((volatile char *)file)[i * PS];
	d = distinct_pfns(file, n, &np);
	CHECK(d == n, "file pages merged: %zu PFNs for %zu pages", d, n);
	CHECK(knob_get(dir, "pages_shared") == 1 && knob_get(dir, "pages_sharing") == n - 1,
	      "counters count more than the control");
out:
	if (anon)
		munmap(anon, n * PS);
	if (huge != MAP_FAILED)
		munmap(huge, 2 * HUGE);
	knob_write_str("/proc/sys/vm", "nr_hugepages", "0");
	if (file != MAP_FAILED)
		munmap(file, n * PS);
	close(fd);
	munmap(sh, n * PS);
	return ret;
}

/* 64 processes at once, 64 pages each of the same 4 patterns. */
static int test_many_processes(const char *dir)
{
	const size_t nproc = 64, n = 64, npat = 4;
	unsigned long long mps, per, shared;
	int ret = TAP_PASS, go[2], done[2], status;
	pid_t pids[64];
	size_t i, started = 0;
	char b;

	CHECK(!pipe(go) && !pipe(done), "pipe");
	for (i = 0; i < nproc; i++) {
		pids[i] = fork();
		if (!pids[i]) {
			char *p = patterned(n, npat, true), c;

			close(go[1]);
			if (write(done[1], p ? "y" : "n", 1) != 1)
				_exit(2);
			while (read(go[0], &c, 1) > 0)
				;
			_exit(p && patterns_intact(p, n, npat) ? 0 : 1);
		}
		if (pids[i] < 0)
			break;
		started++;
	}
	close(go[0]);
	close(done[1]);
	for (i = 0; i < started; i++)
		CHECK(read(done[0], &b, 1) == 1 && b == 'y', "a child could not map");
	CHECK(started == nproc, "forked %zu of %zu", started, nproc);
	/* Each pattern's mappings fill ceil(per / max_page_sharing) pages. */
	mps = knob_get(dir, "max_page_sharing");
	per = started * n / npat;
	shared = mps == KNOB_ERR ? npat : npat * ((per + mps - 1) / mps);
	CHECK(!ksm_set(dir, "run", 1) &&
	      ksm_wait_counters(dir, shared, started * n - shared, TIMEOUT_MS) >= 0,
	      "%zu processes x %zu pages did not merge into %llu KSM pages", started, n, shared);
	close(go[1]);
	for (i = 0; i < started; i++)
		CHECK(waitpid(pids[i], &status, 0) == pids[i] && WIFEXITED(status) &&
		      !WEXITSTATUS(status), "child %zu: data changed", i);
	close(done[0]);
	CHECK(ksm_wait_counters(dir, 0, 0, TIMEOUT_MS) >= 0, "counters not 0 after exit");
	return ret;
}

/* The default knobs (100 pages per 20 ms) merge a workload. */
static int test_default_knobs(const char *dir)
{
	const size_t n = 1024, npat = 8;
	int ret = TAP_PASS;
	long ms;
	char *p;

	CHECK(!ksm_set(dir, "pages_to_scan", DEF_PAGES_TO_SCAN) &&
	      !ksm_set(dir, "sleep_millisecs", DEF_SLEEP_MILLISECS), "default knobs");
	p = patterned(n, npat, true);
	if (!p)
		return TAP_FAIL;
	CHECK(!ksm_set(dir, "run", 1), "run=1");
	ms = ksm_wait_merged(dir, n, TIMEOUT_MS, NULL);
	CHECK(ms >= 0, "%zu pages did not merge at the default knobs", n);
	tap_diag("merged in %ld ms at pages_to_scan=%d sleep_millisecs=%d", ms,
		 DEF_PAGES_TO_SCAN, DEF_SLEEP_MILLISECS);
	CHECK(patterns_intact(p, n, npat), "data changed");
	munmap(p, n * PS);
	return ret;
}

/* MADV_SOFT_OFFLINE of a KSM page a forked child maps too: the page
 * moves, with both mappings, and stays shared; data intact. */
static int test_soft_offline(const char *dir)
{
	const size_t n = 16;
	int ret = TAP_PASS, cmd[2], ans[2], status;
	long long before, after;
	char *p, c = 0;
	pid_t pid;

	p = patterned(n, 1, true);
	if (!p)
		return TAP_FAIL;
	CHECK(merged(dir, n), "not merged");
	CHECK(!ksm_set(dir, "run", 0), "run=0");
	CHECK(!pipe(cmd) && !pipe(ans), "pipe");
	pid = fork();
	if (!pid) {
		long long pfn;

		if (read(cmd[0], &c, 1) != 1)
			_exit(1);
		pfn = pagemap_pfn(0, p);
		if (write(ans[1], &pfn, sizeof(pfn)) != sizeof(pfn))
			_exit(1);
		_exit(patterns_intact(p, n, 1) ? 0 : 1);
	}
	before = pagemap_pfn(0, p);
	if (madvise(p, PS, MADV_SOFT_OFFLINE)) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		munmap(p, n * PS);
		if (errno == EINVAL)
			return tap_skip_because("MADV_SOFT_OFFLINE: EINVAL (CONFIG_MEMORY_FAILURE?)");
		FAILED("MADV_SOFT_OFFLINE: %s", strerror(errno));
		return ret;
	}
	after = pagemap_pfn(0, p);
	CHECK(after > 0 && after != before, "the KSM page did not move (pfn %#llx -> %#llx)",
	      before, after);
	CHECK(write(cmd[1], "c", 1) == 1, "child");
	{
		long long child_pfn = -1;

		CHECK(read(ans[0], &child_pfn, sizeof(child_pfn)) == sizeof(child_pfn) &&
		      child_pfn == after, "the child maps %#llx, not the moved page %#llx",
		      child_pfn, after);
	}
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && !WEXITSTATUS(status),
	      "the child's data changed");
	CHECK(pagemap_pfn(0, p + PS) == after, "the parent's other mappings did not move");
	CHECK(patterns_intact(p, n, 1), "data changed");
	munmap(p, n * PS);
	return ret;
}

/* MADV_UNMERGEABLE on uffd-wp-protected KSM pages (upstream's
 * test_unmerge_uffd_wp): it must unmerge them, not fail or loop. */
static int test_uffd_wp(const char *dir)
{
	const size_t n = 64;
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP };
	struct uffdio_register reg = { 0 };
	struct uffdio_writeprotect wp = { 0 };
	int ret = TAP_PASS, uffd;
	size_t d, np;
	char *p;

	p = patterned(n, 1, true);
	if (!p)
		return TAP_FAIL;
	CHECK(merged(dir, n), "not merged");
	CHECK(!ksm_set(dir, "run", 0), "run=0");
	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) ||
	    !(api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
		if (uffd >= 0)
			close(uffd);
		munmap(p, n * PS);
		return tap_skip_because("no userfaultfd write-protection");
	}
	reg.range.start = (uintptr_t)p;
	reg.range.len = n * PS;
	reg.mode = UFFDIO_REGISTER_MODE_WP;
	wp.range = reg.range;
	wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
	CHECK(!ioctl(uffd, UFFDIO_REGISTER, &reg), "UFFDIO_REGISTER: %s", strerror(errno));
	CHECK(!ioctl(uffd, UFFDIO_WRITEPROTECT, &wp), "UFFDIO_WRITEPROTECT: %s",
	      strerror(errno));
	CHECK(!madvise(p, n * PS, MADV_UNMERGEABLE), "MADV_UNMERGEABLE: %s", strerror(errno));
	d = distinct_pfns(p, n, &np);
	CHECK(d == n && !np, "%zu PFNs for %zu pages after MADV_UNMERGEABLE", d, n);
	CHECK(patterns_intact(p, n, 1), "data changed");
	close(uffd);
	munmap(p, n * PS);
	return ret;
}

/* ksm_zero_pages stays exact when MADV_UNMERGEABLE of KSM zero pages
 * fails half way (fail-nth on its allocations): once the memory is gone,
 * it reads 0.  A count left over would also make the next engine
 * registration (insmod) fail with -EBUSY. */
static int test_zero_pages_failing_unmerge(const char *dir)
{
	const size_t n = 64;
	int ret = TAP_PASS, injected = 0;
	long long z;
	char buf[16];
	char *p;

	if (access("/proc/thread-self/fail-nth", F_OK))
		return tap_skip_missing("fail-nth", "no fail-nth (CONFIG_FAULT_INJECTION)");
	if (knob_write_str("/sys/kernel/debug/failslab", "ignore-gfp-wait", "N"))
		return tap_skip_missing("failslab", "no failslab (debugfs)");
	knob_write_str("/sys/kernel/debug/failslab", "verbose", "0");
	CHECK(!ksm_set(dir, "use_zero_pages", 1), "use_zero_pages=1");
	p = map_anon(n);
	if (!p)
		return TAP_FAIL;
	memset(p, 0, n * PS);
	for (int nth = 1; nth <= 64 && ret == TAP_PASS; nth++) {
		CHECK(!madvise(p, n * PS, MADV_MERGEABLE), "MADV_MERGEABLE: %s", strerror(errno));
		CHECK(!ksm_set(dir, "run", 1) &&
		      wait_knob_ge(dir, "ksm_zero_pages", n, TIMEOUT_MS, NULL) >= 0,
		      "zero pages not merged (round %d)", nth);
		CHECK(!ksm_set(dir, "run", 0), "run=0");
		snprintf(buf, sizeof(buf), "%d", nth);
		knob_write_str("/proc/thread-self", "fail-nth", buf);
		madvise(p, n * PS, MADV_UNMERGEABLE);
		if (read_text("/proc/thread-self/fail-nth", buf, sizeof(buf)) > 0 && !atoi(buf))
			injected++;
		knob_write_str("/proc/thread-self", "fail-nth", "0");
		for (size_t i = 0; i < n * PS; i += 512)
			if (p[i]) {
				FAILED("byte %zu not zero", i);
				break;
			}
	}
	munmap(p, n * PS);
	knob_write_str("/sys/kernel/debug/failslab", "ignore-gfp-wait", "Y");
	z = (long long)knob_get(dir, "ksm_zero_pages");
	tap_diag("%d unmerges failed by injection; ksm_zero_pages %lld after munmap",
		 injected, z);
	CHECK(z == 0, "ksm_zero_pages %lld with no KSM zero page mapped", z);
	ksm_set(dir, "use_zero_pages", 0);
	return ret;
}

struct zero_writer {
	char *p;
	size_t n;
	volatile int stop;
};

/* Writes the KSM zero pages of its area, one after the other (each
 * write replaces a KSM zero PTE: ksm_zero_pages drops by one). */
static void *zero_writer_main(void *arg)
{
	struct zero_writer *z = arg;

	while (!z->stop)
		for (size_t i = 0; i < z->n && !z->stop; i++) {
			z->p[i * PS] = 1;
			z->p[i * PS] = 0;
		}
	return NULL;
}

/* fork() while another thread breaks KSM zero pages (per-VMA lock page
 * faults go on while dup_mmap() copies other VMAs): the zero pages the
 * child really got must be what it is charged with, or ksm_zero_pages
 * drifts and a stale count makes insmod fail with -EBUSY.
 *
 * Found by rust_ksm_stress (FAULTS=1: "reload failed: Device or resource
 * busy (ksm_zero_pages 16)").  Seen failing before patch 0004, in round 0
 * on both engines: ksm_zero_pages 96 (rust_ksm), 58 (built-in) with no
 * KSM zero page mapped. */
static int test_zero_pages_fork_race(const char *dir)
{
	const size_t n = 256;
	struct zero_writer z = { .n = n };
	int ret = TAP_PASS, status;
	pthread_t th;
	long long left;
	char *other;

	CHECK(!ksm_set(dir, "use_zero_pages", 1), "use_zero_pages=1");
	z.p = map_anon(n);
	other = map_anon(n);	/* a second VMA for dup_mmap() to copy */
	if (!z.p || !other)
		return TAP_FAIL;
	memset(other, 0x33, n * PS);
	for (int round = 0; round < 20 && ret == TAP_PASS; round++) {
		memset(z.p, 0, n * PS);
		CHECK(!madvise(z.p, n * PS, MADV_MERGEABLE), "madvise");
		CHECK(!ksm_set(dir, "run", 1) &&
		      wait_knob_ge(dir, "ksm_zero_pages", n, TIMEOUT_MS, NULL) >= 0,
		      "zero pages not merged (round %d)", round);
		CHECK(!ksm_set(dir, "run", 0), "run=0");
		z.stop = 0;
		CHECK(!pthread_create(&th, NULL, zero_writer_main, &z), "pthread_create");
		for (int i = 0; i < 20; i++) {
			pid_t pid = fork();

			if (!pid)
				_exit(0);
			waitpid(pid, &status, 0);
		}
		z.stop = 1;
		pthread_join(th, NULL);
		CHECK(!madvise(z.p, n * PS, MADV_UNMERGEABLE), "MADV_UNMERGEABLE");
		left = (long long)knob_get(dir, "ksm_zero_pages");
		CHECK(left == 0, "round %d: ksm_zero_pages %lld with no KSM zero page mapped",
		      round, left);
	}
	munmap(z.p, n * PS);
	munmap(other, n * PS);
	ksm_set(dir, "use_zero_pages", 0);
	return ret;
}


/* Issue 21 item 3: a forked child's own ksm_zero_pages (/proc/PID/ksm_stat)
 * is the number of KSM zero pages it maps: N after fork, 0 once it has
 * unmapped them (the global count agrees).  Seen failing with the previous
 * patch 0004, which reset the count in ksm_fork(), after dup_mmap() had
 * counted the copied PTEs: "child: ksm_zero_pages 0 after fork, expected
 * 64" (and -64 after the munmap), on both engines. */
static int test_zero_pages_fork_count(const char *dir)
{
	const size_t n = 64;
	int ret = TAP_PASS, status, ans[2];
	long long got[2] = { -1, -1 }, before;
	struct ksm_stat st;
	char *p;
	pid_t pid;

	CHECK(!ksm_set(dir, "use_zero_pages", 1), "use_zero_pages=1");
	p = map_anon(n);
	if (!p || pipe(ans))
		return TAP_FAIL;
	memset(p, 0, n * PS);
	CHECK(!madvise(p, n * PS, MADV_MERGEABLE), "madvise");
	CHECK(!ksm_set(dir, "run", 1) &&
	      wait_knob_ge(dir, "ksm_zero_pages", n, TIMEOUT_MS, NULL) >= 0,
	      "zero pages not merged");
	CHECK(!ksm_set(dir, "run", 0), "run=0");
	CHECK(!ksm_stat_read(0, &st) && st.zero_pages == (long long)n,
	      "parent: ksm_zero_pages %lld, expected %zu", st.zero_pages, n);
	if (ret != TAP_PASS)
		goto out;
	before = (long long)knob_get(dir, "ksm_zero_pages");
	pid = fork();
	if (!pid) {
		struct ksm_stat cst;

		got[0] = ksm_stat_read(0, &cst) ? -1000 : cst.zero_pages;
		munmap(p, n * PS);
		got[1] = ksm_stat_read(0, &cst) ? -1000 : cst.zero_pages;
		_exit(write(ans[1], got, sizeof(got)) == sizeof(got) ? 0 : 1);
	}
	CHECK(pid > 0 && read(ans[0], got, sizeof(got)) == sizeof(got), "child");
	waitpid(pid, &status, 0);
	CHECK(got[0] == (long long)n, "child: ksm_zero_pages %lld after fork, expected %zu",
	      got[0], n);
	CHECK(got[1] == 0, "child: ksm_zero_pages %lld after unmapping them, expected 0",
	      got[1]);
	CHECK((long long)knob_get(dir, "ksm_zero_pages") == before,
	      "global ksm_zero_pages %llu after the child went, was %lld",
	      knob_get(dir, "ksm_zero_pages"), before);
out:
	close(ans[0]);
	close(ans[1]);
	munmap(p, n * PS);
	ksm_set(dir, "use_zero_pages", 0);
	return ret;
}

/*
 * memory_failure() on a KSM page that a forked child maps too.  The core
 * finds the mappings through the engine's rmap walk: the poisoning process
 * is killed (SIGBUS), and the child's PTEs become hwpoison entries, so the
 * child gets SIGBUS when it next touches the page (late kill: it is not
 * signalled at once).  A walk that missed the child would leave it reading
 * the poisoned page: it would exit 20.
 */
static int test_hwpoison_child(const char *dir)
{
	const size_t n = 8;
	int ret = TAP_PASS, go[2], status;
	pid_t a, *b;

	b = mmap(NULL, sizeof(*b), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (b == MAP_FAILED)
		return TAP_FAIL;
	*b = 0;
	/* The child outlives its parent: it must come back to us. */
	CHECK(!prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "PR_SET_CHILD_SUBREAPER");
	a = fork();
	if (!a) {
		char *p = patterned(n, 1, true);
		size_t d, np;
		pid_t child;

		if (!p || !merged(dir, n))
			_exit(10);
		d = distinct_pfns(p, n, &np);
		if (d != 1 || np)
			_exit(11);
		ksm_set(dir, "run", 0);
		if (pipe(go))
			_exit(10);
		child = fork();
		if (!child) {
			char c;

			close(go[1]);
			/* EOF too: the parent may die in madvise(). */
			if (read(go[0], &c, 1) < 0)
				_exit(21);
			(void)*(volatile char *)(p + 3 * PS);
			_exit(20);
		}
		*b = child;
		close(go[0]);
		if (madvise(p, PS, MADV_HWPOISON))
			_exit(12);
		if (write(go[1], "g", 1) != 1)
			_exit(10);
		(void)*(volatile char *)(p + 2 * PS);
		_exit(13);
	}
	CHECK(a > 0 && waitpid(a, &status, 0) == a, "fork/wait");
	if (WIFEXITED(status))
		tap_diag("the poisoning process exited %d (10 setup, 11 not merged, 12 MADV_HWPOISON failed, 13 no SIGBUS)",
			 WEXITSTATUS(status));
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS,
	      "the poisoning process was not killed with SIGBUS");
	CHECK(*b > 0 && waitpid(*b, &status, 0) == *b, "the child did not come back to us");
	if (WIFEXITED(status))
		tap_diag("the child exited %d (20: read the poisoned page)", WEXITSTATUS(status));
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS,
	      "the child mapping the poisoned KSM page did not get SIGBUS");
	prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
	munmap(b, sizeof(*b));
	return ret;
}

/* --- memcg: who pays for the copies unmerging makes --- */

#define CG_ROOT		"/sys/fs/cgroup"
#define MEMCG_PAGES	1024
#define MEMCG_PAT	7

/* cgroup v2 mounted (here if need be), memory controller for the children
 * of the root. */
static int memcg_setup(void)
{
	int err;

	if (access(CG_ROOT "/cgroup.controllers", F_OK) &&
	    mount("cgroup2", CG_ROOT, "cgroup2", 0, NULL)) {
		tap_diag("mount cgroup2: %s", strerror(errno));
		return -1;
	}
	err = knob_write_str(CG_ROOT, "cgroup.subtree_control", "+memory");
	if (err)
		tap_diag("+memory: %s", strerror(-err));
	return err;
}

/* A member of cgroup CG: MEMCG_PAGES pages of one pattern, mergeable, then
 * commands from CMD, one answer (an errno, 0 or 1) each on ANS:
 * 'u' MADV_UNMERGEABLE, 'v' verify (0 intact), 'q' exit. */
static void __attribute__((noreturn)) memcg_member(const char *cg, int cmd, int ans)
{
	char c, *p;
	int r;

	if (knob_write_str(cg, "cgroup.procs", "0") ||
	    knob_write_str("/proc/self", "oom_score_adj", "-1000"))
		_exit(1);
	p = patterned(MEMCG_PAGES, 1, true);
	if (!p)
		_exit(1);
	for (size_t i = 0; i < MEMCG_PAGES; i++)
		fill_pattern(p + i * PS, MEMCG_PAT);
	r = 0;
	if (write(ans, &r, sizeof(r)) != sizeof(r))
		_exit(1);
	while (read(cmd, &c, 1) == 1 && c != 'q') {
		if (c == 'u')
			r = madvise(p, MEMCG_PAGES * PS, MADV_UNMERGEABLE) ? errno : 0;
		else
			for (size_t i = r = 0; i < MEMCG_PAGES; i++)
				r |= !check_pattern(p + i * PS, MEMCG_PAT);
		if (write(ans, &r, sizeof(r)) != sizeof(r))
			_exit(1);
	}
	_exit(0);
}

struct member {
	char cg[64];
	pid_t pid;
	int cmd, ans;
};

static int member_start(struct member *m, const char *name)
{
	int cmd[2], ans[2], r;

	snprintf(m->cg, sizeof(m->cg), CG_ROOT "/%s", name);
	if ((mkdir(m->cg, 0755) && errno != EEXIST) || pipe(cmd) || pipe(ans))
		return -1;
	m->pid = fork();
	if (!m->pid) {
		close(cmd[1]);
		close(ans[0]);
		memcg_member(m->cg, cmd[0], ans[1]);
	}
	close(cmd[0]);
	close(ans[1]);
	m->cmd = cmd[1];
	m->ans = ans[0];
	return m->pid > 0 && read(m->ans, &r, sizeof(r)) == sizeof(r) && !r ? 0 : -1;
}

/* Send C to M: its answer, or -1. */
static int member_do(struct member *m, char c)
{
	int r;

	if (write(m->cmd, &c, 1) != 1 || read(m->ans, &r, sizeof(r)) != sizeof(r))
		return -1;
	return r;
}

static void member_stop(struct member *m)
{
	if (m->pid > 0) {
		member_do(m, 'q');
		waitpid(m->pid, NULL, 0);
		close(m->cmd);
		close(m->ans);
	}
	rmdir(m->cg);
}

/* memory.current of M's cgroup, in pages. */
static long long cg_pages(struct member *m)
{
	unsigned long long v;

	return knob_read(m->cg, "memory.current", &v) ? -1 : (long long)(v / PS);
}

/*
 * Two cgroups, MEMCG_PAGES pages of the same contents in each: merged, the
 * pages leave both cgroups' charge.  Unmerging in B charges B for its
 * copies, never A (which may pay for the KSM page).  With B at its limit
 * (no swap, no task it may kill), MADV_UNMERGEABLE fails (EAGAIN) and
 * B's data is intact; with the limit lifted it succeeds.  memory.current
 * moves in per-CPU batches of 64 pages: SLACK allows for that.
 */
static int test_memcg(const char *dir)
{
	const long long n = MEMCG_PAGES, slack = 160;
	struct member a = { .pid = 0 }, b = { .pid = 0 };
	long long a0, b0, a1, b1, a2, b2;
	char buf[32];
	int ret = TAP_PASS, r;

	if (memcg_setup())
		return tap_skip_missing("memcg", "no cgroup v2 memory controller");
	ksm_set(dir, "run", 0);
	CHECK(!member_start(&a, "rust_ksm_a") && !member_start(&b, "rust_ksm_b"),
	      "cannot start the two cgroup members");
	a0 = cg_pages(&a);
	b0 = cg_pages(&b);
	CHECK(merged(dir, 2 * n), "the two cgroups' pages did not merge");
	CHECK(!ksm_set(dir, "run", 0), "run=0");
	a1 = cg_pages(&a);
	b1 = cg_pages(&b);
	tap_diag("memory.current, pages: a %lld -> %lld, b %lld -> %lld after merging",
		 a0, a1, b0, b1);
	CHECK(a1 >= 0 && b1 >= 0 && a0 - a1 > n - slack && b0 - b1 > n - slack,
	      "merging did not uncharge both cgroups");

	/* B at its limit: 64 pages of room for 1,024 copies. */
	knob_write_str(b.cg, "memory.swap.max", "0");
	snprintf(buf, sizeof(buf), "%lld", (b1 + 64) * PS);
	CHECK(!knob_write_str(b.cg, "memory.max", buf), "memory.max");
	expect_call_traces(true, "memcg OOM with no task to kill (rust_ksm_coverage memcg)");
	r = member_do(&b, 'u');
	expect_call_traces(false, NULL);
	/* The unsharing fault fails with VM_FAULT_OOM, the engine with
	 * -ENOMEM, and madvise() tells user space EAGAIN (mm/madvise.c: its
	 * ENOMEM means "not mapped"). */
	CHECK(r == EAGAIN, "MADV_UNMERGEABLE at the limit: %s, not EAGAIN",
	      r < 0 ? "no answer" : strerror(r));
	CHECK(member_do(&b, 'v') == 0, "B's data changed at the limit");
	CHECK(cg_pages(&b) <= b1 + 64 + 1, "B went over its limit: %lld pages", cg_pages(&b));

	/* Limit lifted: B pays for all its copies, A for none. */
	CHECK(!knob_write_str(b.cg, "memory.max", "max"), "memory.max=max");
	CHECK(member_do(&b, 'u') == 0, "MADV_UNMERGEABLE without a limit failed");
	a2 = cg_pages(&a);
	b2 = cg_pages(&b);
	tap_diag("after B unmerged: a %lld -> %lld, b %lld -> %lld", a1, a2, b1, b2);
	CHECK(b2 - b1 > n - slack, "B was not charged for its copies");
	CHECK(a2 - a1 < slack && a1 - a2 < slack, "A's charge moved by %lld pages", a2 - a1);
	CHECK(member_do(&a, 'v') == 0 && member_do(&b, 'v') == 0, "data changed");
	member_stop(&a);
	member_stop(&b);
	return ret;
}

static const struct ksm_test tests[] = {
	{ "THP: the subpages of a huge page merge, the page is split, data intact", test_thp },
	{ "prctl(PR_SET_MEMORY_MERGE): merges without madvise, fork and exec inherit it, 0 unmerges",
	  test_prctl },
	{ "max_page_sharing: EINVAL below 2, EBUSY while merged", test_max_page_sharing },
	{ "MAP_SHARED, file and hugetlb VMAs: madvise accepts them, nothing merges",
	  test_ignored_vmas },
	{ "64 processes x 64 pages of 4 patterns: all merge, max_page_sharing per KSM page",
	  test_many_processes },
	{ "the default knobs (100 pages / 20 ms) merge 1024 pages", test_default_knobs },
	{ "MADV_SOFT_OFFLINE of a KSM page shared with a child moves every mapping",
	  test_soft_offline },
	{ "MADV_UNMERGEABLE unmerges uffd-wp protected KSM pages", test_uffd_wp },
	{ "ksm_zero_pages stays exact when unmerging zero pages fails half way",
	  test_zero_pages_failing_unmerge },
	{ "ksm_zero_pages stays exact when fork races writes to KSM zero pages",
	  test_zero_pages_fork_race },
	{ "a forked child's ksm_zero_pages counts the KSM zero pages it maps",
	  test_zero_pages_fork_count },
	{ "memory failure of a KSM page shared with a child: both get SIGBUS",
	  test_hwpoison_child },
	{ "memcg: unmerging charges the unmerging cgroup; at its limit EAGAIN, data intact",
	  test_memcg },
};

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--print-memory-merge")) {
		printf("%d\n", prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0));
		return 0;
	}
	self_exe = realpath("/proc/self/exe", NULL);
	ksm_tests_main(argc, argv, tests, ARRAY_SIZE(tests), "pagemap PFNs", NULL);
}
