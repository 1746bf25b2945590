// SPDX-License-Identifier: GPL-2.0
/*
 * rust_ksm_handover: merged pages change engines without being unmerged
 * (issue 22).
 *
 *  1. rmmod hands every rust_ksm KSM page to the built-in KSM: every page
 *     keeps its PFN, MemFree does not drop, the built-in's counters and
 *     ksm_stat show the pages, its run stays 0; then COW, migration of
 *     every page (the built-in's rmap walk must find both mappings of
 *     each), insmod (the pages come back: the same PFNs, rust_ksm's
 *     counters), scanning, and run=2 unmerges all, data intact.
 *  2. The other way: the built-in KSM merges, run=0, insmod adopts every
 *     page (same PFNs, the counters move to rust_ksm), rmmod gives them
 *     back, the built-in's run=2 unmerges them, data intact.
 *
 * Seen failing before the handover (the module and patch of the previous
 * session): 1 at "pages unmerged by rmmod" (all 4096 pairs, as the test
 * then had, got private copies, MemFree fell by the 16 MiB merging had
 * saved), 2 at insmod:
 * "insmod with the built-in's pages merged: Device or resource busy".
 *
 * Merged pages are told by PFNs (pagemap): 6.12's /proc/kpageflags marks
 * every anonymous page KSM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

#define RK		"/sys/kernel/mm/rust_ksm"
#define BK		KSM_DIR
#define TIMEOUT_MS	120000
#define ps		page_size

/* N pages in N / 2 pairs: page i and i + N / 2 have pattern BASE + i. */
#define N		4096
#define NPAIRS		(N / 2)
#define WRITTEN		16	/* pairs broken by a write in test 1 */

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return (x > y) - (x < y);
}

static long long meminfo_kb(const char *field)
{
	char line[256];
	long long kb = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, strlen(field)) && line[strlen(field)] == ':')
			kb = atoll(line + strlen(field) + 1);
	fclose(f);
	return kb;
}

static char *pairs_area(unsigned long base)
{
	char *p = map_anon(N);

	if (!p)
		return NULL;
	for (size_t i = 0; i < N; i++)
		fill_pattern(p + i * ps, base + i % NPAIRS);
	if (madvise(p, (size_t)N * ps, MADV_MERGEABLE)) {
		munmap(p, (size_t)N * ps);
		return NULL;
	}
	return p;
}

static size_t shared_pairs(const char *p, size_t from);

/* Merges the pairs with the engine at DIR, then stops it; 0 or -1. */
static int merge_pairs(const char *dir, char *p)
{
	if (ksm_fast(dir, 4096) || ksm_run_scans(dir, 2, TIMEOUT_MS) ||
	    ksm_wait_merged(dir, N, TIMEOUT_MS, NULL) < 0 || ksm_set(dir, "run", 0))
		return -1;
	return shared_pairs(p, 0) == NPAIRS ? 0 : -1;
}

/* The PFNs of the N pages at P (0: not present), in one read of pagemap:
 * a read per page (open, pread, close) took minutes under TCG. */
static void record(const char *p, long long *pfns)
{
	static uint64_t ent[N];
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	ssize_t want = sizeof(ent);

	memset(ent, 0, sizeof(ent));
	if (fd >= 0 && pread(fd, ent, want, (off_t)((uintptr_t)p / ps * sizeof(ent[0]))) != want)
		memset(ent, 0, sizeof(ent));
	if (fd >= 0)
		close(fd);
	for (size_t i = 0; i < N; i++)
		pfns[i] = ent[i] >> 63 ? (long long)(ent[i] & ((1ULL << 55) - 1)) : 0;
}

/* How many of the N pages at P are not on the PFN PFNS says. */
static size_t moved(const char *p, const long long *pfns)
{
	static long long now[N];
	size_t n = 0;

	record(p, now);
	for (size_t i = 0; i < N; i++)
		n += now[i] != pfns[i];
	return n;
}

/* Pairs [FROM, NPAIRS) whose two pages share a PFN. */
static size_t shared_pairs(const char *p, size_t from)
{
	static long long now[N];
	size_t n = 0;

	record(p, now);
	for (size_t i = from; i < NPAIRS; i++)
		n += now[i] > 0 && now[i] == now[i + NPAIRS];
	return n;
}

/* How many distinct PFNs the N pages at P are on. */
static size_t distinct(const char *p)
{
	static long long now[N];
	size_t d = 0;

	record(p, now);
	qsort(now, N, sizeof(now[0]), cmp_ll);
	for (size_t i = 0; i < N; i++)
		d += now[i] > 0 && (!i || now[i] != now[i - 1]);
	return d;
}

static bool data_ok(const char *p, unsigned long base, size_t written)
{
	for (size_t i = 0; i < N; i++) {
		if (i < written && ((const unsigned char *)p)[i * ps] == 0xee)
			continue;
		if (!check_pattern(p + i * ps, base + i % NPAIRS))
			return false;
	}
	return true;
}


/* The pairs of pattern BASE merged by the engine at DIR, which is left
 * stopped; their PFNs into PFNS and its counters into *SHARED, *SHARING.
 * NULL on failure. */
static char *merged_pairs(const char *dir, unsigned long base, long long *pfns,
			  unsigned long long *shared, unsigned long long *sharing)
{
	char *p = pfns ? pairs_area(base) : NULL;

	if (!p)
		return NULL;
	if (merge_pairs(dir, p)) {
		munmap(p, (size_t)N * ps);
		return NULL;
	}
	record(p, pfns);
	*shared = knob_get(dir, "pages_shared");
	*sharing = knob_get(dir, "pages_sharing");
	return p;
}

static int test_rmmod_hands_back(void)
{
	const unsigned long base = 9000;
	long long *pfns = calloc(N, sizeof(*pfns)), free0, free1, saved_kb;
	unsigned long long shared, sharing;
	int ret = TAP_PASS, *nodes = NULL, *status = NULL;
	void **addrs = NULL;
	uint64_t t0;
	struct ksm_stat st;
	char *p = merged_pairs(RK, base, pfns, &shared, &sharing);

	CHECK(p, "rust_ksm did not merge the pairs");
	if (ret != TAP_PASS)
		goto out;
	CHECK(shared == NPAIRS && sharing == NPAIRS, "rust_ksm: shared %llu sharing %llu",
	      shared, sharing);

	saved_kb = (long long)NPAIRS * (long long)ps / 1024;
	free0 = meminfo_kb("MemFree");
	t0 = now_ms();
	CHECK(module_unload() == 0, "rmmod: %s", strerror(errno));
	tap_diag("rmmod took %llu ms", (unsigned long long)(now_ms() - t0));
	free1 = meminfo_kb("MemFree");
	tap_diag("rmmod: MemFree %lld -> %lld kB (merging saved %lld kB)", free0, free1,
		 saved_kb);
	CHECK(!moved(p, pfns), "%zu pages unmerged by rmmod", moved(p, pfns));
	CHECK(free0 - free1 < saved_kb / 20, "MemFree fell by %lld kB", free0 - free1);
	CHECK(knob_get(BK, "pages_shared") == shared && knob_get(BK, "pages_sharing") == sharing,
	      "built-in: shared %llu sharing %llu after rmmod", knob_get(BK, "pages_shared"),
	      knob_get(BK, "pages_sharing"));
	CHECK(knob_get(BK, "run") == 0, "the built-in's run is %llu", knob_get(BK, "run"));
	CHECK(!ksm_stat_read(0, &st) && st.merging_pages == N,
	      "ksm_stat: ksm_merging_pages %lld, expected %d", st.merging_pages, N);
	if (ret != TAP_PASS)
		goto out;

	/* Copy on write, under the built-in. */
	for (size_t i = 0; i < WRITTEN; i++)
		p[i * ps] = (char)0xee;
	CHECK(data_ok(p, base, WRITTEN), "data changed after the writes");
	CHECK(shared_pairs(p, WRITTEN) == NPAIRS - WRITTEN, "%zu pairs still shared",
	      shared_pairs(p, WRITTEN));

	/* Migration: the built-in's rmap walk must find both mappings. */
	if (two_nodes()) {
		int target = page_node(0, p + WRITTEN * ps) == 0 ? 1 : 0;
		size_t stayed = 0;

		addrs = calloc(N, sizeof(*addrs));
		nodes = calloc(N, sizeof(*nodes));
		status = calloc(N, sizeof(*status));
		CHECK(addrs && nodes && status, "calloc");
		if (ret != TAP_PASS)
			goto out;
		for (size_t i = 0; i < N; i++) {
			addrs[i] = p + i * ps;
			nodes[i] = target;
		}
		t0 = now_ms();
		CHECK(sys_move_pages(0, N, addrs, nodes, status, 4 /* MPOL_MF_MOVE_ALL */) >= 0,
		      "move_pages: %s", strerror(errno));
		tap_diag("move_pages of %d pages took %llu ms", N,
			 (unsigned long long)(now_ms() - t0));
		for (size_t i = WRITTEN; i < NPAIRS; i++)
			stayed += page_node(0, p + i * ps) != target;
		CHECK(!stayed, "%zu KSM pages did not migrate under the built-in", stayed);
		CHECK(shared_pairs(p, WRITTEN) == NPAIRS - WRITTEN,
		      "after migration %zu pairs shared", shared_pairs(p, WRITTEN));
		CHECK(data_ok(p, base, WRITTEN), "data changed by migration");
	}
	record(p, pfns);
	/* What the built-in counts (its items of the written pages too: with
	 * run=0 it does not scan, so they stay until a scan, as upstream's). */
	shared = knob_get(BK, "pages_shared");
	sharing = knob_get(BK, "pages_sharing");

	/* insmod takes them back. */
	t0 = now_ms();
	CHECK(module_load() == 0, "insmod: %s", strerror(errno));
	tap_diag("insmod took %llu ms", (unsigned long long)(now_ms() - t0));
	CHECK(!moved(p, pfns), "%zu pages changed PFN at insmod", moved(p, pfns));
	CHECK(knob_get(RK, "pages_shared") == shared && knob_get(RK, "pages_sharing") == sharing,
	      "rust_ksm after insmod: shared %llu sharing %llu, the built-in had %llu %llu",
	      knob_get(RK, "pages_shared"), knob_get(RK, "pages_sharing"), shared, sharing);
	CHECK(knob_get(BK, "pages_shared") == 0 && knob_get(BK, "pages_sharing") == 0,
	      "built-in after insmod: shared %llu sharing %llu", knob_get(BK, "pages_shared"),
	      knob_get(BK, "pages_sharing"));
	/* Scanning goes on from there: the written pairs merge again. */
	CHECK(!ksm_fast(RK, 4096) && !ksm_run_scans(RK, 3, TIMEOUT_MS), "scans");
	CHECK(shared_pairs(p, WRITTEN) == NPAIRS - WRITTEN, "after scans %zu pairs shared",
	      shared_pairs(p, WRITTEN));
	CHECK(!ksm_unmerge_stop(RK), "run=2");
	CHECK(distinct(p) == N, "run=2 left %zu pages merged", (size_t)N - distinct(p));
	CHECK(data_ok(p, base, WRITTEN), "data changed");
out:
	free(addrs);
	free(nodes);
	free(status);
	free(pfns);
	if (p)
		munmap(p, (size_t)N * ps);
	return ret;
}

static int test_insmod_adopts(void)
{
	const unsigned long base = 31000;
	long long *pfns = calloc(N, sizeof(*pfns));
	unsigned long long shared, sharing;
	int ret = TAP_PASS, err;
	char *p = NULL;

	CHECK(module_unload() == 0, "rmmod: %s", strerror(errno));
	p = merged_pairs(BK, base, pfns, &shared, &sharing);
	CHECK(p, "the built-in KSM did not merge the pairs");
	if (ret != TAP_PASS)
		goto out;
	err = module_load();
	CHECK(!err, "insmod with the built-in's pages merged: %s", strerror(-err));
	if (ret != TAP_PASS)
		goto out;
	CHECK(!moved(p, pfns), "%zu pages unmerged by insmod", moved(p, pfns));
	CHECK(knob_get(RK, "pages_shared") == shared && knob_get(RK, "pages_sharing") == sharing,
	      "rust_ksm after insmod: shared %llu sharing %llu, the built-in had %llu %llu",
	      knob_get(RK, "pages_shared"), knob_get(RK, "pages_sharing"), shared, sharing);
	CHECK(knob_get(BK, "pages_shared") == 0 && knob_get(BK, "pages_sharing") == 0,
	      "built-in after insmod: shared %llu sharing %llu", knob_get(BK, "pages_shared"),
	      knob_get(BK, "pages_sharing"));
	CHECK(knob_get(RK, "run") == 0, "rust_ksm's run is %llu", knob_get(RK, "run"));
	CHECK(module_unload() == 0, "rmmod: %s", strerror(errno));
	CHECK(!moved(p, pfns), "%zu pages unmerged by rmmod", moved(p, pfns));
	CHECK(knob_get(BK, "pages_shared") == shared && knob_get(BK, "pages_sharing") == sharing,
	      "built-in after rmmod: shared %llu sharing %llu", knob_get(BK, "pages_shared"),
	      knob_get(BK, "pages_sharing"));
	CHECK(!ksm_set(BK, "run", 2), "the built-in's run=2");
	ksm_set(BK, "run", 0);
	CHECK(distinct(p) == N, "run=2 left %zu pages merged", (size_t)N - distinct(p));
	CHECK(data_ok(p, base, 0), "data changed");
out:
	free(pfns);
	if (p)
		munmap(p, (size_t)N * ps);
	return ret;
}

static const struct tap_test tests[] = {
	{ "rmmod hands every KSM page to the built-in KSM; COW, migration, insmod, run=2",
	  test_rmmod_hands_back },
	{ "insmod adopts the built-in KSM's pages; rmmod gives them back", test_insmod_adopts },
};

static void after(void)
{
	ksm_set(BK, "run", 0);
	if (!module_loaded()) {
		ksm_set(BK, "run", 2);
		ksm_set(BK, "run", 0);
		if (module_load())
			tap_diag("insmod failed: %s", strerror(errno));
	}
	ksm_unmerge_stop(RK);
	rk_reset();
}

int main(void)
{
	if (!module_loaded() && module_load())
		tap_diag("insmod failed");
	tap_run(tests, sizeof(tests) / sizeof(tests[0]), after);
}
