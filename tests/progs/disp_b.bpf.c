// SPDX-License-Identifier: GPL-2.0
/* Dispatcher component 'b': counts and traces its runs (disp_component.h),
 * returns `verdict` (set before load). Priority 20, chain call on XDP_PASS. */
#include "disp_component.h"

const volatile __u32 verdict = XDP_PASS;
const volatile __u32 my_id = 'b';

SEC("xdp")
int disp_b(struct xdp_md *ctx)
{
	disp_record(my_id);
	return verdict;
}

struct {
	__uint(priority, 20);
	__uint(XDP_PASS, 1);
} XDP_RUN_CONFIG(disp_b);

char LICENSE[] SEC("license") = "GPL";
