// SPDX-License-Identifier: GPL-2.0
/* fentry/fexit on kernel functions of the TCP connect path.  Only
 * connections to target_port (set from userspace) are counted. */
#include "pybpf.bpf.h"

__u16 target_port = 0;		/* host byte order */
__u64 connects = 0;
__u32 connect_pid = 0;
__u64 v4_exits = 0;
__s64 v4_ret = -1;

SEC("fentry/tcp_connect")
int BPF_PROG(on_tcp_connect, struct sock *sk)
{
	if (bpf_ntohs(sk->__sk_common.skc_dport) != target_port)
		return 0;
	connects++;
	connect_pid = bpf_get_current_pid_tgid() >> 32;
	return 0;
}

SEC("fexit/tcp_v4_connect")
int BPF_PROG(on_tcp_v4_connect_exit, struct sock *sk, struct sockaddr *uaddr, int addr_len, int ret)
{
	if (bpf_ntohs(sk->__sk_common.skc_dport) != target_port)
		return 0;
	v4_exits++;
	v4_ret = ret;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
