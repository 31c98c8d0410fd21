// SPDX-License-Identifier: GPL-2.0
/* A minimal TCP congestion control (Reno-like) for the CLI's struct-ops
 * commands: registered with `.struct_ops` (map update), so the registration
 * outlives the command until `struct-ops unregister`. */
#include "pybpf.bpf.h"

char LICENSE[] SEC("license") = "GPL";

SEC("struct_ops/cli_cc_ssthresh")
__u32 BPF_PROG(cli_cc_ssthresh, struct sock *sk)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;

	return tp->snd_cwnd > 4 ? tp->snd_cwnd >> 1 : 2;
}

SEC("struct_ops/cli_cc_cong_avoid")
void BPF_PROG(cli_cc_cong_avoid, struct sock *sk, __u32 ack, __u32 acked)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;

	if (tp->snd_cwnd < tp->snd_cwnd_clamp)
		tp->snd_cwnd += 1;
}

SEC("struct_ops/cli_cc_undo_cwnd")
__u32 BPF_PROG(cli_cc_undo_cwnd, struct sock *sk)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;

	return tp->snd_cwnd;
}

SEC(".struct_ops")
struct tcp_congestion_ops cli_cc = {
	.ssthresh = (void *)cli_cc_ssthresh,
	.cong_avoid = (void *)cli_cc_cong_avoid,
	.undo_cwnd = (void *)cli_cc_undo_cwnd,
	.name = "pybpf_cli_cc",
};
