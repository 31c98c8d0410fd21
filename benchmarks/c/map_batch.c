// SPDX-License-Identifier: BSD-2-Clause
/* C baseline of bench_maps.py's batch lookup: read every element of a hash
 * map (given by id) with BPF_MAP_LOOKUP_BATCH in chunks, `rounds` times.
 *   map_batch MAP_ID CHUNK ROUNDS            -> "<entries per second> <entries per round>" */
#include <bpf/bpf.h>
#include <errno.h>
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
	struct bpf_map_info info = {};
	uint32_t len = sizeof(info), chunk, count;
	uint64_t in_b, out_b, total = 0, per_round = 0;
	int fd, rounds, r, err, first;
	char *keys, *vals, *all_k, *all_v;
	size_t cap, used;
	double t0, t;

	if (argc != 4) {
		fprintf(stderr, "usage: %s MAP_ID CHUNK ROUNDS\n", argv[0]);
		return 2;
	}
	fd = bpf_map_get_fd_by_id(atoi(argv[1]));
	if (fd < 0 || bpf_obj_get_info_by_fd(fd, &info, &len)) {
		perror("map");
		return 1;
	}
	chunk = strtoul(argv[2], NULL, 0);
	rounds = atoi(argv[3]);
	keys = malloc((size_t)chunk * info.key_size);
	vals = malloc((size_t)chunk * info.value_size);
	/* Like the Python side, gather everything into one key and one value array. */
	cap = (size_t)info.max_entries;
	all_k = malloc(cap * info.key_size);
	all_v = malloc(cap * info.value_size);
	t0 = now();
	for (r = 0; r < rounds; r++) {
		first = 1;
		used = 0;
		for (;;) {
			count = chunk;
			err = bpf_map_lookup_batch(fd, first ? NULL : &in_b, &out_b, keys, vals, &count, NULL);
			if (err && errno != ENOENT) {
				perror("lookup_batch");
				return 1;
			}
			if (used + count <= cap) {
				memcpy(all_k + used * info.key_size, keys, (size_t)count * info.key_size);
				memcpy(all_v + used * info.value_size, vals, (size_t)count * info.value_size);
			}
			used += count;
			if (err)
				break;
			first = 0;
			in_b = out_b;
		}
		total += used;
		per_round = used;
	}
	t = now() - t0;
	printf("%.1f %llu\n", total / t, (unsigned long long)per_round);
	return 0;
}
