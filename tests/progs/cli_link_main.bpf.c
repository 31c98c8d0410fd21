// SPDX-License-Identifier: GPL-2.0
/* Half of the CLI's `link-objects` test: calls a function defined in
 * cli_link_lib.bpf.c; the program only loads once the two are linked. */
#include "pybpf.bpf.h"

extern int cli_lib_answer(int x);

SEC("xdp")
int cli_link_entry(struct xdp_md *ctx)
{
	return cli_lib_answer(ctx->data_end - ctx->data);
}

char LICENSE[] SEC("license") = "GPL";
