// SPDX-License-Identifier: GPL-2.0
/* Globals in named sub-sections (.data.NAME, .rodata.NAME, .bss.NAME): each
 * becomes a map of its own; pybpf finds the variables by name in all of them. */
#include "pybpf.bpf.h"

__u32 hits SEC(".data.counters") = 5;
__u64 last_len SEC(".bss.scratch");
const volatile __u32 step SEC(".rodata.limits") = 7;

SEC("xdp")
int subsec_count(struct xdp_md *ctx)
{
	hits += step;
	last_len = ctx->data_end - ctx->data;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
