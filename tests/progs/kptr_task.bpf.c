// SPDX-License-Identifier: GPL-2.0
/* Referenced and untrusted task kptrs in map values.
 *
 * store_task (tp_btf/sys_enter, syscall store_nr from thread target_tgid):
 *   acquires the current task and moves the reference into tasks[0].task
 *   with bpf_kptr_xchg; also stores the task as an untrusted kptr with a
 *   plain store.
 * read_task (same tracepoint, syscall read_nr): reads the stored objects
 *   and reports what it sees in results[0], plus the reference counts of the
 *   current task (so userspace can see the map's reference come and go).
 */
#include "pybpf.bpf.h"

#ifndef KPTR_UNTRUSTED
#define KPTR_UNTRUSTED __kptr_untrusted
#endif
#ifndef KPTR_REF
#define KPTR_REF __kptr
#endif

struct kt_slot {
	__u64 cookie;
	struct task_struct KPTR_REF *task;
	struct task_struct KPTR_UNTRUSTED *seen;
	__u32 tag;
};

struct kt_result {
	__s64 status;      /* 0 not run, 1 element + object, 2 element without object, 3 no element */
	__s32 pid;         /* pid (thread id) of the stored referenced task */
	__s32 tgid;
	__s32 seen_pid;    /* pid of the untrusted kptr, -1 if NULL */
	__s32 usage;       /* current task: usage + rcu_users */
	__u64 runs;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct kt_slot);
} tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kt_result);
} results SEC(".maps");

struct task_struct *bpf_task_acquire(struct task_struct *p) __ksym;
void bpf_task_release(struct task_struct *p) __ksym;

__u32 target_tgid = 0;
long store_nr = -1;
long read_nr = -1;

SEC("tp_btf/sys_enter")
int BPF_PROG(store_task, struct pt_regs *regs, long id)
{
	struct task_struct *cur = bpf_get_current_task_btf(), *acq, *old;
	struct kt_slot init = {}, *v;
	__u32 key = 0;

	if (id != store_nr || cur->tgid != target_tgid)
		return 0;
	v = bpf_map_lookup_elem(&tasks, &key);
	if (!v) {
		init.cookie = 0xC0FFEE;
		bpf_map_update_elem(&tasks, &key, &init, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&tasks, &key);
		if (!v)
			return 0;
	}
	v->seen = cur;
	acq = bpf_task_acquire(cur);
	if (!acq)
		return 0;
	old = bpf_kptr_xchg(&v->task, acq);
	if (old)
		bpf_task_release(old);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(read_task, struct pt_regs *regs, long id)
{
	struct task_struct *cur = bpf_get_current_task_btf(), *t, *s;
	struct kt_slot *v;
	struct kt_result *r;
	__u32 key = 0;

	if (id != read_nr || cur->tgid != target_tgid)
		return 0;
	r = bpf_map_lookup_elem(&results, &key);
	if (!r)
		return 0;
	r->runs++;
	r->usage = cur->usage.refs.counter + cur->rcu_users.refs.counter;
	r->pid = r->tgid = r->seen_pid = -1;
	v = bpf_map_lookup_elem(&tasks, &key);
	if (!v) {
		r->status = 3;
		return 0;
	}
	t = v->task;
	if (!t) {
		r->status = 2;
	} else {
		r->status = 1;
		r->pid = t->pid;
		r->tgid = t->tgid;
	}
	s = v->seen;
	if (s)
		r->seen_pid = s->pid;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
