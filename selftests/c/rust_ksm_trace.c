// SPDX-License-Identifier: GPL-2.0
/*
 * rust_ksm_trace: the ksm:* tracepoints fire, with the right fields, for
 * any KSM engine.
 *
 *   rust_ksm_trace [--ksm-dir DIR] [--kthread NAME] [TEST_NUMBER...]
 *
 * Like rust_ksm_merge, this runs against rust_ksm and (booted without the
 * module, --ksm-dir /sys/kernel/mm/ksm) against the built-in KSM, which it
 * must pass too: perf, bpftrace and monitoring scripts read these events
 * (include/trace/events/ksm.h) whichever engine runs.  Each test enables
 * its events in tracefs, empties the buffer, drives a workload that must
 * produce them and checks the fields against what it set up: pfns from
 * pagemap, the mm from this process's own ksm:ksm_enter event (pointers
 * are hashed alike within a boot), counts from the counters.
 *
 *  1. ksm_start_scan / ksm_stop_scan bracket every full scan: same seq,
 *     seq going up by one, and "rmap size" at the stop = the pages tracked
 *     (the test's 64 unique pages are all the mergeable memory).
 *  2. ksm_merge_with_ksm_page: 32 pages of one pattern merge; at least 31
 *     events "ksm pfn K ... error 0" with K the KSM page's pfn, all with
 *     this process's mm.
 *  3. ksm_remove_ksm_page / ksm_remove_rmap_item: 8 merged pages are
 *     unmapped while their KSM page is in the stable tree; when the engine
 *     finds the node stale it reports the page (its pfn) and between 1 and
 *     7 of its sharing items (upstream: the items still on the node, the
 *     first excepted).
 *  4. ksm_merge_one_page with use_zero_pages=1: 16 zero-filled pages get
 *     the zero page: events "ksm pfn Z ... error 0", Z the zero page's pfn,
 *     this process's mm, one per page.
 *  5. ksm_advisor with advisor_mode=scan-time: an event at the end of a
 *     full scan, whose pages_to_scan is what the knob then reads.
 *  6. rmap:rmap_walk (kernel patch 0003, not upstream) for the walks of a
 *     KSM page: 8 pages of one pattern in 2 VMAs merge into one KSM page;
 *     move_pages() of it to the other node walks its rmap (unmap, then
 *     remove the migration entries); each walk's event has the KSM page's
 *     pfn (before, then after), type=ksm, locked=0, ns > 0, and the
 *     remove walk calls rmap_one 8 times (visits: once per mapping, in
 *     either VMA); a plain anonymous page's migration gives type=anon
 *     walks of 1 visit.
 *
 * Seen failing: with kmm/trace.rs's wrappers made to return before firing
 * (rust_ksm as it was, when only the core's ksm_enter/ksm_exit appeared),
 * all five fail against rust_ksm ("no ksm_start_scan event", "no
 * ksm_merge_with_ksm_page event", 0 remove events, 0 of 16 zero-page
 * merges, "no ksm_advisor event"); the built-in KSM passes all five.
 * Test 6 with the counting callbacks of mm/rmap.c's rmap_walk_traced()
 * left out (visits always 0) failed against both engines ("remove walk
 * of the KSM page: 0 visits, want 8").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ksm_merge_util.h"
#include "ksm_util.h"
#include "tap.h"

#define TRACEFS "/sys/kernel/tracing"
#define MAX_EVENTS 4096

/* One event line: its name and the text after "name: ". */
struct event {
	char name[32];
	char text[160];
};

static struct event events[MAX_EVENTS];
static int nevents;

/* Empty the trace buffer (an O_TRUNC open of "trace" does). */
static int trace_clear(void)
{
	int fd = open(TRACEFS "/trace", O_WRONLY | O_TRUNC | O_CLOEXEC);

	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

/*
 * Enable exactly the events named (NULL-terminated; "ksm_x" is ksm:ksm_x,
 * "rmap/rmap_walk" says its system), empty the buffer.
 */
static int trace_on(const char *const *names)
{
	char path[128];

	if (knob_write_str(TRACEFS, "events/ksm/enable", "0") ||
	    knob_write_str(TRACEFS, "events/rmap/enable", "0") || trace_clear())
		return -1;
	for (; *names; names++) {
		snprintf(path, sizeof(path), "events/%s%s/enable",
			 strchr(*names, '/') ? "" : "ksm/", *names);
		if (knob_write_str(TRACEFS, path, "1"))
			return -1;
	}
	return knob_write_str(TRACEFS, "tracing_on", "1");
}

/* Stop the events and read the buffer into events[]. */
static int trace_read(void)
{
	char line[512];
	FILE *f;

	knob_write_str(TRACEFS, "events/ksm/enable", "0");
	knob_write_str(TRACEFS, "events/rmap/enable", "0");
	f = fopen(TRACEFS "/trace", "r");
	if (!f)
		return -1;
	nevents = 0;
	while (fgets(line, sizeof(line), f) && nevents < MAX_EVENTS) {
		char *name, *colon;

		if (line[0] == '#')
			continue;
		/* "  task-pid  [cpu] flags  ts: name: text" */
		name = strstr(line, ": ksm_");
		if (!name)
			name = strstr(line, ": rmap_walk: ");
		if (!name)
			continue;
		name += 2;
		colon = strchr(name, ':');
		if (!colon)
			continue;
		*colon = '\0';
		snprintf(events[nevents].name, sizeof(events[0].name), "%s", name);
		snprintf(events[nevents].text, sizeof(events[0].text), "%s",
			 colon + 2);
		events[nevents].text[strcspn(events[nevents].text, "\n")] = '\0';
		nevents++;
	}
	fclose(f);
	return 0;
}

static int count(const char *name)
{
	int i, n = 0;

	for (i = 0; i < nevents; i++)
		n += !strcmp(events[i].name, name);
	return n;
}

/*
 * The hashed mm of this process: MADV_MERGEABLE on a new area fires
 * ksm_enter for a process not yet mergeable (the caller's first area).
 */
static int my_mm(char *mm)
{
	int i;

	for (i = 0; i < nevents; i++)
		if (!strcmp(events[i].name, "ksm_enter") &&
		    sscanf(events[i].text, "mm %63s", mm) == 1)
			return 0;
	return -1;
}

/* The "mm" field of an event's text into MM (64 bytes): 0, or -1. */
static int event_mm(const char *text, char *mm)
{
	const char *f = strstr(text, " mm ");

	return f && sscanf(f, " mm %63s", mm) == 1 ? 0 : -1;
}

/*
 * Events NAME ("ksm pfn P rmap_item R mm M error E", both merge events)
 * that report a merge into pfn PFN with error 0 by mm MM; events NAME of
 * another mm in *OTHER_MM.
 */
static int merges_into(const char *name, long long pfn, const char *mm, int *other_mm)
{
	int i, good = 0;

	*other_mm = 0;
	for (i = 0; i < nevents; i++) {
		unsigned long epfn;
		char emm[64];
		int err;

		if (strcmp(events[i].name, name))
			continue;
		if (!event_mm(events[i].text, emm) && strcmp(emm, mm)) {
			(*other_mm)++;
			continue;
		}
		if (sscanf(events[i].text, "ksm pfn %lu rmap_item %*s mm %63s error %d",
			   &epfn, emm, &err) == 3 && err == 0 && (long long)epfn == pfn)
			good++;
	}
	return good;
}

/*
 * Each test runs in a child of a process that never becomes mergeable, so
 * that the child's mm is new to KSM when it calls MADV_MERGEABLE
 * (ksm_enter fires then, not at fork) and leaves KSM when it exits.
 */
static int in_child(int (*fn)(const char *dir), const char *dir)
{
	pid_t pid = fork();
	int status;

	if (pid == 0)
		_exit(fn(dir));
	if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return TAP_FAIL;
	return WEXITSTATUS(status);
}

static int scan_child(const char *dir)
{
	static const char *const names[] = { "ksm_start_scan", "ksm_stop_scan", NULL };
	const size_t pages = 64;
	int ret = TAP_PASS, i, starts = 0, stops = 0, last_start = -1, prev = -1;
	char *p = map_anon(pages);

	if (!p)
		return TAP_FAIL;
	for (size_t j = 0; j < pages; j++)
		fill_pattern(p + j * page_size, 3000000 + j);
	CHECK(!madvise(p, pages * page_size, MADV_MERGEABLE), "madvise");
	CHECK(!ksm_run_scans(dir, 2, 60000), "2 scans");
	CHECK(!trace_on(names), "tracefs");
	CHECK(!ksm_run_scans(dir, 3, 60000), "3 more scans");
	ksm_set(dir, "run", 0);
	CHECK(!trace_read(), "reading the trace");
	for (i = 0; i < nevents; i++) {
		int seq, size;

		if (sscanf(events[i].text, "seq %d rmap size %d", &seq, &size) != 2)
			continue;
		if (!strcmp(events[i].name, "ksm_start_scan")) {
			starts++;
			CHECK(prev < 0 || seq == prev + 1,
			      "start seq %d after seq %d", seq, prev);
			last_start = prev = seq;
		} else {
			stops++;
			CHECK(last_start < 0 || seq == last_start,
			      "stop seq %d, start seq %d", seq, last_start);
			CHECK(size == (int)pages, "rmap size %d at the stop, %zu pages",
			      size, pages);
		}
	}
	tap_diag("%d starts, %d stops", starts, stops);
	CHECK(starts >= 2, "no ksm_start_scan event (or one only)");
	CHECK(stops >= 2, "no ksm_stop_scan event (or one only)");
	munmap(p, pages * page_size);
	return ret;
}

static int merge_child(const char *dir)
{
	static const char *const names[] = { "ksm_enter", "ksm_merge_with_ksm_page", NULL };
	const size_t pages = 32;
	int ret = TAP_PASS, good = 0, other_mm = 0;
	long long kpfn;
	char mm[64];
	char *p = map_anon(pages);

	if (!p || trace_on(names))
		return TAP_FAIL;
	memset(p, 0x5c, pages * page_size);
	CHECK(!madvise(p, pages * page_size, MADV_MERGEABLE), "madvise");
	CHECK(!ksm_set(dir, "run", 1), "run=1");
	CHECK(ksm_wait_merged(dir, pages, 60000, NULL) >= 0, "merge");
	ksm_set(dir, "run", 0);
	kpfn = pagemap_pfn(0, p);
	CHECK(!trace_read(), "reading the trace");
	CHECK(!my_mm(mm), "no ksm_enter event for this process");
	good = merges_into("ksm_merge_with_ksm_page", kpfn, mm, &other_mm);
	tap_diag("%d ksm_merge_with_ksm_page events, %d into pfn %lld, %d of another mm",
		 count("ksm_merge_with_ksm_page"), good, kpfn, other_mm);
	CHECK(count("ksm_merge_with_ksm_page"), "no ksm_merge_with_ksm_page event");
	CHECK(good >= (int)pages - 1, "%d merges into the KSM page reported, want >= %zu",
	      good, pages - 1);
	CHECK(!other_mm, "events of another mm");
	munmap(p, pages * page_size);
	return ret;
}

static int remove_child(const char *dir)
{
	static const char *const names[] = { "ksm_remove_ksm_page", "ksm_remove_rmap_item",
					     NULL };
	const size_t pages = 8;
	int ret = TAP_PASS, i, removed = 0, items = 0;
	long long kpfn;
	char *a = map_anon(pages), *b = map_anon(pages);

	if (!a || !b)
		return TAP_FAIL;
	memset(a, 0x6d, pages * page_size);
	CHECK(!madvise(a, pages * page_size, MADV_MERGEABLE), "madvise");
	CHECK(!ksm_set(dir, "run", 1), "run=1");
	CHECK(ksm_wait_merged(dir, pages, 60000, NULL) >= 0, "merge");
	ksm_set(dir, "run", 0);
	kpfn = pagemap_pfn(0, a);
	CHECK(!trace_on(names), "tracefs");
	/* The KSM page goes; its node and items stay until looked at ... */
	munmap(a, pages * page_size);
	/* ... which pages of the same contents make the scanner do. */
	memset(b, 0x6d, pages * page_size);
	CHECK(!madvise(b, pages * page_size, MADV_MERGEABLE), "madvise b");
	CHECK(!ksm_set(dir, "run", 1), "run=1");
	CHECK(ksm_wait_merged(dir, pages, 60000, NULL) >= 0, "b merges");
	ksm_set(dir, "run", 0);
	CHECK(!trace_read(), "reading the trace");
	for (i = 0; i < nevents; i++) {
		unsigned long pfn;

		if (!strcmp(events[i].name, "ksm_remove_ksm_page") &&
		    sscanf(events[i].text, "pfn %lu", &pfn) == 1 && (long long)pfn == kpfn)
			removed++;
		if (!strcmp(events[i].name, "ksm_remove_rmap_item") &&
		    sscanf(events[i].text, "pfn %lu", &pfn) == 1 && (long long)pfn == kpfn)
			items++;
	}
	tap_diag("old KSM pfn %lld: %d ksm_remove_ksm_page, %d ksm_remove_rmap_item (of %d, %d)",
		 kpfn, removed, items, count("ksm_remove_ksm_page"),
		 count("ksm_remove_rmap_item"));
	CHECK(removed == 1, "ksm_remove_ksm_page for pfn %lld: %d events", kpfn, removed);
	CHECK(items >= 1 && items <= (int)pages - 1,
	      "ksm_remove_rmap_item for pfn %lld: %d events", kpfn, items);
	munmap(b, pages * page_size);
	return ret;
}

static int zero_child(const char *dir)
{
	static const char *const names[] = { "ksm_enter", "ksm_merge_one_page", NULL };
	const size_t pages = 16;
	int ret = TAP_PASS, good = 0, other_mm = 0;
	long long zpfn;
	char mm[64];
	char *p = map_anon(pages);

	if (!p || ksm_set(dir, "use_zero_pages", 1) || trace_on(names))
		return TAP_FAIL;
	/* Allocated pages that hold zeros (not the zero page yet). */
	memset(p, 1, pages * page_size);
	memset(p, 0, pages * page_size);
	CHECK(!madvise(p, pages * page_size, MADV_MERGEABLE), "madvise");
	CHECK(!ksm_set(dir, "run", 1), "run=1");
	CHECK(wait_knob_ge(dir, "ksm_zero_pages", pages, 60000, NULL) >= 0,
	      "ksm_zero_pages");
	ksm_set(dir, "run", 0);
	zpfn = pagemap_pfn(0, p);
	CHECK(!trace_read(), "reading the trace");
	CHECK(!my_mm(mm), "no ksm_enter event for this process");
	good = merges_into("ksm_merge_one_page", zpfn, mm, &other_mm);
	tap_diag("zero pfn %lld: %d of %d ksm_merge_one_page events match, %d of another mm",
		 zpfn, good, count("ksm_merge_one_page"), other_mm);
	CHECK(good == (int)pages, "%d zero-page merges reported, want %zu", good, pages);
	CHECK(!other_mm, "events of another mm");
	munmap(p, pages * page_size);
	return ret;
}

static int advisor_child(const char *dir)
{
	static const char *const names[] = { "ksm_advisor", NULL };
	const size_t pages = 64;
	unsigned long last = 0, pts;
	int ret = TAP_PASS, i, n = 0;
	char *p = map_anon(pages);

	if (!p)
		return TAP_FAIL;
	for (size_t j = 0; j < pages; j++)
		fill_pattern(p + j * page_size, 4000000 + j);
	CHECK(!madvise(p, pages * page_size, MADV_MERGEABLE), "madvise");
	CHECK(!knob_write_str(dir, "advisor_mode", "scan-time"), "advisor_mode");
	CHECK(!trace_on(names), "tracefs");
	CHECK(!ksm_run_scans(dir, 3, 60000), "3 scans");
	ksm_set(dir, "run", 0);
	CHECK(!trace_read(), "reading the trace");
	pts = (unsigned long)knob_get(dir, "pages_to_scan");
	for (i = 0; i < nevents; i++) {
		long long t;
		unsigned int cpu;

		if (!strcmp(events[i].name, "ksm_advisor") &&
		    sscanf(events[i].text, "ksm scan time %lld pages_to_scan %lu cpu percent %u",
			   &t, &last, &cpu) == 3)
			n++;
	}
	tap_diag("%d ksm_advisor events, the last pages_to_scan %lu, the knob %lu", n, last,
		 pts);
	CHECK(n >= 1, "no ksm_advisor event");
	CHECK(last == pts, "the last event's pages_to_scan %lu, the knob %lu", last, pts);
	knob_write_str(dir, "advisor_mode", "none");
	munmap(p, pages * page_size);
	return ret;
}

/* One rmap_walk event's fields. */
struct walk {
	unsigned long pfn;
	char type[8];
	int locked, stopped, contended;
	unsigned int visits;
	unsigned long long ns;
};

static int parse_walk(const struct event *e, struct walk *w)
{
	return strcmp(e->name, "rmap_walk") ||
	       sscanf(e->text, "pfn=0x%lx type=%7s locked=%d visits=%u stopped=%d contended=%d ns=%llu",
		      &w->pfn, w->type, &w->locked, &w->visits, &w->stopped,
		      &w->contended, &w->ns) != 7;
}

/*
 * The walks of the folio at pfn BEFORE, then AFTER (a migration's unmap
 * walk sees the old folio, its remove walk the new one): how many, and the
 * most VMAs one of them visited; -1 on a field that is wrong.
 */
static int walks_of(unsigned long before, unsigned long after, const char *type,
		    unsigned int *max_visits)
{
	int i, n = 0;

	*max_visits = 0;
	for (i = 0; i < nevents; i++) {
		struct walk w;

		if (parse_walk(&events[i], &w) || (w.pfn != before && w.pfn != after))
			continue;
		tap_diag("rmap_walk pfn=0x%lx type=%s locked=%d visits=%u stopped=%d contended=%d ns=%llu",
			 w.pfn, w.type, w.locked, w.visits, w.stopped, w.contended, w.ns);
		if (strcmp(w.type, type) || w.locked || !w.ns)
			return -1;
		if (w.visits > *max_visits)
			*max_visits = w.visits;
		n++;
	}
	return n;
}

static int rmap_walk_child(const char *dir)
{
	static const char *const names[] = { "rmap/rmap_walk", NULL };
	const size_t pages = 8;
	int ret = TAP_PASS, node, status, n;
	unsigned int visits;
	long long before, after;
	void *addr;
	char *p = map_anon(pages + 1), *q;

	if (!p)
		return TAP_FAIL;
	CHECK(!access(TRACEFS "/events/rmap/rmap_walk", F_OK),
	      "no rmap:rmap_walk event (kernel patch 0003)");
	memset(p, 0x3e, pages * page_size);
	/* Two VMAs: the last page read-only (the first of q's range). */
	q = p + (pages - 1) * page_size;
	CHECK(!mprotect(q, 2 * page_size, PROT_READ), "mprotect");
	CHECK(!madvise(p, pages * page_size, MADV_MERGEABLE), "madvise");
	CHECK(!ksm_set(dir, "run", 1), "run=1");
	CHECK(ksm_wait_merged(dir, pages, 60000, NULL) >= 0, "merge");
	ksm_set(dir, "run", 0);
	before = pagemap_pfn(0, p);
	CHECK(before > 0 && pagemap_pfn(0, q) == before, "one KSM page in both VMAs");
	node = page_node(0, p);
	CHECK(node >= 0, "page_node");
	node = !node;
	addr = p;
	CHECK(!trace_on(names), "tracefs");
	CHECK(!sys_move_pages(0, 1, &addr, &node, &status, MPOL_MF_MOVE_ALL_) &&
	      status == node, "move_pages of the KSM page: status %d", status);
	CHECK(!trace_read(), "reading the trace");
	after = pagemap_pfn(0, p);
	n = walks_of((unsigned long)before, (unsigned long)after, "ksm", &visits);
	tap_diag("KSM page 0x%llx -> 0x%llx: %d walks, at most %u visits", before, after, n,
		 visits);
	CHECK(n >= 0, "a wrong field in an event of the KSM page");
	CHECK(n >= 2, "%d walks of the KSM page, want >= 2 (unmap, remove)", n);
	CHECK(visits == pages, "remove walk of the KSM page: %u visits, want %zu", visits,
	      pages);

	/* The control: a plain anonymous page, one VMA. */
	q = map_anon(1);
	CHECK(q, "map");
	memset(q, 0x3f, page_size);
	before = pagemap_pfn(0, q);
	node = !page_node(0, q);
	addr = q;
	CHECK(!trace_on(names), "tracefs");
	CHECK(!sys_move_pages(0, 1, &addr, &node, &status, MPOL_MF_MOVE_) &&
	      status == node, "move_pages of an anonymous page: status %d", status);
	CHECK(!trace_read(), "reading the trace");
	n = walks_of((unsigned long)before, (unsigned long)pagemap_pfn(0, q), "anon", &visits);
	CHECK(n >= 2 && visits == 1, "anonymous page: %d walks, at most %u visits", n, visits);
	munmap(q, page_size);
	munmap(p, (pages + 1) * page_size);
	return ret;
}

static int t_scan(const char *dir)
{
	return in_child(scan_child, dir);
}

static int t_merge(const char *dir)
{
	return in_child(merge_child, dir);
}

static int t_remove(const char *dir)
{
	return in_child(remove_child, dir);
}

static int t_zero(const char *dir)
{
	return in_child(zero_child, dir);
}

static int t_advisor(const char *dir)
{
	return in_child(advisor_child, dir);
}

static int t_rmap_walk(const char *dir)
{
	if (!two_nodes())
		return tap_skip_missing("numa2", "one NUMA node");
	return in_child(rmap_walk_child, dir);
}

static const struct ksm_test tests[] = {
	{ "ksm_start_scan/ksm_stop_scan bracket every full scan", t_scan },
	{ "ksm_merge_with_ksm_page for each merge, with the KSM pfn and mm", t_merge },
	{ "ksm_remove_ksm_page/ksm_remove_rmap_item for a stale KSM page", t_remove },
	{ "ksm_merge_one_page for each zero-page merge", t_zero },
	{ "ksm_advisor at the end of a full scan, with pages_to_scan", t_advisor },
	{ "rmap:rmap_walk for a KSM page's walks: pfn, type, VMAs, time", t_rmap_walk },
};

static void trace_off(void)
{
	knob_write_str(TRACEFS, "events/ksm/enable", "0");
	knob_write_str(TRACEFS, "events/rmap/enable", "0");
	trace_clear();
}

int main(int argc, char **argv)
{
	ksm_tests_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]),
		       "tracefs, pagemap pfns", trace_off);
}
