// SPDX-License-Identifier: GPL-2.0
/*
 * rust_ksm_modcycle: rmmod/insmod under a live MADV_MERGEABLE process.
 *
 * A child keeps 1000 patterned MADV_MERGEABLE pages (half identical, half
 * unique) through 20 rmmod/insmod cycles, each with the scanner running at
 * run=1 until it completed passes over the child; the child then checks its
 * data and reports through its exit status.  A second child madvises while
 * the module is unloaded and must be picked up when it loads.
 *
 * Start with the module loaded; it ends loaded, run=0, default knobs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ksm_util.h"
#include "tap.h"

#define CYCLES		20
#define CHILD_PAGES	1000
#define LATE_PAGES	500
#define SCAN_TIMEOUT_MS	20000

struct child {
	pid_t pid;
	int go;		/* write end: closing it makes the child verify + exit */
};

static struct child child, late_child;

static uint64_t pattern(size_t pages, size_t page, size_t word)
{
	/* First half: identical pages (merge candidates); second: unique. */
	if (page < pages / 2)
		return 0xa5a5a5a5a5a5a5a5ULL ^ word;
	return ((uint64_t)page << 32 | word) ^ 0x5bd1e9955bd1e995ULL;
}

/* Child: map, fill, madvise, report ready, wait for EOF on GO, verify. */
static void __attribute__((noreturn)) child_main(size_t pages, int ready,
						 int go)
{
	size_t words = page_size / sizeof(uint64_t), i, j, bad = 0;
	uint64_t *p;
	char c;

	p = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		_exit(2);
	madvise(p, pages * page_size, MADV_NOHUGEPAGE);
	for (i = 0; i < pages; i++)
		for (j = 0; j < words; j++)
			p[i * words + j] = pattern(pages, i, j);
	if (madvise(p, pages * page_size, MADV_MERGEABLE))
		_exit(3);
	c = 'r';
	if (write(ready, &c, 1) != 1)
		_exit(4);
	close(ready);
	while (read(go, &c, 1) > 0)
		;
	for (i = 0; i < pages; i++)
		for (j = 0; j < words; j++)
			if (p[i * words + j] != pattern(pages, i, j)) {
				bad++;
				break;
			}
	_exit(bad ? 1 : 0);
}

static int spawn(struct child *c, size_t pages)
{
	int ready[2], go[2];
	char ch;

	if (pipe(ready) || pipe(go)) {
		tap_diag("pipe: %s", strerror(errno));
		return -1;
	}
	fflush(stdout);
	c->pid = fork();
	if (c->pid < 0) {
		tap_diag("fork: %s", strerror(errno));
		return -1;
	}
	if (!c->pid) {
		close(ready[0]);
		close(go[1]);
		child_main(pages, ready[1], go[0]);
	}
	close(ready[1]);
	close(go[0]);
	c->go = go[1];
	if (read(ready[0], &ch, 1) != 1) {
		close(ready[0]);
		tap_diag("child %d died during setup", c->pid);
		return -1;
	}
	close(ready[0]);
	return 0;
}

/* Let the child verify its data; its exit status (-1 if it did not exit). */
static int finish(struct child *c)
{
	int status;

	if (c->pid <= 0)
		return -1;
	close(c->go);
	if (waitpid(c->pid, &status, 0) != c->pid)
		return -1;
	c->pid = 0;
	if (!WIFEXITED(status)) {
		tap_diag("child killed by signal %d", WTERMSIG(status));
		return -1;
	}
	return WEXITSTATUS(status);
}

/*
 * With run=1 and fast knobs, wait for MIN_PASSES more completed passes;
 * return how far pages_scanned moved (KNOB_ERR on timeout).
 */
static unsigned long long scan_passes(unsigned int min_passes)
{
	unsigned long long ps0, fs0, fs1;
	long waited;

	if (rk_fast() || rk_set("run", 1))
		return KNOB_ERR;
	ps0 = rk_get("pages_scanned");
	fs0 = rk_get("full_scans");
	waited = wait_knob_ge(RKSM_DIR, "full_scans", fs0 + min_passes,
			      SCAN_TIMEOUT_MS, &fs1);
	if (waited < 0 || ps0 == KNOB_ERR) {
		tap_diag("full_scans %llu -> %llu, wanted +%u within %d ms",
			 fs0, fs1, min_passes, SCAN_TIMEOUT_MS);
		return KNOB_ERR;
	}
	return rk_get("pages_scanned") - ps0;
}

static int test_child_ready(void)
{
	int ret = TAP_PASS;

	if (!module_loaded())
		CHECK(!module_load(), "cannot load rust_ksm");
	CHECK(!spawn(&child, CHILD_PAGES), "child setup failed");
	return ret;
}

/* Per-cycle findings, reported as separate tests after the loop. */
static unsigned int bad_scan, bad_pickup, bad_rmmod, bad_insmod, bad_defaults;
static bool cycles_ran;

static int test_cycles(void)
{
	unsigned int c;
	int err;

	if (child.pid <= 0)
		return tap_skip_because("no child");
	cycles_ran = true;
	for (c = 0; c < CYCLES; c++) {
		unsigned long long d;

		if (!module_loaded()) {
			tap_diag("cycle %u: module not loaded", c);
			bad_insmod++;
			if (module_load())
				continue;
		}
		if (c > 0) {
			/* A fresh instance: defaults and zero counters. */
			unsigned long long run = rk_get("run");
			unsigned long long pts = rk_get("pages_to_scan");
			unsigned long long slp = rk_get("sleep_millisecs");
			unsigned long long ps = rk_get("pages_scanned");
			unsigned long long fs = rk_get("full_scans");

			if (run != DEF_RUN || pts != DEF_PAGES_TO_SCAN ||
			    slp != DEF_SLEEP_MILLISECS || ps || fs) {
				tap_diag("cycle %u after insmod: run=%llu pages_to_scan=%llu sleep_millisecs=%llu pages_scanned=%llu full_scans=%llu",
					 c, run, pts, slp, ps, fs);
				bad_defaults++;
			}
		}
		d = scan_passes(2);
		if (d == KNOB_ERR) {
			tap_diag("cycle %u: scanner made no progress", c);
			bad_scan++;
		} else if (d < CHILD_PAGES) {
			tap_diag("cycle %u: pages_scanned +%llu over 2 passes",
				 c, d);
			bad_pickup++;
		}
		err = module_unload();
		if (err || module_loaded()) {
			tap_diag("cycle %u: rmmod: %s", c, strerror(-err));
			bad_rmmod++;
			continue;
		}
		err = module_load();
		if (err) {
			tap_diag("cycle %u: insmod: %s", c, strerror(-err));
			bad_insmod++;
		}
	}
	return bad_rmmod || bad_insmod ? TAP_FAIL : TAP_PASS;
}

static int cycle_result(unsigned int bad)
{
	if (!cycles_ran)
		return tap_skip_because("cycles did not run");
	if (bad)
		tap_diag("%u of %d cycles", bad, CYCLES);
	return bad ? TAP_FAIL : TAP_PASS;
}

static int test_cycle_scan(void) { return cycle_result(bad_scan); }
static int test_cycle_pickup(void) { return cycle_result(bad_pickup); }
static int test_cycle_defaults(void) { return cycle_result(bad_defaults); }

static int test_final_pickup(void)
{
	unsigned long long d;
	int ret = TAP_PASS;

	if (child.pid <= 0)
		return tap_skip_because("no child");
	CHECK(module_loaded(), "rust_ksm not loaded after the cycles");
	d = scan_passes(2);
	tap_diag("after the cycles: pages_scanned +%llu over 2 passes", d);
	CHECK(d != KNOB_ERR, "scanner made no progress");
	CHECK(d != KNOB_ERR && d >= CHILD_PAGES,
	      "child's %d pages not scanned", CHILD_PAGES);
	rk_set("run", 0);
	return ret;
}

static int test_child_intact(void)
{
	int ret = TAP_PASS, st;

	if (child.pid <= 0)
		return tap_skip_because("no child");
	st = finish(&child);
	CHECK(st == 0, "child exit status %d (1: data corrupted)", st);
	return ret;
}

static int test_late_registration(void)
{
	unsigned long long d;
	int ret = TAP_PASS, err, st;

	/* Nobody else has mergeable memory now: only the late child can make
	 * pages_scanned move. */
	err = module_unload();
	CHECK(!err, "rmmod: %s", strerror(-err));
	if (err)
		return ret;
	CHECK(!spawn(&late_child, LATE_PAGES), "child setup failed");
	err = module_load();
	CHECK(!err, "insmod: %s", strerror(-err));
	if (late_child.pid <= 0 || err)
		return ret;
	d = scan_passes(2);
	tap_diag("child madvised before insmod: pages_scanned +%llu over 2 passes",
		 d);
	CHECK(d != KNOB_ERR, "no scan progress");
	CHECK(d != KNOB_ERR && d >= LATE_PAGES,
	      "child's %d pages not picked up", LATE_PAGES);
	rk_set("run", 0);
	st = finish(&late_child);
	CHECK(st == 0, "late child exit status %d", st);
	return ret;
}

static const struct tap_test tests[] = {
	{ "child with 1000 MADV_MERGEABLE pages ready", test_child_ready },
	{ "20 rmmod/insmod cycles at run=1 succeed", test_cycles },
	{ "every cycle: full_scans advances", test_cycle_scan },
	{ "every cycle: child's pages picked up after insmod", test_cycle_pickup },
	{ "every insmod: default knobs, zero counters", test_cycle_defaults },
	{ "after the cycles: loaded, child's pages scanned", test_final_pickup },
	{ "child's data intact", test_child_intact },
	{ "process madvised before insmod is picked up", test_late_registration },
};

static void cleanup(void)
{
	if (child.pid > 0)
		kill(child.pid, SIGKILL);
	if (late_child.pid > 0)
		kill(late_child.pid, SIGKILL);
	if (!module_loaded() && module_load())
		tap_diag("could not reload rust_ksm");
	rk_reset();
}

int main(void)
{
	atexit(cleanup);
	tap_run(tests, ARRAY_SIZE(tests), NULL);
}
