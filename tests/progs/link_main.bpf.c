// SPDX-License-Identifier: GPL-2.0
/* Static linking: the entry program. Calls functions, uses a map and a
 * variable defined in link_lib.bpf.c; bonus() has a __weak default here that
 * link_strong.bpf.c overrides. */
#include "pybpf.bpf.h"

struct shared_map_t {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
};

extern int lib_mix(int a, int b);		/* link_lib.bpf.c */
extern int lib_scale;				/* link_lib.bpf.c, .data */
extern struct shared_map_t shared SEC(".maps");	/* link_lib.bpf.c */

__weak __noinline int bonus(int x)
{
	return x + 1;					/* overridden by link_strong */
}

int input_a = 6, input_b = 7;

SEC("xdp")
int link_entry(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *slot = bpf_map_lookup_elem(&shared, &k);
	int r = lib_mix(input_a, input_b) * lib_scale + bonus(input_a);

	if (slot)
		*slot = r;
	return r;
}

char LICENSE[] SEC("license") = "GPL";
