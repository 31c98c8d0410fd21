// SPDX-License-Identifier: GPL-2.0
/* A CUBIC-like TCP congestion control written as a BPF struct_ops.
 *
 * After a loss the window follows the cubic curve
 *     W(t) = C * (t - K)^3 + W_max,   K = cbrt(W_max * (1 - beta) / C)
 * (C = 0.4, beta = 717/1024), with Reno-friendliness and fast convergence,
 * like the kernel's CUBIC.  Unlike it, time comes from bpf_ktime_get_ns()
 * rather than jiffies, so no CONFIG_HZ (__kconfig) is needed and the object
 * loads on kernels that expose no config (7.3 packages); HyStart is left out.
 *
 * It registers as "pybpf_cubic".  Callback counters are in ``stats``.
 */
#include "pybpf.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define BICTCP_BETA_SCALE 1024U
#define BICTCP_HZ 10U                    /* time in units of 2^-10 s */
#define BETA 717U                        /* 717/1024 ~ 0.7 */
#define BIC_SCALE 41U                    /* C = 41 * 10 / 1024 ~ 0.4 */
#define CUBE_RTT_SCALE (BIC_SCALE * 10U)
#define CUBE_FACTOR ((1ULL << (10 + 3 * BICTCP_HZ)) / CUBE_RTT_SCALE)
#define BETA_SCALE ((8U * (BICTCP_BETA_SCALE + BETA)) / 3U / (BICTCP_BETA_SCALE - BETA))
#define NSEC_PER_MSEC 1000000ULL

struct pybpf_cubic_ca {
	__u32 cnt;               /* increase cwnd by 1 after this many ACKs */
	__u32 last_max_cwnd;     /* W_max */
	__u32 last_cwnd;
	__u32 last_time;         /* ms */
	__u32 origin_point;      /* origin of the cubic function */
	__u32 K;                 /* time to origin, 2^-10 s */
	__u32 delay_min;         /* min RTT, us */
	__u32 epoch_start;       /* ms, 0: no epoch */
	__u32 ack_cnt;
	__u32 tcp_cwnd;          /* estimated Reno window */
	__u32 loss_cwnd;
};

struct pybpf_cubic_stats {
	__u64 init;
	__u64 ssthresh;
	__u64 cong_avoid;
	__u64 set_state;
	__u64 cwnd_event;
	__u64 pkts_acked;
	__u64 undo_cwnd;
	__u64 cubic_updates;     /* bictcp_update runs that recomputed the target */
	__u64 max_cwnd;
} stats = {};

static __always_inline struct tcp_sock *tcp_sk_of(struct sock *sk) { return (struct tcp_sock *)sk; }

static __always_inline struct pybpf_cubic_ca *ca_of(struct sock *sk)
{
	return (struct pybpf_cubic_ca *)((struct inet_connection_sock *)sk)->icsk_ca_priv;
}

static __always_inline __u32 min_u32(__u32 a, __u32 b) { return a < b ? a : b; }
static __always_inline __u32 max_u32(__u32 a, __u32 b) { return a > b ? a : b; }

static __always_inline __u32 now_ms(void)
{
	return (__u32)(bpf_ktime_get_ns() / NSEC_PER_MSEC);
}

static __always_inline __u32 fls64(__u64 x)
{
	__u32 n = 0;

	if (x >> 32) { n += 32; x >>= 32; }
	if (x >> 16) { n += 16; x >>= 16; }
	if (x >> 8) { n += 8; x >>= 8; }
	if (x >> 4) { n += 4; x >>= 4; }
	if (x >> 2) { n += 2; x >>= 2; }
	if (x >> 1) { n += 1; x >>= 1; }
	return n + (__u32)x;
}

/* Integer cube root: Newton's iteration x = (2x + a/x^2) / 3 from a first
 * guess 2^ceil(bits/3) >= cbrt(a), which it approaches from above; a fixed
 * number of steps (no data-dependent branches keeps the verifier fast). */
static __always_inline __u32 cubic_root(__u64 a)
{
	__u64 x;
	int i;

	if (!a)
		return 0;
	x = 1ULL << ((fls64(a) + 2) / 3);
#pragma unroll
	for (i = 0; i < 8; i++)
		x = (2 * x + a / (x * x)) / 3;
	if (x * x * x > a)      /* tiny inputs may land one above */
		x--;
	return (__u32)x;
}

static __always_inline void cubic_reset(struct pybpf_cubic_ca *ca)
{
	ca->cnt = 0;
	ca->last_max_cwnd = 0;
	ca->last_cwnd = 0;
	ca->last_time = 0;
	ca->origin_point = 0;
	ca->K = 0;
	ca->delay_min = 0;
	ca->epoch_start = 0;
	ca->ack_cnt = 0;
	ca->tcp_cwnd = 0;
}

SEC("struct_ops/cubic_init")
void BPF_PROG(cubic_init, struct sock *sk)
{
	struct pybpf_cubic_ca *ca = ca_of(sk);

	__sync_fetch_and_add(&stats.init, 1);
	cubic_reset(ca);
	ca->loss_cwnd = 0;
}

static __always_inline void cubic_update(struct pybpf_cubic_ca *ca, __u32 cwnd, __u32 acked)
{
	__u32 now = now_ms(), delta, bic_target, max_cnt;
	__u64 offs, t;

	ca->ack_cnt += acked;
	if (ca->last_cwnd == cwnd && (__s32)(now - ca->last_time) <= 31)
		return;
	ca->last_cwnd = cwnd;
	ca->last_time = now;
	__sync_fetch_and_add(&stats.cubic_updates, 1);

	if (ca->epoch_start == 0) {
		ca->epoch_start = now ? now : 1;
		ca->ack_cnt = acked;
		ca->tcp_cwnd = cwnd;
		if (ca->last_max_cwnd <= cwnd) {
			ca->K = 0;
			ca->origin_point = cwnd;
		} else {
			ca->K = cubic_root(CUBE_FACTOR * (ca->last_max_cwnd - cwnd));
			ca->origin_point = ca->last_max_cwnd;
		}
	}

	/* t: time since the epoch started plus one min RTT, in 2^-10 s */
	t = (__u64)(now - ca->epoch_start) * 1000ULL + ca->delay_min / 1000U;
	t = (t << BICTCP_HZ) / 1000000ULL;
	if (t < ca->K)
		offs = ca->K - t;
	else
		offs = t - ca->K;
	if (offs > 0x1fffff)          /* keep offs^3 * scale inside 64 bits */
		offs = 0x1fffff;
	delta = (__u32)((CUBE_RTT_SCALE * offs * offs * offs) >> (10 + 3 * BICTCP_HZ));
	if (t < ca->K)
		bic_target = ca->origin_point - delta;
	else
		bic_target = ca->origin_point + delta;

	if (bic_target > cwnd)
		ca->cnt = cwnd / (bic_target - cwnd);
	else
		ca->cnt = 100 * cwnd;
	if (ca->last_max_cwnd == 0 && ca->cnt > 20)
		ca->cnt = 20;

	/* Reno-friendliness: never grow slower than Reno would */
	delta = (cwnd * BETA_SCALE) >> 3;
	if (delta && ca->ack_cnt > delta) {
		__u32 n = ca->ack_cnt / delta;

		ca->ack_cnt -= n * delta;
		ca->tcp_cwnd += n;
	}
	if (ca->tcp_cwnd > cwnd) {
		delta = ca->tcp_cwnd - cwnd;
		max_cnt = cwnd / delta;
		if (ca->cnt > max_cnt)
			ca->cnt = max_cnt;
	}
	ca->cnt = max_u32(ca->cnt, 2U);
}

SEC("struct_ops/cubic_cong_avoid")
void BPF_PROG(cubic_cong_avoid, struct sock *sk, __u32 ack, __u32 acked)
{
	struct tcp_sock *tp = tcp_sk_of(sk);
	struct pybpf_cubic_ca *ca = ca_of(sk);
	__u32 cwnd = tp->snd_cwnd, clamp = tp->snd_cwnd_clamp, w;

	__sync_fetch_and_add(&stats.cong_avoid, 1);
	if (cwnd < tp->snd_ssthresh) {
		__u32 next = min_u32(cwnd + acked, tp->snd_ssthresh);

		acked -= next - cwnd;
		cwnd = min_u32(next, clamp);
		if (!acked)
			goto out;
	}
	cubic_update(ca, cwnd, acked);
	w = ca->cnt;
	/* additive increase of 1 segment per w acknowledged segments */
	if (tp->snd_cwnd_cnt >= w) {
		tp->snd_cwnd_cnt = 0;
		cwnd++;
	}
	tp->snd_cwnd_cnt += acked;
	if (w && tp->snd_cwnd_cnt >= w) {
		__u32 d = tp->snd_cwnd_cnt / w;

		tp->snd_cwnd_cnt -= d * w;
		cwnd += d;
	}
	cwnd = min_u32(cwnd, clamp);
out:
	tp->snd_cwnd = cwnd;
	if (cwnd > stats.max_cwnd)
		stats.max_cwnd = cwnd;
}

SEC("struct_ops/cubic_ssthresh")
__u32 BPF_PROG(cubic_ssthresh, struct sock *sk)
{
	struct tcp_sock *tp = tcp_sk_of(sk);
	struct pybpf_cubic_ca *ca = ca_of(sk);
	__u32 cwnd = tp->snd_cwnd;

	__sync_fetch_and_add(&stats.ssthresh, 1);
	ca->epoch_start = 0;
	/* fast convergence: release bandwidth sooner when W_max shrinks */
	if (cwnd < ca->last_max_cwnd)
		ca->last_max_cwnd = (cwnd * (BICTCP_BETA_SCALE + BETA)) / (2 * BICTCP_BETA_SCALE);
	else
		ca->last_max_cwnd = cwnd;
	ca->loss_cwnd = cwnd;
	return max_u32((cwnd * BETA) / BICTCP_BETA_SCALE, 2U);
}

SEC("struct_ops/cubic_set_state")
void BPF_PROG(cubic_set_state, struct sock *sk, __u8 new_state)
{
	__sync_fetch_and_add(&stats.set_state, 1);
	if (new_state == TCP_CA_Loss)
		cubic_reset(ca_of(sk));
}

SEC("struct_ops/cubic_cwnd_event")
void BPF_PROG(cubic_cwnd_event, struct sock *sk, enum tcp_ca_event event)
{
	struct pybpf_cubic_ca *ca = ca_of(sk);

	__sync_fetch_and_add(&stats.cwnd_event, 1);
	if (event == CA_EVENT_TX_START) {
		/* after an idle period, shift the epoch so the curve does not jump */
		__u32 now = now_ms();
		__s32 delta = now - ca->last_time;

		if (ca->epoch_start && delta > 0) {
			ca->epoch_start += delta;
			if ((__s32)(ca->epoch_start - now) > 0)
				ca->epoch_start = now;
		}
	}
}

SEC("struct_ops/cubic_pkts_acked")
void BPF_PROG(cubic_pkts_acked, struct sock *sk, const struct ack_sample *sample)
{
	struct pybpf_cubic_ca *ca = ca_of(sk);
	__s32 rtt_us = sample->rtt_us;

	__sync_fetch_and_add(&stats.pkts_acked, 1);
	if (rtt_us <= 0)
		return;
	if (ca->delay_min == 0 || ca->delay_min > (__u32)rtt_us)
		ca->delay_min = rtt_us;
}

SEC("struct_ops/cubic_undo_cwnd")
__u32 BPF_PROG(cubic_undo_cwnd, struct sock *sk)
{
	__sync_fetch_and_add(&stats.undo_cwnd, 1);
	return max_u32(tcp_sk_of(sk)->snd_cwnd, ca_of(sk)->loss_cwnd);
}

SEC(".struct_ops.link")
struct tcp_congestion_ops pybpf_cubic = {
	.init = (void *)cubic_init,
	.ssthresh = (void *)cubic_ssthresh,
	.cong_avoid = (void *)cubic_cong_avoid,
	.set_state = (void *)cubic_set_state,
	.cwnd_event = (void *)cubic_cwnd_event,
	.pkts_acked = (void *)cubic_pkts_acked,
	.undo_cwnd = (void *)cubic_undo_cwnd,
	.name = "pybpf_cubic",
};
