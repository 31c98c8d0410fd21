// SPDX-License-Identifier: GPL-2.0
/* A medium-sized object for bench_open_load.py: eight programs of a few
 * kinds (XDP parsing, tc, tracepoints, a ring buffer producer, global
 * functions), eight maps, global data. */
#include "pybpf.bpf.h"

struct flow_key {
	__u32 saddr, daddr;
	__u16 sport, dport;
	__u8 proto;
	__u8 pad[3];
};

struct flow_val {
	__u64 packets, bytes;
	__u64 first_ns, last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} per_pid SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

volatile const __u32 sample_rate = 1;
__u64 total_packets = 0;

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

__noinline int account(struct flow_key *k, __u32 len)
{
	struct flow_val *v, init = {};

	if (!k)
		return 0;
	v = bpf_map_lookup_elem(&flows, k);
	if (!v) {
		init.first_ns = bpf_ktime_get_ns();
		bpf_map_update_elem(&flows, k, &init, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&flows, k);
		if (!v)
			return 0;
	}
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);
	v->last_ns = bpf_ktime_get_ns();
	return 1;
}

static __always_inline int parse(void *data, void *end, struct flow_key *k)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct tcphdr *tcp;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl != 5)
		return 0;
	k->saddr = ip->saddr;
	k->daddr = ip->daddr;
	k->proto = ip->protocol;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return 1;
	tcp = (void *)(ip + 1);
	if ((void *)tcp + 4 > end)
		return 1;
	k->sport = tcp->source;
	k->dport = tcp->dest;
	return 1;
}

SEC("xdp")
int xdp_flows(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct flow_key k = {};

	count(0);
	total_packets++;
	if (!parse(data, end, &k))
		return XDP_PASS;
	account(&k, end - data);
	return XDP_PASS;
}

SEC("xdp")
int xdp_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct flow_key k = {};
	__u32 *drop, idx;
	__u64 pfx;

	if (!parse(data, end, &k))
		return XDP_PASS;
	idx = k.dport & 0xff;
	drop = bpf_map_lookup_elem(&settings, &idx);
	if (drop && *drop)
		return XDP_DROP;
	pfx = ((__u64)k.saddr << 32) | 32;
	if (bpf_map_lookup_elem(&prefixes, &pfx))
		return XDP_DROP;
	return XDP_PASS;
}

SEC("xdp")
int xdp_redirect_port(struct xdp_md *ctx)
{
	__u32 k = 0;

	count(1);
	return bpf_redirect_map(&ports, k, XDP_PASS);
}

SEC("tc")
int tc_count(struct __sk_buff *skb)
{
	struct flow_key k = {};
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;

	count(2);
	if (parse(data, end, &k))
		account(&k, skb->len);
	return 0;
}

SEC("tc")
int tc_mark(struct __sk_buff *skb)
{
	__u32 idx = skb->mark & 0xff, *v = bpf_map_lookup_elem(&settings, &idx);

	if (v)
		skb->mark = *v;
	return 0;
}

SEC("tracepoint/sched/sched_process_exec")
int on_exec(void *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u64 now = bpf_ktime_get_ns(), one = 1, *v;
	struct { __u32 pid; char comm[16]; } *e;

	bpf_map_update_elem(&seen, &pid, &now, BPF_ANY);
	v = bpf_map_lookup_elem(&per_pid, &pid);
	if (v)
		*v += 1;
	else
		bpf_map_update_elem(&per_pid, &pid, &one, BPF_ANY);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->pid = pid;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int on_exit(void *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;

	bpf_map_delete_elem(&seen, &pid);
	bpf_map_delete_elem(&per_pid, &pid);
	count(3);
	return 0;
}

SEC("raw_tp/sys_enter")
int on_sys_enter(void *ctx)
{
	__u32 i, idx;
	__u64 acc = 0;

	if (bpf_get_prandom_u32() % (sample_rate ? sample_rate : 1))
		return 0;
	for (i = 0; i < 16; i++) {
		idx = i;
		__u32 *v = bpf_map_lookup_elem(&settings, &idx);
		if (v)
			acc += *v;
	}
	if (acc)
		count(4);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
