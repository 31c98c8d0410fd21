// SPDX-License-Identifier: GPL-2.0
/* fentry on a kernel function that does not exist (named in the section). */
#include "pybpf.bpf.h"

SEC("fentry/tcp_connekt")
int BPF_PROG(typo, struct sock *sk)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
