// SPDX-License-Identifier: GPL-2.0
/*
 * rmap_bench: latency of the rmap walk of merged pages, for one KSM engine,
 * run in the guest by scripts/bench after ksm_bench.
 *
 *   rmap_bench [--ksm-dir DIR] [--kthread NAME] [--vmas N[,N...]]
 *              [--walk-pages W] [--no-visits]
 *
 * The workload of xu xin's rmap_walk_ksm series: one anonymous region of N
 * pages, every other page mprotect(PROT_READ), so that N VMAs share one
 * anon_vma; MADV_MERGEABLE, merged; then rmap walks of merged pages are
 * triggered by move_pages(MPOL_MF_MOVE_ALL) to the other NUMA node and back
 * (numa=fake=2), and timed by the rmap:rmap_walk tracepoint (kernel patch
 * 0003: one event per walk, with the walk's own duration in ns and how
 * often it called rmap_one; each migration walks twice: try_to_migrate() and
 * remove_migration_ptes()).
 *
 * Pages 2j and 2j+1 (one read-write, one read-only VMA) hold the same
 * content and nothing else does: every KSM page has 2 mappings, i.e. 2 rmap
 * items.  (Upstream's figure, 705 ms -> 1.67 ms at 20k VMAs, had up to
 * max_page_sharing = 256 items per KSM page: the built-in walk visits items
 * x VMAs, which under TCG would take minutes per walk.)
 *
 * Figures (RESULT <engine> <figure> <value|NA> <unit>, engine = DIR's
 * basename; "k" = thousand VMAs):
 *   rmap_walk_us_<N>_median, rmap_walk_us_<N>_max
 *                       per-walk latency (type=ksm) in microseconds, to
 *                       the nanosecond (mean, p90 and the rmap_one calls
 *                       per walk are in a "#" line)
 *   rmap_walk_us_<N>_anon_median, rmap_walk_us_<N>_anon_max
 *                       the control: the same layout, not MADV_MERGEABLE,
 *                       so plain anonymous walks (type=anon), which look the
 *                       page up by its index (the engine plays no part)
 *   rmap_walk_vmas_<N>  anon_vma interval-tree steps per KSM walk: calls of
 *                       anon_vma_interval_tree_iter_next() (per rmap item
 *                       and pass: the number of VMAs it visits), counted by
 *                       a kprobe in an untimed pass at the end (4 pages
 *                       there and back); omitted if kprobes are unavailable
 *                       or --no-visits.  Both engines do 2 passes (own mm,
 *                       then forks); a migration's first walk stops once
 *                       the page is unmapped, its second does both passes.
 * Exits 0 only if every figure was measured.  The tracefs state it changes
 * (events, record-cmd, buffer size, kprobe) is put back.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bench_util.h"
#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

#define TR		"/sys/kernel/tracing"
#define KPROBE_GROUP	"rmapbench"
#define KPROBE_EVENT	"visit"
#define MAX_SIZES	8
#define MERGE_TIMEOUT_MS	600000

static const char *dir;
static size_t walk_pages = 64;
static bool want_visits = true;

/* ------------------------------------------------------------------ */
/* tracefs */

static int tr_write(const char *file, const char *s, bool append)
{
	char path[256];
	int fd, err = 0;

	snprintf(path, sizeof(path), TR "/%s", file);
	fd = open(path, O_WRONLY | O_CLOEXEC | (append ? O_APPEND : O_TRUNC));
	if (fd < 0)
		return -errno;
	if (write(fd, s, strlen(s)) != (ssize_t)strlen(s))
		err = -errno ?: -EIO;
	close(fd);
	return err;
}

/* The whole of FILE (malloc'ed, NUL-terminated), NULL on error. */
static char *tr_read(const char *file, size_t *len)
{
	size_t cap = 1 << 20, n = 0;
	char path[256], *buf = malloc(cap);
	ssize_t r;
	int fd;

	snprintf(path, sizeof(path), TR "/%s", file);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || !buf) {
		free(buf);
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	while ((r = read(fd, buf + n, cap - n - 1)) > 0) {
		n += (size_t)r;
		if (cap - n < 65536) {
			char *nb = realloc(buf, cap * 2);

			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
	}
	close(fd);
	buf[n] = '\0';
	if (len)
		*len = n;
	return buf;
}

/*
 * Each event enable/disable and each kprobe arm/disarm patches kernel text
 * (with int3 breakpoints); under QEMU TCG that has been seen to oops
 * ("int3" in __schedule, at the sched_switch tracepoint that comm recording
 * attaches to).  So: comm recording off (the trace says "<...>-PID"), the
 * rmap events enabled once for the whole run, kprobe optimization off and
 * the kprobe armed once; between passes only tracing_on and the buffer
 * change.
 */
static char saved_record_cmd[8], saved_kopt[8];

static void read_small(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, len - 1);

	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
}

static int trace_init(void)
{
	int err;

	if (access(TR "/events/rmap/rmap_walk", F_OK)) {
		tap_diag("no " TR "/events/rmap/rmap_walk (tracefs mounted? kernel patch 0003?)");
		return -1;
	}
	read_small(TR "/options/record-cmd", saved_record_cmd,
		   sizeof(saved_record_cmd));
	err = tr_write("tracing_on", "0", false) ?:
	      tr_write("options/record-cmd", "0", false) ?:
	      tr_write("buffer_size_kb", "8192", false) ?:
	      tr_write("trace", "", false) ?:
	      tr_write("events/rmap/rmap_walk/enable", "1", false);
	if (err)
		tap_diag("tracefs setup: %s", strerror(-err));
	return err;
}

static void trace_fini(void)
{
	tr_write("tracing_on", "0", false);
	tr_write("events/rmap/rmap_walk/enable", "0", false);
	tr_write("trace", "", false);
	tr_write("buffer_size_kb", "1408", false);
	if (saved_record_cmd[0])
		tr_write("options/record-cmd", saved_record_cmd, false);
	tr_write("tracing_on", "1", false);
}

/* Start recording (an empty buffer) / stop. */
static void trace_start(void)
{
	tr_write("trace", "", false);
	tr_write("tracing_on", "1", false);
}

static void trace_stop(void)
{
	tr_write("tracing_on", "0", false);
}

/* Walk latencies (us) of one type, parsed from the trace. */
struct lat {
	double *v;
	size_t n, cap;
};

static void lat_add(struct lat *l, double us)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 256;
		double *nv = realloc(l->v, cap * sizeof(*nv));

		if (!nv)
			return;
		l->v = nv;
		l->cap = cap;
	}
	l->v[l->n++] = us;
}

/*
 * The rmap:rmap_walk events of the trace, one per walk:
 *   <comm>-<pid> [cpu] <flags> <ts>: rmap_walk: pfn=0x.. type=ksm locked=0
 *   visits=2 stopped=0 contended=0 ns=1234
 * Walks of type TYPE only, of task PID only (0: any): their durations (us,
 * from the event's own ns field: the walk times itself, so neither the
 * trace clock's resolution nor the tracing cost is in it) into OUT; the
 * rmap_one calls (the event's visits), summed, into *VMAS.
 */
static void trace_parse(const char *type, pid_t only_pid, struct lat *out,
			unsigned long long *vmas)
{
	char *buf = tr_read("trace", NULL), *line, *save = NULL;

	*vmas = 0;
	if (!buf)
		return;
	for (line = strtok_r(buf, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *ev, *br, *dash, *ty, *f;
		unsigned long long ns;
		unsigned int nv;

		if (line[0] == '#')
			continue;
		ev = strstr(line, ": rmap_walk: ");
		if (!ev)
			continue;
		ty = strstr(ev, " type=");
		if (!ty || strncmp(ty + 6, type, strlen(type)) ||
		    ty[6 + strlen(type)] != ' ')
			continue;
		f = strstr(ev, " visits=");
		if (!f || sscanf(f + 8, "%u", &nv) != 1)
			continue;
		f = strstr(ev, " ns=");
		if (!f || sscanf(f + 4, "%llu", &ns) != 1)
			continue;
		*ev = '\0';
		br = strchr(line, '[');
		if (!br)
			continue;
		*br = '\0';
		dash = strrchr(line, '-');
		if (!dash || (only_pid && atoi(dash + 1) != only_pid))
			continue;
		lat_add(out, (double)ns / 1000.0);
		*vmas += nv;
	}
	free(buf);
}

/* kprobe on anon_vma_interval_tree_iter_next: hit count, or -1. */
static long long visits_hits(void)
{
	char *buf = tr_read("kprobe_profile", NULL), *s;
	long long hits = -1;

	if (!buf)
		return -1;
	s = strstr(buf, KPROBE_EVENT " ");
	if (s)
		sscanf(s + strlen(KPROBE_EVENT), "%lld", &hits);
	free(buf);
	return hits;
}

#define KPROBE_OPT "/proc/sys/debug/kprobes-optimization"

static int visits_on(void)
{
	int err;

	read_small(KPROBE_OPT, saved_kopt, sizeof(saved_kopt));
	if (saved_kopt[0])
		knob_write_str("/proc/sys/debug", "kprobes-optimization", "0");
	err = tr_write("kprobe_events",
			   "p:" KPROBE_GROUP "/" KPROBE_EVENT
			   " anon_vma_interval_tree_iter_next\n", true);

	/* Count, do not record: a filter that never matches (hits are
	 * counted before the filter). */
	if (!err)
		err = tr_write("events/" KPROBE_GROUP "/" KPROBE_EVENT "/filter",
			       "common_pid == 0", false) ?:
		      tr_write("events/" KPROBE_GROUP "/" KPROBE_EVENT "/enable",
			       "1", false);
	if (err)
		tap_diag("kprobe on anon_vma_interval_tree_iter_next: %s (no VMA visit counts)",
			 strerror(-err));
	return err;
}

static void visits_off(void)
{
	tr_write("events/" KPROBE_GROUP "/" KPROBE_EVENT "/enable", "0", false);
	tr_write("kprobe_events", "-:" KPROBE_GROUP "/" KPROBE_EVENT "\n",
		 true);
	if (saved_kopt[0])
		knob_write_str("/proc/sys/debug", "kprobes-optimization",
			       saved_kopt);
}

/* ------------------------------------------------------------------ */
/* workload */

/* VMAs of this process that start in [p, p + n pages). */
static size_t count_vmas(const char *p, size_t n)
{
	FILE *f = fopen("/proc/self/maps", "re");
	unsigned long start, end;
	char line[512];
	size_t c = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx", &start, &end) == 2 &&
		    start >= (unsigned long)p &&
		    start < (unsigned long)p + n * page_size)
			c++;
	fclose(f);
	return c;
}

/*
 * N pages, pairs of equal content, every odd page PROT_READ: N VMAs on one
 * anon_vma of their own (PROT_NONE guard pages around the region, so that
 * no neighbour shares it; contents unique to the region, so that no other
 * region's pages merge with it).  MADV_MERGEABLE if MERGEABLE.  Unmap with
 * unmap_layout().
 */
static char *make_layout(size_t n, bool mergeable)
{
	static unsigned long seq;
	size_t i;
	unsigned long base = 5000000 + 1000000 * seq++;
	char *g, *p;

	g = mmap(NULL, (n + 2) * page_size, PROT_NONE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (g == MAP_FAILED) {
		tap_diag("mmap %zu pages: %s", n + 2, strerror(errno));
		return NULL;
	}
	p = g + page_size;
	if (mprotect(p, n * page_size, PROT_READ | PROT_WRITE) ||
	    madvise(p, n * page_size, MADV_NOHUGEPAGE) ||
	    (mergeable && madvise(p, n * page_size, MADV_MERGEABLE))) {
		tap_diag("mprotect/madvise: %s", strerror(errno));
		goto fail;
	}
	for (i = 0; i < n; i++)
		fill_pattern(p + i * page_size, base + i / 2);
	for (i = 1; i < n; i += 2)
		if (mprotect(p + i * page_size, page_size, PROT_READ)) {
			tap_diag("mprotect page %zu: %s (vm.max_map_count?)", i,
				 strerror(errno));
			goto fail;
		}
	tap_diag("%s: %zu pages, %zu VMAs", engine, n, count_vmas(p, n));
	return p;
fail:
	munmap(g, (n + 2) * page_size);
	return NULL;
}

static void unmap_layout(char *p, size_t n)
{
	munmap(p - page_size, (n + 2) * page_size);
}

/*
 * Migrate W pages of the region (the read-write page of W pairs, evenly
 * spread) to the other node and back.  0, or -1 if a migration failed.
 */
static int migrate_round_trip(char *p, size_t n, size_t w)
{
	void **addr = calloc(w, sizeof(*addr));
	int *node = calloc(w, sizeof(*node)), *status = calloc(w, sizeof(int));
	size_t i, npairs = n / 2, bad = 0;
	int pass, ret = 0;
	long rc;

	if (!addr || !node || !status) {
		ret = -1;
		goto out;
	}
	for (i = 0; i < w; i++)
		addr[i] = p + 2 * (i * npairs / w) * page_size;
	if (sys_move_pages(0, w, addr, NULL, status, 0)) {
		tap_diag("move_pages query: %s", strerror(errno));
		ret = -1;
		goto out;
	}
	for (pass = 0; pass < 2; pass++) {
		for (i = 0; i < w; i++)
			node[i] = status[i] < 0 ? 0 : !status[i];
		rc = sys_move_pages(0, w, addr, node, status, MPOL_MF_MOVE_ALL_);
		for (i = 0, bad = 0; i < w; i++)
			bad += status[i] != node[i];
		if (rc || bad) {
			tap_diag("move_pages of %zu pages: returned %ld (%s), %zu not moved",
				 w, rc, rc < 0 ? strerror(errno) : "-", bad);
			ret = -1;
		}
	}
out:
	free(addr);
	free(node);
	free(status);
	return ret;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Time the walks of one layout; *med / *max in us, -1 if not measured. */
static void measure(char *p, size_t n, const char *type, double *med,
		    double *max)
{
	struct lat l = { 0 };
	unsigned long long vmas;
	double sum = 0;
	size_t i;

	*med = *max = -1;
	trace_start();
	if (migrate_round_trip(p, n, walk_pages)) {
		trace_stop();
		return;
	}
	trace_stop();
	trace_parse(type, getpid(), &l, &vmas);
	if (!l.n) {
		tap_diag("%s: no type=%s walk in the trace", engine, type);
		free(l.v);
		return;
	}
	qsort(l.v, l.n, sizeof(*l.v), cmp_double);
	for (i = 0; i < l.n; i++)
		sum += l.v[i];
	*med = l.n % 2 ? l.v[l.n / 2] : (l.v[l.n / 2 - 1] + l.v[l.n / 2]) / 2;
	*max = l.v[l.n - 1];
	tap_diag("%s: %zu VMAs, %zu type=%s walks (%.2f rmap_one calls each): median %.3f us, mean %.3f us, p90 %.3f us, min %.3f us, max %.3f us",
		 engine, n, l.n, type, (double)vmas / (double)l.n, *med,
		 sum / (double)l.n, l.v[l.n * 9 / 10], l.v[0], *max);
	free(l.v);
}

/*
 * Interval-tree steps per KSM walk (untimed pass, the kprobe armed by the
 * caller), -1 if not measured.
 */
static double measure_visits(char *p, size_t n)
{
	struct lat l = { 0 };
	unsigned long long vmas;
	long long h0, h1;
	double v = -1;

	h0 = visits_hits();
	trace_start();
	/* Few pages: each step is a kprobe hit (a trap, slow under TCG). */
	if (migrate_round_trip(p, n, 4)) {
		trace_stop();
		return -1;
	}
	trace_stop();
	h1 = visits_hits();
	trace_parse("ksm", getpid(), &l, &vmas);
	if (h0 >= 0 && h1 >= h0 && l.n) {
		v = (double)(h1 - h0) / (double)l.n;
		tap_diag("%s: %zu VMAs: %lld anon_vma_interval_tree_iter_next() calls in %zu KSM walks",
			 engine, n, h1 - h0, l.n);
	}
	free(l.v);
	return v;
}

static void size_name(char *buf, size_t len, size_t n)
{
	if (n % 1000 == 0)
		snprintf(buf, len, "%zuk", n / 1000);
	else
		snprintf(buf, len, "%zu", n);
}

/* The merged layouts, kept for the visits pass. */
static struct kept {
	char *p;
	size_t n;
} kept[MAX_SIZES];
static size_t nkept, kept_pages;

static void bench_size(size_t n)
{
	char sz[32], name[96];
	double med, max;
	long ms;
	char *p;

	size_name(sz, sizeof(sz), n);

	/* KSM: merged pairs (the layouts of the sizes before stay merged). */
	med = max = -1;
	p = make_layout(n, true);
	if (!p)
		goto ksm_done;
	if (ksm_set(dir, "run", 1)) {
		unmap_layout(p, n);
		goto ksm_done;
	}
	ms = ksm_wait_merged(dir, kept_pages + n, MERGE_TIMEOUT_MS, NULL);
	ksm_set(dir, "run", 0);
	if (ms < 0) {
		struct ksm_counters c;

		ksm_counters_read(dir, &c);
		ksm_counters_diag("not merged", &c);
		unmap_layout(p, n);
		goto ksm_done;
	}
	tap_diag("%s: %zu pages in pairs merged in %ld ms", engine, n, ms);
	measure(p, n, "ksm", &med, &max);
	kept[nkept].p = p;
	kept[nkept++].n = n;
	kept_pages += n;
ksm_done:
	snprintf(name, sizeof(name), "rmap_walk_us_%s_median", sz);
	result(name, med, med >= 0, "%.3f", "us");
	snprintf(name, sizeof(name), "rmap_walk_us_%s_max", sz);
	result(name, max, max >= 0, "%.3f", "us");

	/* Control: the same layout, plain anonymous pages. */
	med = max = -1;
	p = make_layout(n, false);
	if (p) {
		measure(p, n, "anon", &med, &max);
		unmap_layout(p, n);
	}
	snprintf(name, sizeof(name), "rmap_walk_us_%s_anon_median", sz);
	result(name, med, med >= 0, "%.3f", "us");
	snprintf(name, sizeof(name), "rmap_walk_us_%s_anon_max", sz);
	result(name, max, max >= 0, "%.3f", "us");
}

/* VMA steps per KSM walk for every kept layout, one kprobe arm for all. */
static void bench_visits(void)
{
	char sz[32], name[96];
	double v;
	size_t i;

	if (!nkept || visits_on())
		return;
	for (i = 0; i < nkept; i++) {
		v = measure_visits(kept[i].p, kept[i].n);
		size_name(sz, sizeof(sz), kept[i].n);
		snprintf(name, sizeof(name), "rmap_walk_vmas_%s", sz);
		if (v >= 0)
			result(name, v, 1, "%.1f", "steps/walk");
	}
	visits_off();
}

int main(int argc, char **argv)
{
	size_t sizes[MAX_SIZES] = { 2000, 20000 }, nsizes = 2, i;
	struct ksm_knobs saved;
	int n;

	setvbuf(stdout, NULL, _IOLBF, 0);
	n = ksm_parse_args(argc, argv);
	for (i = 1; i < (size_t)n; i++) {
		if (i + 1 < (size_t)n && !strcmp(argv[i], "--vmas")) {
			char *s = argv[++i], *end;

			for (nsizes = 0; *s && nsizes < MAX_SIZES; s = end) {
				sizes[nsizes] = strtoul(s, &end, 10);
				if (end == s || sizes[nsizes] < 4 ||
				    sizes[nsizes] % 2)
					goto usage;
				nsizes++;
				if (*end == ',')
					end++;
			}
		} else if (i + 1 < (size_t)n && !strcmp(argv[i], "--walk-pages")) {
			walk_pages = strtoul(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--no-visits")) {
			want_visits = false;
		} else {
			goto usage;
		}
	}
	if (!nsizes || walk_pages < 1)
		goto usage;
	dir = RKSM_DIR;
	engine = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
	if (access(dir, F_OK) ||
	    access("/sys/devices/system/node/node1", F_OK)) {
		tap_diag(access(dir, F_OK) ? "no %s" :
			 "%s: needs 2 NUMA nodes (numa=fake=2)", dir);
		missing++;
		return 1;
	}
	ksm_knobs_save(dir, &saved);
	if (ksm_unmerge_stop(dir) || ksm_fast(dir, 1000) || trace_init()) {
		missing++;
		goto out;
	}
	for (i = 0; i < nsizes; i++) {
		if (walk_pages > sizes[i] / 2)
			walk_pages = sizes[i] / 2;
		bench_size(sizes[i]);
	}
	if (want_visits)
		bench_visits();
	trace_fini();
	for (i = 0; i < nkept; i++)
		unmap_layout(kept[i].p, kept[i].n);
out:
	ksm_unmerge_stop(dir);
	ksm_knobs_restore(dir, &saved);
	return missing ? 1 : 0;
usage:
	fprintf(stderr, "usage: %s [--ksm-dir DIR] [--kthread NAME] [--vmas N[,N...]] [--walk-pages W] [--no-visits]\n",
		argv[0]);
	return 2;
}
