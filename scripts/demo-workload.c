// SPDX-License-Identifier: GPL-2.0
/*
 * Demo workload for `make run`: maps NR pages of MADV_MERGEABLE memory
 * filled with a few repeating patterns (plus some unique pages), reports
 * readiness on stdout and sleeps until killed, checking its data on SIGTERM.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static unsigned char pattern_of(size_t i)
{
	/* Every 8th page is unique; the rest use one of 4 patterns. */
	return i % 8 == 7 ? (unsigned char)(16 + i) : (unsigned char)(i % 4);
}

int main(int argc, char **argv)
{
	size_t nr = argc > 1 ? strtoul(argv[1], NULL, 0) : 8192;
	size_t psz = sysconf(_SC_PAGESIZE), i, bad = 0;
	unsigned char *map;

	map = mmap(NULL, nr * psz, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (i = 0; i < nr; i++)
		memset(map + i * psz, pattern_of(i), psz);
	if (madvise(map, nr * psz, MADV_MERGEABLE)) {
		perror("madvise(MADV_MERGEABLE)");
		return 1;
	}
	signal(SIGTERM, on_term);
	printf("demo-workload: %zu pages (%zu MiB) MADV_MERGEABLE, pid %d\n",
	       nr, nr * psz >> 20, getpid());
	fflush(stdout);
	while (!stop)
		pause();
	for (i = 0; i < nr; i++)
		if (map[i * psz] != pattern_of(i) ||
		    map[i * psz + psz - 1] != pattern_of(i))
			bad++;
	printf("demo-workload: data check: %zu bad pages\n", bad);
	return bad != 0;
}
