// SPDX-License-Identifier: GPL-2.0
/* Extension for the CLI's `ext attach` test: replaces verdict() of
 * cli_ext_target with one that drops. */
#include "pybpf.bpf.h"

SEC("freplace")
int cli_new_verdict(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
