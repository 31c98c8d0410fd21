// SPDX-License-Identifier: GPL-2.0
/* fexit on the shared global subprogram account(kind, len) of
 * shared_subprog: one program for the XDP caller's copy, one for the tc
 * caller's copy (targets set with set_attach_target). */
#include "pybpf.bpf.h"

__u64 runs[2] = {};
__s64 last_ret[2] = {-1, -1};
__u64 last_len[2] = {};

static __always_inline void record(int slot, __u32 len, int ret)
{
	runs[slot]++;
	last_ret[slot] = ret;
	last_len[slot] = len;
}

SEC("fexit")
int BPF_PROG(fexit_account_for_xdp, __u32 kind, __u32 len, int ret)
{
	record(0, len, ret);
	return 0;
}

SEC("fexit")
int BPF_PROG(fexit_account_for_tc, __u32 kind, __u32 len, int ret)
{
	record(1, len, ret);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
