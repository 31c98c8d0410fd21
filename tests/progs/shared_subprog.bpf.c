// SPDX-License-Identifier: GPL-2.0
/* One global subprogram, account(), called by programs of two types (XDP and
 * tc) that share the map it writes.  libbpf copies the subprogram into each
 * program; the verifier checks it once per caller; the map is shared. */
#include "pybpf.bpf.h"

#define KIND_XDP 0
#define KIND_TC 1

struct stats {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct stats);
} shared_stats SEC(".maps");

__noinline int account(__u32 kind, __u32 len)
{
	struct stats *s = bpf_map_lookup_elem(&shared_stats, &kind);

	if (!s)
		return -1;
	__sync_fetch_and_add(&s->packets, 1);
	__sync_fetch_and_add(&s->bytes, len);
	return kind;
}

SEC("xdp")
int shared_xdp(struct xdp_md *ctx)
{
	account(KIND_XDP, ctx->data_end - ctx->data);
	return XDP_PASS;
}

SEC("tc")
int shared_tc(struct __sk_buff *skb)
{
	account(KIND_TC, skb->len);
	return 0;	/* TC_ACT_OK */
}

char LICENSE[] SEC("license") = "GPL";
