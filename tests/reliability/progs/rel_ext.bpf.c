// SPDX-License-Identifier: GPL-2.0
/* An extension (freplace) of rel_tgt.bpf.c's rel_classify(): every packet
 * goes to class 5 while it is attached.  The target is set at run time. */
#include "pybpf.bpf.h"

__u64 rel_ext_calls = 0;

SEC("freplace")
int rel_new_classify(struct xdp_md *ctx)
{
	__sync_fetch_and_add(&rel_ext_calls, 1);
	return 5;
}

char LICENSE[] SEC("license") = "GPL";
