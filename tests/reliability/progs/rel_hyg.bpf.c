// SPDX-License-Identifier: GPL-2.0
/* The reliability suite's own XDP program: counts packets per class and
 * returns a verdict set from userspace.  Every name starts with "rel_" so
 * leftover checks can tell this suite's kernel objects from anyone else's. */
#include "pybpf.bpf.h"
#include "rel_counts.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} rel_hash SEC(".maps");

/* Written only from userspace: the concurrency tests' shared map. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct rel_counter);
} rel_pairs SEC(".maps");

const volatile __u32 rel_verdict = XDP_PASS;
__u64 rel_seen = 0;

SEC("xdp")
int rel_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	rel_count(data_end - data);
	__sync_fetch_and_add(&rel_seen, 1);
	return rel_verdict;
}

char LICENSE[] SEC("license") = "GPL";
