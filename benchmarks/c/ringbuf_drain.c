// SPDX-License-Identifier: BSD-2-Clause
/* C baseline of bench_ringbuf.py: fill a ring buffer map (given by id) by
 * test-running a producer program (given by id) REPEAT times, then time
 * draining it with ring_buffer__consume and a callback that reads each
 * record.  ROUNDS fill/drain cycles.
 *   ringbuf_drain MAP_ID PROG_ID REPEAT ROUNDS  -> "<records per second> <records per round>" */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t seen, sum;

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

static int on_record(void *ctx, void *data, size_t size)
{
	sum += *(uint64_t *)data;	/* read the record, as any consumer does */
	seen++;
	return 0;
}

int main(int argc, char **argv)
{
	unsigned char pkt[64] = {};
	struct ring_buffer *rb;
	int map_fd, prog_fd, rounds, r;
	uint64_t total = 0, per_round = 0, before;
	double busy = 0, t0;

	if (argc != 5) {
		fprintf(stderr, "usage: %s MAP_ID PROG_ID REPEAT ROUNDS\n", argv[0]);
		return 2;
	}
	map_fd = bpf_map_get_fd_by_id(atoi(argv[1]));
	prog_fd = bpf_prog_get_fd_by_id(atoi(argv[2]));
	if (map_fd < 0 || prog_fd < 0) {
		perror("get fd by id");
		return 1;
	}
	rounds = atoi(argv[4]);
	rb = ring_buffer__new(map_fd, on_record, NULL, NULL);
	if (!rb) {
		perror("ring_buffer__new");
		return 1;
	}
	ring_buffer__consume(rb);	/* start empty */
	for (r = 0; r < rounds; r++) {
		LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = pkt, .data_size_in = sizeof(pkt),
			    .repeat = atoi(argv[3]));
		if (bpf_prog_test_run_opts(prog_fd, &opts)) {
			perror("test_run");
			return 1;
		}
		before = seen;
		t0 = now();
		ring_buffer__consume(rb);
		busy += now() - t0;
		per_round = seen - before;
		total += per_round;
	}
	ring_buffer__free(rb);
	printf("%.1f %llu %llu\n", total / busy, (unsigned long long)per_round, (unsigned long long)sum);
	return 0;
}
