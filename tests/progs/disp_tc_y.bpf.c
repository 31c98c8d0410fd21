// SPDX-License-Identifier: GPL-2.0
/* tc dispatcher component 'y': counts and traces its runs
 * (disp_component.h), returns `verdict` (TC_ACT_OK unless set before load).
 * Priority 20; chain call on TC_ACT_OK (pybpf's tc run-config convention). */
#include "disp_component.h"

const volatile int verdict = 0;		/* TC_ACT_OK */
const volatile __u32 my_id = 'y';

SEC("tc")
int disp_tc_y(struct __sk_buff *ctx)
{
	disp_record(my_id);
	return verdict;
}

struct {
	__uint(priority, 20);
	__uint(TC_ACT_OK, 1);
} XDP_RUN_CONFIG(disp_tc_y);

char LICENSE[] SEC("license") = "GPL";
