// SPDX-License-Identifier: GPL-2.0
/* Two implementations of one TCP congestion control name, "pybpf_swap", in
 * SEC(".struct_ops.link") maps swap_a and swap_b: a link registered with
 * one can be updated in place to the other.  Each counts its own calls. */
#include "pybpf.bpf.h"

char LICENSE[] SEC("license") = "GPL";

__u64 calls_a = 0, calls_b = 0, init_a = 0, init_b = 0;

#define RENO_LIKE(X)                                                            \
SEC("struct_ops/" #X "_init")                                                  \
void BPF_PROG(X##_init, struct sock *sk)                                        \
{                                                                               \
	__sync_fetch_and_add(&init_##X, 1);                                     \
}                                                                               \
SEC("struct_ops/" #X "_ssthresh")                                              \
__u32 BPF_PROG(X##_ssthresh, struct sock *sk)                                   \
{                                                                               \
	__u32 cwnd = ((struct tcp_sock *)sk)->snd_cwnd;                         \
	return cwnd > 4 ? cwnd / 2 : 2;                                         \
}                                                                               \
SEC("struct_ops/" #X "_undo_cwnd")                                             \
__u32 BPF_PROG(X##_undo_cwnd, struct sock *sk)                                  \
{                                                                               \
	return ((struct tcp_sock *)sk)->snd_cwnd;                               \
}                                                                               \
SEC("struct_ops/" #X "_cong_avoid")                                            \
void BPF_PROG(X##_cong_avoid, struct sock *sk, __u32 ack, __u32 acked)          \
{                                                                               \
	struct tcp_sock *tp = (struct tcp_sock *)sk;                            \
	__sync_fetch_and_add(&calls_##X, 1);                                    \
	if (tp->snd_cwnd < tp->snd_cwnd_clamp)                                  \
		tp->snd_cwnd = tp->snd_cwnd + 1;                                \
}                                                                               \
SEC(".struct_ops.link")                                                         \
struct tcp_congestion_ops swap_##X = {                                          \
	.init = (void *)X##_init,                                               \
	.ssthresh = (void *)X##_ssthresh,                                       \
	.undo_cwnd = (void *)X##_undo_cwnd,                                     \
	.cong_avoid = (void *)X##_cong_avoid,                                   \
	.name = "pybpf_swap",                                                   \
};

RENO_LIKE(a)
RENO_LIKE(b)
