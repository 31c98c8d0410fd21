// SPDX-License-Identifier: GPL-2.0
/* Objects for the CLI tests: maps of the common kinds with BTF-typed keys and
 * values (compared with bpftool's JSON), a program with a name longer than
 * the kernel keeps (bpftool shows the full name from BTF). */
#include "pybpf.bpf.h"

enum cli_state { IDLE = 0, BUSY = 3, GONE = -1 };

struct cli_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct cli_stats {
	__u64 packets;
	__s32 delta;
	enum cli_state st;
	char tag[8];
	__u8 raw[3];
	_Bool ok;
	__s8 small;
	__u16 arr[2][2];
	union {
		__u32 word;
		__u8 bytes[4];
	} u;
	__u32 lo : 4;
	__u32 hi : 12;
	__s32 neg : 5;
	char c;
	char nc;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct cli_key);
	__type(value, struct cli_stats);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __s64);
} pcpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__uint(key_size, 4);
	__uint(value_size, 4);
} nobtf SEC(".maps");

__u64 runs = 0;
__u32 last_len = 0;

SEC("xdp")
int cli_long_program_name(struct xdp_md *ctx)
{
	__u32 k = 0, len = ctx->data_end - ctx->data;
	__u64 *v = bpf_map_lookup_elem(&counters, &k);
	__s64 *p;
	struct cli_key fk = { .addr = 0x0100007f, .port = 80, .proto = 6 };
	struct cli_stats s = {};

	if (v)
		__sync_fetch_and_add(v, len);
	p = bpf_map_lookup_elem(&pcpu, &k);
	if (p)
		*p -= 1;
	s.packets = len;
	s.delta = -5;
	s.st = BUSY;
	__builtin_memcpy(s.tag, "edge", 5);
	s.raw[0] = 1;
	s.raw[2] = 255;
	s.ok = 1;
	s.small = -2;
	s.arr[1][0] = 7;
	s.u.word = 0x01020304;
	s.lo = 9;
	s.hi = 1000;
	s.neg = -3;
	s.c = 'x';
	s.nc = 7;
	bpf_map_update_elem(&flows, &fk, &s, BPF_ANY);
	runs++;
	last_len = len;
	return len > 100 ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int short_prog(struct xdp_md *ctx)
{
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
