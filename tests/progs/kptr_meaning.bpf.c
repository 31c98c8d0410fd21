// SPDX-License-Identifier: GPL-2.0
/* A plain store of an unreferenced task pointer into a field tagged "kptr".
 * Before Linux 6.4 "kptr" is the unreferenced kptr and the store is allowed;
 * since 6.4 it is the referenced kptr and the verifier refuses the store.
 * No kfuncs, so the object also loads on kernels without bpf_task_acquire. */
#include "pybpf.bpf.h"

struct km_slot {
	struct task_struct __attribute__((btf_type_tag("kptr"))) *task;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct km_slot);
} slots SEC(".maps");

int seen_pid = 0;

SEC("tp_btf/sys_enter")
int BPF_PROG(store_unref, struct pt_regs *regs, long id)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	struct km_slot *v;
	__u32 key = 0;

	seen_pid = cur->pid;   /* a member access: BTF gets struct task_struct in full */
	v = bpf_map_lookup_elem(&slots, &key);
	if (!v)
		return 0;
	v->task = cur;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
