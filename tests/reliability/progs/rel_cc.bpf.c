// SPDX-License-Identifier: GPL-2.0
/* The smallest TCP congestion control: a fixed window.  Registered as
 * "relcc" through a link (.struct_ops.link) or, with -DREL_PLAIN, by map
 * update (.struct_ops: the registration outlives the process). */
#include "pybpf.bpf.h"

SEC("struct_ops")
__u32 BPF_PROG(rel_ssthresh, struct sock *sk)
{
	return 10;
}

SEC("struct_ops")
__u32 BPF_PROG(rel_undo_cwnd, struct sock *sk)
{
	return 10;
}

SEC("struct_ops")
void BPF_PROG(rel_cong_avoid, struct sock *sk, __u32 ack, __u32 acked)
{
}

#ifdef REL_PLAIN
SEC(".struct_ops")
#else
SEC(".struct_ops.link")
#endif
struct tcp_congestion_ops rel_cc = {
	.ssthresh = (void *)rel_ssthresh,
	.undo_cwnd = (void *)rel_undo_cwnd,
	.cong_avoid = (void *)rel_cong_avoid,
	.name = "relcc",
};

char LICENSE[] SEC("license") = "GPL";
