// SPDX-License-Identifier: GPL-2.0
/* Helpers shared by the rust_ksm guest selftests. */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ksm_util.h"
#include "tap.h"

size_t page_size = 4096;
const char *rksm_dir = "/sys/kernel/mm/rust_ksm";
const char *kthread_name = "rust_ksmd";

__attribute__((constructor)) static void init_util(void)
{
	long ps = sysconf(_SC_PAGESIZE);

	if (ps > 0)
		page_size = (size_t)ps;
	if (getenv("RUST_KSM_SYSFS"))
		rksm_dir = getenv("RUST_KSM_SYSFS");
	if (getenv("RUST_KSM_KTHREAD"))
		kthread_name = getenv("RUST_KSM_KTHREAD");
}

static void knob_path(char *buf, size_t len, const char *dir, const char *knob)
{
	snprintf(buf, len, "%s/%s", dir, knob);
}

int knob_read_line(const char *dir, const char *knob, char *buf, size_t len)
{
	char path[256];
	ssize_t n;
	int fd, err;

	knob_path(path, sizeof(path), dir, knob);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	err = errno;
	close(fd);
	if (n < 0)
		return -err;
	buf[n] = '\0';
	if (n < 2 || buf[n - 1] != '\n')
		return -EPROTO;
	return (int)n - 1;
}

int knob_read(const char *dir, const char *knob, unsigned long long *val)
{
	char buf[64], *end;
	int n = knob_read_line(dir, knob, buf, sizeof(buf));

	if (n < 0)
		return n;
	if (!isdigit((unsigned char)buf[0]))
		return -EPROTO;
	errno = 0;
	*val = strtoull(buf, &end, 10);
	if (errno || end != buf + n)
		return -EPROTO;
	return 0;
}

unsigned long long knob_get(const char *dir, const char *knob)
{
	unsigned long long v;
	int err = knob_read(dir, knob, &v);

	if (err) {
		tap_diag("reading %s/%s: %s", dir, knob, strerror(-err));
		return KNOB_ERR;
	}
	return v;
}

unsigned long long rk_get(const char *knob)
{
	return knob_get(RKSM_DIR, knob);
}

int knob_write_raw(const char *dir, const char *knob, const void *buf,
		   size_t len)
{
	char path[256];
	ssize_t n;
	int fd, err;

	knob_path(path, sizeof(path), dir, knob);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = write(fd, buf, len);
	err = errno;
	close(fd);
	if (n < 0)
		return -err;
	if ((size_t)n != len)
		return -EIO;
	return 0;
}

int knob_write_str(const char *dir, const char *knob, const char *s)
{
	return knob_write_raw(dir, knob, s, strlen(s));
}

int knob_write_ull(const char *dir, const char *knob, unsigned long long v)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%llu", v);
	return knob_write_str(dir, knob, buf);
}

int rk_set(const char *knob, unsigned long long v)
{
	int err = knob_write_ull(RKSM_DIR, knob, v);

	if (err)
		tap_diag("writing %llu to %s/%s: %s", v, RKSM_DIR, knob,
			 strerror(-err));
	return err;
}

void rk_reset(void)
{
	if (access(RKSM_DIR, F_OK))
		return;
	/* First: the scan-time advisor refuses pages_to_scan writes. */
	knob_write_str(RKSM_DIR, "advisor_mode", "none");
	rk_set("run", DEF_RUN);
	rk_set("pages_to_scan", DEF_PAGES_TO_SCAN);
	rk_set("sleep_millisecs", DEF_SLEEP_MILLISECS);
	rk_set("smart_scan", DEF_SMART_SCAN);
	rk_set("stable_node_chains_prune_millisecs", DEF_CHAINS_PRUNE_MS);
}

int rk_fast(void)
{
	int err = rk_set("pages_to_scan", 1000);

	return err ? err : rk_set("sleep_millisecs", 0);
}

long poll_until(int (*done)(void *ctx), void *ctx, unsigned int step_ms,
		unsigned int timeout_ms)
{
	uint64_t start = now_ms();
	int r;

	for (;;) {
		r = done(ctx);
		if (r > 0)
			return (long)(now_ms() - start);
		if (r < 0 || now_ms() - start >= timeout_ms)
			return -1;
		msleep(step_ms);
	}
}

struct knob_ge {
	const char *dir, *knob;
	unsigned long long target, v;
};

static int knob_ge_done(void *ctx)
{
	struct knob_ge *k = ctx;

	if (knob_read(k->dir, k->knob, &k->v)) {
		k->v = KNOB_ERR;
		return -1;
	}
	return k->v >= k->target;
}

long wait_knob_ge(const char *dir, const char *knob, unsigned long long target,
		  unsigned int timeout_ms, unsigned long long *last)
{
	struct knob_ge k = { dir, knob, target, 0 };
	long ms = poll_until(knob_ge_done, &k, 5, timeout_ms);

	if (last)
		*last = k.v;
	return ms;
}

int module_load(void)
{
	int fd = open(MODULE_PATH, O_RDONLY | O_CLOEXEC);
	int err = 0;

	if (fd < 0)
		return -errno;
	if (syscall(SYS_finit_module, fd, "", 0))
		err = -errno;
	close(fd);
	return err;
}

int module_unload(void)
{
	int tries;

	for (tries = 0; tries < 200; tries++) {
		if (!syscall(SYS_delete_module, MODULE_NAME, O_NONBLOCK))
			return 0;
		if (errno != EAGAIN && errno != EBUSY)
			return -errno;
		msleep(10);
	}
	return -errno;
}

bool module_loaded(void)
{
	return access("/sys/module/" MODULE_NAME, F_OK) == 0;
}

pid_t find_task(const char *name, int *count)
{
	char path[300], comm[64];
	struct dirent *de;
	pid_t found = 0;
	DIR *d;
	int n = 0;

	d = opendir("/proc");
	if (!d)
		goto out;
	while ((de = readdir(d))) {
		ssize_t len;
		int fd;

		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		snprintf(path, sizeof(path), "/proc/%s/comm", de->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		len = read(fd, comm, sizeof(comm) - 1);
		close(fd);
		if (len <= 0)
			continue;
		comm[len] = '\0';
		comm[strcspn(comm, "\n")] = '\0';
		if (!strcmp(comm, name)) {
			n++;
			found = atoi(de->d_name);
		}
	}
	closedir(d);
out:
	if (count)
		*count = n;
	return found;
}

ssize_t read_text(const char *path, char *buf, size_t len)
{
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC), err;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	err = errno;
	close(fd);
	if (n < 0)
		return -err;
	if (n == 0)
		return -EIO;
	buf[n] = '\0';
	return n;
}

int proc_stat(pid_t pid, char *state, pid_t *ppid, unsigned long long *ticks)
{
	unsigned long long ut, st;
	char path[64], buf[1024], *p;
	ssize_t n;
	int pp;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	n = read_text(path, buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	/* comm may contain anything: the fields start after the last ')'. */
	p = strrchr(buf, ')');
	if (!p)
		return -EPROTO;
	/* state ppid pgrp session tty tpgid flags minflt cminflt majflt
	 * cmajflt utime stime */
	if (sscanf(p + 1, " %c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
		   state, &pp, &ut, &st) != 4)
		return -EPROTO;
	if (ppid)
		*ppid = pp;
	if (ticks)
		*ticks = ut + st;
	return 0;
}

uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void msleep(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

void expect_call_traces(bool on, const char *why)
{
	char line[200];
	int fd = open("/dev/kmsg", O_WRONLY);

	if (fd < 0)
		return;
	if (on)
		snprintf(line, sizeof(line), "rust_ksm-selftest: call traces expected: %s\n",
			 why);
	else
		snprintf(line, sizeof(line),
			 "rust_ksm-selftest: call traces no longer expected\n");
	if (write(fd, line, strlen(line)) < 0)
		tap_diag("/dev/kmsg: %s", strerror(errno));
	close(fd);
}

void *map_populated(size_t pages, int fill_byte)
{
	void *p = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		tap_diag("mmap %zu pages: %s", pages, strerror(errno));
		return NULL;
	}
	/* 4 KiB pages only, so page counts are exact whatever THP does. */
	madvise(p, pages * page_size, MADV_NOHUGEPAGE);
	memset(p, fill_byte, pages * page_size);
	return p;
}
