// SPDX-License-Identifier: GPL-2.0
/* Static linking: a strong bonus() that overrides link_main's __weak one. */
#include "pybpf.bpf.h"

__noinline int bonus(int x)
{
	return x * 100;
}
