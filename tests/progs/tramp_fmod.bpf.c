// SPDX-License-Identifier: GPL-2.0
/* fmod_ret on bpf_modify_return_test(int a, int *b), which the kernel's
 * test-run path for fmod_ret programs calls with a = 1, *b = 1; the function
 * increments *b and returns a + *b.  A non-zero return of the fmod_ret
 * program skips the function and becomes its return value; 0 lets it run. */
#include "pybpf.bpf.h"

__s32 override = 0;
__u64 fmod_calls = 0;
__u64 exit_calls = 0;
__s64 exit_ret = -1;
__s64 exit_b = -1;

SEC("fmod_ret/bpf_modify_return_test")
int BPF_PROG(fmod_test, int a, int *b, int ret)
{
	fmod_calls++;
	return override;
}

SEC("fexit/bpf_modify_return_test")
int BPF_PROG(fexit_test, int a, int *b, int ret)
{
	int v = -1;

	/* int * is not a BTF-typed pointer: read it with a helper */
	bpf_probe_read_kernel(&v, sizeof(v), b);
	exit_calls++;
	exit_ret = ret;
	exit_b = v;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
