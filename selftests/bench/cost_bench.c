// SPDX-License-Identifier: GPL-2.0
/*
 * cost_bench: what a KSM engine costs beyond raw merge speed, run in the
 * guest next to ksm_bench (scripts/bench, selftests/bench/bench-guest.sh).
 *
 *   cost_bench [--ksm-dir DIR] [--kthread NAME] [--stall S] [--limit S]
 *              [--only FIGURE] [--profile]
 *
 * Prints "RESULT <engine> <figure> <value|NA> <unit>" lines and "#"
 * diagnostics; exits 0 only if every figure was measured.  CPU times are
 * the KSM thread's sum_exec_runtime (/proc/PID/schedstat, ns).
 *
 *   cpu_ms_per_1k_merged_default  the default knobs (pages_to_scan=100,
 *                       sleep_millisecs=20): 40 MiB of one pattern, the
 *                       thread's CPU from run=1 until merged, per 1000
 *                       pages (what a user running the defaults pays)
 *   cpu_share_pct_default  the same run: the thread's CPU over wall time
 *   merge_mibps_pts10   pages_to_scan=10, sleep_millisecs=0, 20 MiB of one
 *                       pattern: per-batch overhead dominates
 *   scan_cpu_us_per_page_400m_unique  400 MiB of unique pages that never
 *                       merge, after 3 full scans, the CPU of 2 more per
 *                       page scanned: the steady state of a mostly merged
 *                       system
 *   scan_cpu_us_per_page_near_dup  the same over 100 MiB of pages that
 *                       differ only in their last byte (compares fail
 *                       late)
 *   merge_mibps_64procs  64 processes x 16 MiB of one pattern
 *   merge_mibps_8cgroups  8 processes x 16 MiB of one pattern, each in a
 *                       cgroup of its own; rust_ksm with merge_domain=cgroup
 *                       (8 domains), the built-in (which has no domains)
 *                       merging them all
 *   merge_mibps_8cgroups_global  the same with merge_domain=global on both
 *                       sides: the cost of isolation is the ratio of the two
 *                       rust_ksm figures ("#" line)
 *   cgroup_migrate_us   moving a process between two cgroups (one of them
 *                       four levels deep), per move; rust_ksm with
 *                       merge_domain=global, which attaches no probe
 *   cgroup_migrate_us_probes  the same with rust_ksm's merge_domain=cgroup,
 *                       whose cgroup_attach_task probe makes every
 *                       migration format its destination's path: the
 *                       probe's cost is the ratio of the two rust_ksm
 *                       figures (scripts/bench's PROBES line)
 *   merge_mibps_thp     100 MiB of one pattern in transparent huge pages
 *                       (MADV_HUGEPAGE): every one is split to merge
 *   merge_mibps_1536m_pairs  1.5 GiB in one process, each content twice:
 *                       196,608 stable nodes (tree depth)
 *   migrate_ms_512m_unrelated  move_pages() of 512 MiB of memory that is
 *                       not mergeable from node 0 to node 1: the engine's
 *                       cost for migration it has nothing to do with (the
 *                       built-in side has no module loaded)
 *   read_ns_per_4k      reading 4 KiB from memory (256 MiB, 8-byte loads):
 *                       the physical floor of any per-page work
 *
 * --only handover (rust_ksm): the engine handover's time, both directions
 * ("HANDOVER" lines), with 12,800 KSM pages scaled to 100,000.
 *
 * Three more workloads run only when named with --only, for the per-page
 * cost breakdown (bench-guest.sh): profile-merge (100 MiB of one pattern
 * merged, pages_to_scan=1000), profile-scan (400 MiB of unique pages,
 * 3 + 2 full scans) and profile-unmerge (the 100 MiB merged, then run=2,
 * which a child process writes: the unmerge runs in its context); with
 * --profile the KSM thread (for unmerge: the child) is sampled (kprof.h)
 * during what the figure measures, the merge, the last two scans or the
 * run=2 write, and its samples per kernel symbol printed as "KPROF
 * <engine>/<workload> ..." lines, and its CPU per page as "KPROF-CPU
 * <engine>/<workload> <ns> ns_cpu/page".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_util.h"
#include "kprof.h"
#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

#define MiB		(1024UL * 1024UL)
#define PTS		1000
#define NPROCS		64

static const char *dir, *only;
static unsigned int stall_s = 30, limit_s = 600;

static bool want(const char *figure)
{
	return !only || !strcmp(only, figure);
}

/* A workload that runs only when named with --only. */
static bool named(const char *workload)
{
	return only && !strcmp(only, workload);
}

/* With --profile: the KSM thread sampled, until prof_stop(). */
static struct kprof prof;
static bool profiling, prof_on;

static void prof_start(void)
{
	pid_t kthread = find_task(KTHREAD_NAME, NULL);

	prof_on = profiling && kthread && !kprof_start(&prof, kthread, 10000);
}

static void prof_stop(const char *workload)
{
	char tag[64];

	if (!prof_on)
		return;
	snprintf(tag, sizeof(tag), "%s/%s", engine, workload);
	kprof_stop(&prof, tag);
	prof_on = false;
}

/* A task's CPU time so far (ns, /proc/PID/schedstat), or -1. */
static long long task_cpu_ns(pid_t pid)
{
	unsigned long long ns;
	char path[64], buf[128];

	snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
	if (read_text(path, buf, sizeof(buf)) <= 0 ||
	    sscanf(buf, "%llu", &ns) != 1)
		return -1;
	return (long long)ns;
}

/*
 * run=2 written by a child, which is sampled (with --profile) while it
 * writes: the unmerge runs in the writer's context.  The child's CPU for
 * the write (ns), or -1.
 */
static long long profile_unmerge(void)
{
	int go[2], res[2];
	long long cpu = -1;
	char c = 0;
	pid_t pid;

	if (pipe(go) || pipe(res))
		return -1;
	pid = fork();
	if (pid == 0) {
		long long c0, c1;

		close(go[1]);
		close(res[0]);
		if (read(go[0], &c, 1) != 1)
			_exit(1);
		c0 = task_cpu_ns(getpid());
		if (ksm_set(dir, "run", 2))
			_exit(1);
		c1 = task_cpu_ns(getpid());
		cpu = c0 >= 0 && c1 >= c0 ? c1 - c0 : -1;
		_exit(write(res[1], &cpu, sizeof(cpu)) == sizeof(cpu) ? 0 : 1);
	}
	close(go[0]);
	close(res[1]);
	if (pid > 0) {
		prof_on = profiling && !kprof_start(&prof, pid, 10000);
		if (write(go[1], &c, 1) != 1 ||
		    read(res[0], &cpu, sizeof(cpu)) != sizeof(cpu))
			cpu = -1;
		prof_stop("unmerge");
		waitpid(pid, NULL, 0);
	}
	close(go[1]);
	close(res[0]);
	return cpu;
}

/* Clean state: everything unmerged, scanner stopped, fast knobs. *//* Clean state: everything unmerged, scanner stopped, fast knobs. */
static int reset(void)
{
	return ksm_unmerge_stop(dir) ?: ksm_fast(dir, PTS);
}

/* PAGES anonymous pages of one pattern, MADV_MERGEABLE, or NULL. */
static char *one_pattern(size_t pages)
{
	char *p = map_anon(pages);

	if (!p)
		return NULL;
	memset(p, 0x2a, pages * page_size);
	if (madvise(p, pages * page_size, MADV_MERGEABLE)) {
		tap_diag("madvise: %s", strerror(errno));
		munmap(p, pages * page_size);
		return NULL;
	}
	return p;
}

/*
 * Merge PAGES pages (already mergeable) from run=1; ms, with the thread's
 * CPU ns in *CPU, or -1.
 */
static double merge_timed(size_t pages, long long *cpu)
{
	long long c0 = kthread_cpu_ns(), c1;
	uint64_t t0 = now_ns();
	double ms;

	*cpu = -1;
	if (ksm_set(dir, "run", 1))
		return -1;
	ms = wait_merged(dir, pages, t0, stall_s, limit_s);
	c1 = kthread_cpu_ns();
	if (ms > 0 && c0 >= 0 && c1 >= c0)
		*cpu = c1 - c0;
	return ms;
}

static void bench_default_knobs(void)
{
	const size_t mib = 40, pages = mib * MiB / page_size;
	double ms = -1, cpu_ms = -1;
	long long cpu;
	char *p = NULL;

	if (reset() || ksm_set(dir, "pages_to_scan", 100) ||
	    ksm_set(dir, "sleep_millisecs", 20))
		goto out;
	p = one_pattern(pages);
	if (!p)
		goto out;
	ms = merge_timed(pages, &cpu);
	if (ms > 0 && cpu >= 0) {
		cpu_ms = (double)cpu / 1e6;
		tap_diag("%s: default knobs: %zu pages merged in %.0f ms, %.1f ms CPU",
			 engine, pages, ms, cpu_ms);
	}
	munmap(p, pages * page_size);
out:
	ksm_unmerge_stop(dir);
	result("cpu_ms_per_1k_merged_default", cpu_ms / (pages / 1000.0),
	       cpu_ms >= 0, "%.2f", "ms_cpu/1000_pages");
	result("cpu_share_pct_default", 100.0 * cpu_ms / ms, cpu_ms >= 0,
	       "%.2f", "percent");
}

static void bench_pts10(void)
{
	const size_t mib = 20, pages = mib * MiB / page_size;
	double ms = -1;
	long long cpu;
	char *p;

	if (reset() || ksm_set(dir, "pages_to_scan", 10))
		goto out;
	p = one_pattern(pages);
	if (!p)
		goto out;
	ms = merge_timed(pages, &cpu);
	munmap(p, pages * page_size);
out:
	ksm_unmerge_stop(dir);
	result("merge_mibps_pts10", mib / (ms / 1000.0), ms > 0, "%.2f",
	       "MiB/s");
}

/*
 * MIB of pages that never merge (page I holds pattern BASE + I; with
 * NEAR_DUP all hold one pattern but for a last byte that tells them
 * apart): the thread's CPU microseconds per page scanned over 2 full scans
 * after 3, or -1.
 */
static double steady_scan_us(size_t mib, bool near_dup)
{
	size_t pages = mib * MiB / page_size, i;
	long long c0, c1;
	double us = -1;
	int err;
	char *p;

	if (reset())
		return -1;
	p = map_anon(pages);
	if (!p)
		return -1;
	for (i = 0; i < pages; i++) {
		char *page = p + i * page_size;

		if (near_dup) {
			memset(page, 0x5a, page_size);
			memcpy(page + page_size - sizeof(i), &i, sizeof(i));
		} else {
			fill_pattern(page, 1000000 + i);
		}
	}
	if (madvise(p, pages * page_size, MADV_MERGEABLE) ||
	    ksm_run_scans(dir, 3, limit_s * 1000))
		goto unmap;
	prof_start();
	c0 = kthread_cpu_ns();
	err = ksm_run_scans(dir, 2, limit_s * 1000);
	c1 = kthread_cpu_ns();
	prof_stop("scan");
	if (err)
		goto unmap;
	if (c0 >= 0 && c1 >= c0)
		us = (double)(c1 - c0) / 1e3 / (2.0 * (double)pages);
	tap_diag("%s: %zu %s pages: %.3f us CPU/page scanned", engine, pages,
		 near_dup ? "near-duplicate" : "unique", us);
unmap:
	munmap(p, pages * page_size);
	ksm_unmerge_stop(dir);
	return us;
}

/*
 * NPROC processes x MIB MiB of one pattern, each in cgroup rkb_<i> if
 * CGROUPS; merged with merge_domain MODE (rust_ksm only: NULL leaves it).
 * MiB/s, or -1.
 */
static double merge_procs(int nproc, size_t mib, bool cgroups, const char *mode)
{
	const size_t pages = mib * MiB / page_size;
	int ready[2], go[2], n = 0, i;
	pid_t pids[NPROCS];
	double ms = -1;
	long long cpu;
	char c;

	if (reset() || pipe(ready) || pipe(go))
		goto out;
	if (mode && knob_write_str(dir, "merge_domain", mode)) {
		tap_diag("%s: merge_domain=%s refused", engine, mode);
		goto out;
	}
	for (i = 0; i < nproc; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			char cg[64], *p = NULL;

			/* Only the parent's end may keep the pipes open. */
			close(go[1]);
			close(ready[0]);
			snprintf(cg, sizeof(cg), "/sys/fs/cgroup/rkb_%d", i);
			if (!cgroups || ((!mkdir(cg, 0755) || errno == EEXIST) &&
					 !knob_write_str(cg, "cgroup.procs", "0")))
				p = one_pattern(pages);
			c = p ? 'y' : 'n';
			if (write(ready[1], &c, 1) != 1)
				_exit(1);
			/* Until the parent closes the pipe. */
			while (read(go[0], &c, 1) > 0)
				;
			_exit(0);
		}
		if (pids[i] < 0)
			break;
		n++;
	}
	close(go[0]);
	for (i = 0; i < n; i++)
		if (read(ready[0], &c, 1) != 1 || c != 'y')
			break;
	if (n == nproc && i == n)
		ms = merge_timed(nproc * pages, &cpu);
	close(go[1]);
	for (i = 0; i < n; i++)
		waitpid(pids[i], NULL, 0);
	close(ready[0]);
	close(ready[1]);
out:
	ksm_unmerge_stop(dir);
	if (mode)
		knob_write_str(dir, "merge_domain", "global");
	for (i = 0; cgroups && i < nproc; i++) {
		char cg[64];

		snprintf(cg, sizeof(cg), "/sys/fs/cgroup/rkb_%d", i);
		rmdir(cg);
	}
	if (ms > 0)
		tap_diag("%s: %d processes x %zu MiB merged in %.0f ms%s%s", engine,
			 nproc, mib, ms, mode ? ", merge_domain=" : "", mode ? mode : "");
	return ms > 0 ? nproc * mib / (ms / 1000.0) : -1;
}

static void bench_64procs(void)
{
	double v = merge_procs(NPROCS, 16, false, NULL);

	result("merge_mibps_64procs", v, v > 0, "%.2f", "MiB/s");
}

/* The cost of merge domains: 8 cgroups, isolated or not. */
static void bench_8cgroups(void)
{
	bool domains = !access("/sys/kernel/mm/rust_ksm/merge_domain", F_OK) &&
		       !strcmp(dir, "/sys/kernel/mm/rust_ksm");
	double iso = -1, glob;

	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) &&
	    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL))
		tap_diag("mount cgroup2: %s", strerror(errno));
	if (want("merge_mibps_8cgroups")) {
		iso = merge_procs(8, 16, true, domains ? "cgroup" : NULL);
		result("merge_mibps_8cgroups", iso, iso > 0, "%.2f", "MiB/s");
	}
	if (want("merge_mibps_8cgroups_global")) {
		glob = merge_procs(8, 16, true, domains ? "global" : NULL);
		result("merge_mibps_8cgroups_global", glob, glob > 0, "%.2f", "MiB/s");
		if (domains && iso > 0 && glob > 0)
			tap_diag("%s: merge domains cost: cgroup / global throughput %.3f",
				 engine, iso / glob);
	}
}

/*
 * What moving a process between two cgroups costs, per move (us), with
 * rust_ksm's merge_domain MODE (NULL: leave it; the built-in side).  With
 * merge_domain=cgroup rust_ksm attaches a probe to cgroup:cgroup_attach_task,
 * which makes every migration format its destination's path under a global
 * spinlock; with any other mode no probe is attached, and the cost should be
 * the built-in side's.  -1 on failure.
 */
#define MIGRATE_MOVES	2000
#define MIGRATE_CG	"/sys/fs/cgroup/rkm/deep/er/still"
static double cgroup_migrate_us(const char *mode)
{
	static const char *const cgs[] = { "/sys/fs/cgroup/rkm", "/sys/fs/cgroup/rkm/deep",
					   "/sys/fs/cgroup/rkm/deep/er", MIGRATE_CG,
					   "/sys/fs/cgroup/rkm/other" };
	const char *to[2] = { MIGRATE_CG, "/sys/fs/cgroup/rkm/other" };
	double us = -1;
	char pid[32];
	uint64_t t0;
	pid_t kid;
	int i;

	if (mode && knob_write_str(dir, "merge_domain", mode)) {
		tap_diag("%s: merge_domain=%s refused", engine, mode);
		return -1;
	}
	for (i = 0; i < (int)(sizeof(cgs) / sizeof(cgs[0])); i++)
		if (mkdir(cgs[i], 0755) && errno != EEXIST)
			goto out;
	kid = fork();
	if (!kid) {
		pause();
		_exit(0);
	}
	if (kid < 0)
		goto out;
	snprintf(pid, sizeof(pid), "%d", (int)kid);
	t0 = now_ns();
	for (i = 0; i < MIGRATE_MOVES; i++)
		if (knob_write_str(to[i % 2], "cgroup.procs", pid))
			break;
	if (i == MIGRATE_MOVES)
		us = (double)(now_ns() - t0) / 1e3 / MIGRATE_MOVES;
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	if (us > 0)
		tap_diag("%s: %d cgroup moves: %.2f us each%s%s", engine, MIGRATE_MOVES, us,
			 mode ? ", merge_domain=" : "", mode ? mode : "");
out:
	for (i = (int)(sizeof(cgs) / sizeof(cgs[0])) - 1; i >= 0; i--)
		rmdir(cgs[i]);
	if (mode)
		knob_write_str(dir, "merge_domain", "global");
	return us;
}

/* The cost of the cgroup event probes (rust_ksm with merge_domain=cgroup)
 * on every cgroup migration in the system, and that there is none without
 * them (merge_domain=global). */
static void bench_cgroup_migrate(void)
{
	bool domains = !strcmp(dir, "/sys/kernel/mm/rust_ksm");
	double us;

	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) &&
	    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL))
		tap_diag("mount cgroup2: %s", strerror(errno));
	if (want("cgroup_migrate_us")) {
		us = cgroup_migrate_us(domains ? "global" : NULL);
		result("cgroup_migrate_us", us, us > 0, "%.2f", "us");
	}
	if (want("cgroup_migrate_us_probes")) {
		us = cgroup_migrate_us(domains ? "cgroup" : NULL);
		result("cgroup_migrate_us_probes", us, us > 0, "%.2f", "us");
	}
}

/*
 * The engine handover (rust_ksm only, --only handover): 25,600 pages in
 * pairs merged (12,800 KSM pages), then rmmod (every page to the built-in
 * KSM) and insmod of MODULE_KO (every page back), each timed and scaled
 * to 100,000 KSM pages; the pages must keep their PFNs.  Prints
 * "HANDOVER <direction> <ms> ms_per_100k_ksm_pages".
 */
#define HANDOVER_PAIRS	12800
#define MODULE_KO	"/bin/rust_ksm.ko"
static void bench_handover(void)
{
	const size_t pages = 2 * HANDOVER_PAIRS;
	double out_ms = -1, in_ms = -1;
	long long cpu;
	size_t d = 0;
	uint64_t t0, t1, t2;
	char *p = NULL;
	int fd = -1;

	if (strcmp(dir, "/sys/kernel/mm/rust_ksm") || reset())
		goto out;
	p = map_anon(pages);
	if (!p)
		goto out;
	for (size_t i = 0; i < pages; i++)
		fill_pattern(p + i * page_size, 500000 + i % HANDOVER_PAIRS);
	if (madvise(p, pages * page_size, MADV_MERGEABLE) || merge_timed(pages, &cpu) <= 0 ||
	    ksm_set(dir, "run", 0))
		goto out;
	fd = open(MODULE_KO, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		goto out;
	t0 = now_ns();
	if (syscall(SYS_delete_module, "rust_ksm", O_NONBLOCK))
		goto out;
	t1 = now_ns();
	if (syscall(SYS_finit_module, fd, "", 0))
		goto out;
	t2 = now_ns();
	d = distinct_pfns(p, pages, NULL);
	if (d != HANDOVER_PAIRS) {
		tap_diag("handover: %zu PFNs after the round trip, want %d", d, HANDOVER_PAIRS);
		goto out;
	}
	out_ms = (double)(t1 - t0) / 1e6 * 100000.0 / HANDOVER_PAIRS;
	in_ms = (double)(t2 - t1) / 1e6 * 100000.0 / HANDOVER_PAIRS;
out:
	if (fd >= 0)
		close(fd);
	if (access(dir, F_OK) && !access(MODULE_KO, F_OK)) {
		/* Whatever happened, leave the module loaded. */
		fd = open(MODULE_KO, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			syscall(SYS_finit_module, fd, "", 0);
			close(fd);
		}
	}
	ksm_unmerge_stop(dir);
	if (p)
		munmap(p, pages * page_size);
	if (out_ms < 0)
		missing++;
	printf("HANDOVER rust_ksm->ksm %.1f ms_per_100k_ksm_pages\n", out_ms);
	printf("HANDOVER ksm->rust_ksm %.1f ms_per_100k_ksm_pages\n", in_ms);
}

static long long meminfo_kb(const char *field)
{
	char line[128], name[64];
	long long kb;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	snprintf(name, sizeof(name), "%s: %%lld kB", field);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, name, &kb) == 1) {
			fclose(f);
			return kb;
		}
	fclose(f);
	return -1;
}

static void bench_thp(void)
{
	const size_t mib = 100, pages = mib * MiB / page_size, huge = 2 * MiB;
	long long thp_kb = -1, cpu;
	double ms = -1;
	char *raw, *p;

	if (reset())
		goto out;
	/* 2 MiB aligned, so that every 2 MiB can be a huge page. */
	raw = mmap(NULL, mib * MiB + huge, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		goto out;
	p = (char *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
	if (!madvise(p, mib * MiB, MADV_HUGEPAGE)) {
		memset(p, 0x2a, mib * MiB);
		thp_kb = meminfo_kb("AnonHugePages");
		tap_diag("%s: THP area: AnonHugePages %lld kB", engine, thp_kb);
		if (!madvise(p, mib * MiB, MADV_MERGEABLE))
			ms = merge_timed(pages, &cpu);
	}
	munmap(raw, mib * MiB + huge);
out:
	ksm_unmerge_stop(dir);
	/* Without huge pages the figure would measure something else. */
	result("merge_mibps_thp", mib / (ms / 1000.0),
	       ms > 0 && thp_kb >= (long long)(mib * 1024 / 2), "%.2f", "MiB/s");
}

static void bench_pairs(void)
{
	const size_t mib = 1536, pages = mib * MiB / page_size, half = pages / 2;
	double ms = -1;
	long long cpu;
	size_t i;
	char *p;

	if (reset())
		goto out;
	p = map_anon(pages);
	if (!p)
		goto out;
	for (i = 0; i < half; i++) {
		fill_pattern(p + i * page_size, 2000000 + i);
		memcpy(p + (half + i) * page_size, p + i * page_size, page_size);
	}
	if (!madvise(p, pages * page_size, MADV_MERGEABLE))
		ms = merge_timed(pages, &cpu);
	if (ms > 0)
		tap_diag("%s: %zu pages in pairs merged in %.0f ms, %.0f ms CPU",
			 engine, pages, ms, cpu / 1e6);
	munmap(p, pages * page_size);
out:
	ksm_unmerge_stop(dir);
	result("merge_mibps_1536m_pairs", mib / (ms / 1000.0), ms > 0, "%.2f",
	       "MiB/s");
}

/* Move PAGES pages at P to NODE with move_pages(); 0 or -1. */
static int move_all(char *p, size_t pages, int node)
{
	void **addr = calloc(pages, sizeof(*addr));
	int *nodes = calloc(pages, sizeof(*nodes));
	int *status = calloc(pages, sizeof(*status));
	size_t i, moved = 0;
	int ret = -1;

	if (!addr || !nodes || !status)
		goto out;
	for (i = 0; i < pages; i++) {
		addr[i] = p + i * page_size;
		nodes[i] = node;
	}
	if (sys_move_pages(0, pages, addr, nodes, status, 0) < 0) {
		tap_diag("move_pages: %s", strerror(errno));
		goto out;
	}
	for (i = 0; i < pages; i++)
		moved += status[i] == node;
	ret = moved == pages ? 0 : -1;
	if (ret)
		tap_diag("move_pages: %zu of %zu pages on node %d", moved,
			 pages, node);
out:
	free(addr);
	free(nodes);
	free(status);
	return ret;
}

static void bench_migrate(void)
{
	const size_t mib = 512, pages = mib * MiB / page_size;
	double ms = -1;
	uint64_t t0;
	char *p;

	if (!two_nodes()) {
		tap_diag("%s: one NUMA node: no migration figure", engine);
		goto out;
	}
	p = map_anon(pages);
	if (!p)
		goto out;
	memset(p, 0x3c, pages * page_size);
	if (!move_all(p, pages, 0)) {
		t0 = now_ns();
		if (!move_all(p, pages, 1))
			ms = ms_since(t0);
	}
	munmap(p, pages * page_size);
out:
	result("migrate_ms_512m_unrelated", ms, ms > 0, "%.1f", "ms");
}

static void bench_read_floor(void)
{
	const size_t mib = 256, words = mib * MiB / 8;
	volatile uint64_t sink;
	uint64_t *p, sum = 0, t0;
	double ns = -1;
	size_t i;

	p = mmap(NULL, mib * MiB, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (p == MAP_FAILED)
		goto out;
	memset(p, 1, mib * MiB);
	t0 = now_ns();
	for (i = 0; i < words; i++)
		sum += p[i];
	ns = (double)(now_ns() - t0) / (double)(mib * MiB / 4096);
	sink = sum;
	(void)sink;
	munmap(p, mib * MiB);
out:
	result("read_ns_per_4k", ns, ns > 0, "%.0f", "ns");
}

int main(int argc, char **argv)
{
	struct ksm_knobs saved;
	double us;
	int i, n;

	setvbuf(stdout, NULL, _IOLBF, 0);
	n = ksm_parse_args(argc, argv);
	for (i = 1; i < n; i++) {
		if (i + 1 < n && !strcmp(argv[i], "--stall"))
			stall_s = (unsigned int)atoi(argv[++i]);
		else if (i + 1 < n && !strcmp(argv[i], "--limit"))
			limit_s = (unsigned int)atoi(argv[++i]);
		else if (i + 1 < n && !strcmp(argv[i], "--only"))
			only = argv[++i];
		else if (!strcmp(argv[i], "--profile"))
			profiling = true;
		else {
			fprintf(stderr, "usage: %s [--ksm-dir DIR] [--kthread NAME] [--stall S] [--limit S] [--only FIGURE] [--profile]\n",
				argv[0]);
			return 2;
		}
	}
	dir = RKSM_DIR;
	engine = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
	if (access(dir, F_OK)) {
		tap_diag("no %s", dir);
		return 1;
	}
	ksm_knobs_save(dir, &saved);
	if (want("cpu_ms_per_1k_merged_default"))
		bench_default_knobs();
	if (want("merge_mibps_pts10"))
		bench_pts10();
	if (want("scan_cpu_us_per_page_400m_unique")) {
		us = steady_scan_us(400, false);
		result("scan_cpu_us_per_page_400m_unique", us, us >= 0, "%.3f",
		       "us_cpu/page");
	}
	if (want("scan_cpu_us_per_page_near_dup")) {
		us = steady_scan_us(100, true);
		result("scan_cpu_us_per_page_near_dup", us, us >= 0, "%.3f",
		       "us_cpu/page");
	}
	if (want("merge_mibps_8cgroups") || want("merge_mibps_8cgroups_global"))
		bench_8cgroups();
	if (want("merge_mibps_64procs"))
		bench_64procs();
	if (want("cgroup_migrate_us") || want("cgroup_migrate_us_probes"))
		bench_cgroup_migrate();
	if (want("merge_mibps_thp"))
		bench_thp();
	if (want("merge_mibps_1536m_pairs"))
		bench_pairs();
	if (want("migrate_ms_512m_unrelated"))
		bench_migrate();
	if (want("read_ns_per_4k"))
		bench_read_floor();
	if (named("handover"))
		bench_handover();
	if (named("profile-merge")) {
		const size_t pages = 100 * MiB / page_size;
		long long cpu = -1;
		double ms = -1;
		char *p = NULL;

		if (!reset())
			p = one_pattern(pages);
		if (p) {
			prof_start();
			ms = merge_timed(pages, &cpu);
			prof_stop("merge");
			munmap(p, pages * page_size);
		}
		ksm_unmerge_stop(dir);
		if (ms > 0 && cpu >= 0)
			printf("KPROF-CPU %s/merge %.0f ns_cpu/page\n", engine,
			       (double)cpu / pages);
		else
			missing++;
	}
	if (named("profile-unmerge")) {
		const size_t pages = 100 * MiB / page_size;
		long long cpu = -1;
		char *p = NULL;

		if (!reset())
			p = one_pattern(pages);
		if (p && merge_timed(pages, &cpu) > 0 && !ksm_set(dir, "run", 0))
			cpu = profile_unmerge();
		else
			cpu = -1;
		if (p)
			munmap(p, pages * page_size);
		ksm_unmerge_stop(dir);
		if (cpu >= 0)
			printf("KPROF-CPU %s/unmerge %.0f ns_cpu/page\n", engine,
			       (double)cpu / pages);
		else
			missing++;
	}
	if (named("profile-scan")) {
		us = steady_scan_us(400, false);
		if (us >= 0)
			printf("KPROF-CPU %s/scan %.0f ns_cpu/page\n", engine,
			       us * 1e3);
		else
			missing++;
	}
	ksm_unmerge_stop(dir);
	ksm_knobs_restore(dir, &saved);
	return missing ? 1 : 0;
}
