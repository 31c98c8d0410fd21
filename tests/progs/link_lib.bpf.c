// SPDX-License-Identifier: GPL-2.0
/* Static linking: the library half (functions, a map, a variable). */
#include "pybpf.bpf.h"

struct shared_map_t {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
};

struct shared_map_t shared SEC(".maps");

int lib_scale = 3;
__u32 lib_calls = 0;

__noinline int lib_mix(int a, int b)
{
	__sync_fetch_and_add(&lib_calls, 1);
	return a * 10 + b;
}
