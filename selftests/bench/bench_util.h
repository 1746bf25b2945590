/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the two benchmark programs share: their result lines.
 */
#ifndef RUST_KSM_BENCH_UTIL_H
#define RUST_KSM_BENCH_UTIL_H

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

#endif /* RUST_KSM_BENCH_UTIL_H */
