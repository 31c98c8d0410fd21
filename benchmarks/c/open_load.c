// SPDX-License-Identifier: BSD-2-Clause
/* C baseline of bench_open_load.py: bpf_object__open_file + load + close of
 * one object, N times.   open_load OBJ N   -> "<seconds per open+load>" */
#include <bpf/libbpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	return 0;
}

/* CPU time of this process by default (the machines are shared: wall time
 * counts waiting for a CPU); BENCH_CLOCK=wall for wall-clock time. */
static double now(void)
{
	static int wall = -1;
	struct timespec ts;

	if (wall < 0)
		wall = getenv("BENCH_CLOCK") && !strcmp(getenv("BENCH_CLOCK"), "wall");
	clock_gettime(wall ? CLOCK_MONOTONIC : CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct bpf_object *obj;
	int i, n;
	double t0, t;

	if (argc != 3) {
		fprintf(stderr, "usage: %s OBJ N\n", argv[0]);
		return 2;
	}
	libbpf_set_print(quiet);
	n = atoi(argv[2]);
	t0 = now();
	for (i = 0; i < n; i++) {
		obj = bpf_object__open_file(argv[1], NULL);
		if (!obj) {
			perror("open");
			return 1;
		}
		if (bpf_object__load(obj)) {
			perror("load");
			return 1;
		}
		bpf_object__close(obj);
	}
	t = now() - t0;
	printf("%.6f\n", t / n);
	return 0;
}
