// SPDX-License-Identifier: GPL-2.0
/* Map values of many BTF shapes, filled by one syscall program, for the
 * typed view and the bpftool JSON comparison. */
#include "pybpf.bpf.h"

enum vt_level { LVL_LOW = 1, LVL_MID = 5, LVL_HIGH = 100 };
enum vt_wide : __u64 { W_SMALL = 1, W_HUGE = 0x100000000ULL };

struct vt_point {
	__s16 x;
	__s16 y;
};

struct vt_rec {
	__u64 id;
	__s32 delta;
	__u8 small;
	bool ok;
	char name[12];
	char raw[4];
	struct vt_point pts[2];
	enum vt_level lvl;
	enum vt_wide w;
	union {
		__u32 word;
		__u8 bytes[4];
	} u;
	struct {
		__u16 a;
		__u16 b;
	} anon_named;
	__u32 lo : 3;
	__u32 mid : 9;
	__s32 neg : 5;
	enum vt_level lvl_bits : 8;
	void *ptr;
};

struct vt_locked {
	struct bpf_spin_lock lock;
	__u64 count;
	struct bpf_timer timer;
	char tag[8];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, struct vt_rec);
} recs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct vt_locked);
} locks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct vt_point);
} pcpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__type(key, struct vt_point);
	__type(value, enum vt_level);
} by_point SEC(".maps");

/* What the echo program saw in recs[42], field by field, as the C compiler
 * lays it out: proves Python's encoding matches. */
struct vt_echo {
	__u64 id;
	__s64 delta;
	__u64 small;
	__u64 ok;
	__u64 lvl;
	__u64 lo;
	__u64 mid;
	__s64 neg;
	__u64 lvl_bits;
	__s64 pt1_y;
	__u64 byte2;
	__u64 a;
	__u64 name0;
	__u64 name_last;
	__u64 ptr;
	__u64 found;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vt_echo);
} echoes SEC(".maps");

__u64 fills = 0;
char greeting[16] = "hello";

SEC("syscall")
int fill(void *ctx)
{
	struct vt_rec r = {};
	struct vt_point p = { .x = -3, .y = 7 };
	enum vt_level lv = LVL_HIGH;
	__u32 k = 7;

	r.id = 0x1122334455667788ULL;
	r.delta = -42;
	r.small = 200;
	r.ok = true;
	__builtin_memcpy(r.name, "kernel", 7);
	r.raw[0] = 1; r.raw[1] = 2; r.raw[2] = 3; r.raw[3] = 4;
	r.pts[0].x = -1; r.pts[0].y = 2; r.pts[1].x = 300; r.pts[1].y = -300;
	r.lvl = LVL_MID;
	r.w = W_HUGE;
	r.u.word = 0x01020304;
	r.anon_named.a = 11; r.anon_named.b = 12;
	r.lo = 5; r.mid = 300; r.neg = -3; r.lvl_bits = LVL_HIGH;
	r.ptr = (void *)0xffff888000001000ULL;
	bpf_map_update_elem(&recs, &k, &r, BPF_ANY);
	k = 9;
	r.lvl = 3;        /* no enumerator */
	r.name[0] = 0;
	r.raw[3] = 0;     /* printable up to a NUL: bpftool shows a string */
	r.raw[0] = 'o'; r.raw[1] = 'k'; r.raw[2] = 0;
	bpf_map_update_elem(&recs, &k, &r, BPF_ANY);

	k = 0;
	bpf_map_update_elem(&pcpu, &k, &p, BPF_ANY);
	bpf_map_update_elem(&by_point, &p, &lv, BPF_ANY);
	fills++;
	return 0;
}

/* Syscall programs are sleepable, and 6.1 refuses bpf_spin_lock in them:
 * the locked increment runs in a tc program (test-run with a dummy packet). */
SEC("tc")
int bump(struct __sk_buff *skb)
{
	struct vt_locked *l;
	__u32 k = 1;

	l = bpf_map_lookup_elem(&locks, &k);
	if (l) {
		bpf_spin_lock(&l->lock);
		l->count += 5;
		bpf_spin_unlock(&l->lock);
		__builtin_memcpy(l->tag, "abc", 4);
	}
	return 0;
}

SEC("syscall")
int echo(void *ctx)
{
	__u32 k = 42, zero = 0;
	struct vt_rec *r = bpf_map_lookup_elem(&recs, &k);
	struct vt_echo *e = bpf_map_lookup_elem(&echoes, &zero);

	if (!e)
		return 1;
	e->found = r != 0;
	if (!r)
		return 0;
	e->id = r->id;
	e->delta = r->delta;
	e->small = r->small;
	e->ok = r->ok;
	e->lvl = r->lvl;
	e->lo = r->lo;
	e->mid = r->mid;
	e->neg = r->neg;
	e->lvl_bits = r->lvl_bits;
	e->pt1_y = r->pts[1].y;
	e->byte2 = r->u.bytes[2];
	e->a = r->anon_named.a;
	e->name0 = r->name[0];
	e->name_last = r->name[11];
	e->ptr = (__u64)r->ptr;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
