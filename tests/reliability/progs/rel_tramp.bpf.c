// SPDX-License-Identifier: GPL-2.0
/* fentry/fexit for the reliability suite: on rel_tgt_xdp's main function and
 * its global subprogram (targets set at run time with set_attach_target),
 * and on a kernel function that BPF_PROG_TEST_RUN of a tracing program calls
 * (bpf_fentry_test1(a) returns a + 1). */
#include "pybpf.bpf.h"

__u64 rel_main_runs = 0;
__s64 rel_main_ret = -1;
__u64 rel_sub_entries = 0;
__s64 rel_sub_ret = -1;
__u64 rel_kfunc_runs = 0;
__s64 rel_kfunc_ret = -1;

SEC("fexit")
int BPF_PROG(rel_fexit_main, struct xdp_md *xdp, int ret)
{
	rel_main_runs++;
	rel_main_ret = ret;
	return 0;
}

SEC("fentry")
int BPF_PROG(rel_fentry_sub, struct xdp_md *xdp)
{
	rel_sub_entries++;
	return 0;
}

SEC("fexit")
int BPF_PROG(rel_fexit_sub, struct xdp_md *xdp, int ret)
{
	rel_sub_ret = ret;
	return 0;
}

SEC("fexit/bpf_fentry_test1")
int BPF_PROG(rel_fexit_kfn, int a, int ret)
{
	rel_kfunc_runs++;
	rel_kfunc_ret = ret;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
