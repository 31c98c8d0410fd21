// SPDX-License-Identifier: GPL-2.0
/* A DCTCP-like TCP congestion control written as a BPF struct_ops.
 *
 * The sender keeps an estimate ``alpha`` of the fraction of bytes that were
 * ECN-marked (CE) over about one window, and on congestion cuts the window by
 * alpha/2 instead of half.  Without ECN marks (loopback), alpha decays to 0
 * and the algorithm behaves like Reno with a gentler cut.
 *
 * It registers as "pybpf_dctcp" (SEC(".struct_ops.link"): pybpf registers it
 * through a BPF link where the kernel has them, 6.4+, else by map update).
 * Every callback counts its calls in ``stats`` (a global variable) so tests
 * can prove it ran on a connection.  No __kconfig externs, no kfuncs: it
 * loads unchanged on 6.1 .. 7.x.
 */
#include "pybpf.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define DCTCP_MAX_ALPHA 1024U
#define DCTCP_SHIFT_G 4U
#define TCP_CONG_NEEDS_ECN 0x2
#define TCP_ECN_DEMAND_CWR 4
#define TCP_INFINITE_SSTHRESH 0x7fffffff

/* Per-connection state, in icsk_ca_priv (at most 104 bytes). */
struct pybpf_dctcp_ca {
	__u32 old_delivered;
	__u32 old_delivered_ce;
	__u32 prior_rcv_nxt;
	__u32 dctcp_alpha;
	__u32 next_seq;
	__u32 ce_state;
	__u32 loss_cwnd;
};

/* Call counters of every callback, readable as obj.variables["stats"]. */
struct pybpf_dctcp_stats {
	__u64 init;
	__u64 release;
	__u64 ssthresh;
	__u64 cong_avoid;
	__u64 set_state;
	__u64 cwnd_event;
	__u64 in_ack_event;
	__u64 undo_cwnd;
	__u64 acked;        /* segments acknowledged, summed in cong_avoid */
	__u64 ce_events;    /* CA_EVENT_ECN_IS_CE seen */
	__u64 max_cwnd;     /* largest congestion window set */
} stats = {};

static __always_inline struct tcp_sock *tcp_sk_of(struct sock *sk)
{
	return (struct tcp_sock *)sk;
}

static __always_inline struct pybpf_dctcp_ca *ca_of(struct sock *sk)
{
	return (struct pybpf_dctcp_ca *)((struct inet_connection_sock *)sk)->icsk_ca_priv;
}

static __always_inline __u32 min_u32(__u32 a, __u32 b) { return a < b ? a : b; }
static __always_inline __u32 max_u32(__u32 a, __u32 b) { return a > b ? a : b; }

static __always_inline void dctcp_reset(struct tcp_sock *tp, struct pybpf_dctcp_ca *ca)
{
	ca->next_seq = tp->snd_nxt;
	ca->old_delivered = tp->delivered;
	ca->old_delivered_ce = tp->delivered_ce;
}

SEC("struct_ops/dctcp_init")
void BPF_PROG(dctcp_init, struct sock *sk)
{
	struct tcp_sock *tp = tcp_sk_of(sk);
	struct pybpf_dctcp_ca *ca = ca_of(sk);

	__sync_fetch_and_add(&stats.init, 1);
	ca->prior_rcv_nxt = tp->rcv_nxt;
	ca->dctcp_alpha = DCTCP_MAX_ALPHA;
	ca->loss_cwnd = 0;
	ca->ce_state = 0;
	dctcp_reset(tp, ca);
}

SEC("struct_ops/dctcp_release")
void BPF_PROG(dctcp_release, struct sock *sk)
{
	__sync_fetch_and_add(&stats.release, 1);
}

SEC("struct_ops/dctcp_ssthresh")
__u32 BPF_PROG(dctcp_ssthresh, struct sock *sk)
{
	struct tcp_sock *tp = tcp_sk_of(sk);
	struct pybpf_dctcp_ca *ca = ca_of(sk);
	__u32 cwnd = tp->snd_cwnd;

	__sync_fetch_and_add(&stats.ssthresh, 1);
	ca->loss_cwnd = cwnd;
	return max_u32(cwnd - ((cwnd * ca->dctcp_alpha) >> 11U), 2U);
}

/* Reno's window growth: slow start below ssthresh, then one segment per
 * window of acknowledged segments. */
SEC("struct_ops/dctcp_cong_avoid")
void BPF_PROG(dctcp_cong_avoid, struct sock *sk, __u32 ack, __u32 acked)
{
	struct tcp_sock *tp = tcp_sk_of(sk);
	__u32 cwnd = tp->snd_cwnd, clamp = tp->snd_cwnd_clamp;

	__sync_fetch_and_add(&stats.cong_avoid, 1);
	__sync_fetch_and_add(&stats.acked, acked);
	if (cwnd < tp->snd_ssthresh) {
		/* slow start */
		__u32 next = min_u32(cwnd + acked, tp->snd_ssthresh);

		acked -= next - cwnd;
		cwnd = min_u32(next, clamp);
		if (!acked)
			goto out;
	}
	/* congestion avoidance: additive increase */
	if (tp->snd_cwnd_cnt >= cwnd) {
		tp->snd_cwnd_cnt = 0;
		cwnd++;
	}
	tp->snd_cwnd_cnt += acked;
	if (cwnd && tp->snd_cwnd_cnt >= cwnd) {
		__u32 delta = tp->snd_cwnd_cnt / cwnd;

		tp->snd_cwnd_cnt -= delta * cwnd;
		cwnd += delta;
	}
	cwnd = min_u32(cwnd, clamp);
out:
	tp->snd_cwnd = cwnd;
	if (cwnd > stats.max_cwnd)
		stats.max_cwnd = cwnd;
}

SEC("struct_ops/dctcp_set_state")
void BPF_PROG(dctcp_set_state, struct sock *sk, __u8 new_state)
{
	struct tcp_sock *tp = tcp_sk_of(sk);
	struct pybpf_dctcp_ca *ca = ca_of(sk);

	__sync_fetch_and_add(&stats.set_state, 1);
	if (new_state == TCP_CA_Recovery) {
		/* react to loss like Reno: halve */
		ca->loss_cwnd = tp->snd_cwnd;
		tp->snd_ssthresh = max_u32(tp->snd_cwnd >> 1U, 2U);
	}
}

/* The receiver side of DCTCP: echo CE state changes precisely. */
SEC("struct_ops/dctcp_cwnd_event")
void BPF_PROG(dctcp_cwnd_event, struct sock *sk, enum tcp_ca_event ev)
{
	struct tcp_sock *tp = tcp_sk_of(sk);
	struct pybpf_dctcp_ca *ca = ca_of(sk);
	__u32 new_ce;

	__sync_fetch_and_add(&stats.cwnd_event, 1);
	if (ev != CA_EVENT_ECN_IS_CE && ev != CA_EVENT_ECN_NO_CE)
		return;
	new_ce = ev == CA_EVENT_ECN_IS_CE;
	if (new_ce)
		__sync_fetch_and_add(&stats.ce_events, 1);
	if (ca->ce_state != new_ce)
		((struct inet_connection_sock *)sk)->icsk_ack.pending |= ICSK_ACK_NOW;
	ca->prior_rcv_nxt = tp->rcv_nxt;
	ca->ce_state = new_ce;
	if (new_ce)
		tp->ecn_flags |= TCP_ECN_DEMAND_CWR;
	else
		tp->ecn_flags &= ~TCP_ECN_DEMAND_CWR;
}

/* Once per window: alpha = (1 - g) * alpha + g * fraction of CE-marked. */
SEC("struct_ops/dctcp_in_ack_event")
void BPF_PROG(dctcp_in_ack_event, struct sock *sk, __u32 flags)
{
	struct tcp_sock *tp = tcp_sk_of(sk);
	struct pybpf_dctcp_ca *ca = ca_of(sk);

	__sync_fetch_and_add(&stats.in_ack_event, 1);
	if ((__s32)(tp->snd_una - ca->next_seq) >= 0) {
		__u32 delivered_ce = tp->delivered_ce - ca->old_delivered_ce;
		__u32 alpha = ca->dctcp_alpha;
		__u32 dec = alpha >> DCTCP_SHIFT_G;

		alpha -= dec ? dec : alpha;
		if (delivered_ce) {
			__u32 delivered = tp->delivered - ca->old_delivered;

			delivered_ce <<= (10U - DCTCP_SHIFT_G);
			delivered_ce /= max_u32(1U, delivered);
			alpha = min_u32(alpha + delivered_ce, DCTCP_MAX_ALPHA);
		}
		ca->dctcp_alpha = alpha;
		dctcp_reset(tp, ca);
	}
}

SEC("struct_ops/dctcp_undo_cwnd")
__u32 BPF_PROG(dctcp_undo_cwnd, struct sock *sk)
{
	struct pybpf_dctcp_ca *ca = ca_of(sk);

	__sync_fetch_and_add(&stats.undo_cwnd, 1);
	return max_u32(tcp_sk_of(sk)->snd_cwnd, ca->loss_cwnd);
}

SEC(".struct_ops.link")
struct tcp_congestion_ops pybpf_dctcp = {
	.init = (void *)dctcp_init,
	.release = (void *)dctcp_release,
	.ssthresh = (void *)dctcp_ssthresh,
	.cong_avoid = (void *)dctcp_cong_avoid,
	.set_state = (void *)dctcp_set_state,
	.cwnd_event = (void *)dctcp_cwnd_event,
	.in_ack_event = (void *)dctcp_in_ack_event,
	.undo_cwnd = (void *)dctcp_undo_cwnd,
	.flags = TCP_CONG_NEEDS_ECN,
	.name = "pybpf_dctcp",
};
