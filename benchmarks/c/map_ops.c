// SPDX-License-Identifier: BSD-2-Clause
/* C baseline of bench_maps.py: single-element lookups/updates on a map given
 * by id, u32 keys cycling over `span` entries, u64 values.
 *   map_ops MAP_ID lookup|update N SPAN      -> "<ops per second>" */
#include <bpf/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
	uint64_t n, i, sum = 0, v;
	uint32_t span, k;
	int fd, update;
	double t0, t;

	if (argc != 5) {
		fprintf(stderr, "usage: %s MAP_ID lookup|update N SPAN\n", argv[0]);
		return 2;
	}
	fd = bpf_map_get_fd_by_id(atoi(argv[1]));
	if (fd < 0) {
		perror("bpf_map_get_fd_by_id");
		return 1;
	}
	update = !strcmp(argv[2], "update");
	n = strtoull(argv[3], NULL, 0);
	span = strtoul(argv[4], NULL, 0);
	t0 = now();
	for (i = 0; i < n; i++) {
		k = i % span;
		if (update) {
			v = i;
			if (bpf_map_update_elem(fd, &k, &v, BPF_ANY)) {
				perror("update");
				return 1;
			}
		} else {
			if (bpf_map_lookup_elem(fd, &k, &v)) {
				perror("lookup");
				return 1;
			}
			sum += v;
		}
	}
	t = now() - t0;
	printf("%.1f %llu\n", n / t, (unsigned long long)sum);
	return 0;
}
