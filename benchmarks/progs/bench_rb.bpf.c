// SPDX-License-Identifier: GPL-2.0
/* Producer for bench_ringbuf.py: one 16-byte record per run into a 32 MiB
 * ring buffer. */
#include "pybpf.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 25);
} rb SEC(".maps");

__u64 seq = 0;

SEC("xdp")
int produce(struct xdp_md *ctx)
{
	__u64 *r = bpf_ringbuf_reserve(&rb, 16, 0);

	if (!r)
		return XDP_ABORTED;
	r[0] = seq++;
	r[1] = ctx->data_end - ctx->data;
	bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
