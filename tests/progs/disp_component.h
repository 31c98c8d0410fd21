/* Shared part of the dispatcher test components (disp_*.bpf.c): each counts
 * its runs in its own `hits` map and appends its id to a `trace` map that the
 * test shares between components (so the run order is visible). A component
 * file sets its id, its verdict and its run config (libxdp's XDP_RUN_CONFIG
 * convention: priority and chain-call actions in .xdp_run_config). */
#include "pybpf.bpf.h"

#define XDP_RUN_CONFIG(f) _##f SEC(".xdp_run_config")

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

/* trace[0]: next position; trace[1..]: component ids in run order */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} trace SEC(".maps");

static __always_inline void disp_record(__u32 id)
{
	__u32 zero = 0, *pos, slot;
	__u64 *h = bpf_map_lookup_elem(&hits, &zero);
	__u32 *cell;

	if (h)
		__sync_fetch_and_add(h, 1);
	pos = bpf_map_lookup_elem(&trace, &zero);
	if (pos && *pos < 63) {
		slot = *pos + 1;
		cell = bpf_map_lookup_elem(&trace, &slot);
		if (cell)
			*cell = id;
		*pos = slot;
	}
}
