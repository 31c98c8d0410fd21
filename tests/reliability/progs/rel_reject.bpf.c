// SPDX-License-Identifier: GPL-2.0
/* Refused by the verifier (a map value used without a NULL check): the
 * failed-load paths of the hygiene tests. */
#include "pybpf.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rel_rvals SEC(".maps");

SEC("xdp")
int rel_bad(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&rel_rvals, &k);

	*v += 1;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
