// SPDX-License-Identifier: GPL-2.0
/* Programs the verifier must refuse, one mistake each (load one at a time
 * with autoload). */
#include "pybpf.bpf.h"

struct rj_slot {
	struct task_struct __kptr *task;
	struct cgroup __kptr *cgrp;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rj_slot);
} slots SEC(".maps");

struct task_struct *bpf_task_acquire(struct task_struct *p) __ksym;
void bpf_task_release(struct task_struct *p) __ksym;

int out = 0;

/* The kernel needs the kptr's target as a complete struct in the object's
 * BTF; following a member makes clang emit struct cgroup in full. */
static __always_inline int cgroup_level(struct task_struct *t)
{
	return t->cgroups->dfl_cgrp->level;
}

/* A referenced pointer stored with a plain store instead of bpf_kptr_xchg. */
SEC("tp_btf/sys_enter")
int BPF_PROG(plain_store, struct pt_regs *regs, long id)
{
	struct task_struct *acq;
	struct rj_slot *v;
	__u32 key = 0;

	v = bpf_map_lookup_elem(&slots, &key);
	if (!v)
		return 0;
	acq = bpf_task_acquire(bpf_get_current_task_btf());
	if (!acq)
		return 0;
	v->task = acq;
	bpf_task_release(acq);
	return 0;
}

/* A kptr loaded from the map and dereferenced without a NULL check. */
SEC("tp_btf/sys_enter")
int BPF_PROG(no_null_check, struct pt_regs *regs, long id)
{
	struct rj_slot *v;
	__u32 key = 0;

	v = bpf_map_lookup_elem(&slots, &key);
	if (!v)
		return 0;
	out = v->task->pid;
	return 0;
}

/* A task exchanged into a field declared as a cgroup kptr. */
SEC("tp_btf/sys_enter")
int BPF_PROG(wrong_type, struct pt_regs *regs, long id)
{
	struct task_struct *acq, *old;
	struct rj_slot *v;
	__u32 key = 0;

	v = bpf_map_lookup_elem(&slots, &key);
	if (!v)
		return 0;
	out = cgroup_level(bpf_get_current_task_btf());
	acq = bpf_task_acquire(bpf_get_current_task_btf());
	if (!acq)
		return 0;
	old = bpf_kptr_xchg((struct task_struct **)&v->cgrp, acq);
	if (old)
		bpf_task_release(old);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
