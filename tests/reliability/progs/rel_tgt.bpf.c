// SPDX-License-Identifier: GPL-2.0
/* The target of the reliability suite's trampoline tests: an XDP program
 * whose global subprogram rel_classify() can be traced (fentry/fexit) or
 * replaced (freplace, rel_ext.bpf.c).  rel_tgt_xdp counts each packet in
 * rel_classes[class] and passes it. */
#include "pybpf.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} rel_classes SEC(".maps");

__noinline int rel_classify(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	return data + 34 > data_end ? 0 : 1;	/* shorter than Ethernet + IPv4 */
}

SEC("xdp")
int rel_tgt_xdp(struct xdp_md *ctx)
{
	__u32 cls = rel_classify(ctx) & 7;
	__u64 *c = bpf_map_lookup_elem(&rel_classes, &cls);

	if (c)
		__sync_fetch_and_add(c, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
