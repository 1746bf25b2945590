// SPDX-License-Identifier: GPL-2.0
/*
 * rust_ksm-only tests of the module's life and of the range walk: rmmod
 * with merged pages hands every page to the built-in KSM, intact;
 * MADV_UNMERGEABLE over a sparse 32 TiB area must only visit what is there.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MADV_HWPOISON
#define MADV_HWPOISON 100
#endif

#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

#define DIR_	"/sys/kernel/mm/rust_ksm"
#define TIMEOUT_MS	30000

#define ps page_size

/* Merge N pages of NPAT patterns; all must share NPAT PFNs. */
static char *merged_area(size_t n, size_t npat)
{
	char *p = map_anon(n);
	size_t i;

	if (!p)
		return NULL;
	for (i = 0; i < n; i++)
		fill_pattern(p + i * ps, i % npat);
	if (madvise(p, n * ps, MADV_MERGEABLE) || ksm_fast(DIR_, 1000) ||
	    ksm_run_scans(DIR_, 2, TIMEOUT_MS)) {
		munmap(p, n * ps);
		return NULL;
	}
	return p;
}

/*
 * rmmod with merged pages hands them to the built-in KSM (issue 22): every
 * page keeps its PFN, the built-in counts them, a write gets a private
 * copy, insmod takes them back, and run=2 unmerges them, data intact.
 * (Before the handover, rmmod unmerged every page: this test asked for n
 * distinct PFNs after rmmod.)
 */
static int test_rmmod_merged(void)
{
	const size_t n = 1024, npat = 4;
	unsigned long long sharing;
	int ret = TAP_PASS;
	size_t i, d, np;
	char *p = merged_area(n, npat);

	if (!p)
		return TAP_FAIL;
	d = distinct_pfns(p, n, &np);
	CHECK(d == npat && np == 0, "before rmmod: %zu PFNs, want %zu", d, npat);
	sharing = knob_get(DIR_, "pages_sharing");
	CHECK(sharing >= n - npat, "pages_sharing %llu", sharing);

	CHECK(module_unload() == 0, "rmmod with merged pages failed");
	d = distinct_pfns(p, n, &np);
	CHECK(d == npat && np == 0, "after rmmod: %zu distinct PFNs (%zu absent), want %zu",
	      d, np, npat);
	CHECK(knob_get(KSM_DIR, "pages_sharing") == sharing,
	      "built-in pages_sharing %llu, rust_ksm had %llu",
	      knob_get(KSM_DIR, "pages_sharing"), sharing);
	for (i = 0; i < n; i++)
		if (!check_pattern(p + i * ps, i % npat)) {
			FAILED("page %zu lost its data over rmmod", i);
			break;
		}
	/* Writing works and stays private. */
	p[0] ^= 0xff;
	CHECK(check_pattern(p + 4 * ps, 0), "a write leaked to another page");
	CHECK(distinct_pfns(p, n, NULL) == npat + 1, "%zu PFNs after the write",
	      distinct_pfns(p, n, NULL));

	CHECK(module_load() == 0, "insmod after rmmod failed");
	CHECK(distinct_pfns(p, n, NULL) == npat + 1, "%zu PFNs after insmod",
	      distinct_pfns(p, n, NULL));
	CHECK(!ksm_unmerge_stop(DIR_), "run=2");
	CHECK(distinct_pfns(p, n, NULL) == n, "%zu PFNs after run=2, want %zu",
	      distinct_pfns(p, n, NULL), n);
	p[0] ^= 0xff;
	for (i = 0; i < n; i++)
		if (!check_pattern(p + i * ps, i % npat)) {
			FAILED("page %zu lost its data", i);
			break;
		}
	munmap(p, n * ps);
	return ret;
}

/*
 * KSM zero pages (use_zero_pages) stay as they are at rmmod: they are the
 * core's (a PTE of the zero page, counted in the global ksm_zero_pages),
 * which the built-in KSM handles as its own, and the next insmod too.
 * (Before the handover, rmmod unmerged them.)
 */
static int test_rmmod_zero_pages(void)
{
	const size_t n = 256;
	int ret = TAP_PASS;
	size_t i;
	char *p = map_anon(n);

	if (!p)
		return TAP_FAIL;
	memset(p, 1, n * ps);
	memset(p, 0, n * ps);
	CHECK(!knob_write_str(DIR_, "use_zero_pages", "1"), "use_zero_pages=1");
	CHECK(!madvise(p, n * ps, MADV_MERGEABLE) && !ksm_fast(DIR_, 1000) &&
	      !ksm_run_scans(DIR_, 3, TIMEOUT_MS), "merging did not run");
	CHECK(knob_get(DIR_, "ksm_zero_pages") == n, "ksm_zero_pages %llu, want %zu",
	      knob_get(DIR_, "ksm_zero_pages"), n);

	CHECK(module_unload() == 0, "rmmod with KSM zero pages failed");
	CHECK(knob_get(KSM_DIR, "ksm_zero_pages") == n, "ksm_zero_pages %llu after rmmod",
	      knob_get(KSM_DIR, "ksm_zero_pages"));
	CHECK(module_load() == 0, "insmod after rmmod failed");
	CHECK(knob_get(DIR_, "ksm_zero_pages") == n, "ksm_zero_pages %llu after insmod",
	      knob_get(DIR_, "ksm_zero_pages"));
	CHECK(!ksm_unmerge_stop(DIR_), "run=2");
	CHECK(knob_get(DIR_, "ksm_zero_pages") == 0, "ksm_zero_pages %llu after run=2",
	      knob_get(DIR_, "ksm_zero_pages"));
	for (i = 0; i < n * ps; i++)
		if (p[i]) {
			FAILED("byte %zu is %#x", i, (unsigned char)p[i]);
			break;
		}
	knob_write_str(DIR_, "use_zero_pages", "0");
	munmap(p, n * ps);
	return ret;
}

static int test_sparse_unmerge(void)
{
	const size_t size = 32ULL << 40;	/* 32 TiB, as upstream's report */
	const size_t touched = 64;
	int ret = TAP_PASS;
	uint64_t t0, ms;
	size_t i, d, np;
	char *p;

	p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return tap_skip_because("cannot map 32 TiB");
	madvise(p, size, MADV_NOHUGEPAGE);
	/* A few identical pages spread over the area. */
	for (i = 0; i < touched; i++)
		memset(p + i * (size / touched), 0x3c, ps);
	CHECK(!madvise(p, size, MADV_MERGEABLE), "madvise: %s", strerror(errno));
	CHECK(!ksm_fast(DIR_, 1000) && !ksm_run_scans(DIR_, 2, TIMEOUT_MS),
	      "scanner not scanning");
	CHECK(knob_get(DIR_, "pages_sharing") == touched - 1,
	      "pages_sharing %llu, want %zu", knob_get(DIR_, "pages_sharing"),
	      touched - 1);
	ksm_set(DIR_, "run", 0);

	t0 = now_ms();
	CHECK(!madvise(p, size, MADV_UNMERGEABLE), "MADV_UNMERGEABLE: %s",
	      strerror(errno));
	ms = now_ms() - t0;
	tap_diag("MADV_UNMERGEABLE over 32 TiB took %llu ms",
		 (unsigned long long)ms);
	/* A walk over every address would take hours: holes are skipped. */
	CHECK(ms < 1000, "MADV_UNMERGEABLE took %llu ms", (unsigned long long)ms);
	for (i = 0, d = 0; i < touched; i++) {
		const char *q = p + i * (size / touched);
		long long pfn = pagemap_pfn(0, q);

		np = pfn > 0;
		d += np && pfn != pagemap_pfn(0, p);
		if (q[0] != 0x3c || q[ps - 1] != 0x3c) {
			FAILED("page %zu corrupted", i);
			break;
		}
	}
	CHECK(d == touched - 1, "after unmerge %zu of %zu pages have their own PFN",
	      d, touched - 1);
	ksm_unmerge_stop(DIR_);
	munmap(p, size);
	return ret;
}

/*
 * memory-failure on a merged page: the core collects the processes to kill
 * through the engine's rmap walk and unmaps the page through it too.  If
 * the walk missed the mappings, MADV_HWPOISON would fail with EBUSY
 * instead of the process getting SIGBUS.  Done in a child, which dies.
 */
static int test_hwpoison_merged(void)
{
	const size_t n = 4;
	int ret = TAP_PASS, status;
	pid_t pid;

	if (ksm_fast(DIR_, 1000))
		return TAP_FAIL;
	pid = fork();
	if (pid < 0)
		return TAP_FAIL;
	if (!pid) {
		char *p = merged_area(n, 1);
		size_t d, np;

		if (!p)
			_exit(10);
		d = distinct_pfns(p, n, &np);
		if (d != 1 || np)
			_exit(11);
		ksm_set(DIR_, "run", 0);
		if (madvise(p, ps, MADV_HWPOISON))
			_exit(12);
		/* Every mapping was unmapped: touching another one faults. */
		(void)*(volatile char *)(p + 2 * ps);
		_exit(13);
	}
	if (waitpid(pid, &status, 0) != pid)
		return TAP_FAIL;
	if (WIFEXITED(status))
		tap_diag("child exited %d (10 map/merge, 11 not merged, 12 MADV_HWPOISON failed, 13 no SIGBUS)",
			 WEXITSTATUS(status));
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS,
	      "the process mapping the poisoned KSM page was not killed with SIGBUS");
	return ret;
}

static int run_rmmod(void) { return test_rmmod_merged(); }
static int run_rmmod_zero(void) { return test_rmmod_zero_pages(); }
static int run_hwpoison(void) { return test_hwpoison_merged(); }
static int run_sparse(void) { return test_sparse_unmerge(); }

static const struct tap_test tests[] = {
	{ "rmmod with merged pages: the built-in KSM takes them, insmod takes them back",
	  run_rmmod },
	{ "rmmod with KSM zero pages: they stay, counted, until run=2", run_rmmod_zero },
	{ "MADV_UNMERGEABLE over a sparse 32 TiB area: under a second", run_sparse },
	{ "memory failure on a merged page: its process gets SIGBUS", run_hwpoison },
};

static void after(void)
{
	if (!module_loaded())
		module_load();
	ksm_unmerge_stop(DIR_);
}

int main(void)
{
	if (geteuid())
		fprintf(stderr, "must run as root (pagemap PFNs)\n");
	tap_run(tests, ARRAY_SIZE(tests), after);
}
