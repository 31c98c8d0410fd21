// SPDX-License-Identifier: GPL-2.0
/* Counts packets and bytes per protocol class at XDP, and passes them on. */
#include "pybpf.bpf.h"

enum proto_class {
	CLASS_OTHER = 0,
	CLASS_ARP,
	CLASS_IPV4_ICMP,
	CLASS_IPV4_TCP,
	CLASS_IPV4_UDP,
	CLASS_IPV4_OTHER,
	CLASS_IPV6,
	CLASS_MAX,
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CLASS_MAX);
	__type(key, __u32);	/* an enum proto_class; array keys must be 32-bit ints */
	__type(value, struct counter);
} counts SEC(".maps");

/* Set from userspace before load: the XDP action for every packet. */
const volatile __u32 verdict = XDP_PASS;
__u64 seen = 0;

static __always_inline enum proto_class classify(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end)
		return CLASS_OTHER;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return CLASS_ARP;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return CLASS_IPV6;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return CLASS_OTHER;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return CLASS_OTHER;
	switch (ip->protocol) {
	case IPPROTO_ICMP: return CLASS_IPV4_ICMP;
	case IPPROTO_TCP: return CLASS_IPV4_TCP;
	case IPPROTO_UDP: return CLASS_IPV4_UDP;
	default: return CLASS_IPV4_OTHER;
	}
}

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 cls = classify(data, data_end);
	struct counter *c = bpf_map_lookup_elem(&counts, &cls);

	if (c) {
		__sync_fetch_and_add(&c->packets, 1);
		__sync_fetch_and_add(&c->bytes, data_end - data);
	}
	__sync_fetch_and_add(&seen, 1);
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
