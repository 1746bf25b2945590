// SPDX-License-Identifier: GPL-2.0
/*
 * ksm_bench: merge/unmerge figures of one KSM engine, run in the guest.
 *
 *   ksm_bench [--ksm-dir DIR] [--kthread NAME] [--stall S] [--limit S]
 *             [--mib-big N] [--reps N]
 *
 * DIR defaults to /sys/kernel/mm/rust_ksm (kthread rust_ksmd); pass
 * --ksm-dir /sys/kernel/mm/ksm for the built-in KSM (kthread ksmd).  Prints
 * one line per figure:
 *
 *   RESULT <engine> <figure> <value|NA> <unit>
 *
 * (engine = DIR's basename) and "#" diagnostics.  Exits 0 only if every
 * figure was measured.  Each figure is the median of --reps runs (3); a
 * merge that makes no progress for --stall seconds (default 30) or takes
 * longer than --limit seconds (default 600) makes the figure NA (and the
 * remaining repetitions of that workload are skipped).
 *
 * Figures (pages_to_scan=1000, sleep_millisecs=0, 4 KiB pages, no THP):
 *   merge_mibps_100m    100 MiB of one pattern: MADV_MERGEABLE, then the
 *                       time from run=1 until pages_shared + pages_sharing
 *                       == pages; MiB/s = 100 / time
 *   unmerge_ms_100m     then the duration of the write of run=2
 *   ksmd_cpu_ms_per_1k_pages  CPU time of the KSM thread
 *                       (/proc/PID/schedstat) during merge_mibps_100m, per
 *                       1000 pages merged
 *   rmap_item_bytes     from the 100 MiB merge, scanner stopped:
 *                       (pages_sharing * 4096 - general_profit) / rmap
 *                       items, the rmap items being one per page of the
 *                       area (the only mergeable memory in the guest)
 *   merge_mibps_400m    as merge_mibps_100m with --mib-big MiB (400)
 *   merge_mibps_mixed   64 MiB: 3/4 of the pages in 16 patterns
 *                       (interleaved), 1/4 unique; done when shared +
 *                       sharing == the patterned pages
 *   slab_bytes_per_merged_page  the 100 MiB merge's growth of the
 *                       kernel's slab memory (/proc/meminfo Slab: rmap
 *                       items, stable nodes, their lists), per page merged:
 *                       measured, not sizeof
 *   slab_bytes_per_scanned_page  the same for 100 MiB of unique pages
 *                       after 3 full scans (they never merge: each is
 *                       tracked, checksummed, in the unstable tree)
 *   scan_cpu_us_per_page_unique  then the KSM thread's CPU time over 2
 *                       more full scans of them, per page scanned: what a
 *                       mostly merged system spends its time on
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

#define MiB		(1024UL * 1024UL)
#define PTS		1000

static const char *dir;
static unsigned int stall_s = 30, limit_s = 600, mib_big = 400, reps = 3;

/* The knobs the workloads run with, on one "#" line. */
static void print_knobs(void)
{
	static const char *const k[] = {
		"pages_to_scan", "sleep_millisecs", "max_page_sharing", "use_zero_pages",
		"smart_scan", "merge_across_nodes", "advisor_mode",
	};
	char line[256] = "", v[64];
	size_t n = 0;

	for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++) {
		int len = knob_read_line(dir, k[i], v, sizeof(v));

		if (len < 0 || n >= sizeof(line))
			continue;
		v[len] = '\0';	/* the newline */
		n += snprintf(line + n, sizeof(line) - n, " %s=%s", k[i], v);
	}
	tap_diag("%s knobs:%s", engine, line);
}

/* Clean state: everything unmerged, scanner stopped, fast knobs. */
static int reset(void)
{
	return ksm_unmerge_stop(dir) ?: ksm_fast(dir, PTS);
}

/* One run's figures; -1 where not measured. */
struct figs {
	double merge_ms, unmerge_ms, item, cpu, slab;
};

/*
 * MiB of one pattern: merge time and, if asked, the 100 MiB extras
 * (CPU, rmap item size, unmerge time).
 */
static void run_one_pattern(size_t mib, int extras, struct figs *f)
{
	size_t pages = mib * MiB / page_size;
	double ms = -1, unmerge_ms = -1, item = -1, cpu = -1, slab = -1;
	long long c0, c1, slab0 = -1, slab1;
	uint64_t t0;
	char *p;

	if (reset())
		goto out;
	p = map_anon(pages);
	if (!p)
		goto out;
	t0 = now_ns();
	memset(p, 0x2a, pages * page_size);
	tap_diag("%s: filled %zu MiB in %.0f ms", engine, mib, ms_since(t0));
	if (madvise(p, pages * page_size, MADV_MERGEABLE)) {
		tap_diag("madvise: %s", strerror(errno));
		goto unmap;
	}
	slab0 = slab_bytes();
	c0 = kthread_cpu_ns();
	t0 = now_ns();
	if (ksm_set(dir, "run", 1))
		goto unmap;
	ms = wait_merged(dir, pages, t0, stall_s, limit_s);
	c1 = kthread_cpu_ns();
	if (ms < 0)
		goto unmap;
	tap_diag("%s: %zu pages of one pattern merged in %.0f ms, %s %.1f ms CPU",
		 engine, pages, ms, KTHREAD_NAME, (c1 - c0) / 1e6);
	if (c0 >= 0 && c1 >= c0)
		cpu = (double)(c1 - c0) / 1e6 / ((double)pages / 1000.0);
	if (extras) {
		struct ksm_counters c;
		struct ksm_stat st;

		ksm_set(dir, "run", 0);	/* counters settle */
		slab1 = slab_bytes();
		if (slab0 >= 0 && slab1 >= 0)
			slab = (double)(slab1 - slab0) / (double)pages;
		ksm_counters_read(dir, &c);
		ksm_counters_diag(engine, &c);
		if (!ksm_stat_read(0, &st))
			tap_diag("%s: ksm_stat rmap_items %lld merging_pages %lld process_profit %lld",
				 engine, st.rmap_items, st.merging_pages,
				 st.process_profit);
		if (c.sharing != KNOB_ERR && c.general_profit != LLONG_MIN)
			item = ((double)c.sharing * (double)page_size -
				(double)c.general_profit) / (double)pages;
		t0 = now_ns();
		if (!ksm_set(dir, "run", 2))
			unmerge_ms = ms_since(t0);
		ksm_counters_read(dir, &c);
		if (c.shared || c.sharing) {
			ksm_counters_diag("not unmerged after run=2", &c);
			unmerge_ms = -1;
		}
	}
unmap:
	munmap(p, pages * page_size);
out:
	ksm_unmerge_stop(dir);
	f->merge_ms = ms > 0 ? ms : -1;
	f->unmerge_ms = unmerge_ms;
	f->item = item > 0 ? item : -1;
	f->cpu = cpu;
	f->slab = slab;
}


static double run_mixed(void)
{
	const size_t mib = 64, npat = 16;
	size_t pages = mib * MiB / page_size, shared = pages / 4 * 3, i;
	double ms = -1;
	uint64_t t0;
	char *p;

	if (reset())
		goto out;
	p = map_anon(pages);
	if (!p)
		goto out;
	for (i = 0; i < pages; i++)
		fill_pattern(p + i * page_size,
			     i < shared ? i % npat : 1000000 + i);
	if (!madvise(p, pages * page_size, MADV_MERGEABLE)) {
		t0 = now_ns();
		if (!ksm_set(dir, "run", 1))
			ms = wait_merged(dir, shared, t0, stall_s, limit_s);
	}
	if (ms > 0)
		tap_diag("%s: %zu pages (%zu in %zu patterns, %zu unique) merged in %.0f ms",
			 engine, pages, shared, npat, pages - shared, ms);
	munmap(p, pages * page_size);
out:
	ksm_unmerge_stop(dir);
	return ms > 0 ? (double)mib / (ms / 1000.0) : -1;
}

#define MAX_REPS 15

static void bench_100m(void)
{
	double m[MAX_REPS], u[MAX_REPS], it[MAX_REPS], c[MAX_REPS], sl[MAX_REPS], v;
	unsigned int r;
	struct figs f;

	for (r = 0; r < reps; r++) {
		run_one_pattern(100, 1, &f);
		m[r] = f.merge_ms > 0 ? 100.0 / (f.merge_ms / 1000.0) : -1;
		u[r] = f.unmerge_ms;
		it[r] = f.item;
		c[r] = f.cpu;
		sl[r] = f.slab;
		tap_diag("%s: 100m rep %u: %.2f MiB/s, unmerge %.1f ms, rmap item %.1f B, cpu %.2f ms/1k pages",
			 engine, r + 1, m[r], u[r], it[r], c[r]);
		if (m[r] < 0)
			break;	/* not merging: do not wait again */
	}
	for (; r < reps; r++)
		m[r] = u[r] = it[r] = c[r] = sl[r] = -1;
	v = median(m, reps);
	result("merge_mibps_100m", v, v >= 0, "%.2f", "MiB/s");
	v = median(u, reps);
	result("unmerge_ms_100m", v, v >= 0, "%.1f", "ms");
	v = median(c, reps);
	result("ksmd_cpu_ms_per_1k_pages", v, v >= 0, "%.2f",
	       "ms_cpu/1000_pages");
	v = median(it, reps);
	result("rmap_item_bytes", v, v > 0, "%.1f", "bytes");
	v = median(sl, reps);
	result("slab_bytes_per_merged_page", v, v >= 0, "%.1f", "bytes");
}

static void bench_big(const char *name)
{
	double m[MAX_REPS], v;
	unsigned int r;
	struct figs f;

	for (r = 0; r < reps; r++) {
		run_one_pattern(mib_big, 0, &f);
		m[r] = f.merge_ms > 0 ? mib_big / (f.merge_ms / 1000.0) : -1;
		tap_diag("%s: %um rep %u: %.2f MiB/s", engine, mib_big, r + 1,
			 m[r]);
		if (m[r] < 0)
			break;
	}
	for (; r < reps; r++)
		m[r] = -1;
	v = median(m, reps);
	result(name, v, v >= 0, "%.2f", "MiB/s");
}

static void bench_mixed(void)
{
	double m[MAX_REPS], v;
	unsigned int r;

	for (r = 0; r < reps; r++) {
		m[r] = run_mixed();
		tap_diag("%s: mixed rep %u: %.2f MiB/s", engine, r + 1, m[r]);
		if (m[r] < 0)
			break;
	}
	for (; r < reps; r++)
		m[r] = -1;
	v = median(m, reps);
	result("merge_mibps_mixed", v, v >= 0, "%.2f", "MiB/s");
}

/*
 * MiB of unique pages (they never merge): slab bytes per page after three
 * full scans, then the KSM thread's CPU microseconds per page scanned over
 * two more (steady state: checksum, unstable tree).  -1 where not measured.
 */
static void run_unique(size_t mib, double *slab, double *cpu_us)
{
	size_t pages = mib * MiB / page_size;
	long long slab0, slab1, c0, c1;
	char *p;

	*slab = *cpu_us = -1;
	if (reset())
		return;
	p = map_anon(pages);
	if (!p)
		return;
	for (size_t i = 0; i < pages; i++)
		fill_pattern(p + i * page_size, 1000000 + i);
	slab0 = slab_bytes();
	if (madvise(p, pages * page_size, MADV_MERGEABLE) ||
	    ksm_run_scans(dir, 3, limit_s * 1000))
		goto unmap;
	slab1 = slab_bytes();
	if (slab0 >= 0 && slab1 >= 0)
		*slab = (double)(slab1 - slab0) / (double)pages;
	c0 = kthread_cpu_ns();
	if (ksm_run_scans(dir, 2, limit_s * 1000))
		goto unmap;
	c1 = kthread_cpu_ns();
	if (c0 >= 0 && c1 >= c0)
		*cpu_us = (double)(c1 - c0) / 1e3 / (2.0 * (double)pages);
	tap_diag("%s: %zu unique pages: slab %+.1f B/page, %.3f us CPU/page scanned",
		 engine, pages, *slab, *cpu_us);
unmap:
	munmap(p, pages * page_size);
	ksm_unmerge_stop(dir);
}

static void bench_unique(void)
{
	double s[MAX_REPS], c[MAX_REPS], v;
	unsigned int r;

	for (r = 0; r < reps; r++)
		run_unique(100, &s[r], &c[r]);
	v = median(s, reps);
	result("slab_bytes_per_scanned_page", v, v >= 0, "%.1f", "bytes");
	v = median(c, reps);
	result("scan_cpu_us_per_page_unique", v, v >= 0, "%.3f", "us_cpu/page");
}

int main(int argc, char **argv)
{
	struct ksm_knobs saved;
	char name[32];
	int i, n;

	setvbuf(stdout, NULL, _IOLBF, 0);
	n = ksm_parse_args(argc, argv);
	for (i = 1; i < n; i++) {
		if (i + 1 < n && !strcmp(argv[i], "--stall"))
			stall_s = (unsigned int)atoi(argv[++i]);
		else if (i + 1 < n && !strcmp(argv[i], "--limit"))
			limit_s = (unsigned int)atoi(argv[++i]);
		else if (i + 1 < n && !strcmp(argv[i], "--mib-big"))
			mib_big = (unsigned int)atoi(argv[++i]);
		else if (i + 1 < n && !strcmp(argv[i], "--reps"))
			reps = (unsigned int)atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: %s [--ksm-dir DIR] [--kthread NAME] [--stall S] [--limit S] [--mib-big N] [--reps N]\n",
				argv[0]);
			return 2;
		}
	}
	if (reps < 1 || reps > MAX_REPS || mib_big < 1) {
		fprintf(stderr, "--reps wants 1..%d, --mib-big >= 1\n", MAX_REPS);
		return 2;
	}
	dir = RKSM_DIR;
	engine = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
	tap_diag("%s: %s, kthread %s (pid %d)", engine, dir, KTHREAD_NAME,
		 (int)find_task(KTHREAD_NAME, NULL));
	snprintf(name, sizeof(name), "merge_mibps_%um", mib_big);
	if (access(dir, F_OK)) {
		tap_diag("no %s", dir);
		result("merge_mibps_100m", 0, 0, "", "MiB/s");
		result("unmerge_ms_100m", 0, 0, "", "ms");
		result("ksmd_cpu_ms_per_1k_pages", 0, 0, "", "ms_cpu/1000_pages");
		result("rmap_item_bytes", 0, 0, "", "bytes");
		result(name, 0, 0, "", "MiB/s");
		result("merge_mibps_mixed", 0, 0, "", "MiB/s");
		result("slab_bytes_per_merged_page", 0, 0, "", "bytes");
		result("slab_bytes_per_scanned_page", 0, 0, "", "bytes");
		result("scan_cpu_us_per_page_unique", 0, 0, "", "us_cpu/page");
		return 1;
	}
	ksm_knobs_save(dir, &saved);
	if (!reset())
		print_knobs();
	bench_100m();
	bench_big(name);
	bench_mixed();
	bench_unique();
	ksm_unmerge_stop(dir);
	ksm_knobs_restore(dir, &saved);
	return missing ? 1 : 0;
}
