// SPDX-License-Identifier: GPL-2.0
/*
 * rust_ksm_stress: mergeable memory changed in every way the engine must
 * survive, while rust_ksmd scans flat out, its knobs flip, memory is
 * swapped out, compacted and migrated, memory blocks go offline and come
 * back (boot with movablecore=), and the module is unloaded and reloaded
 * under load.  Every worker thread checks every byte it owns
 * against its shadow: the pattern each of its pages must hold.
 *
 *   rust_ksm_stress [-d SECONDS] [-p PROCS] [-t THREADS] [-f] [--ksm-dir DIR]
 *
 *   -d  how long to run (default 300)
 *   -p  worker processes at a time (default 4); each exits after 20 to 50
 *       seconds and a new one takes its place
 *   -t  threads per worker (default 3); each owns its regions
 *   -f  fault injection: failslab and fail_page_alloc fail 1% of the
 *       scanner thread's slab and page allocations (task filter on
 *       rust_ksmd, GFP_KERNEL included), and the workers'
 *       madvise(MADV_(UN)MERGEABLE) calls fail at a random allocation
 *       (fail-nth)
 *
 * With --ksm-dir /sys/kernel/mm/ksm it runs against the built-in KSM (no
 * module reloads), which is how to tell an engine bug from a test bug.
 * TAP: one line per verdict (no corruption, every step worked, nothing
 * left merged after run=2), totals as diagnostics.  Kernel reports are
 * caught by scripts/vm-run's dmesg check, after rmmod and a kmemleak scan.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT	21
#endif

#define RK		RKSM_DIR
#define PS		page_size
#define HUGE		(2UL << 20)
#define MAX_PROCS	16
#define MAX_THREADS	8
#define REGIONS		3		/* per thread: one THP, two small */
#define SMALL_PAGES	64
#define NPAT		6		/* patterns pages merge on */
#define ZERO_PAT	(~0UL)		/* an all-zero page */
#define FAILSLAB	"/sys/kernel/debug/failslab"
#define FAIL_PAGE	"/sys/kernel/debug/fail_page_alloc"
#define MEMORY		"/sys/devices/system/memory"
#define FAIL_TIMES	1000000

/* Shared by every process (MAP_SHARED): totals and the stop flag. */
static struct totals {
	atomic_ullong ops, bytes_verified, corruptions, forks, mremaps,
		unmerges, pageouts, migrations, madvise_faults, step_errors,
		workers_done;
	atomic_int stop;
	char first_error[160];
	atomic_int have_error;
} *tot;

static int nprocs = 4, nthreads = 3;
static bool faults;

/* The first failure of a step worth reporting, then a count. */
static void step_error(const char *fmt, ...)
{
	va_list ap;

	atomic_fetch_add(&tot->step_errors, 1);
	if (atomic_exchange(&tot->have_error, 1))
		return;
	va_start(ap, fmt);
	vsnprintf(tot->first_error, sizeof(tot->first_error), fmt, ap);
	va_end(ap);
}

struct region {
	char *addr;
	size_t pages;
	bool thp;
	unsigned long *pat;	/* shadow: the pattern of each page */
};

struct worker {
	uint64_t rnd;
	int id;
	struct region reg[REGIONS];
};

static unsigned long pick_pattern(struct worker *w)
{
	uint64_t r = rnd_next(&w->rnd) % 100;

	if (r < 70)
		return r % NPAT;			/* merges */
	if (r < 85)
		return ZERO_PAT;			/* zero page */
	return 1000 + (rnd_next(&w->rnd) >> 8);	/* unique */
}

static void fill(char *page, unsigned long pat)
{
	if (pat == ZERO_PAT)
		memset(page, 0, PS);
	else
		fill_pattern(page, pat);
}

static bool holds(const char *page, unsigned long pat)
{
	if (pat != ZERO_PAT)
		return check_pattern(page, pat);
	for (size_t i = 0; i < PS; i += 8)
		if (*(const uint64_t *)(page + i))
			return false;
	return true;
}

/* Check every page of R against its shadow; false on a corruption. */
static bool verify(struct worker *w, struct region *r, const char *when)
{
	bool ok = true;

	for (size_t i = 0; i < r->pages; i++) {
		if (holds(r->addr + i * PS, r->pat[i]))
			continue;
		if (!atomic_fetch_add(&tot->corruptions, 1))
			tap_diag("CORRUPTION: worker %d page %zu of a %s region after %s: pattern %lx expected, first bytes %02x %02x",
				 w->id, i, r->thp ? "THP" : "small", when, r->pat[i],
				 (unsigned char)r->addr[i * PS], (unsigned char)r->addr[i * PS + 1]);
		ok = false;
	}
	atomic_fetch_add(&tot->bytes_verified, r->pages * PS);
	return ok;
}

/* Mergeable memory, 2 MiB aligned for a THP region. */
static char *map_region(size_t pages, bool thp)
{
	size_t len = pages * PS, extra = thp ? HUGE : 0;
	char *p = mmap(NULL, len + extra, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), *a;

	if (p == MAP_FAILED)
		return NULL;
	a = thp ? (char *)(((uintptr_t)p + HUGE - 1) & ~(HUGE - 1)) : p;
	if (a > p)
		munmap(p, a - p);
	if (p + len + extra > a + len)
		munmap(a + len, p + len + extra - (a + len));
	madvise(a, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return a;
}

/* madvise(), with a fault injected into its Nth allocation under -f.
 * An injected failure is an expected error. */
static int advise(struct worker *w, void *a, size_t len, int advice)
{
	char buf[16];
	int nth = 0, err;

	if (faults && rnd_next(&w->rnd) % 4 == 0) {
		nth = 1 + rnd_next(&w->rnd) % 16;
		snprintf(buf, sizeof(buf), "%d", nth);
		if (knob_write_str("/proc/thread-self", "fail-nth", buf))
			nth = 0;
	}
	err = madvise(a, len, advice) ? errno : 0;
	if (nth) {
		bool injected = read_text("/proc/thread-self/fail-nth", buf, sizeof(buf)) > 0 &&
				atoi(buf) == 0;

		knob_write_str("/proc/thread-self", "fail-nth", "0");
		if (injected) {
			atomic_fetch_add(&tot->madvise_faults, 1);
			return 0;
		}
	}
	if (err && err != EAGAIN)
		step_error("madvise(%d): %s", advice, strerror(err));
	return err;
}

static void region_new(struct worker *w, struct region *r, bool thp)
{
	r->thp = thp;
	r->pages = thp ? HUGE / PS : SMALL_PAGES;
	r->addr = map_region(r->pages, thp);
	if (!r->addr) {
		step_error("mmap: %s", strerror(errno));
		r->pages = 0;
		return;
	}
	for (size_t i = 0; i < r->pages; i++) {
		r->pat[i] = pick_pattern(w);
		fill(r->addr + i * PS, r->pat[i]);
	}
	advise(w, r->addr, r->pages * PS, MADV_MERGEABLE);
}

/* A child of a worker thread: it sees this thread's regions as they were,
 * changes a few pages (COW), and checks them all. */
static void fork_and_check(struct worker *w)
{
	int status;
	pid_t pid = fork();

	if (pid < 0) {
		if (errno != EAGAIN && errno != ENOMEM)
			step_error("fork: %s", strerror(errno));
		return;
	}
	if (!pid) {
		bool ok = true;

		for (int k = 0; k < REGIONS; k++) {
			struct region *r = &w->reg[k];

			if (!r->pages)
				continue;
			ok &= verify(w, r, "fork (child)");
			for (int j = 0; j < 4; j++) {
				size_t i = rnd_next(&w->rnd) % r->pages;

				r->pat[i] = pick_pattern(w);
				fill(r->addr + i * PS, r->pat[i]);
			}
			usleep(rnd_next(&w->rnd) % 20000);
			ok &= verify(w, r, "writes in the child");
		}
		_exit(ok ? 0 : 1);
	}
	waitpid(pid, &status, 0);
	atomic_fetch_add(&tot->forks, 1);
	for (int k = 0; k < REGIONS; k++)
		if (w->reg[k].pages)
			verify(w, &w->reg[k], "fork (parent)");
}

/* mremap to a new place (2 MiB aligned for THP). */
static void move_region(struct worker *w, struct region *r)
{
	size_t len = r->pages * PS;
	char *to = map_region(r->pages, r->thp), *got;

	if (!to)
		return;
	got = mremap(r->addr, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	if (got == MAP_FAILED) {
		step_error("mremap: %s", strerror(errno));
		munmap(to, len);
		return;
	}
	r->addr = got;
	atomic_fetch_add(&tot->mremaps, 1);
	verify(w, r, "mremap");
}

/* Migrate a few pages to the other node. */
static void migrate_some(struct worker *w, struct region *r)
{
	void *pages[16];
	int nodes[16], status[16];
	size_t i, at = rnd_next(&w->rnd) % (r->pages - 16);
	int to = page_node(0, r->addr + at * PS) == 0 ? 1 : 0;

	for (i = 0; i < 16; i++) {
		pages[i] = r->addr + (at + i) * PS;
		nodes[i] = to;
	}
	if (sys_move_pages(0, 16, pages, nodes, status, MPOL_MF_MOVE_) < 0 &&
	    errno != ENOMEM && errno != EBUSY)
		step_error("move_pages: %s", strerror(errno));
	atomic_fetch_add(&tot->migrations, 1);
}

static void one_op(struct worker *w, bool numa)
{
	struct region *r = &w->reg[rnd_next(&w->rnd) % REGIONS];
	uint64_t op = rnd_next(&w->rnd) % 100;
	size_t i, n, len;

	if (!r->pages) {
		region_new(w, r, r == &w->reg[0]);
		return;
	}
	/* The last region is calm: never written after it is filled, so
	 * that its pages stay put long enough (two full scans) to merge; it
	 * is read, and forked (the child writes: COW) while merged. */
	if (r == &w->reg[REGIONS - 1])
		op = op < 5 ? 50 /* fork */ : 35 /* verify */;
	len = r->pages * PS;
	i = rnd_next(&w->rnd) % r->pages;
	n = 1 + rnd_next(&w->rnd) % (r->pages - i);
	if (op < 35) {				/* write */
		r->pat[i] = pick_pattern(w);
		fill(r->addr + i * PS, r->pat[i]);
	} else if (op < 50) {			/* verify */
		verify(w, r, "scanning");
	} else if (op < 53) {
		fork_and_check(w);
	} else if (op < 56) {
		move_region(w, r);
	} else if (op < 61) {			/* munmap, map anew */
		verify(w, r, "scanning (before munmap)");
		munmap(r->addr, len);
		region_new(w, r, r->thp);
	} else if (op < 67) {			/* MADV_DONTNEED */
		if (madvise(r->addr + i * PS, n * PS, MADV_DONTNEED))
			step_error("MADV_DONTNEED: %s", strerror(errno));
		while (n--)
			r->pat[i + n] = ZERO_PAT;
	} else if (op < 73) {			/* unmerge, check, re-advise */
		if (!advise(w, r->addr, len, MADV_UNMERGEABLE)) {
			atomic_fetch_add(&tot->unmerges, 1);
			verify(w, r, "MADV_UNMERGEABLE");
		}
		advise(w, r->addr, len, MADV_MERGEABLE);
	} else if (op < 78) {			/* read-only for a while */
		if (mprotect(r->addr, len, PROT_READ))
			step_error("mprotect: %s", strerror(errno));
		usleep(rnd_next(&w->rnd) % 10000);
		verify(w, r, "mprotect(PROT_READ)");
		if (mprotect(r->addr, len, PROT_READ | PROT_WRITE))
			step_error("mprotect: %s", strerror(errno));
	} else if (op < 83) {			/* swap out (zram) */
		if (madvise(r->addr + i * PS, n * PS, MADV_PAGEOUT))
			step_error("MADV_PAGEOUT: %s", strerror(errno));
		atomic_fetch_add(&tot->pageouts, 1);
	} else if (op < 88 && numa && r->pages > 16) {
		migrate_some(w, r);
	} else {
		usleep(rnd_next(&w->rnd) % 5000);	/* let rust_ksmd merge */
	}
	atomic_fetch_add(&tot->ops, 1);
}

struct thread_arg {
	int id;
	bool numa;
	uint64_t until_ms;
};

static void *thread_main(void *p)
{
	struct thread_arg *a = p;
	struct worker *w = calloc(1, sizeof(*w));

	if (!w)
		return NULL;
	w->id = a->id;
	w->rnd = 0x9e3779b97f4a7c15ULL * (uint64_t)(a->id + 1) ^ now_ms();
	for (int k = 0; k < REGIONS; k++) {
		w->reg[k].pat = calloc(HUGE / PS, sizeof(unsigned long));
		if (w->reg[k].pat)
			region_new(w, &w->reg[k], k == 0);
	}
	/* A breath between operations: a dozen threads spinning on two
	 * CPUs would starve rust_ksmd (normal priority), and a scanner that
	 * never completes two passes merges nothing to race against. */
	while (!atomic_load(&tot->stop) && now_ms() < a->until_ms) {
		one_op(w, a->numa);
		usleep(500 + rnd_next(&w->rnd) % 1000);
	}
	for (int k = 0; k < REGIONS; k++) {
		if (w->reg[k].pages) {
			verify(w, &w->reg[k], "the end");
			munmap(w->reg[k].addr, w->reg[k].pages * PS);
		}
		free(w->reg[k].pat);
	}
	free(w);
	return NULL;
}

/* A worker process: NTHREADS threads for a few seconds, then exit. */
static void worker_main(int id, bool numa)
{
	pthread_t th[MAX_THREADS];
	struct thread_arg args[MAX_THREADS];
	uint64_t until = now_ms() + 20000 + (uint64_t)(id * 7919) % 30000;

	/*
	 * Workers yield to rust_ksmd: a dozen threads of TCG guest code on
	 * two vCPUs left the scanner (nice 0 like them) a 13th of the CPU:
	 * 0 to 5 full scans in a 40 s run and, with CI's 5 of them, no page
	 * ever merged, so nothing raced against merging.  At nice 5 (a third
	 * of the weight each) the scanner gets a fair share.
	 */
	if (setpriority(PRIO_PROCESS, 0, 5))
		step_error("setpriority: %s", strerror(errno));
	for (int t = 0; t < nthreads; t++) {
		args[t] = (struct thread_arg){ id * MAX_THREADS + t, numa, until };
		if (pthread_create(&th[t], NULL, thread_main, &args[t]))
			step_error("pthread_create failed");
	}
	for (int t = 0; t < nthreads; t++)
		pthread_join(th[t], NULL);
	atomic_fetch_add(&tot->workers_done, 1);
	_exit(0);
}

/* --- the controller: knobs, pressure, module reloads, fault injection --- */

static unsigned int reloads, knob_flips, unmerge_alls, compactions;
/* pages_sharing over the reloads: rust_ksm's before rmmod, the built-in's
 * after it, rust_ksm's after insmod (the handover keeps the pages). */
static unsigned long long rk_sharing_before, handed_over, taken_back;
static unsigned int offlined, offline_failed, movable_blocks;
static char offline_why[96];
/* The highest pages_sharing seen: proof the engine had work. */
static unsigned long long most_merged;
/* Full scans rust_ksmd made during the run (summed over reloads). */
static unsigned long long scans_done, scans_last;

/* Aim failslab at the scanner thread (it changes after a reload). */
static void faults_on_scanner(void)
{
	char dir[32];
	pid_t pid = find_task(KTHREAD_NAME, NULL);
	int err;

	if (!pid)
		return;
	snprintf(dir, sizeof(dir), "/proc/%d", pid);
	err = knob_write_str(dir, "make-it-fail", "1");
	if (err)
		step_error("%s/make-it-fail: %s", dir, strerror(-err));
}

/*
 * failslab: 1% of the kmalloc allocations of the tasks marked make-it-fail
 * (the scanner thread), sleeping ones included.  Only the kmalloc caches
 * (where the module's items, nodes and vectors live): failing kmemleak's
 * own metadata allocations would use up its emergency pool and switch
 * leak detection off.
 *
 * fail_page_alloc: 1% of the page allocations of the same tasks, order 0
 * and sleeping ones included (new slab pages, page tables), and, through
 * fail-nth, of the madvise() calls of the workers (the copies unmerging
 * makes).  warn_alloc() prints a stack dump for each: expected, see
 * expect_call_traces().
 */
static int faults_setup(void)
{
	static const char *const set[][2] = {
		{ "probability", "10" }, { "interval", "10" }, { "verbose", "0" },
		{ "task-filter", "Y" }, { "ignore-gfp-wait", "N" },
		{ "cache-filter", "Y" },
	};
	static const char *const page_set[][2] = {
		{ "probability", "1" }, { "interval", "1" }, { "verbose", "0" },
		{ "task-filter", "Y" }, { "ignore-gfp-wait", "N" },
		{ "ignore-gfp-highmem", "N" }, { "min-order", "0" },
	};
	static const char *const sizes[] = {
		"8", "16", "32", "64", "96", "128", "192", "256", "512",
		"1k", "2k", "4k", "8k",
	};

	if (access(FAILSLAB, F_OK))
		mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	for (size_t i = 0; i < ARRAY_SIZE(set); i++) {
		if (knob_write_str(FAILSLAB, set[i][0], set[i][1]))
			return -1;
	}
	for (size_t i = 0; i < ARRAY_SIZE(page_set); i++) {
		if (knob_write_str(FAIL_PAGE, page_set[i][0], page_set[i][1]))
			return -1;
	}
	/* Count down as failures are injected (faults_injected()). */
	if (knob_write_ull(FAILSLAB, "times", FAIL_TIMES) ||
	    knob_write_ull(FAIL_PAGE, "times", FAIL_TIMES))
		return -1;
	expect_call_traces(true, "fail_page_alloc (rust_ksm_stress -f): warn_alloc()");
	for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
		char dir[64];

		snprintf(dir, sizeof(dir), "/sys/kernel/slab/kmalloc-%s", sizes[i]);
		if (knob_write_str(dir, "failslab", "1"))
			return -1;
	}
	faults_on_scanner();
	return 0;
}

/* Failures injected so far by the fault attribute in DIR. */
static unsigned long long faults_injected(const char *dir)
{
	unsigned long long left;

	if (knob_read(dir, "times", &left))
		return 0;
	return FAIL_TIMES - left;
}

static void faults_off(void)
{
	knob_write_str(FAILSLAB, "probability", "0");
	knob_write_str(FAILSLAB, "task-filter", "N");
	knob_write_str(FAILSLAB, "ignore-gfp-wait", "Y");
	knob_write_str(FAILSLAB, "cache-filter", "N");
	knob_write_str(FAIL_PAGE, "probability", "0");
	knob_write_str(FAIL_PAGE, "task-filter", "N");
	knob_write_str(FAIL_PAGE, "ignore-gfp-wait", "Y");
	knob_write_str(FAIL_PAGE, "min-order", "1");
	expect_call_traces(false, NULL);
}

/*
 * Take an online ZONE_MOVABLE memory block offline (its pages, merged ones
 * included, migrate away through the rmap walk) and bring it back.  The
 * blocks are tried from a random one on until one goes: most fail at once
 * (EBUSY: boot-time reservations at the top of each node; EINVAL: the
 * last, partial block), which is no error.  Offlining retries while a page
 * will not migrate, until a fatal signal: it runs in a child that an alarm
 * ends after 30 s.  A block that went offline and cannot come back online
 * is an error.
 */
static void offline_online(uint64_t *rnd)
{
	char path[96], buf[64];
	unsigned int blocks[64], n = 0, b, start;
	int status;
	pid_t pid;

	for (b = 0; b < 4096 && n < ARRAY_SIZE(blocks); b++) {
		snprintf(path, sizeof(path), MEMORY "/memory%u/valid_zones", b);
		if (read_text(path, buf, sizeof(buf)) > 0 && !strncmp(buf, "Movable", 7))
			blocks[n++] = b;
	}
	movable_blocks = n;
	start = n ? rnd_next(rnd) % n : 0;
	for (unsigned int k = 0; k < n; k++) {
		b = blocks[(start + k) % n];
		snprintf(path, sizeof(path), MEMORY "/memory%u", b);
		uint64_t t0 = now_ms();

		pid = fork();
		if (!pid) {
			alarm(30);
			_exit(-knob_write_str(path, "state", "offline"));
		}
		if (pid < 0 || waitpid(pid, &status, 0) != pid)
			return;
		if (!WIFEXITED(status) || WEXITSTATUS(status)) {
			offline_failed++;
			snprintf(offline_why, sizeof(offline_why), "memory%u: %s after %llu ms", b,
				 WIFEXITED(status) ? strerror(WEXITSTATUS(status)) : "killed",
				 (unsigned long long)(now_ms() - t0));
			continue;
		}
		offlined++;
		if (knob_write_str(path, "state", "online_movable"))
			step_error("memory%u: offline, and it will not come back online", b);
		return;
	}
}

static int fast_knobs(void)
{
	return ksm_set(RK, "sleep_millisecs", 0) || ksm_set(RK, "pages_to_scan", 1000) ||
	       ksm_set(RK, "run", 1);
}

/* Write a knob that needs no merged pages (-EBUSY otherwise): unmerge
 * everything first, as an administrator would. */
static void set_quiet_knob(const char *knob, unsigned long long v)
{
	int err;

	if (ksm_set(RK, "run", 2))
		step_error("run=2 for %s failed", knob);
	err = knob_write_ull(RK, knob, v);
	if (err && err != -EBUSY)
		step_error("%s=%llu: %s", knob, v, strerror(-err));
	if (ksm_set(RK, "run", 1))
		step_error("run=1 after %s failed", knob);
}

/*
 * Steps that throw every merge away (run=2, the knobs that need it, a
 * reload) wait until rust_ksmd has made QUIET_SCANS full passes since the
 * last one: a page needs two passes after such a step to merge again.
 * Without this gate, make check's 40 s runs merged nothing in 2 of 8
 * runs: with a full pass taking ~6 s under this load, an unmerge every ~5 s
 * (4 of the 10 steps, one step every 1-3 s) left no window to merge in.
 */
#define QUIET_SCANS	3
static unsigned long long scans_at_reset;

static bool may_reset(void)
{
	unsigned long long fs = knob_get(RK, "full_scans");

	/* A reload restarts the counter from 0. */
	if (fs == KNOB_ERR || fs < scans_at_reset)
		scans_at_reset = 0;
	if (fs == KNOB_ERR || fs < scans_at_reset + QUIET_SCANS)
		return false;
	return true;
}

static void control_step(uint64_t *rnd, bool builtin)
{
	unsigned int step = rnd_next(rnd) % 10;
	unsigned long long before, kept;
	int err;

	if (step >= 2 && step <= 6 && step != 5) {
		if (!may_reset())
			return;
		/* After a reload full_scans starts from 0. */
		scans_at_reset = step == 6 && !builtin ? 0 : knob_get(RK, "full_scans");
	}
	switch (step) {
	case 0:
		knob_write_ull(RK, "use_zero_pages", rnd_next(rnd) & 1);
		knob_flips++;
		break;
	case 1:
		knob_write_ull(RK, "smart_scan", rnd_next(rnd) & 1);
		knob_write_ull(RK, "pages_to_scan", 100 + rnd_next(rnd) % 4000);
		knob_flips++;
		break;
	case 2:
		set_quiet_knob("max_page_sharing", 2 + rnd_next(rnd) % 4 * 80);
		knob_flips++;
		break;
	case 3:
		set_quiet_knob("merge_across_nodes", rnd_next(rnd) & 1);
		knob_flips++;
		break;
	case 4:
		if (ksm_set(RK, "run", 2) || ksm_set(RK, "run", 0) || ksm_set(RK, "run", 1))
			step_error("run 2/0/1 failed");
		unmerge_alls++;
		break;
	case 5:
		err = knob_write_str("/proc/sys/vm", "compact_memory", "1");
		if (err)
			step_error("compact_memory: %s", strerror(-err));
		compactions++;
		break;
	case 6:
		if (builtin)
			break;
		/* A handover under load: rmmod gives every page to the
		 * built-in KSM, insmod takes them back; what rust_ksm counted
		 * merged goes to the built-in, and back. */
		before = knob_get(RK, "pages_sharing");
		if (module_unload()) {
			step_error("rmmod under load failed");
			break;
		}
		kept = knob_get(KSM_DIR, "pages_sharing");
		err = module_load();
		if (err || fast_knobs()) {
			step_error("reload failed: %s (ksm_zero_pages %lld)", strerror(-err),
				   (long long)knob_get(KSM_DIR, "ksm_zero_pages"));
			break;
		}
		reloads++;
		handed_over += kept;
		taken_back += knob_get(RK, "pages_sharing");
		rk_sharing_before += before;
		if (faults)
			faults_on_scanner();
		break;
	case 7:
		offline_online(rnd);
		break;
	default:
		break;		/* let it merge */
	}
}

int main(int argc, char **argv)
{
	unsigned int duration = 300;
	pid_t kids[MAX_PROCS] = { 0 };
	uint64_t rnd = now_ms() | 1, end, next_step;
	unsigned long long merged, zero;
	struct ksm_counters c;
	bool builtin, numa;
	int opt, spawned = 0;

	/*
	 * Under -f a worker thread arms fail-nth before madvise() and disarms
	 * it after; an N the call did not reach is still armed on the way
	 * back to user space, where the kernel updates the thread's rseq area
	 * (rseq_handle_notify_resume()).  If that page must be faulted in
	 * (swapped out under pressure) and the injected page allocation
	 * failure hits the fault, the kernel kills the thread with a silent
	 * SIGSEGV: seen once ("worker died (status 0xb)", no segfault line in
	 * dmesg) when fail_page_alloc joined failslab.  That is fail-nth's
	 * semantics, not an engine fault: run without rseq.
	 */
	if (!getenv("GLIBC_TUNABLES")) {
		setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0", 1);
		execv("/proc/self/exe", argv);
	}
	argc = ksm_parse_args(argc, argv);
	while ((opt = getopt(argc, argv, "d:p:t:f")) != -1) {
		switch (opt) {
		case 'd': duration = atoi(optarg); break;
		case 'p': nprocs = atoi(optarg); break;
		case 't': nthreads = atoi(optarg); break;
		case 'f': faults = true; break;
		default:
			fprintf(stderr, "usage: %s [-d SECONDS] [-p PROCS] [-t THREADS] [-f]\n",
				argv[0]);
			return 2;
		}
	}
	if (nprocs < 1 || nprocs > MAX_PROCS || nthreads < 1 || nthreads > MAX_THREADS)
		return 2;
	page_size = sysconf(_SC_PAGESIZE);
	builtin = !strcmp(RK, KSM_DIR);
	tot = mmap(NULL, sizeof(*tot), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (tot == MAP_FAILED)
		return 1;
	memset(tot, 0, sizeof(*tot));

	tap_plan(3);
	tap_diag("%u s, %d processes x %d threads, %s, against %s", duration, nprocs,
		 nthreads, faults ? "fault injection" : "no fault injection", RK);
	if (swap_setup())
		tap_diag("no swap: %s (MADV_PAGEOUT only drops clean pages)", swap_why);
	numa = two_nodes();
	if (fast_knobs()) {
		step_error("cannot start the scanner");
		duration = 0;
	}
	if (faults && faults_setup()) {
		step_error("fault injection unavailable (FAILSLAB, FAIL_PAGE_ALLOC, debugfs)");
		faults = false;
	}

	end = now_ms() + duration * 1000ULL;
	next_step = now_ms() + 1000;
	while (now_ms() < end) {
		for (int i = 0; i < nprocs; i++) {
			int status;

			if (kids[i] && waitpid(kids[i], &status, WNOHANG) == kids[i]) {
				if (!WIFEXITED(status) || WEXITSTATUS(status))
					step_error("worker %d died (status %#x)", kids[i], status);
				kids[i] = 0;
			}
			if (!kids[i]) {
				kids[i] = fork();
				if (!kids[i])
					worker_main(spawned, numa);
				if (kids[i] < 0) {
					kids[i] = 0;
					step_error("fork: %s", strerror(errno));
				}
				spawned++;
			}
		}
		merged = knob_get(RK, "pages_sharing");
		if (merged != KNOB_ERR && merged > most_merged)
			most_merged = merged;
		merged = knob_get(RK, "full_scans");
		if (merged != KNOB_ERR) {
			/* A reload starts the count from 0 again. */
			scans_done += merged >= scans_last ? merged - scans_last : merged;
			scans_last = merged;
		}
		if (now_ms() >= next_step) {
			control_step(&rnd, builtin);
			next_step = now_ms() + 1000 + rnd_next(&rnd) % 2000;
		}
		msleep(50);
	}

	atomic_store(&tot->stop, 1);
	for (int i = 0; i < nprocs; i++) {
		int status;

		if (kids[i] && waitpid(kids[i], &status, 0) == kids[i] &&
		    (!WIFEXITED(status) || WEXITSTATUS(status)))
			step_error("worker %d died (status %#x)", kids[i], status);
	}
	if (faults) {
		tap_diag("faults injected: %llu slab and %llu page allocations of %s, %llu into madvise (fail-nth)",
			 faults_injected(FAILSLAB), faults_injected(FAIL_PAGE), KTHREAD_NAME,
			 (unsigned long long)atomic_load(&tot->madvise_faults));
		faults_off();
	}
	tap_diag("operations %llu, bytes verified %llu, corruptions %llu",
		 (unsigned long long)tot->ops, (unsigned long long)tot->bytes_verified,
		 (unsigned long long)tot->corruptions);
	tap_diag("workers %d (%llu finished), forks %llu, mremaps %llu, unmerges %llu, pageouts %llu, migrations %llu",
		 spawned, (unsigned long long)tot->workers_done, (unsigned long long)tot->forks,
		 (unsigned long long)tot->mremaps, (unsigned long long)tot->unmerges,
		 (unsigned long long)tot->pageouts, (unsigned long long)tot->migrations);
	tap_diag("module reloads %u, knob flips %u, run=2 under load %u, compactions %u, highest pages_sharing %llu",
		 reloads, knob_flips, unmerge_alls, compactions, most_merged);
	tap_diag("handovers: pages_sharing %llu before rmmod, %llu kept by the built-in, %llu taken back",
		 rk_sharing_before, handed_over, taken_back);
	tap_diag("memory blocks offlined and onlined %u (%u offline attempts failed%s%s)",
		 offlined, offline_failed, offline_failed ? "; the last: " : "", offline_why);

	tap_result(tot->corruptions ? TAP_FAIL : TAP_PASS, "no byte of any worker changed");
	/* A long run whose movable memory never went offline tests little. */
	if (duration >= 120 && movable_blocks && !offlined)
		step_error("no memory block went offline (%u attempts)", offline_failed);
	if (tot->step_errors)
		tap_diag("%llu failed steps; the first: %s",
			 (unsigned long long)tot->step_errors, tot->first_error);
	/*
	 * Nor does one that merges nothing: with at least QUIET_SCANS + 1
	 * full scans, pages had a quiet window to merge in (see may_reset()).
	 * On a machine so loaded that rust_ksmd made fewer (seen with three
	 * guests on two host CPUs: 40 s, 5 scans), that is reported only.
	 */
	tap_diag("full scans during the run %llu", scans_done);
	/*
	 * Under fault injection this is reported, not judged: twice (CI on
	 * 2026-12-07 and make check on 2026-12-08, 5 and 6 full scans) the
	 * -f run merged nothing where the run without faults merged, and a
	 * hand-run -f merged 361 pages with 6 scans.  Sampled in the guest,
	 * rust_ksmd scanned 40-60 pages/s while the workers ran and merged
	 * 313 pages seconds after they stopped, past this window: slowed by
	 * the workers' mmap write locks more than by the faults, it seems
	 * (issue 21's note).  Corruption, splats and leaks are still judged.
	 */
	if (!most_merged)
		tap_diag("no page was ever seen merged%s", scans_done <= QUIET_SCANS ?
			 " (too few full scans to expect it)" :
			 faults ? " (fault injection: reported, not judged)" : "");
	tap_result(tot->step_errors || !tot->ops ||
		   (!most_merged && scans_done > QUIET_SCANS && !faults) ?
		   TAP_FAIL : TAP_PASS, "every step worked and, given full scans, pages merged");
	ksm_set(RK, "run", 2);
	ksm_counters_read(RK, &c);
	ksm_counters_diag("after run=2", &c);
	/* Every worker has exited: no KSM zero page can be mapped. */
	zero = knob_get(RK, "ksm_zero_pages");
	tap_diag("ksm_zero_pages %lld", (long long)zero);
	tap_result(c.shared || c.sharing || zero ? TAP_FAIL : TAP_PASS,
		   "nothing left merged after run=2, no KSM zero page counted");
	ksm_set(RK, "run", 0);
	swap_teardown();
	tap_finish();
}
