/* SPDX-License-Identifier: GPL-2.0 */
/* Helpers shared by the rust_ksm guest selftests (see ksm_util.c). */
#ifndef RUST_KSM_UTIL_H
#define RUST_KSM_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * The directory and kthread under test: /sys/kernel/mm/rust_ksm and
 * rust_ksmd, unless RUST_KSM_SYSFS / RUST_KSM_KTHREAD say otherwise (e.g.
 * /sys/kernel/mm/ksm and ksmd, to check that a test holds for upstream KSM).
 */
extern const char *rksm_dir;
extern const char *kthread_name;
#define RKSM_DIR	rksm_dir
#define KTHREAD_NAME	kthread_name

#define KSM_DIR		"/sys/kernel/mm/ksm"
#define MODULE_PATH	"/lib/modules/rust_ksm.ko"
#define MODULE_NAME	"rust_ksm"

/* Upstream defaults, which rust_ksm must share. */
#define DEF_RUN			0
#define DEF_PAGES_TO_SCAN	100
#define DEF_SLEEP_MILLISECS	20
#define DEF_SMART_SCAN		1
#define DEF_CHAINS_PRUNE_MS	2000

/* Returned by knob_get() when the knob cannot be read or parsed. */
#define KNOB_ERR	(~0ULL)

extern size_t page_size;

/*
 * Read DIR/KNOB, which must hold exactly one decimal number and a newline.
 * Returns 0, -errno, or -EPROTO for a malformed value.
 */
/*
 * Reads DIR/KNOB, which must be one line, into BUF (LEN bytes); returns the
 * line's length without its newline (which is replaced by NUL), or -errno
 * (-EPROTO for no newline).
 */
int knob_read_line(const char *dir, const char *knob, char *buf, size_t len);
int knob_read(const char *dir, const char *knob, unsigned long long *val);
/* knob_read() or KNOB_ERR (with a diagnostic). */
unsigned long long knob_get(const char *dir, const char *knob);
/* Shorthand for the rust_ksm directory. */
unsigned long long rk_get(const char *knob);

/*
 * One open(O_WRONLY) + one write() of LEN bytes of BUF to DIR/KNOB.
 * Returns 0 if the whole buffer was accepted, else -errno (-EIO for a short
 * write).
 */
int knob_write_raw(const char *dir, const char *knob, const void *buf,
		   size_t len);
int knob_write_str(const char *dir, const char *knob, const char *s);
int knob_write_ull(const char *dir, const char *knob, unsigned long long v);
/* Shorthand for the rust_ksm directory; prints a diagnostic on failure. */
int rk_set(const char *knob, unsigned long long v);

/* run=0, pages_to_scan=100, sleep_millisecs=20 (if the module is loaded). */
void rk_reset(void);
/* pages_to_scan=1000, sleep_millisecs=0. 0 or -errno. */
int rk_fast(void);

/*
 * Calls DONE(CTX) every STEP_MS ms until it returns > 0 (returns the ms that
 * took), < 0 (an error) or TIMEOUT_MS pass (both return -1).
 */
long poll_until(int (*done)(void *ctx), void *ctx, unsigned int step_ms,
		unsigned int timeout_ms);

/*
 * Poll DIR/KNOB every few ms until it is >= TARGET or TIMEOUT_MS passed.
 * Returns the milliseconds waited, or -1 on timeout/read error; the last
 * value read goes to *last if last is non-NULL.
 */
long wait_knob_ge(const char *dir, const char *knob, unsigned long long target,
		  unsigned int timeout_ms, unsigned long long *last);

/* finit_module(MODULE_PATH): 0 or -errno. */
int module_load(void);
/* delete_module(MODULE_NAME, O_NONBLOCK), retried while busy: 0 or -errno. */
int module_unload(void);
bool module_loaded(void);

/* The pid of the (only) task whose comm is NAME, 0 if none; *count gets how
 * many matched. */
pid_t find_task(const char *name, int *count);
/* State letter, parent pid and utime+stime (clock ticks) from /proc/PID/stat. */
int proc_stat(pid_t pid, char *state, pid_t *ppid, unsigned long long *ticks);

/* Up to LEN - 1 bytes of PATH into BUF, NUL-terminated: the length read,
 * or -errno (-EIO when empty). */
ssize_t read_text(const char *path, char *buf, size_t len);

uint64_t now_ms(void);
void msleep(unsigned int ms);

/*
 * Tell scripts/check-dmesg that the kernel is about to print stack dumps on
 * purpose (ON, with WHY: a memcg OOM with nothing to kill, an injected page
 * allocation failure), or that it no longer will (!ON).  In between a bare
 * "Call Trace:" is not a failure; every other report still is.
 */
void expect_call_traces(bool on, const char *why);

/* Private anonymous mapping of PAGES pages, MADV_NOHUGEPAGE, every page
 * written (populated) with FILL_BYTE.  NULL (with a diagnostic) on failure. */
void *map_populated(size_t pages, int fill_byte);

#endif /* RUST_KSM_UTIL_H */
