// SPDX-License-Identifier: GPL-2.0
/* tc dispatcher component 'x': counts and traces its runs
 * (disp_component.h), returns `verdict` (TC_ACT_OK unless set before load).
 * Priority 10; chain call on TC_ACT_OK (pybpf's tc run-config convention). */
#include "disp_component.h"

const volatile int verdict = 0;		/* TC_ACT_OK */
const volatile __u32 my_id = 'x';

SEC("tc")
int disp_tc_x(struct __sk_buff *ctx)
{
	disp_record(my_id);
	return verdict;
}

struct {
	__uint(priority, 10);
	__uint(TC_ACT_OK, 1);
} XDP_RUN_CONFIG(disp_tc_x);

char LICENSE[] SEC("license") = "GPL";
