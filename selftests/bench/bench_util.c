// SPDX-License-Identifier: GPL-2.0
#include <stdio.h>

#include "bench_util.h"

const char *engine;
int missing;

void result(const char *name, double v, int ok, const char *fmt,
	    const char *unit)
{
	char buf[64];

	if (ok)
		snprintf(buf, sizeof(buf), fmt, v);
	else
		snprintf(buf, sizeof(buf), "NA");
	printf("RESULT %s %s %s %s\n", engine, name, buf, unit);
	fflush(stdout);
	if (!ok)
		missing++;
}
