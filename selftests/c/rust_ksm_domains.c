// SPDX-License-Identifier: GPL-2.0
/*
 * rust_ksm_domains: merge domains (merge_domain, merge_domain_depth,
 * /sys/kernel/mm/rust_ksm/domains).
 *
 *   rust_ksm_domains [--ksm-dir DIR] [--kthread NAME] [TEST_NUMBER...]
 *
 * Processes ("members") are forked children, each in its own uid or cgroup,
 * with an area of patterned pages; merges are told by PFNs (pagemap of the
 * member, read as root), isolation also by a write-time probe: a write to a
 * page merged with another takes a copy-on-write fault, tens of
 * microseconds under TCG, where a write to a private page takes well under
 * one.
 *
 *  1. merge_domain shows "[global] user cgroup"; bad words and values are
 *     EINVAL; a change while pages are merged is EBUSY and changes nothing;
 *     writing the current value is fine.
 *  2. global: the same pages in two members (no page twice within one)
 *     merge across them, and the probe sees it (its positive control).
 *  3. user: members of uids 1001 and 1002 with one pattern each merge
 *     within their uid and never across; `domains` has a line per uid with
 *     pages_shared 1 and pages_sharing N-1, gone once the members exit.
 *  4. cgroup (depth 1): members in rkd_a/x and rkd_a/y (one domain) and in
 *     rkd_b: x and y merge, b never with them; the probe sees no merge.
 *  5. cgroup: a member moved from rkd_b to rkd_a is re-homed: its pages
 *     stop sharing with b's (now another domain) within EVENT_MS of the
 *     move, with scanning slowed to a page per batch, and merge with a's.
 *  6. cgroup: fork into another cgroup (clone3 CLONE_INTO_CGROUP): the
 *     child's inherited KSM pages get their own copies (within REHOME_MS,
 *     slow scanning; a second child forked while the scanner sleeps within
 *     EVENT_MS), which then merge in the child's domain.
 *  7. use_zero_pages: all-zero pages map the zero page in every domain.
 *  8. user: a member that changes uid (setresuid) is re-homed: its pages
 *     stop sharing with its old uid's (within REHOME_MS, slow scanning)
 *     and merge with its new uid's.
 *  9. cgroup: plain forks keep their parent's KSM pages: a process in
 *     rkd_a with FORK_PAIRS merged pairs forks FORK_KIDS children one after
 *     another while the scanner runs flat out a page at a time; no child's
 *     PFN may differ from its parent's (checked at 0, 20 and 100 ms), and
 *     `domains` never shows the root cgroup.
 * 10. the cgroup event probes (debugfs event_probes) are attached while
 *     merge_domain=cgroup, and only then.
 * 11. cgroup: an mm whose owner exits while a CLONE_VM child in another
 *     cgroup still uses it is re-homed with the child within EVENT_MS.
 *
 * Seen failing: before merge domains existed the knob was missing (1: open
 * ENOENT); with the cross-domain check of ScanState::cmp_and_merge left
 * out, 5, 6 and 8 failed ("moved member still shares b's page", "child
 * still maps the parent's KSM page", "after setuid: still 32 pages shared
 * with uid 0"), the others passed.  3's last check failed ("the domains
 * of exited processes are still listed") first while empty domains were
 * freed only at the end of a full scan, which never comes with no process
 * left, then while a domain's last KSM page outlived its last process's
 * unregistration (__mmput() unregisters before exit_mmap() unmaps) and
 * nothing dropped its node: seen in a fresh-clone make check, and in every
 * boot once 3's members map 32 MiB below their mergeable pages ("uid 1001
 * pages_shared 0 pages_sharing 0" stayed).  The time limits of 5, 6 and 8
 * failed with the module that re-homed only when the scanner came round to
 * the process ("moved member still shares b's page after 2000 ms", "child
 * still maps the parent's KSM page after 2000 ms", "after setuid: still
 * shares uid 0's page after 2000 ms"), 5's with the cgroup_attach_task
 * probe not attached ("... after 500 ms"), and 6's second child's with
 * the task_newtask probe not attached ("second child still maps the
 * parent's KSM page after 500 ms").  9 failed with the module that homed
 * a child's mm as soon as it was registered, at the end of dup_mmap(),
 * before cgroup_post_fork() moves the child out of the root cgroup (issue
 * 21 item 2): "22 of 40 children lost KSM pages".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

#define CG_ROOT		"/sys/fs/cgroup"
#define NPAGES		32
#define SCANS		4
#define SCAN_MS		120000

static const char *dir;

/* --- members --- */

enum layout {
	ONE,		/* every page pattern `pat` */
	DISTINCT,	/* page i pattern `pat` + i; then as many unique ones */
	ZERO,		/* all-zero pages */
};

struct member {
	pid_t pid;
	int cmd, ans;
	char *addr;	/* in the member's address space (same layout as ours) */
	size_t pages;
};

/*
 * Pages of plain memory a member maps below its mergeable ones (test 3):
 * exit_mmap() unmaps in address order, so on exit its KSM pages stay mapped
 * a while after the engine has let its mm go.
 */
static size_t ballast_pages;

/* What a member does before mapping: become UID, or join cgroup CG. */
struct who {
	int uid;		/* -1: stay root */
	const char *cg;		/* NULL: stay */
};

static long long elapsed_ns(const struct timespec *a, const struct timespec *b)
{
	return (b->tv_sec - a->tv_sec) * 1000000000LL + (b->tv_nsec - a->tv_nsec);
}

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return x < y ? -1 : x > y;
}

/* Median ns of a one-byte write to each of N pages at P. */
static long long write_median(char *p, size_t n)
{
	long long t[2 * NPAGES];
	struct timespec a, b;

	for (size_t i = 0; i < n; i++) {
		clock_gettime(CLOCK_MONOTONIC, &a);
		p[i * page_size] ^= 1;
		clock_gettime(CLOCK_MONOTONIC, &b);
		t[i] = elapsed_ns(&a, &b);
	}
	qsort(t, n, sizeof(t[0]), cmp_ll);
	return t[n / 2];
}

/* A CLONE_VM child of a member: it only keeps the mm in use. */
static int vm_kid(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return 0;
}

/*
 * The member's life: join, map and fill, report the address, then serve
 * commands: 'w' the write probe (two medians: the first NPAGES pages, the
 * NPAGES after), 'u' become uid 1002 (answer: 0 or errno, twice), 'c'
 * start a child that shares the mm (clone CLONE_VM, not a thread; answer:
 * its pid or -errno, twice), 'q' exit.
 */
static void __attribute__((noreturn))
member_main(struct who who, enum layout layout, unsigned long pat, int cmd, int ans)
{
	size_t pages = layout == DISTINCT ? 2 * NPAGES : NPAGES;
	char c, *p;

	if (who.cg && knob_write_str(who.cg, "cgroup.procs", "0"))
		_exit(1);
	if (who.uid >= 0 && setresuid(who.uid, who.uid, who.uid))
		_exit(1);
	p = map_anon(pages);
	if (!p)
		_exit(1);
	for (size_t i = 0; i < pages; i++) {
		if (layout == ZERO)
			memset(p + i * page_size, 0, page_size);
		else if (layout == ONE)
			fill_pattern(p + i * page_size, pat);
		else	/* the second half: patterns no other member has */
			fill_pattern(p + i * page_size,
				     i < NPAGES ? pat + i : pat + 1000000 + getpid() * 100 + i);
	}
	if (madvise(p, pages * page_size, MADV_MERGEABLE))
		_exit(1);
	if (ballast_pages) {
		char *b = map_anon(ballast_pages);

		if (!b || b > p)
			_exit(1);
		memset(b, 1, ballast_pages * page_size);
	}
	if (write(ans, &p, sizeof(p)) != sizeof(p))
		_exit(1);
	while (read(cmd, &c, 1) == 1 && c != 'q') {
		long long m[2] = { 0, 0 };

		if (c == 'u') {
			m[0] = m[1] = setresuid(1002, 1002, 1002) ? errno : 0;
		} else if (c == 'c') {
			size_t len = 64 << 10;
			char *stack = malloc(len);

			m[0] = m[1] = stack ? clone(vm_kid, stack + len, CLONE_VM | SIGCHLD, NULL) :
					      -ENOMEM;
			if (m[0] < 0 && stack)
				m[0] = m[1] = -errno;
		} else
			m[0] = write_median(p, NPAGES),
			m[1] = write_median(p + NPAGES * page_size, NPAGES);
		if (write(ans, m, sizeof(m)) != sizeof(m))
			_exit(1);
	}
	_exit(0);
}

static int member_start(struct member *m, struct who who, enum layout layout,
			unsigned long pat)
{
	int cmd[2], ans[2];

	m->pid = -1;
	m->pages = layout == DISTINCT ? 2 * NPAGES : NPAGES;
	if (pipe(cmd) || pipe(ans))
		return -1;
	m->pid = fork();
	if (!m->pid) {
		close(cmd[1]);
		close(ans[0]);
		member_main(who, layout, pat, cmd[0], ans[1]);
	}
	close(cmd[0]);
	close(ans[1]);
	m->cmd = cmd[1];
	m->ans = ans[0];
	if (m->pid < 0 || read(m->ans, &m->addr, sizeof(m->addr)) != sizeof(m->addr)) {
		tap_diag("member (uid %d, cgroup %s) did not start", who.uid,
			 who.cg ? who.cg : "-");
		return -1;
	}
	return 0;
}

static void member_stop(struct member *m)
{
	if (m->pid <= 0)
		return;
	if (write(m->cmd, "q", 1) != 1)
		kill(m->pid, SIGKILL);
	waitpid(m->pid, NULL, 0);
	close(m->cmd);
	close(m->ans);
	m->pid = -1;
}

/* The PFN of the member's page I (0 if not present, -1 on error). */
static long long pfn(const struct member *m, size_t i)
{
	return pagemap_pfn(m->pid, m->addr + i * page_size);
}

/* Pages I in [0, N) where members A and B map the same PFN. */
static size_t shared_pages(const struct member *a, const struct member *b, size_t n)
{
	size_t same = 0;

	for (size_t i = 0; i < n; i++) {
		long long x = pfn(a, i);

		same += x > 0 && x == pfn(b, i);
	}
	return same;
}

/* Whether all N pages of M map one PFN (merged among themselves). */
static bool one_pfn(const struct member *m, size_t n)
{
	long long first = pfn(m, 0);

	for (size_t i = 1; i < n; i++)
		if (first <= 0 || pfn(m, i) != first)
			return false;
	return first > 0;
}

/* The probe: the write medians (ns) of M's first and second NPAGES. */
static int probe(struct member *m, long long med[2])
{
	return write(m->cmd, "w", 1) == 1 &&
	       read(m->ans, med, 2 * sizeof(med[0])) == 2 * sizeof(med[0]) ? 0 : -1;
}

/* Member M becomes uid 1002; 0 or -1. */
static int become_1002(struct member *m)
{
	long long r[2];

	return write(m->cmd, "u", 1) == 1 && read(m->ans, r, sizeof(r)) == sizeof(r) &&
	       !r[0] ? 0 : -1;
}

/* Whether writes to the first half look like copy-on-write faults. */
static bool probe_says_merged(const long long med[2])
{
	return med[0] > 4 * med[1] + 1000;
}

/*
 * Re-homing is prompt: at the scanner's next batch (REHOME_MS), and for a
 * cgroup move at once (EVENT_MS: the cgroup_attach_task tracepoint wakes
 * the scanner), not when the scanner comes round to the process.  With one
 * page per batch and a batch every two seconds a full scan of the members'
 * 64-96 pages takes two minutes or more.
 */
#define REHOME_MS	4000
#define EVENT_MS	500

static int go_slow(void)
{
	return ksm_set(dir, "pages_to_scan", 1) ?: ksm_set(dir, "sleep_millisecs", 2000);
}

/* Milliseconds until the members A and B share no page (-1: not in LIMIT). */
static long until_unshared(const struct member *a, const struct member *b, long limit)
{
	uint64_t t0 = now_ms();

	do {
		if (!shared_pages(a, b, NPAGES))
			return (long)(now_ms() - t0);
		msleep(10);
	} while (now_ms() - t0 < (uint64_t)limit);
	return -1;
}

/* --- knobs, cgroups --- */

/* merge_domain as shown, without its newline, into BUF; 0 or -1. */
static int read_mode(char *buf, size_t len)
{
	int n = knob_read_line(dir, "merge_domain", buf, len);

	if (n < 0)
		return -1;
	buf[n] = '\0';
	return 0;
}

static int set_domain(const char *mode, unsigned int depth)
{
	int err = knob_write_ull(dir, "merge_domain_depth", depth) ?:
		  knob_write_str(dir, "merge_domain", mode);

	if (err)
		tap_diag("merge_domain %s depth %u: %s", mode, depth, strerror(-err));
	return err;
}

/* Clean state for a test: nothing merged, scanner stopped, fast knobs. */
static int fresh(const char *mode, unsigned int depth)
{
	return ksm_unmerge_stop(dir) ?: ksm_fast(dir, 1000) ?: set_domain(mode, depth);
}

static int cgroup_dir(const char *path)
{
	if (access(CG_ROOT "/cgroup.controllers", F_OK) &&
	    mount("cgroup2", CG_ROOT, "cgroup2", 0, NULL)) {
		tap_diag("mount cgroup2: %s", strerror(errno));
		return -1;
	}
	if (mkdir(path, 0755) && errno != EEXIST) {
		tap_diag("mkdir %s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* The cgroup id of PATH (its inode number on cgroup2). */
static unsigned long long cgroup_id(const char *path)
{
	struct stat st;

	return stat(path, &st) ? 0 : (unsigned long long)st.st_ino;
}

/* The `domains` line of KEY (after its first word), or "" into LINE. */
static int domain_line(const char *word, unsigned long long key,
		       unsigned long *shared, unsigned long *sharing)
{
	char buf[4096], path[256], w[16];
	unsigned long long k;
	long long profit;
	char *line, *save = NULL;

	snprintf(path, sizeof(path), "%s/domains", dir);
	if (read_text(path, buf, sizeof(buf)) < 0)
		return -1;
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (sscanf(line, "%15s %llu pages_shared %lu pages_sharing %lu general_profit %lld",
			   w, &k, shared, sharing, &profit) == 5 &&
		    !strcmp(w, word) && k == key)
			return 0;
	}
	return -1;
}

static void domains_diag(void)
{
	char buf[4096], path[256];

	snprintf(path, sizeof(path), "%s/domains", dir);
	if (read_text(path, buf, sizeof(buf)) >= 0)
		tap_diag("domains:\n%s", buf);
}

/* --- the tests --- */

static int t_knobs(const char *d)
{
	char buf[128];
	struct member m = { .pid = -1 };
	struct who root = { -1, NULL };
	int ret = TAP_PASS, err;

	dir = d;
	CHECK(!fresh("global", 1), "reset");
	CHECK(!read_mode(buf, sizeof(buf)), "read merge_domain");
	CHECK(!strcmp(buf, "[global] user cgroup"), "merge_domain reads \"%s\"", buf);
	err = knob_write_str(dir, "merge_domain", "bogus");
	CHECK(err == -EINVAL, "merge_domain=bogus: %s", strerror(-err));
	err = knob_write_str(dir, "merge_domain", "users");
	CHECK(err == -EINVAL, "merge_domain=users: %s", strerror(-err));
	err = knob_write_str(dir, "merge_domain_depth", "-1");
	CHECK(err == -EINVAL, "merge_domain_depth=-1: %s", strerror(-err));
	CHECK(!set_domain("user", 2), "user, depth 2");
	CHECK(!read_mode(buf, sizeof(buf)) && !strcmp(buf, "global [user] cgroup"),
	      "merge_domain reads \"%s\"", buf);
	CHECK(!set_domain("global", 1), "back to global");
	/* Merged pages: no change. */
	CHECK(!member_start(&m, root, ONE, 11), "member");
	CHECK(!ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	CHECK(knob_get(dir, "pages_sharing") > 0, "nothing merged");
	err = knob_write_str(dir, "merge_domain", "cgroup");
	CHECK(err == -EBUSY, "merge_domain=cgroup while merged: %s", strerror(-err));
	err = knob_write_str(dir, "merge_domain_depth", "3");
	CHECK(err == -EBUSY, "merge_domain_depth=3 while merged: %s", strerror(-err));
	CHECK(!knob_write_str(dir, "merge_domain", "global"), "the current value");
	CHECK(!read_mode(buf, sizeof(buf)) && !strcmp(buf, "[global] user cgroup"),
	      "changed anyway: \"%s\"", buf);
	CHECK(knob_get(dir, "merge_domain_depth") == 1, "depth changed anyway");
	member_stop(&m);
	return ret;
}

static int t_global(const char *d)
{
	struct member a = { .pid = -1 }, b = { .pid = -1 };
	struct who root = { -1, NULL };
	long long med[2] = { 0, 0 };
	int ret = TAP_PASS;
	size_t same;

	dir = d;
	CHECK(!fresh("global", 1), "reset");
	CHECK(!member_start(&a, root, DISTINCT, 100) && !member_start(&b, root, DISTINCT, 100),
	      "members");
	CHECK(!ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	same = shared_pages(&a, &b, NPAGES);
	tap_diag("%zu of %d pages shared across the two members", same, NPAGES);
	CHECK(same == NPAGES, "global: %zu of %d pages merged across", same, NPAGES);
	CHECK(!probe(&b, med), "probe");
	tap_diag("write medians: shared pages %lld ns, private %lld ns", med[0], med[1]);
	CHECK(probe_says_merged(med), "the probe does not see the merge (%lld vs %lld ns)",
	      med[0], med[1]);
	member_stop(&a);
	member_stop(&b);
	return ret;
}

static int t_user(const char *d)
{
	struct member a1 = { .pid = -1 }, a2 = { .pid = -1 }, b = { .pid = -1 };
	unsigned long shared = 0, sharing = 0;
	int ret = TAP_PASS;

	dir = d;
	CHECK(!fresh("user", 1), "reset");
	ballast_pages = 8192;	/* 32 MiB: unmapped first, so slowly */
	CHECK(!member_start(&a1, (struct who){ 1001, NULL }, ONE, 21) &&
	      !member_start(&a2, (struct who){ 1001, NULL }, ONE, 21) &&
	      !member_start(&b, (struct who){ 1002, NULL }, ONE, 21), "members");
	ballast_pages = 0;
	CHECK(!ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	domains_diag();
	CHECK(one_pfn(&a1, NPAGES) && shared_pages(&a1, &a2, NPAGES) == NPAGES,
	      "uid 1001's pages did not merge together");
	CHECK(one_pfn(&b, NPAGES), "uid 1002's pages did not merge together");
	CHECK(!shared_pages(&a1, &b, NPAGES), "uid 1001 and 1002 share pages");
	CHECK(!domain_line("uid", 1001, &shared, &sharing) && shared == 1 &&
	      sharing == 2 * NPAGES - 1, "uid 1001: pages_shared %lu pages_sharing %lu",
	      shared, sharing);
	CHECK(!domain_line("uid", 1002, &shared, &sharing) && shared == 1 &&
	      sharing == NPAGES - 1, "uid 1002: pages_shared %lu pages_sharing %lu",
	      shared, sharing);
	member_stop(&a1);
	member_stop(&a2);
	member_stop(&b);
	/* With their processes gone, the domains go (no scan need follow). */
	for (int i = 0; i < 100 && (!domain_line("uid", 1001, &shared, &sharing) ||
				    !domain_line("uid", 1002, &shared, &sharing)); i++)
		msleep(100);
	domains_diag();
	CHECK(domain_line("uid", 1001, &shared, &sharing) &&
	      domain_line("uid", 1002, &shared, &sharing),
	      "the domains of exited processes are still listed");
	return ret;
}

static int t_cgroup(const char *d)
{
	struct member x = { .pid = -1 }, y = { .pid = -1 }, b = { .pid = -1 };
	long long med[2] = { 0, 0 };
	unsigned long shared = 0, sharing = 0;
	int ret = TAP_PASS;

	dir = d;
	CHECK(!cgroup_dir(CG_ROOT "/rkd_a") && !cgroup_dir(CG_ROOT "/rkd_a/x") &&
	      !cgroup_dir(CG_ROOT "/rkd_a/y") && !cgroup_dir(CG_ROOT "/rkd_b"), "cgroups");
	CHECK(!fresh("cgroup", 1), "reset");
	CHECK(!member_start(&x, (struct who){ -1, CG_ROOT "/rkd_a/x" }, DISTINCT, 300) &&
	      !member_start(&y, (struct who){ -1, CG_ROOT "/rkd_a/y" }, DISTINCT, 300) &&
	      !member_start(&b, (struct who){ -1, CG_ROOT "/rkd_b" }, DISTINCT, 300),
	      "members");
	CHECK(!ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	domains_diag();
	CHECK(shared_pages(&x, &y, NPAGES) == NPAGES,
	      "rkd_a/x and rkd_a/y (one domain at depth 1): %zu of %d pages merged",
	      shared_pages(&x, &y, NPAGES), NPAGES);
	CHECK(!shared_pages(&x, &b, NPAGES), "rkd_a and rkd_b share pages");
	CHECK(!domain_line("cgroup", cgroup_id(CG_ROOT "/rkd_a"), &shared, &sharing) &&
	      shared == NPAGES && sharing == NPAGES,
	      "rkd_a: pages_shared %lu pages_sharing %lu", shared, sharing);
	CHECK(domain_line("cgroup", cgroup_id(CG_ROOT "/rkd_b"), &shared, &sharing) ||
	      (!shared && !sharing), "rkd_b: pages_shared %lu pages_sharing %lu",
	      shared, sharing);
	CHECK(!probe(&b, med), "probe");
	tap_diag("write medians: pages rkd_a also holds %lld ns, private %lld ns",
		 med[0], med[1]);
	CHECK(!probe_says_merged(med), "the probe sees a merge across cgroups (%lld vs %lld ns)",
	      med[0], med[1]);
	member_stop(&x);
	member_stop(&y);
	member_stop(&b);
	return ret;
}

static int t_move(const char *d)
{
	struct member a = { .pid = -1 }, b = { .pid = -1 }, m = { .pid = -1 };
	char pid[32];
	int ret = TAP_PASS;
	long ms;

	dir = d;
	CHECK(!cgroup_dir(CG_ROOT "/rkd_a") && !cgroup_dir(CG_ROOT "/rkd_b"), "cgroups");
	CHECK(!fresh("cgroup", 1), "reset");
	CHECK(!member_start(&a, (struct who){ -1, CG_ROOT "/rkd_a" }, ONE, 41) &&
	      !member_start(&b, (struct who){ -1, CG_ROOT "/rkd_b" }, ONE, 41) &&
	      !member_start(&m, (struct who){ -1, CG_ROOT "/rkd_b" }, ONE, 41), "members");
	CHECK(!ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	CHECK(shared_pages(&m, &b, NPAGES) == NPAGES && !shared_pages(&m, &a, NPAGES),
	      "before the move: m shares %zu pages with b, %zu with a",
	      shared_pages(&m, &b, NPAGES), shared_pages(&m, &a, NPAGES));
	snprintf(pid, sizeof(pid), "%d", (int)m.pid);
	CHECK(!go_slow(), "slow scanning");
	CHECK(!knob_write_str(CG_ROOT "/rkd_a", "cgroup.procs", pid), "move m to rkd_a");
	ms = until_unshared(&m, &b, EVENT_MS);
	tap_diag("moved member unshared from b after %ld ms", ms);
	CHECK(ms >= 0, "moved member still shares b's page after %d ms", EVENT_MS);
	CHECK(!ksm_fast(dir, 1000) && !ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	domains_diag();
	CHECK(!shared_pages(&m, &b, NPAGES), "moved member still shares b's page (%zu pages)",
	      shared_pages(&m, &b, NPAGES));
	CHECK(shared_pages(&m, &a, NPAGES) == NPAGES, "moved member shares %zu of %d with a",
	      shared_pages(&m, &a, NPAGES), NPAGES);
	member_stop(&a);
	member_stop(&b);
	member_stop(&m);
	return ret;
}

/* clone3(CLONE_INTO_CGROUP) into CG: the child's pid, 0 in the child. */
static pid_t fork_into(const char *cg)
{
	struct clone_args args;
	int fd = open(cg, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	pid_t pid;

	if (fd < 0)
		return -1;
	memset(&args, 0, sizeof(args));
	args.flags = CLONE_INTO_CGROUP;
	args.exit_signal = SIGCHLD;
	args.cgroup = (uint64_t)fd;
	pid = (pid_t)syscall(SYS_clone3, &args, sizeof(args));
	if (pid)
		close(fd);
	return pid;
}

/* A child forked into CG that keeps its inherited mapping until GO closes. */
static pid_t fork_holder(const char *cg, int go[2])
{
	pid_t pid = fork_into(cg);
	char c;

	if (pid == 0) {
		close(go[1]);
		if (read(go[0], &c, 1) < 0)
			_exit(1);
		_exit(0);
	}
	return pid;
}

/* Milliseconds until M's first page is no longer PFN (-1: not in LIMIT). */
static long until_moved(const struct member *m, long long pfn0, long limit)
{
	uint64_t t0 = now_ms();

	do {
		if (pfn(m, 0) != pfn0)
			return (long)(now_ms() - t0);
		msleep(10);
	} while (now_ms() - t0 < (uint64_t)limit);
	return -1;
}

static int t_fork(const char *d)
{
	struct member child = { .pid = -1 }, child2 = { .pid = -1 };
	int ret = TAP_PASS, go[2], st;
	long long parent_pfn;
	char *p = NULL;
	long ms;

	dir = d;
	CHECK(!cgroup_dir(CG_ROOT "/rkd_a") && !cgroup_dir(CG_ROOT "/rkd_b"), "cgroups");
	CHECK(!fresh("cgroup", 1), "reset");
	/* This process in rkd_a, its pages merged there. */
	CHECK(!knob_write_str(CG_ROOT "/rkd_a", "cgroup.procs", "0"), "join rkd_a");
	p = map_anon(NPAGES);
	CHECK(p, "map");
	for (size_t i = 0; i < NPAGES; i++)
		fill_pattern(p + i * page_size, 61);
	CHECK(!madvise(p, NPAGES * page_size, MADV_MERGEABLE), "madvise");
	CHECK(!ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	/* Stopped, so that the child is seen as fork made it. */
	CHECK(!ksm_set(dir, "run", 0), "run=0");
	parent_pfn = pagemap_pfn(0, p);
	CHECK(parent_pfn > 0 && pagemap_pfn(0, p + page_size) == parent_pfn,
	      "the parent's pages did not merge");
	CHECK(!pipe(go), "pipe");
	child.pid = fork_holder(CG_ROOT "/rkd_b", go);
	CHECK(child.pid > 0, "clone3(CLONE_INTO_CGROUP): %s", strerror(errno));
	child.addr = p;
	CHECK(pfn(&child, 0) == parent_pfn, "the child does not inherit the KSM page");
	/* Its first batch re-homes it. */
	CHECK(!go_slow() && !ksm_set(dir, "run", 1), "slow scanning");
	ms = until_moved(&child, parent_pfn, REHOME_MS);
	tap_diag("child's first page unshared after %ld ms", ms);
	CHECK(ms >= 0, "child still maps the parent's KSM page after %d ms", REHOME_MS);
	/* Forked while the scanner sleeps: task_newtask wakes it. */
	msleep(200);
	child2.pid = fork_holder(CG_ROOT "/rkd_b", go);
	CHECK(child2.pid > 0, "clone3(CLONE_INTO_CGROUP): %s", strerror(errno));
	child2.addr = p;
	ms = until_moved(&child2, parent_pfn, EVENT_MS);
	tap_diag("second child's first page unshared after %ld ms", ms);
	CHECK(ms >= 0, "second child still maps the parent's KSM page after %d ms", EVENT_MS);
	close(go[0]);
	CHECK(!ksm_fast(dir, 1000) && !ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	domains_diag();
	tap_diag("parent pfn %lld, child pfns %lld %lld", parent_pfn, pfn(&child, 0),
		 pfn(&child, 1));
	CHECK(pfn(&child, 0) != parent_pfn && pfn(&child, NPAGES - 1) != parent_pfn,
	      "child still maps the parent's KSM page");
	CHECK(one_pfn(&child, NPAGES), "the child's copies did not merge in its domain");
	CHECK(pagemap_pfn(0, p) == parent_pfn, "the parent lost its KSM page");
	close(go[1]);	/* both children exit */
	waitpid(child.pid, &st, 0);
	waitpid(child2.pid, &st, 0);
	munmap(p, NPAGES * page_size);
	knob_write_str(CG_ROOT, "cgroup.procs", "0");
	return ret;
}

/*
 * Issue 21 item 2: a forked child's mm reaches the engine before the child
 * joins its parent's cgroup; homed then, it lands in the root cgroup's
 * domain and every KSM page it inherited is unshared (and could merge with
 * root-cgroup processes).  Seen failing with the module before the fix:
 * "22 of 40 children lost KSM pages" (756 page checks moved).
 */
#define FORK_PAIRS	128
#define FORK_KIDS	40

/* A child's check: how many of its pages are not on its parent's PFN
 * (PFNS, taken before the fork), at 0, 20 and 100 ms. */
static int __attribute__((noreturn)) fork_kid(const char *p, const long long *pfns)
{
	static const unsigned int at[] = { 0, 20, 80 };
	int moved = 0;

	for (size_t t = 0; t < sizeof(at) / sizeof(at[0]); t++) {
		msleep(at[t]);
		for (size_t i = 0; i < 2 * FORK_PAIRS; i++)
			moved += pagemap_pfn(0, p + i * page_size) != pfns[i];
	}
	_exit(moved > 255 ? 255 : moved);
}

static int t_fork_home(const char *d)
{
	unsigned long long root = cgroup_id(CG_ROOT);
	unsigned long shared, sharing;
	int ret = TAP_PASS, kids_moved = 0, pages_moved = 0, root_seen = 0, st;
	long long *pfns = NULL;
	char *p = NULL;

	dir = d;
	CHECK(!cgroup_dir(CG_ROOT "/rkd_a"), "cgroups");
	CHECK(!fresh("cgroup", 1), "reset");
	CHECK(!knob_write_str(CG_ROOT "/rkd_a", "cgroup.procs", "0"), "join rkd_a");
	p = map_anon(2 * FORK_PAIRS);
	pfns = calloc(2 * FORK_PAIRS, sizeof(*pfns));
	CHECK(p && pfns, "map");
	if (ret != TAP_PASS)
		goto out;
	for (size_t i = 0; i < 2 * FORK_PAIRS; i++)
		fill_pattern(p + i * page_size, 700 + i / 2);
	CHECK(!madvise(p, 2 * FORK_PAIRS * page_size, MADV_MERGEABLE), "madvise");
	CHECK(!ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	for (size_t i = 0; i < 2 * FORK_PAIRS; i++)
		pfns[i] = pagemap_pfn(0, p + i * page_size);
	for (size_t i = 0; i < FORK_PAIRS; i++)
		if (pfns[2 * i] <= 0 || pfns[2 * i] != pfns[2 * i + 1]) {
			FAILED("pair %zu did not merge", i);
			goto out;
		}
	/* The scanner flat out, a page per batch: a batch in every window. */
	CHECK(!ksm_set(dir, "pages_to_scan", 1) && !ksm_set(dir, "sleep_millisecs", 0),
	      "fast batches");
	for (int k = 0; k < FORK_KIDS && ret == TAP_PASS; k++) {
		pid_t pid = fork();

		if (!pid)
			fork_kid(p, pfns);
		CHECK(pid > 0, "fork: %s", strerror(errno));
		waitpid(pid, &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			kids_moved++;
			pages_moved += WIFEXITED(st) ? WEXITSTATUS(st) : 0;
		}
		if (!domain_line("cgroup", root, &shared, &sharing))
			root_seen++;
	}
	tap_diag("%d of %d children saw pages leave their parent's PFN (%d page checks)",
		 kids_moved, FORK_KIDS, pages_moved);
	CHECK(!kids_moved, "%d of %d children lost KSM pages", kids_moved, FORK_KIDS);
	CHECK(!root_seen, "the root cgroup's domain was listed %d times", root_seen);
	for (size_t i = 0; i < 2 * FORK_PAIRS; i++)
		if (pagemap_pfn(0, p + i * page_size) != pfns[i]) {
			FAILED("the parent's page %zu moved", i);
			break;
		}
out:
	ksm_set(dir, "run", 0);
	free(pfns);
	if (p)
		munmap(p, 2 * FORK_PAIRS * page_size);
	knob_write_str(CG_ROOT, "cgroup.procs", "0");
	return ret;
}

/* Whether process PID's N pages at P all hold pattern PAT (/proc/PID/mem). */
static bool pages_hold(pid_t pid, char *p, size_t n, unsigned long pat)
{
	char *want = malloc(page_size), *got = malloc(page_size), path[64];
	bool same = want && got;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/mem", pid);
	fd = open(path, O_RDONLY);
	if (want)
		fill_pattern(want, pat);
	for (size_t i = 0; same && i < n; i++)
		same = fd >= 0 &&
		       pread(fd, got, page_size, (off_t)(uintptr_t)(p + i * page_size)) ==
		       (ssize_t)page_size && !memcmp(got, want, page_size);
	if (fd >= 0)
		close(fd);
	free(want);
	free(got);
	return same;
}

/*
 * Issue 21 item 2, its second half: when an mm's owner exits while another
 * task still uses the mm, mm_update_next_owner() makes that task the owner,
 * maybe one in another cgroup, and raises no event.  A member in rkd_b
 * shares its pages with another b member; it starts a CLONE_VM child, the
 * child moves to rkd_a (the mm stays b's: its owner did not move), then the
 * member exits and the child owns the mm: within EVENT_MS the mm must be
 * re-homed in a's domain and share nothing with b, with scanning slowed to
 * a page per batch.  Seen failing with the module before the exit probe:
 * "the new owner's mm still shares b's page after 500 ms" (and the cgroup
 * move of the child alone must not re-home it: that control passed).
 */
static int t_owner_exit(const char *d)
{
	struct member m = { .pid = -1 }, s = { .pid = -1 }, kid = { .pid = -1 };
	long long ans[2] = { -1, -1 };
	int ret = TAP_PASS;
	char pid[24];
	long ms;

	dir = d;
	CHECK(!cgroup_dir(CG_ROOT "/rkd_a") && !cgroup_dir(CG_ROOT "/rkd_b"), "cgroups");
	CHECK(!fresh("cgroup", 1), "reset");
	/* The child is reparented to us when the member exits: reap it. */
	CHECK(!prctl(PR_SET_CHILD_SUBREAPER, 1), "subreaper: %s", strerror(errno));
	CHECK(!member_start(&m, (struct who){ -1, CG_ROOT "/rkd_b" }, ONE, 83) &&
	      !member_start(&s, (struct who){ -1, CG_ROOT "/rkd_b" }, ONE, 83), "members");
	if (ret != TAP_PASS)
		goto out;
	CHECK(!ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	CHECK(shared_pages(&m, &s, NPAGES) == NPAGES, "before: %zu of %d pages shared in b",
	      shared_pages(&m, &s, NPAGES), NPAGES);
	CHECK(write(m.cmd, "c", 1) == 1 && read(m.ans, ans, sizeof(ans)) == sizeof(ans) &&
	      ans[0] > 0, "CLONE_VM child: %lld", ans[0]);
	if (ret != TAP_PASS)
		goto out;
	kid = (struct member){ .pid = ans[0], .addr = m.addr, .pages = m.pages };
	snprintf(pid, sizeof(pid), "%lld", ans[0]);
	CHECK(!go_slow(), "slow scanning");
	CHECK(!knob_write_str(CG_ROOT "/rkd_a", "cgroup.procs", pid), "child to rkd_a");
	msleep(EVENT_MS);
	CHECK(shared_pages(&kid, &s, NPAGES) == NPAGES,
	      "the child's move re-homed the member's mm: %zu of %d pages still shared",
	      shared_pages(&kid, &s, NPAGES), NPAGES);
	/* The owner exits: the child, in rkd_a, owns the mm now. */
	member_stop(&m);
	ms = until_unshared(&kid, &s, EVENT_MS);
	tap_diag("after the owner's exit: unshared from b after %ld ms", ms);
	CHECK(ms >= 0, "the new owner's mm still shares b's page after %d ms", EVENT_MS);
	CHECK(pages_hold(kid.pid, kid.addr, NPAGES, 83), "the child's data changed");
out:
	if (kid.pid > 0) {
		kill(kid.pid, SIGKILL);
		waitpid(kid.pid, NULL, 0);
	}
	member_stop(&m);
	member_stop(&s);
	prctl(PR_SET_CHILD_SUBREAPER, 0);
	return ret;
}

/* /sys/kernel/debug/rust_ksm/event_probes, or -1. */
static long event_probes(void)
{
	unsigned long long v;

	if (access("/sys/kernel/debug/rust_ksm", F_OK))
		mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	return knob_read("/sys/kernel/debug/rust_ksm", "event_probes", &v) ? -1 : (long)v;
}

/*
 * Issue 21 item 4: the cgroup event probes cost every cgroup migration on
 * the system (cgroup_attach_task formats the destination's path under a
 * global spinlock once a probe is attached; make bench's PROBES line), so
 * they are attached only while merge_domain=cgroup.  The module before
 * attached both at load, whatever the mode (and had no event_probes file).
 */
static int t_probes(const char *d)
{
	int ret = TAP_PASS;
	long n;

	dir = d;
	CHECK(!fresh("global", 1), "reset");
	n = event_probes();
	if (n < 0)
		return tap_skip_missing("debugfs", "no /sys/kernel/debug/rust_ksm/event_probes");
	CHECK(n == 0, "merge_domain=global: %ld probes attached", n);
	CHECK(!set_domain("cgroup", 1), "cgroup");
	n = event_probes();
	CHECK(n == 3, "merge_domain=cgroup: %ld probes attached, expected 3", n);
	CHECK(!set_domain("cgroup", 2), "cgroup, depth 2");
	n = event_probes();
	CHECK(n == 3, "merge_domain_depth=2: %ld probes attached, expected 3", n);
	CHECK(!set_domain("user", 1), "user");
	n = event_probes();
	CHECK(n == 0, "merge_domain=user: %ld probes attached", n);
	CHECK(!set_domain("cgroup", 1) && !set_domain("global", 1), "cgroup, then global");
	n = event_probes();
	CHECK(n == 0, "back to global: %ld probes attached", n);
	return ret;
}

static int t_zero(const char *d)
{
	struct member a = { .pid = -1 }, b = { .pid = -1 };
	int ret = TAP_PASS;

	dir = d;
	CHECK(!cgroup_dir(CG_ROOT "/rkd_a") && !cgroup_dir(CG_ROOT "/rkd_b"), "cgroups");
	CHECK(!fresh("cgroup", 1), "reset");
	CHECK(!ksm_set(dir, "use_zero_pages", 1), "use_zero_pages");
	CHECK(!member_start(&a, (struct who){ -1, CG_ROOT "/rkd_a" }, ZERO, 0) &&
	      !member_start(&b, (struct who){ -1, CG_ROOT "/rkd_b" }, ZERO, 0), "members");
	CHECK(!ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	CHECK(shared_pages(&a, &b, NPAGES) == NPAGES,
	      "zero pages: %zu of %d shared across domains", shared_pages(&a, &b, NPAGES),
	      NPAGES);
	CHECK(knob_get(dir, "ksm_zero_pages") >= 2 * NPAGES, "ksm_zero_pages %llu",
	      knob_get(dir, "ksm_zero_pages"));
	member_stop(&a);
	member_stop(&b);
	ksm_set(dir, "use_zero_pages", 0);
	return ret;
}

static int t_setuid(const char *d)
{
	struct member old = { .pid = -1 }, m = { .pid = -1 }, new = { .pid = -1 };
	int ret = TAP_PASS;
	long ms;

	dir = d;
	CHECK(!fresh("user", 1), "reset");
	/* m and old are root's (uid 0), new is uid 1002's. */
	CHECK(!member_start(&old, (struct who){ -1, NULL }, ONE, 81) &&
	      !member_start(&m, (struct who){ -1, NULL }, ONE, 81) &&
	      !member_start(&new, (struct who){ 1002, NULL }, ONE, 81), "members");
	CHECK(!ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	CHECK(shared_pages(&m, &old, NPAGES) == NPAGES && !shared_pages(&m, &new, NPAGES),
	      "before: m shares %zu pages with uid 0, %zu with uid 1002",
	      shared_pages(&m, &old, NPAGES), shared_pages(&m, &new, NPAGES));
	CHECK(!go_slow(), "slow scanning");
	CHECK(!become_1002(&m), "setresuid(1002)");
	ms = until_unshared(&m, &old, REHOME_MS);
	tap_diag("after setuid: unshared from uid 0 after %ld ms", ms);
	CHECK(ms >= 0, "after setuid: still shares uid 0's page after %d ms", REHOME_MS);
	CHECK(!ksm_fast(dir, 1000) && !ksm_run_scans(dir, SCANS, SCAN_MS), "scans");
	domains_diag();
	CHECK(!shared_pages(&m, &old, NPAGES), "after setuid: still %zu pages shared with uid 0",
	      shared_pages(&m, &old, NPAGES));
	CHECK(shared_pages(&m, &new, NPAGES) == NPAGES,
	      "after setuid: %zu of %d shared with uid 1002", shared_pages(&m, &new, NPAGES),
	      NPAGES);
	member_stop(&old);
	member_stop(&m);
	member_stop(&new);
	return ret;
}

static const struct ksm_test tests[] = {
	{ "merge_domain knobs: values, EINVAL, EBUSY while merged", t_knobs },
	{ "global: pages of two processes merge, the write probe sees it", t_global },
	{ "user: pages merge within a uid, never across; per-uid counters", t_user },
	{ "cgroup: within a subtree at depth 1, never across; the probe agrees", t_cgroup },
	{ "cgroup: a process moved to another cgroup is re-homed", t_move },
	{ "cgroup: fork into another cgroup gets its own copies", t_fork },
	{ "use_zero_pages: the zero page is shared across domains", t_zero },
	{ "user: a process that changes uid is re-homed", t_setuid },
	{ "cgroup: forked children keep their parent's KSM pages", t_fork_home },
	{ "the cgroup event probes are attached only while merge_domain=cgroup", t_probes },
	{ "cgroup: an mm whose owner exits is re-homed with its new owner", t_owner_exit },
};

static void done(void)
{
	if (!dir)
		return;
	ksm_unmerge_stop(dir);
	set_domain("global", 1);
	rmdir(CG_ROOT "/rkd_a/x");
	rmdir(CG_ROOT "/rkd_a/y");
	rmdir(CG_ROOT "/rkd_a");
	rmdir(CG_ROOT "/rkd_b");
}

int main(int argc, char **argv)
{
	ksm_tests_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]),
		       "merge domains", done);
}
