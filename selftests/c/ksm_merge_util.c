// SPDX-License-Identifier: GPL-2.0
/* Helpers for the merge selftests and the benchmark (ksm_merge_util.h). */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

int ksm_parse_args(int argc, char **argv)
{
	const char *dir = getenv("KSM_DIR"), *kt = getenv("RUST_KSM_KTHREAD");
	int i, out = 1;

	if (!dir)
		dir = getenv("RUST_KSM_SYSFS");
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--ksm-dir") && i + 1 < argc) {
			dir = argv[++i];
		} else if (!strncmp(argv[i], "--ksm-dir=", 10)) {
			dir = argv[i] + 10;
		} else if (!strcmp(argv[i], "--kthread") && i + 1 < argc) {
			kt = argv[++i];
		} else if (!strncmp(argv[i], "--kthread=", 10)) {
			kt = argv[i] + 10;
		} else {
			argv[out++] = argv[i];
		}
	}
	argv[out] = NULL;
	if (dir)
		rksm_dir = dir;
	if (kt) {
		kthread_name = kt;
	} else {
		const char *base = strrchr(rksm_dir, '/');

		base = base ? base + 1 : rksm_dir;
		kthread_name = strcmp(base, "ksm") ? "rust_ksmd" : "ksmd";
	}
	return out;
}

int knob_read_signed(const char *dir, const char *knob, long long *val)
{
	char buf[64], *end;
	int n = knob_read_line(dir, knob, buf, sizeof(buf));

	if (n < 0)
		return n;
	errno = 0;
	*val = strtoll(buf, &end, 10);
	if (errno || end != buf + n || end == buf)
		return -EPROTO;
	return 0;
}

int ksm_set(const char *dir, const char *knob, unsigned long long v)
{
	int err = knob_write_ull(dir, knob, v);

	if (err)
		tap_diag("writing %llu to %s/%s: %s", v, dir, knob,
			 strerror(-err));
	return err;
}

void ksm_knobs_save(const char *dir, struct ksm_knobs *k)
{
	unsigned long long v = 0;

	k->pages_to_scan = knob_get(dir, "pages_to_scan");
	k->sleep_millisecs = knob_get(dir, "sleep_millisecs");
	k->have_max_page_sharing = !knob_read(dir, "max_page_sharing", &v);
	k->max_page_sharing = v;
}

static void restore_one(const char *dir, const char *knob,
			unsigned long long v)
{
	unsigned long long cur;

	if (v == KNOB_ERR || (!knob_read(dir, knob, &cur) && cur == v))
		return;
	ksm_set(dir, knob, v);
}

void ksm_knobs_restore(const char *dir, const struct ksm_knobs *k)
{
	restore_one(dir, "pages_to_scan", k->pages_to_scan);
	restore_one(dir, "sleep_millisecs", k->sleep_millisecs);
	/* (EBUSY while pages are shared: call after run=2) */
	if (k->have_max_page_sharing)
		restore_one(dir, "max_page_sharing", k->max_page_sharing);
}

static unsigned long long quiet_get(const char *dir, const char *knob)
{
	unsigned long long v;

	return knob_read(dir, knob, &v) ? KNOB_ERR : v;
}

void ksm_counters_read(const char *dir, struct ksm_counters *c)
{
	c->shared = quiet_get(dir, "pages_shared");
	c->sharing = quiet_get(dir, "pages_sharing");
	c->unshared = quiet_get(dir, "pages_unshared");
	c->volatile_ = quiet_get(dir, "pages_volatile");
	c->chains = quiet_get(dir, "stable_node_chains");
	c->dups = quiet_get(dir, "stable_node_dups");
	c->full_scans = quiet_get(dir, "full_scans");
	c->pages_scanned = quiet_get(dir, "pages_scanned");
	if (knob_read_signed(dir, "general_profit", &c->general_profit))
		c->general_profit = LLONG_MIN;
}

static long long sv(unsigned long long v)
{
	return v == KNOB_ERR ? -1 : (long long)v;
}

void ksm_counters_diag(const char *what, const struct ksm_counters *c)
{
	tap_diag("%s: shared %lld sharing %lld unshared %lld volatile %lld profit %lld chains %lld dups %lld full_scans %lld (-1: unreadable)",
		 what, sv(c->shared), sv(c->sharing), sv(c->unshared),
		 sv(c->volatile_),
		 c->general_profit == LLONG_MIN ? -1 : c->general_profit,
		 sv(c->chains), sv(c->dups), sv(c->full_scans));
}

int ksm_unmerge_stop(const char *dir)
{
	int err = ksm_set(dir, "run", 2);

	return ksm_set(dir, "run", 0) ?: err;
}

int ksm_fast(const char *dir, unsigned int pts)
{
	return ksm_set(dir, "pages_to_scan", pts) ?:
		ksm_set(dir, "sleep_millisecs", 0);
}

int ksm_run_scans(const char *dir, unsigned int scans, unsigned int timeout_ms)
{
	unsigned long long fs0, fs1 = 0;
	uint64_t t0 = now_ms();

	fs0 = knob_get(dir, "full_scans");
	if (fs0 == KNOB_ERR || ksm_set(dir, "run", 1))
		return -1;
	if (wait_knob_ge(dir, "full_scans", fs0 + scans, timeout_ms, &fs1) < 0) {
		tap_diag("full_scans %llu -> %llu, not +%u within %u ms", fs0,
			 fs1 == KNOB_ERR ? 0 : fs1, scans, timeout_ms);
		return -1;
	}
	tap_diag("%u full scans in %llu ms", scans,
		 (unsigned long long)(now_ms() - t0));
	return 0;
}

/* pages_shared and pages_sharing as last read, and what is waited for. */
struct merged_wait {
	const char *dir;
	unsigned long long shared, sharing;	/* read; KNOB_ERR on error */
	unsigned long long want_sum, want_shared, want_sharing;
};

static int merged_read(struct merged_wait *w)
{
	if (knob_read(w->dir, "pages_shared", &w->shared) ||
	    knob_read(w->dir, "pages_sharing", &w->sharing)) {
		w->shared = w->sharing = KNOB_ERR;
		return -1;
	}
	return 0;
}

static int merged_sum_done(void *ctx)
{
	struct merged_wait *w = ctx;

	if (merged_read(w))
		return -1;
	return w->shared + w->sharing == w->want_sum;
}

static int merged_counters_done(void *ctx)
{
	struct merged_wait *w = ctx;

	if (merged_read(w))
		return -1;
	return w->shared == w->want_shared && w->sharing == w->want_sharing;
}

long ksm_wait_merged(const char *dir, unsigned long long n,
		     unsigned int timeout_ms, unsigned long long *last)
{
	struct merged_wait w = { .dir = dir, .want_sum = n };
	long ms = poll_until(merged_sum_done, &w, 2, timeout_ms);

	if (last)
		*last = w.shared == KNOB_ERR ? KNOB_ERR : w.shared + w.sharing;
	return ms;
}

long ksm_wait_counters(const char *dir, unsigned long long shared,
		       unsigned long long sharing, unsigned int timeout_ms)
{
	struct merged_wait w = { .dir = dir, .shared = KNOB_ERR,
				 .sharing = KNOB_ERR, .want_shared = shared,
				 .want_sharing = sharing };
	unsigned long long a, b;
	long ms = poll_until(merged_counters_done, &w, 5, timeout_ms);

	if (ms >= 0)
		return ms;
	a = w.shared;
	b = w.sharing;
	tap_diag("pages_shared %lld pages_sharing %lld, not %llu %llu within %u ms",
		 a == KNOB_ERR ? -1LL : (long long)a,
		 b == KNOB_ERR ? -1LL : (long long)b, shared, sharing,
		 timeout_ms);
	return -1;
}

/*
 * Open pagemap files, by process: opening one costs more than reading it
 * (mm_access(), under KASAN and TCG ~1 ms), and the tests read tens of
 * thousands of entries one at a time.  Keyed by the real pid (a forked
 * child must not read its parent's file through "self"); a process that
 * exited makes the read fail, and a failed read opens the file again
 * once, so a reused pid reads the new process.  Per thread: no locking,
 * and no thread closes a file another is reading.  `fd` is the descriptor
 * plus one (0: no file).
 */
#define PAGEMAP_FDS	4
static __thread struct {
	pid_t pid;
	int fd;
} pagemap_fds[PAGEMAP_FDS];
static __thread unsigned int pagemap_next;

static int pagemap_fd(pid_t pid, bool fresh)
{
	char path[64];
	unsigned int i;
	int fd;

	for (i = 0; i < PAGEMAP_FDS; i++) {
		if (pagemap_fds[i].pid != pid || !pagemap_fds[i].fd)
			continue;
		if (!fresh)
			return pagemap_fds[i].fd - 1;
		close(pagemap_fds[i].fd - 1);
		pagemap_fds[i].fd = 0;
	}
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	i = pagemap_next++ % PAGEMAP_FDS;
	if (pagemap_fds[i].fd)
		close(pagemap_fds[i].fd - 1);
	pagemap_fds[i].pid = pid;
	pagemap_fds[i].fd = fd + 1;
	return fd;
}

/* LEN bytes of PID's pagemap at OFF into BUF, through pagemap_fd(): 0 or -1. */
static int pagemap_pread(pid_t pid, void *buf, size_t len, off_t off)
{
	int fd;

	if (!pid)
		pid = getpid();
	for (int fresh = 0; fresh < 2; fresh++) {
		fd = pagemap_fd(pid, fresh);
		if (fd < 0)
			return -1;
		if (pread(fd, buf, len, off) == (ssize_t)len)
			return 0;
	}
	return -1;
}

int pagemap_read(pid_t pid, const void *addr, uint64_t *ent)
{
	return pagemap_pread(pid, ent, sizeof(*ent),
			     (off_t)((uintptr_t)addr / page_size * sizeof(*ent)));
}

int pagemap_pfns(pid_t pid, const void *addr, size_t n, long long *pfns)
{
	uint64_t *ents = (uint64_t *)pfns;	/* same size: converted in place */

	if (pagemap_pread(pid, ents, n * sizeof(*ents),
			  (off_t)((uintptr_t)addr / page_size * sizeof(*ents))))
		return -1;
	for (size_t i = 0; i < n; i++)
		pfns[i] = ents[i] >> 63 ? (long long)(ents[i] & ((1ULL << 55) - 1)) : 0;
	return 0;
}

uint64_t pagemap_entry(pid_t pid, const void *addr)
{
	uint64_t ent;

	return pagemap_read(pid, addr, &ent) ? 0 : ent;
}

uint64_t kpageflags(unsigned long long pfn)
{
	uint64_t f = ~0ULL;
	int fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return f;
	if (pread(fd, &f, sizeof(f), (off_t)(pfn * 8)) != sizeof(f))
		f = ~0ULL;
	close(fd);
	return f;
}

long long pagemap_pfn(pid_t pid, const void *addr)
{
	uint64_t ent;

	if (pagemap_read(pid, addr, &ent))
		return -1;
	if (!(ent >> 63))		/* not present */
		return 0;
	return (long long)(ent & ((1ULL << 55) - 1));
}

static int cmp_ull(const void *a, const void *b)
{
	unsigned long long x = *(const unsigned long long *)a;
	unsigned long long y = *(const unsigned long long *)b;

	return x < y ? -1 : x > y;
}

size_t distinct_pfns(const void *addr, size_t npages, size_t *np)
{
	unsigned long long *pfns = calloc(npages, sizeof(*pfns));
	size_t i, n = 0, d = 0, notp = 0;
	uint64_t *ents;
	int fd;

	ents = calloc(npages, sizeof(*ents));
	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (!pfns || !ents || fd < 0 ||
	    pread(fd, ents, npages * sizeof(*ents),
		  (off_t)((uintptr_t)addr / page_size * sizeof(*ents))) !=
		    (ssize_t)(npages * sizeof(*ents))) {
		tap_diag("reading pagemap failed");
		if (fd >= 0)
			close(fd);
		free(pfns);
		free(ents);
		return 0;
	}
	close(fd);
	for (i = 0; i < npages; i++) {
		unsigned long long pfn = ents[i] & ((1ULL << 55) - 1);

		if (!(ents[i] >> 63) || !pfn)
			notp++;
		else
			pfns[n++] = pfn;
	}
	qsort(pfns, n, sizeof(*pfns), cmp_ull);
	for (i = 0; i < n; i++)
		if (!i || pfns[i] != pfns[i - 1])
			d++;
	free(pfns);
	free(ents);
	if (np)
		*np = notp;
	return d;
}

int ksm_stat_read(pid_t pid, struct ksm_stat *st)
{
	char path[64], buf[1024], *line, *save;
	int seen = 0;
	ssize_t n;

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/ksm_stat", (int)pid);
	else
		snprintf(path, sizeof(path), "/proc/self/ksm_stat");
	n = read_text(path, buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	memset(st, 0, sizeof(*st));
	for (line = strtok_r(buf, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char key[64];
		long long v;

		if (sscanf(line, "%63s %lld", key, &v) != 2)
			continue;
		if (!strcmp(key, "ksm_rmap_items"))
			st->rmap_items = v, seen |= 1;
		else if (!strcmp(key, "ksm_zero_pages"))
			st->zero_pages = v, seen |= 2;
		else if (!strcmp(key, "ksm_merging_pages"))
			st->merging_pages = v, seen |= 4;
		else if (!strcmp(key, "ksm_process_profit"))
			st->process_profit = v, seen |= 8;
	}
	return seen == 15 ? 0 : -EPROTO;
}

long long ksm_merging_pages(pid_t pid)
{
	char path[64], buf[64];

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/ksm_merging_pages",
			 (int)pid);
	else
		snprintf(path, sizeof(path), "/proc/self/ksm_merging_pages");
	if (read_text(path, buf, sizeof(buf)) < 0)
		return -1;
	return atoll(buf);
}

void *map_anon(size_t pages)
{
	void *p = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		tap_diag("mmap %zu pages: %s", pages, strerror(errno));
		return NULL;
	}
	madvise(p, pages * page_size, MADV_NOHUGEPAGE);
	return p;
}

static inline uint64_t pattern_word(unsigned long p, size_t i)
{
	/* Every 8-byte word differs between patterns; no byte is zero. */
	return ((p + 1) * 0x9e3779b97f4a7c15ULL ^ i * 0xff51afd7ed558ccdULL) |
		0x0101010101010101ULL;
}

unsigned char pattern_byte(unsigned long p, size_t off)
{
	return (unsigned char)(pattern_word(p, off / 8) >> ((off % 8) * 8));
}

void fill_pattern(void *page, unsigned long p)
{
	uint64_t *w = page;
	size_t i;

	for (i = 0; i < page_size / 8; i++)
		w[i] = pattern_word(p, i);
}

bool check_pattern(const void *page, unsigned long p)
{
	const uint64_t *w = page;
	size_t i;

	for (i = 0; i < page_size / 8; i++)
		if (w[i] != pattern_word(p, i))
			return false;
	return true;
}

uint64_t rnd_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static struct ksm_knobs tests_saved;

static void test_setup(const char *dir)
{
	struct ksm_counters c;

	ksm_unmerge_stop(dir);
	ksm_fast(dir, 1000);
	ksm_counters_read(dir, &c);
	if (c.shared || c.sharing)
		ksm_counters_diag("not clean before the test", &c);
}

static void test_teardown(const char *dir)
{
	ksm_set(dir, "run", 2);
	ksm_knobs_restore(dir, &tests_saved);
	ksm_set(dir, "run", 0);
}

void ksm_tests_main(int argc, char **argv, const struct ksm_test *tests, size_t n,
		    const char *root_for, void (*done)(void))
{
	bool *sel = calloc(n, sizeof(*sel));
	unsigned int nsel = 0;
	const char *dir;
	size_t i;
	int args;

	if (!sel)
		exit(2);
	args = ksm_parse_args(argc, argv);
	dir = RKSM_DIR;
	for (i = 0; i < n; i++)
		sel[i] = args == 1;
	for (i = 1; i < (size_t)args; i++) {
		unsigned long t = strtoul(argv[i], NULL, 10);

		if (t < 1 || t > n) {
			fprintf(stderr, "usage: %s [--ksm-dir DIR] [--kthread NAME] [1-%zu...]\n",
				argv[0], n);
			exit(2);
		}
		sel[t - 1] = true;
	}
	for (i = 0; i < n; i++)
		nsel += sel[i];

	tap_plan(nsel);
	tap_diag("KSM directory %s", dir);
	if (access(dir, F_OK) || geteuid()) {
		if (geteuid())
			tap_diag("must run as root (%s)", root_for);
		else
			tap_diag("no such directory");
		for (i = 0; i < n; i++)
			if (sel[i])
				tap_result(TAP_FAIL, tests[i].name);
		tap_finish();
	}
	ksm_knobs_save(dir, &tests_saved);
	for (i = 0; i < n; i++) {
		double t0 = tap_seconds();
		int res;

		if (!sel[i])
			continue;
		tap_diag("[RUN] %zu %s", i + 1, tests[i].name);
		test_setup(dir);
		res = tests[i].fn(dir);
		test_teardown(dir);
		tap_result(res, tests[i].name);
		tap_took(t0);
	}
	free(sel);
	if (done)
		done();
	tap_finish();
}

long sys_move_pages(pid_t pid, unsigned long n, void **pages, const int *nodes,
		    int *status, int flags)
{
	return syscall(SYS_move_pages, pid, n, pages, nodes, status, flags);
}

int page_node(pid_t pid, void *addr)
{
	int status = -1;

	if (sys_move_pages(pid, 1, &addr, NULL, &status, 0))
		return -errno;
	return status;
}

bool two_nodes(void)
{
	return !access("/sys/devices/system/node/node0", F_OK) &&
	       !access("/sys/devices/system/node/node1", F_OK);
}

/* ------------------------------------------------------------------ */
/* Swap on zram */

static int swap_state;		/* 0 unknown, 1 on, -1 cannot */
char swap_why[160];
static bool swap_ours;

#define ZRAM_DEV	"/dev/zram0"
#define ZRAM_SYS	"/sys/block/zram0"

static bool swap_active(void)
{
	char buf[512];

	if (read_text("/proc/swaps", buf, sizeof(buf)) < 0)
		return false;
	/* A header line, then one line per active swap area. */
	return strchr(buf, '\n') && strchr(buf, '\n')[1] != '\0';
}

/* mkswap: a version-1 swap header in the first page of PATH. */
static int mkswap_c(const char *path)
{
	uint64_t bytes = 0;
	unsigned char *hdr;
	uint32_t v[3];
	int fd, err = 0;

	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (ioctl(fd, BLKGETSIZE64, &bytes))
		err = -errno;
	else if (bytes / page_size < 16)
		err = -ENOSPC;
	if (err) {
		close(fd);
		return err;
	}
	hdr = calloc(1, page_size);
	if (!hdr) {
		close(fd);
		return -ENOMEM;
	}
	/* union swap_header: bootbits[1024], version, last_page,
	 * nr_badpages, uuid, volume name..., "SWAPSPACE2" at the end. */
	v[0] = 1;
	v[1] = (uint32_t)(bytes / page_size - 1);
	v[2] = 0;
	memcpy(hdr + 1024, v, sizeof(v));
	memcpy(hdr + page_size - 10, "SWAPSPACE2", 10);
	if (pwrite(fd, hdr, page_size, 0) != (ssize_t)page_size || fsync(fd))
		err = -errno ?: -EIO;
	free(hdr);
	close(fd);
	return err;
}

int swap_setup(void)
{
	unsigned long long size;
	int err;

	if (swap_state)
		return swap_state > 0 ? 0 : -1;
	swap_state = -1;
	if (swap_active()) {
		tap_diag("swap already on");
		swap_state = 1;
		return 0;
	}
	if (access(ZRAM_SYS, F_OK) || access(ZRAM_DEV, F_OK)) {
		snprintf(swap_why, sizeof(swap_why),
			 "no swap and no zram0 (CONFIG_ZRAM, /dev/zram0)");
		return -1;
	}
	if (knob_read(ZRAM_SYS, "disksize", &size) || !size) {
		err = knob_write_str(ZRAM_SYS, "disksize", "256M");
		if (err) {
			snprintf(swap_why, sizeof(swap_why),
				 "cannot set %s/disksize: %s", ZRAM_SYS,
				 strerror(-err));
			return -1;
		}
	}
	err = mkswap_c(ZRAM_DEV);
	if (err) {
		snprintf(swap_why, sizeof(swap_why), "mkswap %s: %s", ZRAM_DEV,
			 strerror(-err));
		return -1;
	}
	if (syscall(SYS_swapon, ZRAM_DEV, 0)) {
		snprintf(swap_why, sizeof(swap_why), "swapon %s: %s (CONFIG_SWAP?)",
			 ZRAM_DEV, strerror(errno));
		return -1;
	}
	swap_ours = true;
	swap_state = 1;
	tap_diag("swap on %s (zram, set up by this test)", ZRAM_DEV);
	return 0;
}

void swap_teardown(void)
{
	if (!swap_ours)
		return;
	if (syscall(SYS_swapoff, ZRAM_DEV))
		tap_diag("swapoff %s: %s", ZRAM_DEV, strerror(errno));
	else
		knob_write_str(ZRAM_SYS, "reset", "1");
	swap_ours = false;
	swap_state = 0;
}
