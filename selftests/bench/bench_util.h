/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the benchmark programs share: their result lines, clocks, the KSM
 * thread's CPU time, waiting for a merge, slab memory, medians.
 */
#ifndef RUST_KSM_BENCH_UTIL_H
#define RUST_KSM_BENCH_UTIL_H

#include <stdint.h>

/* The engine the figures are of (the KSM directory's basename). */
extern const char *engine;
/* Figures printed as NA so far. */
extern int missing;

/*
 * "RESULT <engine> <name> <value|NA> <unit>": V printed with FMT if OK,
 * else NA (counted in `missing`).
 */
void result(const char *name, double v, int ok, const char *fmt,
	    const char *unit);

uint64_t now_ns(void);
double ms_since(uint64_t t0_ns);

/*
 * CPU time of the KSM thread KTHREAD_NAME in ns (sum_exec_runtime, the
 * first field of /proc/PID/schedstat: exact, where /proc/PID/stat counts
 * 10 ms ticks), or -1.
 */
long long kthread_cpu_ns(void);

/*
 * With the scanner running, wait until DIR's pages_shared + pages_sharing
 * == WANT.  Returns the ms since T0, or -1 (with a diagnostic) after
 * STALL_S seconds without progress, LIMIT_S seconds in all, or a read
 * error.
 */
double wait_merged(const char *dir, unsigned long long want, uint64_t t0,
		   unsigned int stall_s, unsigned int limit_s);

/* The kernel's slab memory (/proc/meminfo "Slab:"), in bytes, or -1. */
long long slab_bytes(void);

/* Median of N values (sorted in place), -1 if any is negative. */
double median(double *v, unsigned int n);

#endif /* RUST_KSM_BENCH_UTIL_H */
