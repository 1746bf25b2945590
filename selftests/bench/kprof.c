// SPDX-License-Identifier: GPL-2.0
#define _GNU_SOURCE
#include <errno.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kprof.h"
#include "tap.h"

/* Data pages of the ring (a power of two): 16 MiB, 700k samples. */
#define RING_PAGES	4096

struct sym {
	unsigned long long addr;
	char *name;
	unsigned long samples;
};

int kprof_start(struct kprof *k, pid_t tid, unsigned int freq)
{
	long psz = sysconf(_SC_PAGESIZE);
	struct perf_event_attr a;

	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.type = PERF_TYPE_SOFTWARE;
	a.config = PERF_COUNT_SW_CPU_CLOCK;
	a.freq = 1;
	a.sample_freq = freq;
	a.sample_type = PERF_SAMPLE_IP;
	a.exclude_user = 1;
	a.exclude_hv = 1;
	k->fd = (int)syscall(SYS_perf_event_open, &a, tid, -1, -1, 0);
	if (k->fd < 0) {
		tap_diag("perf_event_open(pid %d): %s", (int)tid, strerror(errno));
		return -1;
	}
	k->ring_len = (size_t)(RING_PAGES + 1) * (size_t)psz;
	k->ring = mmap(NULL, k->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED,
		       k->fd, 0);
	if (k->ring == MAP_FAILED) {
		tap_diag("perf ring: %s", strerror(errno));
		close(k->fd);
		return -1;
	}
	return 0;
}

static int by_addr(const void *a, const void *b)
{
	const struct sym *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

static int by_samples(const void *a, const void *b)
{
	const struct sym *x = a, *y = b;

	return x->samples > y->samples ? -1 : x->samples < y->samples;
}

/* The text symbols of /proc/kallsyms, by address; their number, or -1. */
static long load_kallsyms(struct sym **out)
{
	FILE *f = fopen("/proc/kallsyms", "r");
	size_t n = 0, cap = 0;
	struct sym *s = NULL;
	char line[512], name[256], type;
	unsigned long long addr;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx %c %255s", &addr, &type, name) != 3 ||
		    (type != 't' && type != 'T') || !addr)
			continue;
		if (n == cap) {
			struct sym *t;

			cap = cap ? cap * 2 : 65536;
			t = realloc(s, cap * sizeof(*s));
			if (!t)
				break;
			s = t;
		}
		s[n].addr = addr;
		s[n].name = strdup(name);
		s[n].samples = 0;
		n++;
	}
	fclose(f);
	qsort(s, n, sizeof(*s), by_addr);
	*out = s;
	return (long)n;
}

static int by_ull(const void *a, const void *b)
{
	unsigned long long x = *(const unsigned long long *)a;
	unsigned long long y = *(const unsigned long long *)b;

	return x < y ? -1 : x > y;
}

/*
 * With KPROF_OFFSETS=N in the environment: for the N symbols with the most
 * samples, the offsets in them that got at least 1% of the symbol's samples
 * ("KPROF-IP tag name+0xoff samples"), to read against a disassembly: which
 * part of an inlined-into function the time goes to.
 */
static void print_offsets(const char *tag, const struct sym *s, long n,
			  unsigned long long *ips, unsigned long nips)
{
	const char *env = getenv("KPROF_OFFSETS");
	long want = env ? atol(env) : 0, done = 0, i;
	unsigned long j, k;

	if (want <= 0 || !nips)
		return;
	qsort(ips, nips, sizeof(*ips), by_ull);
	/* s is sorted by samples here: the first symbols are the top ones. */
	for (i = 0; i < n && done < want && s[i].samples; i++, done++) {
		unsigned long long lo = s[i].addr, hi = ~0ULL;
		long x;

		/* The next symbol up bounds this one. */
		for (x = 0; x < n; x++)
			if (s[x].addr > lo && s[x].addr < hi)
				hi = s[x].addr;
		for (j = 0; j < nips; j = k) {
			for (k = j; k < nips && ips[k] == ips[j]; k++)
				;
			if (ips[j] < lo || ips[j] >= hi ||
			    (k - j) * 100 < s[i].samples)
				continue;
			printf("KPROF-IP %s %s+0x%llx %lu\n", tag, s[i].name,
			       ips[j] - lo, k - j);
		}
	}
}

static void count_ip(struct sym *s, long n, unsigned long long ip,
		     unsigned long *unknown)
{
	long lo = 0, hi = n - 1, mid;

	if (n <= 0 || ip < s[0].addr) {
		(*unknown)++;
		return;
	}
	while (lo < hi) {
		mid = (lo + hi + 1) / 2;
		if (s[mid].addr <= ip)
			lo = mid;
		else
			hi = mid - 1;
	}
	s[lo].samples++;
}

int kprof_stop(struct kprof *k, const char *tag)
{
	struct perf_event_mmap_page *meta = k->ring;
	long psz = sysconf(_SC_PAGESIZE), n, i;
	unsigned long total = 0, lost = 0, unknown = 0;
	uint64_t head, tail, size = (uint64_t)RING_PAGES * (uint64_t)psz;
	const unsigned char *data = (const unsigned char *)k->ring + psz;
	struct sym *syms = NULL;
	unsigned long long *ips = NULL;
	unsigned long nips = 0;

	if (getenv("KPROF_OFFSETS"))
		ips = malloc(sizeof(*ips) * (size / sizeof(struct perf_event_header)));
	ioctl(k->fd, PERF_EVENT_IOC_DISABLE, 0);
	head = __atomic_load_n(&meta->data_head, __ATOMIC_ACQUIRE);
	tail = meta->data_tail;
	n = load_kallsyms(&syms);
	if (n <= 0)
		tap_diag("%s: no /proc/kallsyms", tag);
	/* Records are 8-byte aligned and never straddle... but may wrap. */
	while (tail < head) {
		struct perf_event_header h;
		unsigned char rec[64];
		size_t j;

		for (j = 0; j < sizeof(h); j++)
			((unsigned char *)&h)[j] = data[(tail + j) % size];
		if (h.size < sizeof(h) || h.size > sizeof(rec))
			break;
		for (j = 0; j < h.size; j++)
			rec[j] = data[(tail + j) % size];
		if (h.type == PERF_RECORD_SAMPLE) {
			unsigned long long ip;

			memcpy(&ip, rec + sizeof(h), sizeof(ip));
			count_ip(syms, n, ip, &unknown);
			if (ips)
				ips[nips++] = ip;
			total++;
		} else if (h.type == PERF_RECORD_LOST) {
			unsigned long long nlost;

			memcpy(&nlost, rec + sizeof(h) + 8, sizeof(nlost));
			lost += nlost;
		}
		tail += h.size;
	}
	munmap(k->ring, k->ring_len);
	close(k->fd);
	if (n > 0) {
		qsort(syms, n, sizeof(*syms), by_samples);
		for (i = 0; i < n && syms[i].samples; i++)
			printf("KPROF %s %lu %s\n", tag, syms[i].samples,
			       syms[i].name);
		print_offsets(tag, syms, n, ips, nips);
	}
	free(ips);
	if (unknown)
		printf("KPROF %s %lu [unknown]\n", tag, unknown);
	printf("KPROF-TOTAL %s %lu %lu\n", tag, total, lost);
	for (i = 0; i < n; i++)
		free(syms[i].name);
	free(syms);
	return 0;
}
