// SPDX-License-Identifier: GPL-2.0
/* pybpf's XDP dispatcher, compatible with libxdp's dispatcher protocol v2
 * (xdp-tools lib/libxdp/protocol.org).
 *
 * Ten global stub functions, prog0..prog9, are the slots that component
 * programs replace (freplace).  The configuration lives in .rodata, filled in
 * by pybpf before load: the verifier then prunes every slot past
 * num_progs_enabled.  A component's return value ends the chain unless its
 * bit is set in the slot's chain_call_actions.  An empty slot returns
 * DISPATCHER_RETVAL, whose bit is always set, so a slot whose component went
 * away is skipped.  The dispatcher has exactly one map (.rodata): that is how
 * libxdp recognises it (with the program name and the magic byte).
 */
#include "pybpf.bpf.h"

#define SLOTS 10
#define DISPATCHER_MAGIC 236
#define DISPATCHER_VERSION 2
#define DISPATCHER_RETVAL 31

struct xdp_dispatcher_config {
	__u8 magic;			/* DISPATCHER_MAGIC */
	__u8 dispatcher_version;	/* DISPATCHER_VERSION */
	__u8 num_progs_enabled;		/* slots in use */
	__u8 is_xdp_frags;		/* loaded with BPF_F_XDP_HAS_FRAGS */
	__u32 chain_call_actions[SLOTS];	/* bitmap of actions that continue */
	__u32 run_prios[SLOTS];		/* effective priority of each slot */
	__u32 program_flags[SLOTS];	/* BPF_F_XDP_HAS_FRAGS per component */
};

/* const: .rodata, frozen at load; volatile: the compiler must not assume
 * the zero initialiser, pybpf rewrites it before load. */
static volatile const struct xdp_dispatcher_config conf = {};

/* The stub of one slot. The no-op bpf_xdp_adjust_tail() marks the stub as
 * changing packet data, so components that do (adjust_head/tail...) may
 * replace it on kernels that check this. */
#define STUB(n)								\
__attribute__((noinline)) int prog##n(struct xdp_md *ctx)		\
{									\
	volatile int ret = DISPATCHER_RETVAL;				\
									\
	if (!ctx)							\
		return XDP_ABORTED;					\
	bpf_xdp_adjust_tail(ctx, 0);					\
	return ret;							\
}

STUB(0) STUB(1) STUB(2) STUB(3) STUB(4)
STUB(5) STUB(6) STUB(7) STUB(8) STUB(9)

#define RUN(n)								\
	if (enabled < (n) + 1)						\
		goto out;						\
	ret = prog##n(ctx);						\
	if (!((1U << ret) & conf.chain_call_actions[n]))		\
		return ret;

SEC("xdp")
int xdp_dispatcher(struct xdp_md *ctx)
{
	__u8 enabled = conf.num_progs_enabled;
	int ret;

	RUN(0) RUN(1) RUN(2) RUN(3) RUN(4)
	RUN(5) RUN(6) RUN(7) RUN(8) RUN(9)
out:
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
/* The version in BTF as well, for libxdp versions that look there. */
__uint(dispatcher_version, DISPATCHER_VERSION) SEC("xdp_metadata");
