// SPDX-License-Identifier: GPL-2.0
/* The other half of the CLI's `link-objects` test. */
#include "pybpf.bpf.h"

__noinline int cli_lib_answer(int x)
{
	return x > 100 ? XDP_DROP : XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
