// SPDX-License-Identifier: GPL-2.0
/* The reliability suite's tc (sched_cls) dispatcher component: counts
 * packets in rel_counts (rel_counts.h, shared with rel_hyg.bpf.c) and returns
 * TC_ACT_OK, on which the tc dispatcher chains to the next component. */
#include "pybpf.bpf.h"
#include "rel_counts.h"

SEC("tc")
int rel_tc(struct __sk_buff *skb)
{
	rel_count(skb->len);
	return 0;	/* TC_ACT_OK */
}

char LICENSE[] SEC("license") = "GPL";
