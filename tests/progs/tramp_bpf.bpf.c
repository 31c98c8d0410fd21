// SPDX-License-Identifier: GPL-2.0
/* fentry/fexit on a BPF program (targets chosen at run time with
 * set_attach_target): on its main function and on a global subprogram. */
#include "pybpf.bpf.h"

__u64 main_entries = 0;
__u64 main_runs = 0;
__s64 main_ret = -1;
__u64 sub_entries = 0;
__u64 sub_runs = 0;
__s64 sub_ret = -1;

SEC("fentry")
int BPF_PROG(fentry_main, struct xdp_md *xdp)
{
	main_entries++;
	return 0;
}

SEC("fexit")
int BPF_PROG(fexit_main, struct xdp_md *xdp, int ret)
{
	main_runs++;
	main_ret = ret;
	return 0;
}

SEC("fentry")
int BPF_PROG(fentry_sub, struct xdp_md *xdp)
{
	sub_entries++;
	return 0;
}

SEC("fexit")
int BPF_PROG(fexit_sub, struct xdp_md *xdp, int ret)
{
	sub_runs++;
	sub_ret = ret;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
