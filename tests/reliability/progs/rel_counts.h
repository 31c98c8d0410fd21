/* SPDX-License-Identifier: GPL-2.0 */
/* The reliability suite's packet counters, shared by its XDP program
 * (rel_hyg.bpf.c) and its tc component (rel_tc.bpf.c): rel_counts[0] counts
 * frames of up to 100 bytes, rel_counts[1] longer ones. */
#pragma once

struct rel_counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct rel_counter);
} rel_counts SEC(".maps");

static __always_inline void rel_count(__u32 len)
{
	__u32 k = len > 100 ? 1 : 0;
	struct rel_counter *c = bpf_map_lookup_elem(&rel_counts, &k);

	if (c) {
		__sync_fetch_and_add(&c->packets, 1);
		__sync_fetch_and_add(&c->bytes, len);
	}
}
