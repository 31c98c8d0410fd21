// SPDX-License-Identifier: GPL-2.0
/* A fuzz seed that exercises more of libbpf's loader than the XDP seeds:
 * CO-RE field relocations (.BTF.ext core_relo), a global subprogram
 * (func_info/line_info), a __kconfig extern and a ring buffer.  Loaded, never
 * attached. */
#include "pybpf.bpf.h"

extern int LINUX_KERNEL_VERSION __kconfig;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} rel_events SEC(".maps");

/* A local flavour of the kernel's task_struct: the object's BTF stays small,
 * and libbpf relocates the field against the running kernel's type. */
struct task_struct___rel {
	int pid;
} __attribute__((preserve_access_index));

struct rel_event {
	__u32 pid;
	__u32 kver;
};

__noinline int rel_fill(struct rel_event *e, __u64 task)
{
	struct task_struct___rel *t = (void *)task;

	if (!e || !task)
		return 0;
	e->pid = BPF_CORE_READ(t, pid);
	e->kver = LINUX_KERNEL_VERSION;
	return 1;
}

SEC("raw_tp/sched_process_exec")
int rel_exec(void *ctx)
{
	__u64 t = bpf_get_current_task();
	struct rel_event *e = bpf_ringbuf_reserve(&rel_events, sizeof(*e), 0);

	if (!e)
		return 0;
	if (rel_fill(e, t))
		bpf_ringbuf_submit(e, 0);
	else
		bpf_ringbuf_discard(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
