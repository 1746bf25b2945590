/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kprof: a sampling profile of one kernel thread, for the per-page cost
 * breakdown of scripts/bench.  perf_event_open() on the thread (cpu-clock,
 * kernel instruction pointers), resolved against /proc/kallsyms (modules
 * included, while loaded): the guest has no perf tool.
 */
#ifndef RUST_KSM_KPROF_H
#define RUST_KSM_KPROF_H

#include <stddef.h>
#include <sys/types.h>

struct kprof {
	int fd;
	void *ring;
	size_t ring_len;
};

/* Start sampling TID at FREQ Hz; 0, or -1 (with a diagnostic). */
int kprof_start(struct kprof *k, pid_t tid, unsigned int freq);

/*
 * Stop, and print the samples per kernel symbol, most first:
 *   KPROF <tag> <samples> <symbol>
 * then "KPROF-TOTAL <tag> <samples> <lost>".  0, or -1.  With KPROF_OFFSETS=N
 * in the environment, also the hot offsets in the N top symbols
 * ("KPROF-IP <tag> <symbol>+0x<off> <samples>"), to read against
 * `objdump -d` of the module or vmlinux.  Under QEMU TCG a sample often
 * lands on the first instruction of a translation block (a call target, a
 * return point), so read an offset as "the code that led here".
 */
int kprof_stop(struct kprof *k, const char *tag);

#endif /* RUST_KSM_KPROF_H */
