// SPDX-License-Identifier: GPL-2.0
/* Dereferences a map value without checking it for NULL: the verifier
 * must refuse this ("invalid mem access 'map_value_or_null'"). */
#include "pybpf.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);	/* a hash lookup may return NULL */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} vals SEC(".maps");

SEC("xdp")
int no_null_check(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&vals, &k);

	*v += 1;
	return XDP_PASS;
}

SEC("xdp")
int fine(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
