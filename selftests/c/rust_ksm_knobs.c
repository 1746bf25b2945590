// SPDX-License-Identifier: GPL-2.0
/*
 * rust_ksm_knobs: the sysfs interface of /sys/kernel/mm/rust_ksm.
 *
 * Checks the defaults first, so run it first in a boot (or right after a
 * fresh insmod); every test restores the defaults when it is done.
 * Needs the module loaded; merging is not exercised.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ksm_util.h"
#include "tap.h"

struct knob_desc {
	const char *name;
	mode_t mode;
};

static const struct knob_desc knobs[] = {
	{ "run", 0644 },
	{ "pages_to_scan", 0644 },
	{ "sleep_millisecs", 0644 },
	{ "pages_scanned", 0444 },
	{ "full_scans", 0444 },
	{ "smart_scan", 0644 },
	{ "pages_skipped", 0444 },
	{ "stable_node_chains_prune_millisecs", 0644 },
	{ "merge_across_nodes", 0644 },
	{ "advisor_mode", 0644 },
	{ "advisor_max_cpu", 0644 },
	{ "advisor_min_pages_to_scan", 0644 },
	{ "advisor_max_pages_to_scan", 0644 },
	{ "advisor_target_scan_time", 0644 },
};

/* Printable form of a written buffer for diagnostics. */
static const char *show(const char *s)
{
	static char buf[128];
	size_t o = 0;

	buf[o++] = '"';
	for (; *s && o < sizeof(buf) - 6; s++) {
		if (*s == '\n') {
			buf[o++] = '\\';
			buf[o++] = 'n';
		} else if (*s == '\t') {
			buf[o++] = '\\';
			buf[o++] = 't';
		} else {
			buf[o++] = *s;
		}
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

static int test_files(void)
{
	int ret = TAP_PASS;
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(knobs); i++) {
		char path[128];
		struct stat st;

		snprintf(path, sizeof(path), "%s/%s", RKSM_DIR, knobs[i].name);
		if (stat(path, &st)) {
			FAILED("stat %s: %s", path, strerror(errno));
			continue;
		}
		CHECK(S_ISREG(st.st_mode), "%s is not a regular file", path);
		CHECK((st.st_mode & 07777) == knobs[i].mode,
		      "%s has mode %04o, want %04o", path,
		      (unsigned int)(st.st_mode & 07777),
		      (unsigned int)knobs[i].mode);
	}
	return ret;
}

static int test_defaults(void)
{
	unsigned long long run = rk_get("run");
	unsigned long long pts = rk_get("pages_to_scan");
	unsigned long long slp = rk_get("sleep_millisecs");
	unsigned long long smart = rk_get("smart_scan");
	unsigned long long prune = rk_get("stable_node_chains_prune_millisecs");
	int ret = TAP_PASS;

	CHECK(run == DEF_RUN, "run is %llu", run);
	CHECK(pts == DEF_PAGES_TO_SCAN, "pages_to_scan is %llu", pts);
	CHECK(slp == DEF_SLEEP_MILLISECS, "sleep_millisecs is %llu", slp);
	CHECK(smart == DEF_SMART_SCAN, "smart_scan is %llu", smart);
	CHECK(prune == DEF_CHAINS_PRUNE_MS,
	      "stable_node_chains_prune_millisecs is %llu", prune);
	return ret;
}

static int test_counters_readable(void)
{
	unsigned long long v;
	int ret = TAP_PASS;
	int err;

	/* knob_read() insists on "<decimal>\n" and nothing else. */
	err = knob_read(RKSM_DIR, "pages_scanned", &v);
	CHECK(!err, "pages_scanned: %s", strerror(-err));
	err = knob_read(RKSM_DIR, "full_scans", &v);
	CHECK(!err, "full_scans: %s", strerror(-err));
	return ret;
}

struct valid_write {
	const char *in;
	unsigned long long want;
};

static int check_valid(const char *knob, const struct valid_write *tab,
		       unsigned int n)
{
	int ret = TAP_PASS;
	unsigned int i;

	for (i = 0; i < n; i++) {
		int err = knob_write_str(RKSM_DIR, knob, tab[i].in);
		unsigned long long got = rk_get(knob);

		CHECK(!err, "%s <- %s: %s", knob, show(tab[i].in),
		      strerror(-err));
		CHECK(got == tab[i].want, "%s <- %s reads back %llu, want %llu",
		      knob, show(tab[i].in), got, tab[i].want);
	}
	return ret;
}

/* Valid for both u32 knobs (kstrtouint base 10 accepts '+', leading zeros
 * and one trailing newline). */
static const struct valid_write valid_u32[] = {
	{ "0", 0 },
	{ "1", 1 },
	{ "1000\n", 1000 },
	{ "+7", 7 },
	{ "+0\n", 0 },
	{ "010", 10 },
	{ "4294967295", 4294967295ULL },
	{ "4294967294\n", 4294967294ULL },
	{ "12345", 12345 },
};

static int test_valid_pages_to_scan(void)
{
	return check_valid("pages_to_scan", valid_u32, ARRAY_SIZE(valid_u32));
}

static int test_valid_sleep_millisecs(void)
{
	return check_valid("sleep_millisecs", valid_u32, ARRAY_SIZE(valid_u32));
}

static int test_valid_run(void)
{
	static const struct valid_write tab[] = {
		{ "1", 1 }, { "0\n", 0 }, { "+2", 2 }, { "00", 0 },
		{ "1\n", 1 }, { "+0", 0 }, { "02\n", 2 }, { "0", 0 },
	};

	return check_valid("run", tab, ARRAY_SIZE(tab));
}

/* Rejected by kstrtouint(buf, 10, ...) for every knob. */
static const char *const invalid_u32[] = {
	"abc", "1x", "x1", "-1", "-0", "4294967296", "18446744073709551615",
	"18446744073709551616", "99999999999999999999",
	"\n",		/* the empty line (echo > knob) */
	" 5", "5 ", "5\n\n", "\n5", "0x10", "1e3", "1.5", "5 5", "++5", "+",
	"+-1", "\t5",
};

/* Also rejected by run: out of range. */
static const char *const invalid_run_extra[] = {
	"3", "4", "10", "+3", "4294967295", "3\n",
};

static int check_invalid(const char *knob, unsigned long long marker,
			 const char *const *tab, unsigned int n)
{
	int ret = TAP_PASS;
	unsigned int i;

	if (rk_set(knob, marker))
		return TAP_FAIL;
	for (i = 0; i < n; i++) {
		int err = knob_write_str(RKSM_DIR, knob, tab[i]);
		unsigned long long got = rk_get(knob);

		CHECK(err == -EINVAL, "%s <- %s returned %s, want EINVAL", knob,
		      show(tab[i]), err ? strerror(-err) : "success");
		CHECK(got == marker, "%s <- %s changed the value %llu -> %llu",
		      knob, show(tab[i]), marker, got);
	}
	return ret;
}

static int test_invalid_pages_to_scan(void)
{
	return check_invalid("pages_to_scan", 123, invalid_u32,
			     ARRAY_SIZE(invalid_u32));
}

static int test_invalid_sleep_millisecs(void)
{
	return check_invalid("sleep_millisecs", 45, invalid_u32,
			     ARRAY_SIZE(invalid_u32));
}

static int test_invalid_run(void)
{
	int ret = TAP_PASS;
	unsigned long long marker;

	/* From run=0 and from run=1: a rejected write must not stop, start
	 * or unmerge anything. */
	for (marker = 0; marker <= 1; marker++) {
		if (check_invalid("run", marker, invalid_u32,
				  ARRAY_SIZE(invalid_u32)) != TAP_PASS)
			ret = TAP_FAIL;
		if (check_invalid("run", marker, invalid_run_extra,
				  ARRAY_SIZE(invalid_run_extra)) != TAP_PASS)
			ret = TAP_FAIL;
	}
	return ret;
}

static int test_chains_prune(void)
{
	const char *knob = "stable_node_chains_prune_millisecs";

	if (check_valid(knob, valid_u32, ARRAY_SIZE(valid_u32)) != TAP_PASS)
		return TAP_FAIL;
	return check_invalid(knob, 1234, invalid_u32, ARRAY_SIZE(invalid_u32));
}

/* smart_scan takes kstrtobool() input, as upstream. */
static int test_smart_scan(void)
{
	static const struct valid_write valid[] = {
		{ "0", 0 }, { "1", 1 }, { "n", 0 }, { "y\n", 1 }, { "N", 0 },
		{ "Y", 1 }, { "off", 0 }, { "on\n", 1 }, { "0\n", 0 },
		{ "yes", 1 },
	};
	static const char *const invalid[] = {
		"2", "x", "o", "\n", "-1", " 1", "ox",
	};

	if (check_valid("smart_scan", valid, ARRAY_SIZE(valid)) != TAP_PASS)
		return TAP_FAIL;
	return check_invalid("smart_scan", 1, invalid, ARRAY_SIZE(invalid));
}

/* rust_ksm's own files (merge domains), which the built-in has not. */
static bool own_file(const char *name)
{
	return !strcmp(name, "merge_domain") || !strcmp(name, "merge_domain_depth") ||
	       !strcmp(name, "domains");
}

/* Every file of the built-in's directory, with its mode, and no other but
 * rust_ksm's own (own_file()). */
static int test_same_files_as_builtin(void)
{
	const char *ksm = "/sys/kernel/mm/ksm";
	unsigned int n_ksm = 0, n_ours = 0;
	int ret = TAP_PASS;
	struct dirent *de;
	DIR *d;

	d = opendir(ksm);
	if (!d)
		return tap_skip_missing("builtin-ksm", "no /sys/kernel/mm/ksm");
	while ((de = readdir(d))) {
		char a[512], b[512];
		struct stat sa, sb;

		if (de->d_name[0] == '.')
			continue;
		n_ksm++;
		snprintf(a, sizeof(a), "%s/%s", ksm, de->d_name);
		snprintf(b, sizeof(b), "%s/%s", RKSM_DIR, de->d_name);
		if (stat(a, &sa))
			continue;
		if (stat(b, &sb)) {
			FAILED("%s: %s", b, strerror(errno));
			continue;
		}
		CHECK((sa.st_mode & 07777) == (sb.st_mode & 07777),
		      "%s has mode %04o, the built-in's %04o", b,
		      (unsigned int)(sb.st_mode & 07777),
		      (unsigned int)(sa.st_mode & 07777));
	}
	closedir(d);
	d = opendir(RKSM_DIR);
	CHECK(d != NULL, "opendir %s: %s", RKSM_DIR, strerror(errno));
	while (d && (de = readdir(d)))
		if (de->d_name[0] != '.' && !own_file(de->d_name))
			n_ours++;
	if (d)
		closedir(d);
	tap_diag("%u files in %s, %u (and rust_ksm's own) in %s", n_ksm, ksm, n_ours,
		 RKSM_DIR);
	CHECK(n_ours == n_ksm, "%u files, the built-in has %u", n_ours, n_ksm);
	return ret;
}

static int test_zero_length_write(void)
{
	static const char *const rw[] = { "run", "pages_to_scan",
					  "sleep_millisecs" };
	static const unsigned long long marker[] = { 0, 77, 88 };
	int ret = TAP_PASS;
	unsigned int i;

	/* sysfs never calls ->store for a 0-byte write; whatever write()
	 * returns, nothing may change. */
	for (i = 0; i < ARRAY_SIZE(rw); i++) {
		unsigned long long got;
		int err;

		if (rk_set(rw[i], marker[i]))
			return TAP_FAIL;
		err = knob_write_raw(RKSM_DIR, rw[i], "", 0);
		got = rk_get(rw[i]);
		tap_diag("0-byte write to %s: %s", rw[i],
			 err ? strerror(-err) : "accepted");
		CHECK(got == marker[i], "%s changed %llu -> %llu", rw[i],
		      marker[i], got);
	}
	return ret;
}

static int test_read_only(void)
{
	static const char *const ro[] = { "pages_scanned", "full_scans",
					  "pages_skipped" };
	static const char *const in[] = { "0", "1", "12345\n", "abc" };
	int ret = TAP_PASS;
	unsigned int i, j;

	/* run=0 (reset before each test), so the counters stand still. */
	for (i = 0; i < ARRAY_SIZE(ro); i++) {
		unsigned long long before = rk_get(ro[i]);

		CHECK(before != KNOB_ERR, "cannot read %s", ro[i]);
		for (j = 0; j < ARRAY_SIZE(in); j++) {
			int err = knob_write_str(RKSM_DIR, ro[i], in[j]);
			unsigned long long after = rk_get(ro[i]);

			CHECK(err != 0, "write %s to read-only %s succeeded",
			      show(in[j]), ro[i]);
			CHECK(after == before, "%s changed %llu -> %llu", ro[i],
			      before, after);
		}
	}
	return ret;
}

static int test_run_transitions(void)
{
	/* 0->1->0->2->0, then 1->2, 2->1, 1->1, 2->2, 2->0. */
	static const unsigned int seq[] = { 0, 1, 0, 2, 0, 1, 2, 1, 1, 2, 2, 0 };
	int ret = TAP_PASS;
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(seq); i++) {
		unsigned long long prev = rk_get("run");
		int err = knob_write_ull(RKSM_DIR, "run", seq[i]);
		unsigned long long got = rk_get("run");

		CHECK(!err, "run %llu -> %u: %s", prev, seq[i], strerror(-err));
		CHECK(got == seq[i], "run %llu -> %u reads back %llu", prev,
		      seq[i], got);
	}
	return ret;
}

static int test_independent_of_builtin(void)
{
	unsigned long long b_pts = knob_get(KSM_DIR, "pages_to_scan");
	unsigned long long b_slp = knob_get(KSM_DIR, "sleep_millisecs");
	unsigned long long b_run = knob_get(KSM_DIR, "run");
	int ret = TAP_PASS;

	if (b_pts == KNOB_ERR || b_slp == KNOB_ERR || b_run == KNOB_ERR)
		return tap_skip_because("no readable " KSM_DIR);
	CHECK(!rk_set("pages_to_scan", b_pts + 7), "write pages_to_scan");
	CHECK(!rk_set("sleep_millisecs", b_slp + 9), "write sleep_millisecs");
	CHECK(!rk_set("run", 1), "write run");
	CHECK(knob_get(KSM_DIR, "pages_to_scan") == b_pts,
	      "built-in pages_to_scan followed rust_ksm's");
	CHECK(knob_get(KSM_DIR, "sleep_millisecs") == b_slp,
	      "built-in sleep_millisecs followed rust_ksm's");
	CHECK(knob_get(KSM_DIR, "run") == b_run,
	      "built-in run followed rust_ksm's");
	return ret;
}

static const struct tap_test tests[] = {
	{ "defaults: run=0 pages_to_scan=100 sleep_millisecs=20 smart_scan=1 ...", test_defaults },
	{ "knob files exist with upstream modes", test_files },
	{ "counters read as one decimal line", test_counters_readable },
	{ "valid writes to pages_to_scan read back", test_valid_pages_to_scan },
	{ "valid writes to sleep_millisecs read back", test_valid_sleep_millisecs },
	{ "valid writes to run read back", test_valid_run },
	{ "invalid writes to pages_to_scan: EINVAL, unchanged", test_invalid_pages_to_scan },
	{ "invalid writes to sleep_millisecs: EINVAL, unchanged", test_invalid_sleep_millisecs },
	{ "invalid writes to run: EINVAL, unchanged", test_invalid_run },
	{ "stable_node_chains_prune_millisecs: u32 writes, EINVAL otherwise", test_chains_prune },
	{ "smart_scan: kstrtobool writes, EINVAL otherwise", test_smart_scan },
	{ "the same files, with the same modes, as /sys/kernel/mm/ksm", test_same_files_as_builtin },
	{ "zero-length writes change nothing", test_zero_length_write },
	{ "read-only counters reject writes", test_read_only },
	{ "run transitions 0->1->0->2->0, 1->2, 2->1 read back", test_run_transitions },
	{ "rust_ksm knobs do not touch /sys/kernel/mm/ksm", test_independent_of_builtin },
};

int main(void)
{
	tap_run(tests, ARRAY_SIZE(tests), rk_reset);
}
