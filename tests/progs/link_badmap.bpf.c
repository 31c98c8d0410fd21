// SPDX-License-Identifier: GPL-2.0
/* Static linking: declares the extern map 'shared' with another shape than
 * link_lib's definition (HASH of 8 vs ARRAY of 4). */
#include "pybpf.bpf.h"

extern struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} shared SEC(".maps");

SEC("xdp")
int use_shared(struct xdp_md *ctx)
{
	__u32 k = 0;

	return bpf_map_lookup_elem(&shared, &k) ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
