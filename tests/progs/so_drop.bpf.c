// SPDX-License-Identifier: GPL-2.0
/* XDP (generic mode on lo in a test namespace): drop every Nth TCP segment
 * carrying data to or from port ``port``, so that congestion controls see
 * losses and their ssthresh/set_state callbacks run. */
#include "pybpf.bpf.h"

char LICENSE[] SEC("license") = "GPL";

volatile __u32 drop_every = 0;   /* 0: drop nothing */
volatile __u16 port = 0;         /* host byte order */
__u64 seen = 0, dropped = 0;

SEC("xdp")
int so_drop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct tcphdr *tcp;
	__u32 hdr;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_TCP)
		return XDP_PASS;
	tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > end)
		return XDP_PASS;
	if (tcp->dest != bpf_htons(port) && tcp->source != bpf_htons(port))
		return XDP_PASS;
	hdr = ip->ihl * 4 + tcp->doff * 4;
	if (bpf_ntohs(ip->tot_len) <= hdr)      /* no payload: let ACKs through */
		return XDP_PASS;
	if (drop_every && __sync_fetch_and_add(&seen, 1) % drop_every == drop_every - 1) {
		__sync_fetch_and_add(&dropped, 1);
		return XDP_DROP;
	}
	return XDP_PASS;
}
