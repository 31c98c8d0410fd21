// SPDX-License-Identifier: GPL-2.0
/* Maps of the common types, written by one XDP program so tests can check
 * typed values after real runs. */
#include "pybpf.bpf.h"

enum color { RED = 1, GREEN = 2, BLUE = 4 };

struct inner {
	__u16 port;
	__u8 flags;
	__u8 pad;
};

struct flow {
	__u32 addr;
	struct inner in;
	__u64 hist[4];
	enum color color;
	char label[8];
	union {
		__u32 as_u32;
		__u8 as_bytes[4];
	} u;
	__u32 bits_lo : 3;
	__u32 bits_hi : 5;
	__s32 sbits : 6;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} arr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16);
	__type(key, __u64);
	__type(value, __u32);
} lru SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} pcpu_arr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} pcpu_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096 * 4);
} events SEC(".maps");

struct event {
	__u32 seq;
	__u32 len;
};

__u32 seq = 0;

SEC("xdp")
int fill(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 k = 1, fk = 7;
	__u64 lk = 42;
	__u64 *v;
	struct flow f = {};
	struct event *e;

	v = bpf_map_lookup_elem(&arr, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	v = bpf_map_lookup_elem(&pcpu_arr, &k);
	if (v)
		*v += 1;

	f.addr = 0x0100007f;
	f.in.port = 8080;
	f.in.flags = 3;
	f.hist[0] = 1;
	f.hist[3] = 4;
	f.color = BLUE;
	__builtin_memcpy(f.label, "pybpf", 6);
	f.u.as_u32 = 0x04030201;
	f.bits_lo = 5;
	f.bits_hi = 17;
	f.sbits = -3;
	bpf_map_update_elem(&flows, &fk, &f, BPF_ANY);
	bpf_map_update_elem(&lru, &lk, &fk, BPF_ANY);

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (e) {
		e->seq = seq++;
		e->len = data_end - data;
		bpf_ringbuf_submit(e, 0);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
