// SPDX-License-Identifier: GPL-2.0
/* The target of program extensions and of fentry/fexit on BPF programs.
 *
 * xdp_classify() asks the global function classify() for a class and counts
 * the packet in class_count[class].  classify() is global, so it is verified
 * on its own and can be replaced by an extension (freplace) or traced
 * (fentry/fexit); adjust() is static, so it can be neither replaced nor
 * extended. */
#include "pybpf.bpf.h"

#define NCLASS 8
#define CLASS_SHORT 0
#define CLASS_DEFAULT 1

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NCLASS);
	__type(key, __u32);
	__type(value, __u64);
} class_count SEC(".maps");

__noinline int classify(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	/* shorter than Ethernet + IPv4 headers */
	if (data + sizeof(struct ethhdr) + sizeof(struct iphdr) > data_end)
		return CLASS_SHORT;
	return CLASS_DEFAULT;
}

static __noinline int adjust(int cls)
{
	/* keep the class inside the map (and give the compiler a reason to
	 * keep this a real, static subprogram) */
	if (cls < 0 || cls >= NCLASS)
		return NCLASS - 1;
	return cls;
}

SEC("xdp")
int xdp_classify(struct xdp_md *ctx)
{
	__u32 cls = adjust(classify(ctx));
	__u64 *c = bpf_map_lookup_elem(&class_count, &cls);

	if (c)
		__sync_fetch_and_add(c, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
