// SPDX-License-Identifier: GPL-2.0
/* Target of the CLI's `ext attach` test: the XDP verdict comes from a global
 * function that an extension can replace. */
#include "pybpf.bpf.h"

__noinline int verdict(struct xdp_md *ctx)
{
	return ctx ? XDP_PASS : XDP_ABORTED;
}

SEC("xdp")
int cli_ext_entry(struct xdp_md *ctx)
{
	return verdict(ctx);
}

char LICENSE[] SEC("license") = "GPL";
