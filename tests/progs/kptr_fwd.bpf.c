// SPDX-License-Identifier: GPL-2.0
/* A kptr to a struct the program never uses: clang emits only a forward
 * declaration of struct cgroup, which the kernel does not take as a kptr.
 * pybpf.compile() must refuse the object with words. */
#include "pybpf.bpf.h"

struct kf_slot {
	struct cgroup __kptr *cgrp;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kf_slot);
} slots SEC(".maps");

SEC("tp_btf/sys_enter")
int BPF_PROG(nothing, struct pt_regs *regs, long id)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
