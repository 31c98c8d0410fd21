// SPDX-License-Identifier: GPL-2.0
/* Per-component statistics for pybpf's dispatchers: an fexit program
 * attached to one component (an freplace'd XDP or tc program) counts its
 * runs and its return values.  Extension programs bypass the kernel's own
 * run statistics (the dispatcher's call jumps straight into them), so this
 * is the only way to see what each component did.
 *
 * counts[0]: runs; counts[1 + (ret + 1)] for -1 <= ret <= 30; counts[33]:
 * any other return value.
 */
#include "pybpf.bpf.h"

#define NCOUNTS 34

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NCOUNTS);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline void bump(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&counts, &k);

	if (v)
		*v += 1;
}

SEC("fexit")
int component_exit(unsigned long long *ctx)
{
	int ret = (int)ctx[1];		/* (ctx, return value) */

	bump(0);
	if (ret >= -1 && ret <= 30)
		bump(2 + ret);
	else
		bump(NCOUNTS - 1);
	return 0;
}

char _license[] SEC("license") = "GPL";
