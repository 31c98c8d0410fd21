// SPDX-License-Identifier: GPL-2.0
/* Producers for the ring buffer and perf buffer consumer tests: every run
 * emits one numbered record; a ring buffer record that cannot be reserved is
 * counted in `dropped` (the kernel keeps no such count for ring buffers). */
#include "pybpf.bpf.h"

struct rec {
	__u64 seq;
	__u32 len;
	__u32 cpu;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096 * 4);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(int));
	__uint(value_size, sizeof(int));
} perf_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

__u64 seq = 0;
__u64 pseq = 0;

static __always_inline void count_drop(void)
{
	__u32 k = 0;
	__u64 *d = bpf_map_lookup_elem(&dropped, &k);

	if (d)
		__sync_fetch_and_add(d, 1);
}

SEC("xdp")
int rb_produce(struct xdp_md *ctx)
{
	struct rec *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);

	if (!r) {
		count_drop();
		return XDP_PASS;
	}
	r->seq = __sync_fetch_and_add(&seq, 1);
	r->len = ctx->data_end - ctx->data;
	r->cpu = bpf_get_smp_processor_id();
	bpf_ringbuf_submit(r, 0);
	return XDP_PASS;
}

/* Records of varying size: the first ((packet length & 31) + 8) bytes of a
 * pattern, so batches mix sizes. */
SEC("xdp")
int rb_produce_var(struct xdp_md *ctx)
{
	__u8 buf[48];
	__u32 len = ctx->data_end - ctx->data;
	__u64 n = (len & 31) + 8;
	int i;

	for (i = 0; i < 48; i++)
		buf[i] = i;
	if (bpf_ringbuf_output(&events, buf, n, 0))
		count_drop();
	return XDP_PASS;
}

SEC("xdp")
int pb_produce(struct xdp_md *ctx)
{
	struct rec r = {};

	r.seq = __sync_fetch_and_add(&pseq, 1);
	r.len = ctx->data_end - ctx->data;
	r.cpu = bpf_get_smp_processor_id();
	bpf_perf_event_output(ctx, &perf_events, BPF_F_CURRENT_CPU, &r, sizeof(r));
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
