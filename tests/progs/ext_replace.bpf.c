// SPDX-License-Identifier: GPL-2.0
/* An extension (freplace) for classify() of ext_target: every packet goes to
 * class 3.  The target is chosen at run time with set_attach_target(). */
#include "pybpf.bpf.h"

#define CLASS_REPLACED 3

__u64 calls = 0;

SEC("freplace")
int new_classify(struct xdp_md *ctx)
{
	__sync_fetch_and_add(&calls, 1);
	return CLASS_REPLACED;
}

char LICENSE[] SEC("license") = "GPL";
