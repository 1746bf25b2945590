// SPDX-License-Identifier: GPL-2.0
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "bench_util.h"
#include "ksm_util.h"
#include "tap.h"

const char *engine;
int missing;

void result(const char *name, double v, int ok, const char *fmt,
	    const char *unit)
{
	char buf[64];

	if (ok)
		snprintf(buf, sizeof(buf), fmt, v);
	else
		snprintf(buf, sizeof(buf), "NA");
	printf("RESULT %s %s %s %s\n", engine, name, buf, unit);
	fflush(stdout);
	if (!ok)
		missing++;
}

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

double ms_since(uint64_t t0_ns)
{
	return (double)(now_ns() - t0_ns) / 1e6;
}

long long kthread_cpu_ns(void)
{
	pid_t pid = find_task(KTHREAD_NAME, NULL);
	unsigned long long ns;
	char path[64], buf[128];

	if (!pid)
		return -1;
	snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
	if (read_text(path, buf, sizeof(buf)) <= 0 ||
	    sscanf(buf, "%llu", &ns) != 1)
		return -1;
	return (long long)ns;
}

double wait_merged(const char *dir, unsigned long long want, uint64_t t0,
		   unsigned int stall_s, unsigned int limit_s)
{
	unsigned long long a, b, best = 0;
	uint64_t last_progress = now_ns();

	for (;;) {
		if (knob_read(dir, "pages_shared", &a) ||
		    knob_read(dir, "pages_sharing", &b)) {
			tap_diag("%s: cannot read pages_shared/pages_sharing",
				 engine);
			return -1;
		}
		if (a + b == want)
			return ms_since(t0);
		if (a + b > best) {
			best = a + b;
			last_progress = now_ns();
		}
		if (now_ns() - last_progress > stall_s * 1000000000ULL ||
		    ms_since(t0) > limit_s * 1000.0) {
			tap_diag("%s: merged %llu + %llu of %llu pages after %.0f ms: giving up",
				 engine, a, b, want, ms_since(t0));
			return -1;
		}
		msleep(5);
	}
}

long long slab_bytes(void)
{
	char line[128];
	long long kb = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Slab: %lld kB", &kb) == 1)
			break;
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

double median(double *v, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++)
		if (v[i] < 0)
			return -1;
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
