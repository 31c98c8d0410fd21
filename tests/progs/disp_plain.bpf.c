// SPDX-License-Identifier: GPL-2.0
/* Dispatcher component without run-config metadata (libxdp's defaults apply:
 * priority 50, chain call on XDP_PASS); counts packets, returns `verdict`. */
#include "pybpf.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

const volatile __u32 verdict = XDP_PASS;

SEC("xdp")
int disp_plain(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *h = bpf_map_lookup_elem(&hits, &zero);

	if (h)
		__sync_fetch_and_add(h, 1);
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
