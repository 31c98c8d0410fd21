// SPDX-License-Identifier: GPL-2.0
/* pybpf's tc (sched_cls) dispatcher: the XDP dispatcher's mechanism for tc.
 *
 * Same configuration struct and slots as xdp_dispatcher.bpf.c.  tc verdicts
 * start at TC_ACT_UNSPEC (-1), so a verdict v is bit (v + 1) of a slot's
 * chain_call_actions; empty slots return 30 (bit 31, always set).  The
 * dispatcher returns the verdict of the last component that ran (TC_ACT_OK
 * when none did).
 */
#include "pybpf.bpf.h"

#define SLOTS 10
#define DISPATCHER_RETVAL 30

#ifndef TC_ACT_OK
#define TC_ACT_OK 0
#endif

struct xdp_dispatcher_config {
	__u8 magic;
	__u8 dispatcher_version;
	__u8 num_progs_enabled;
	__u8 is_xdp_frags;
	__u32 chain_call_actions[SLOTS];
	__u32 run_prios[SLOTS];
	__u32 program_flags[SLOTS];
};

static volatile const struct xdp_dispatcher_config conf = {};

/* The no-op bpf_skb_pull_data() marks the stub as changing packet data, so
 * components that do may replace it; it runs only in an empty slot. */
#define STUB(n)								\
__attribute__((noinline)) int prog##n(struct __sk_buff *skb)		\
{									\
	volatile int ret = DISPATCHER_RETVAL;				\
									\
	if (!skb)							\
		return TC_ACT_OK;					\
	bpf_skb_pull_data(skb, 0);					\
	return ret;							\
}

STUB(0) STUB(1) STUB(2) STUB(3) STUB(4)
STUB(5) STUB(6) STUB(7) STUB(8) STUB(9)

#define RUN(n)								\
	if (enabled < (n) + 1)						\
		goto out;						\
	ret = prog##n(skb);						\
	if (ret < -1 || ret > DISPATCHER_RETVAL ||			\
	    !((1U << (ret + 1)) & conf.chain_call_actions[n]))		\
		return ret;						\
	if (ret != DISPATCHER_RETVAL)					\
		last = ret;

SEC("tc")
int tc_dispatcher(struct __sk_buff *skb)
{
	__u8 enabled = conf.num_progs_enabled;
	int ret, last = TC_ACT_OK;

	RUN(0) RUN(1) RUN(2) RUN(3) RUN(4)
	RUN(5) RUN(6) RUN(7) RUN(8) RUN(9)
out:
	return last;
}

char _license[] SEC("license") = "GPL";
