/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Minimal kselftest-style TAP output for the rust_ksm guest selftests.
 *
 *	tap_plan(n);                      "TAP version 13" + "1..n"
 *	tap_result(TAP_PASS, "name");     "ok N name"
 *	tap_result(TAP_FAIL, "name");     "not ok N name"
 *	tap_skip("name", "reason");       "ok N name # SKIP reason"
 *	tap_diag("fmt", ...);             "# ..."
 *	return tap_skip_because("why");   (in a test run by tap_run)
 *	tap_finish();                     "# Totals: ..." and exit(0 / 1)
 *
 * A test function declares `int ret = TAP_PASS;` and uses CHECK(cond, fmt,
 * ...): a false condition prints the location, the condition and the message
 * as diagnostics and marks the test failed, but the test goes on (so it can
 * clean up).  The exit status is 0 only if no test failed.
 */
#ifndef RUST_KSM_TAP_H
#define RUST_KSM_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { TAP_PASS = 0, TAP_FAIL = 1, TAP_SKIP = 2 };

static struct {
	unsigned int plan, num, pass, fail, skip;
	const char *skip_reason;
} tap_state __attribute__((unused));

static inline void tap_plan(unsigned int n)
{
	/* Line-buffered even on a pipe/serial console; children must not
	 * inherit unflushed output either. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	tap_state.plan = n;
	printf("TAP version 13\n1..%u\n", n);
	fflush(stdout);
}

__attribute__((format(printf, 1, 2)))
static inline void tap_diag(const char *fmt, ...)
{
	va_list ap;

	fputs("# ", stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
}

static inline void tap_skip(const char *name, const char *reason)
{
	tap_state.skip++;
	printf("ok %u %s # SKIP %s\n", ++tap_state.num, name, reason);
	fflush(stdout);
}

static inline void tap_result(int res, const char *name)
{
	switch (res) {
	case TAP_PASS:
		tap_state.pass++;
		printf("ok %u %s\n", ++tap_state.num, name);
		break;
	case TAP_SKIP:
		tap_skip(name, tap_state.skip_reason ? tap_state.skip_reason :
			 "no reason given");
		tap_state.skip_reason = NULL;
		return;
	default:
		tap_state.fail++;
		printf("not ok %u %s\n", ++tap_state.num, name);
		break;
	}
	fflush(stdout);
}

static inline void __attribute__((noreturn)) tap_finish(void)
{
	if (tap_state.num != tap_state.plan) {
		tap_diag("planned %u tests but ran %u", tap_state.plan,
			 tap_state.num);
		tap_state.fail++;
	}
	printf("# Totals: pass:%u fail:%u xfail:0 xpass:0 skip:%u error:0\n",
	       tap_state.pass, tap_state.fail, tap_state.skip);
	fflush(stdout);
	exit(tap_state.fail ? 1 : 0);
}

/* The worse of two results: a failure, then a skip, then a pass.  A skip
 * of one part never hides a failure of another. */
static inline int tap_worse(int a, int b)
{
	if (a == TAP_FAIL || b == TAP_FAIL)
		return TAP_FAIL;
	return a == TAP_SKIP || b == TAP_SKIP ? TAP_SKIP : TAP_PASS;
}

/* In a test: `return tap_skip_because("why");` */
static inline int tap_skip_because(const char *reason)
{
	tap_state.skip_reason = reason;
	return TAP_SKIP;
}

/*
 * In a test, when FACILITY (a word: "numa2", "zram", "hugetlb", "thp", "io_uring",
 * "hotplug", "memcg", "fail-nth", "failslab", "debugfs", "builtin-ksm") is
 * missing:
 * `return tap_skip_missing("zram", "why");`.  scripts/vm-run lists what its
 * test kernel provides in RUST_KSM_PROVIDES; a facility listed there that
 * the test finds missing is a failure, not a skip, so that a broken setup
 * cannot pass as "skipped".  Outside vm-run (no list) it is a skip.
 */
static inline int tap_skip_missing(const char *facility, const char *reason)
{
	const char *have = getenv("RUST_KSM_PROVIDES");
	size_t len = strlen(facility);

	while (have && *have) {
		const char *end = strchr(have, ' ');
		size_t n = end ? (size_t)(end - have) : strlen(have);

		if (n == len && !strncmp(have, facility, len)) {
			tap_diag("%s, but the test kernel provides %s", reason, facility);
			return TAP_FAIL;
		}
		have = end ? end + 1 : NULL;
	}
	return tap_skip_because(reason);
}

#define CHECK(cond, ...)						\
	do {								\
		if (!(cond)) {						\
			tap_diag("%s:%d: check failed: %s", __FILE__,	\
				 __LINE__, #cond);			\
			tap_diag(__VA_ARGS__);				\
			ret = TAP_FAIL;					\
		}							\
	} while (0)

/* An unconditional CHECK failure. */
#define FAILED(...)							\
	do {								\
		tap_diag("%s:%d: failed", __FILE__, __LINE__);		\
		tap_diag(__VA_ARGS__);					\
		ret = TAP_FAIL;						\
	} while (0)

/* A test: a name and a function returning TAP_PASS / TAP_FAIL / TAP_SKIP. */
struct tap_test {
	const char *name;
	int (*fn)(void);
};

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Monotonic seconds, for tap_took(). */
static inline double tap_seconds(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* After a result: how long the test took.  make check's time budget is
 * spent test by test, so every test shows its share. */
static inline void tap_took(double since)
{
	tap_diag("test %u took %.1f s", tap_state.num, tap_seconds() - since);
}

/* Run every test in order, calling after() (if any) after each one. */
static inline void __attribute__((noreturn))
tap_run(const struct tap_test *tests, unsigned int n, void (*after)(void))
{
	unsigned int i;

	tap_plan(n);
	for (i = 0; i < n; i++) {
		double t0 = tap_seconds();

		tap_result(tests[i].fn(), tests[i].name);
		if (after)
			after();
		tap_took(t0);
	}
	tap_finish();
}

#endif /* RUST_KSM_TAP_H */
