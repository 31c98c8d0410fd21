// SPDX-License-Identifier: GPL-2.0
/* Dispatcher component 'a': counts and traces its runs (disp_component.h),
 * returns `verdict` (set before load). Priority 10, chain call on XDP_PASS. */
#include "disp_component.h"

const volatile __u32 verdict = XDP_PASS;
const volatile __u32 my_id = 'a';

SEC("xdp")
int disp_a(struct xdp_md *ctx)
{
	disp_record(my_id);
	return verdict;
}

struct {
	__uint(priority, 10);
	__uint(XDP_PASS, 1);
} XDP_RUN_CONFIG(disp_a);

char LICENSE[] SEC("license") = "GPL";
