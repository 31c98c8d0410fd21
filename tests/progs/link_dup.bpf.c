// SPDX-License-Identifier: GPL-2.0
/* Static linking: a second strong lib_mix(), which conflicts with link_lib's. */
#include "pybpf.bpf.h"

__noinline int lib_mix(int a, int b)
{
	return a - b;
}
