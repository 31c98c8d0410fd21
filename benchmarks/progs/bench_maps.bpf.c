// SPDX-License-Identifier: GPL-2.0
/* Maps for bench_maps.py: u32 -> u64 array and hash for single-element
 * operations, and a 1M-entry hash for batch lookups. */
#include "pybpf.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} arr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, __u32);
	__type(value, __u64);
} big SEC(".maps");

SEC("xdp")
int touch(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&arr, &k);

	if (v)
		*v += 1;
	v = bpf_map_lookup_elem(&hash, &k);
	if (v)
		*v += 1;
	v = bpf_map_lookup_elem(&big, &k);
	if (v)
		*v += 1;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
