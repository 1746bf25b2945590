// SPDX-License-Identifier: GPL-2.0
/*
 * rust_ksm_exclusive: rust_ksm and the built-in KSM exclude each other.
 *
 *  - module loaded: /sys/kernel/mm/ksm/run refuses 1 and 2 (EBUSY), takes 0;
 *  - module unloaded, built-in KSM running: finit_module(rust_ksm.ko)
 *    fails with EBUSY; holding merged pages (run=0): the module takes
 *    them, and gives them back at rmmod;
 *  - after built-in run=2 then run=0 the module loads again.
 *
 * Start it with the module loaded (it loads it if not); it ends with the
 * module loaded and the built-in KSM stopped with its default knobs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

#define NPAGES		100
#define FILL		0x5a
#define MERGE_TIMEOUT_MS 60000

static char *area;		/* NPAGES identical pages */
static bool unloaded;		/* rmmod worked: the rest makes sense */

static int builtin_set(const char *knob, unsigned long long v)
{
	int err = knob_write_ull(KSM_DIR, knob, v);

	if (err)
		tap_diag("writing %llu to %s/%s: %s", v, KSM_DIR, knob,
			 strerror(-err));
	return err;
}

/* pages_shared + pages_sharing of the built-in KSM, KNOB_ERR if unreadable. */
static unsigned long long builtin_merged(void)
{
	unsigned long long shared = knob_get(KSM_DIR, "pages_shared");
	unsigned long long sharing = knob_get(KSM_DIR, "pages_sharing");

	if (shared == KNOB_ERR || sharing == KNOB_ERR)
		return KNOB_ERR;
	return shared + sharing;
}

static int test_builtin_busy(void)
{
	int ret = TAP_PASS, err;

	if (!module_loaded()) {
		err = module_load();
		tap_diag("rust_ksm was not loaded; insmod: %s",
			 err ? strerror(-err) : "ok");
	}
	CHECK(module_loaded(), "rust_ksm is not loaded");
	err = knob_write_str(KSM_DIR, "run", "1");
	CHECK(err == -EBUSY, "built-in run=1: %s, want EBUSY",
	      err ? strerror(-err) : "success");
	err = knob_write_str(KSM_DIR, "run", "2");
	CHECK(err == -EBUSY, "built-in run=2: %s, want EBUSY",
	      err ? strerror(-err) : "success");
	err = knob_write_str(KSM_DIR, "run", "0");
	CHECK(!err, "built-in run=0: %s", strerror(-err));
	CHECK(knob_get(KSM_DIR, "run") == 0, "built-in run is not 0");
	return ret;
}

static int test_rmmod(void)
{
	int ret = TAP_PASS, err, n = 0, i;

	err = module_unload();
	CHECK(!err, "delete_module: %s", strerror(-err));
	CHECK(!module_loaded(), "/sys/module/" MODULE_NAME " still there");
	CHECK(access(RKSM_DIR, F_OK) && errno == ENOENT,
	      "%s still there", RKSM_DIR);
	for (i = 0; i < 200; i++) {
		find_task(KTHREAD_NAME, &n);
		if (!n)
			break;
		msleep(10);
	}
	CHECK(n == 0, "%s still running after rmmod", KTHREAD_NAME);
	unloaded = !module_loaded();
	return ret;
}

static int test_builtin_merges(void)
{
	int ret = TAP_PASS;
	long waited;
	unsigned long long v;

	if (!unloaded)
		return tap_skip_because("rust_ksm still loaded");
	CHECK(!builtin_set("pages_to_scan", 1000), "pages_to_scan");
	CHECK(!builtin_set("sleep_millisecs", 0), "sleep_millisecs");
	CHECK(!builtin_set("run", 1), "built-in run=1 refused");
	area = map_populated(NPAGES, FILL);
	if (!area)
		return TAP_FAIL;
	CHECK(!madvise(area, NPAGES * page_size, MADV_MERGEABLE),
	      "madvise: %s", strerror(errno));
	waited = wait_knob_ge(KSM_DIR, "pages_sharing", 1, MERGE_TIMEOUT_MS, &v);
	tap_diag("built-in KSM: pages_sharing=%llu after %ld ms", v, waited);
	CHECK(waited >= 0, "built-in KSM merged nothing in %d ms",
	      MERGE_TIMEOUT_MS);
	return ret;
}

static int test_insmod_busy_running(void)
{
	int ret = TAP_PASS, err;

	if (!unloaded)
		return tap_skip_because("rust_ksm still loaded");
	CHECK(knob_get(KSM_DIR, "run") == 1, "built-in run is not 1");
	err = module_load();
	CHECK(err == -EBUSY, "insmod with built-in run=1: %s, want EBUSY",
	      err ? strerror(-err) : "success");
	CHECK(!module_loaded(), "rust_ksm loaded next to a running KSM");
	if (!err) {
		module_unload();
		unloaded = !module_loaded();
	}
	return ret;
}

/* insmod while the built-in KSM holds merged pages (issue 22): they become
 * rust_ksm's, none is unmerged; rmmod gives them back.  (Before the
 * handover this insmod failed with EBUSY, and the pages had to be
 * unmerged first.) */
static int test_insmod_adopts_merged(void)
{
	unsigned long long merged, rk;
	size_t pfns, absent;
	int ret = TAP_PASS, err;

	if (!unloaded)
		return tap_skip_because("rust_ksm still loaded");
	CHECK(!builtin_set("run", 0), "built-in run=0");
	merged = builtin_merged();
	tap_diag("built-in pages_shared+pages_sharing = %llu", merged);
	if (!merged || merged == KNOB_ERR)
		return tap_skip_because("built-in KSM holds no merged pages");
	pfns = distinct_pfns(area, NPAGES, &absent);
	err = module_load();
	CHECK(!err, "insmod with the built-in's pages merged: %s", strerror(-err));
	if (err)
		return ret;
	unloaded = false;
	rk = knob_get(RKSM_DIR, "pages_shared") + knob_get(RKSM_DIR, "pages_sharing");
	CHECK(rk == merged, "rust_ksm counts %llu merged pages, the built-in had %llu", rk,
	      merged);
	CHECK(builtin_merged() == 0, "the built-in still counts %llu", builtin_merged());
	CHECK(distinct_pfns(area, NPAGES, NULL) == pfns, "%zu PFNs after insmod, %zu before",
	      distinct_pfns(area, NPAGES, NULL), pfns);
	CHECK(!module_unload(), "rmmod");
	unloaded = !module_loaded();
	CHECK(builtin_merged() == merged, "the built-in counts %llu after rmmod, had %llu",
	      builtin_merged(), merged);
	CHECK(distinct_pfns(area, NPAGES, NULL) == pfns, "%zu PFNs after rmmod, %zu before",
	      distinct_pfns(area, NPAGES, NULL), pfns);
	return ret;
}

static int test_insmod_after_unmerge(void)
{
	int ret = TAP_PASS, err;
	size_t i, bad = 0;

	if (!unloaded)
		return tap_skip_because("rust_ksm still loaded");
	CHECK(!builtin_set("run", 2), "built-in run=2");
	CHECK(builtin_merged() == 0, "merged pages left after run=2");
	CHECK(!builtin_set("run", 0), "built-in run=0");
	err = module_load();
	CHECK(!err, "insmod after run=2, run=0: %s", strerror(-err));
	CHECK(module_loaded(), "rust_ksm not loaded");
	CHECK(!access(RKSM_DIR, F_OK), "%s missing", RKSM_DIR);
	CHECK(find_task(KTHREAD_NAME, NULL) > 0, "no %s", KTHREAD_NAME);
	err = knob_write_str(KSM_DIR, "run", "1");
	CHECK(err == -EBUSY, "built-in run=1 after insmod: %s, want EBUSY",
	      err ? strerror(-err) : "success");
	if (area) {
		for (i = 0; i < NPAGES * page_size; i++)
			bad += area[i] != FILL;
		CHECK(!bad, "%zu bytes of the unmerged area changed", bad);
	}
	return ret;
}

static void cleanup(void)
{
	if (!module_loaded()) {
		knob_write_str(KSM_DIR, "run", "2");
		knob_write_str(KSM_DIR, "run", "0");
	}
	knob_write_ull(KSM_DIR, "pages_to_scan", DEF_PAGES_TO_SCAN);
	knob_write_ull(KSM_DIR, "sleep_millisecs", DEF_SLEEP_MILLISECS);
	if (!module_loaded() && module_load())
		tap_diag("could not reload rust_ksm");
	if (area)
		munmap(area, NPAGES * page_size);
	area = NULL;
}

static const struct tap_test tests[] = {
	{ "module loaded: built-in run=1/2 EBUSY, run=0 ok", test_builtin_busy },
	{ "rmmod rust_ksm removes sysfs dir and kthread", test_rmmod },
	{ "built-in KSM merges once rust_ksm is gone", test_builtin_merges },
	{ "insmod fails with EBUSY while built-in run=1", test_insmod_busy_running },
	{ "insmod with the built-in's pages merged takes them, rmmod gives them back",
	  test_insmod_adopts_merged },
	{ "insmod succeeds after built-in run=2, run=0", test_insmod_after_unmerge },
};

int main(void)
{
	atexit(cleanup);
	tap_run(tests, ARRAY_SIZE(tests), NULL);
}
