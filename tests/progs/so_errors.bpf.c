// SPDX-License-Identifier: GPL-2.0
/* struct_ops objects the kernel or libbpf must refuse, one per -DCASE_...:
 *   CASE_NONZERO        a non-function member (key) is non-zero
 *   CASE_UNKNOWN_MEMBER a member the kernel's tcp_congestion_ops lacks
 *   CASE_MISSING_OP     no ssthresh/undo_cwnd (mandatory operations)
 *   CASE_LICENSE        a non-GPL program
 *   CASE_HELPER         a helper tcp_congestion_ops programs may not call
 *   CASE_BUILTIN_NAME   the name of a congestion control built into the kernel
 * Without a CASE it is a valid minimal Reno-like struct named "pybpf_so_ok". */
#ifdef CASE_UNKNOWN_MEMBER
#define tcp_congestion_ops tcp_congestion_ops___kernel
#endif
#include "pybpf.bpf.h"
#ifdef CASE_UNKNOWN_MEMBER
#undef tcp_congestion_ops
struct tcp_congestion_ops {
	__u32 (*ssthresh)(struct sock *sk);
	void (*cong_avoid)(struct sock *sk, __u32 ack, __u32 acked);
	__u32 (*undo_cwnd)(struct sock *sk);
	char name[16];
	__u32 pybpf_no_such_member;
};
#endif

#ifdef CASE_LICENSE
char LICENSE[] SEC("license") = "Proprietary";
#else
char LICENSE[] SEC("license") = "GPL";
#endif

__u64 calls = 0;

#ifndef CASE_MISSING_OP
SEC("struct_ops/e_ssthresh")
__u32 BPF_PROG(e_ssthresh, struct sock *sk)
{
	__u32 cwnd = ((struct tcp_sock *)sk)->snd_cwnd;

	return cwnd > 4 ? cwnd / 2 : 2;
}

SEC("struct_ops/e_undo_cwnd")
__u32 BPF_PROG(e_undo_cwnd, struct sock *sk)
{
	return ((struct tcp_sock *)sk)->snd_cwnd;
}
#endif

SEC("struct_ops/e_cong_avoid")
void BPF_PROG(e_cong_avoid, struct sock *sk, __u32 ack, __u32 acked)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;

	__sync_fetch_and_add(&calls, 1);
#ifdef CASE_HELPER
	bpf_redirect(1, 0);
#endif
	if (tp->snd_cwnd < tp->snd_cwnd_clamp)
		tp->snd_cwnd = tp->snd_cwnd + 1;
}

SEC(".struct_ops")
struct tcp_congestion_ops so_err = {
#ifndef CASE_MISSING_OP
	.ssthresh = (void *)e_ssthresh,
	.undo_cwnd = (void *)e_undo_cwnd,
#endif
	.cong_avoid = (void *)e_cong_avoid,
#ifdef CASE_NONZERO
	.key = 5,
#endif
#ifdef CASE_UNKNOWN_MEMBER
	.pybpf_no_such_member = 1,
#endif
#if defined(CASE_BUILTIN_NAME)
	.name = "reno",
#elif defined(CASE_NONE)
	.name = "pybpf_so_ok",
#else
	.name = "pybpf_so_err",
#endif
};
