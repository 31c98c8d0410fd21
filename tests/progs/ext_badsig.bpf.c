// SPDX-License-Identifier: GPL-2.0
/* Extensions whose signatures do not match classify(struct xdp_md *):
 * one argument too many, and a pointer to the wrong context. */
#include "pybpf.bpf.h"

SEC("freplace")
int extra_arg(struct xdp_md *ctx, int weight)
{
	return weight;
}

SEC("freplace")
int wrong_ctx(struct __sk_buff *skb)
{
	return skb->len > 100;
}

char LICENSE[] SEC("license") = "GPL";
