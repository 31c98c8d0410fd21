/* C preamble of pybpf._native: includes, version gates, and the few helpers
 * that cannot be written in cdef (varargs logging, the raw syscall). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#define PYBPF_LIBBPF_AT_LEAST(maj, min) \
    (LIBBPF_MAJOR_VERSION > (maj) || \
     (LIBBPF_MAJOR_VERSION == (maj) && LIBBPF_MINOR_VERSION >= (min)))

/* bpf_link__update_map() appeared in libbpf 1.2; bpf_prog_get_info_by_fd()
 * too. Where missing, the raw layer does the same through bpf(2). */
#define PYBPF_HAS_LINK_UPDATE_MAP PYBPF_LIBBPF_AT_LEAST(1, 2)
#define PYBPF_HAS_PROG_INFO_BY_FD PYBPF_LIBBPF_AT_LEAST(1, 2)

static void pybpf_log_cb(int level, const char *msg);

/* Whether libbpf's DEBUG messages reach Python (pybpf_set_libbpf_debug):
 * a load emits hundreds of them, each a call into Python. */
static int pybpf_libbpf_debug = 1;

static int pybpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    char *msg = NULL;
    int n;

    if (level == LIBBPF_DEBUG && !pybpf_libbpf_debug)
        return 0;
    n = vasprintf(&msg, fmt, ap);
    if (n < 0 || msg == NULL)
        return 0;
    pybpf_log_cb((int)level, msg);
    free(msg);
    return n;
}

static void pybpf_install_print(void)
{
    libbpf_set_print(pybpf_print);
}

static long pybpf_sys_bpf(int cmd, void *attr, unsigned int size)
{
    return syscall(__NR_bpf, cmd, attr, size);
}

static int pybpf_setns(int fd, int nstype)
{
    return setns(fd, nstype);
}

static void pybpf_btf_dump_printf(void *ctx, const char *fmt, va_list args)
{
    vfprintf((FILE *)ctx, fmt, args);
}

/* Writes every named type of `btf` as C, in dependency order, the way a
 * vmlinux.h is written. Returns 0 or a negative errno. */
static int pybpf_btf_dump_c(const struct btf *btf, const char *path)
{
    FILE *f = fopen(path, "w");
    struct btf_dump *d;
    uint32_t i, n;
    int err = 0;

    if (!f)
        return -errno;
    d = btf_dump__new(btf, pybpf_btf_dump_printf, f, NULL);
    if (!d) {
        err = -errno;
        fclose(f);
        return err;
    }
    fprintf(f, "#ifndef __VMLINUX_H__\n#define __VMLINUX_H__\n\n"
               "#ifndef BPF_NO_PRESERVE_ACCESS_INDEX\n"
               "#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)\n"
               "#endif\n\n");
    n = btf__type_cnt(btf);
    for (i = 1; i < n && !err; i++)
        err = btf_dump__dump_type(d, i);
    fprintf(f, "\n#ifndef BPF_NO_PRESERVE_ACCESS_INDEX\n#pragma clang attribute pop\n#endif\n\n"
               "#endif /* __VMLINUX_H__ */\n");
    btf_dump__free(d);
    if (fclose(f) && !err)
        err = -errno;
    return err;
}

/* Batch ring buffer consumer: copies each record into batch->buf as
 * [u32 size][u32 pad][data padded to 8], growing the buffer as needed (a
 * callback that fails makes libbpf drop the record, so it must not fail).
 * One consume call is bounded by the ring's size, so is the buffer. */
struct pybpf_rb_batch {
    uint8_t *buf;
    size_t cap;
    size_t len;
    uint64_t count;
    uint64_t overflow;
};

static int pybpf_rb_batch_cb(void *ctx, void *data, size_t size)
{
    struct pybpf_rb_batch *b = ctx;
    size_t need = 8 + ((size + 7) & ~(size_t)7);
    uint32_t sz = (uint32_t)size;

    if (b->len + need > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        uint8_t *nbuf;
        while (b->len + need > cap)
            cap *= 2;
        nbuf = realloc(b->buf, cap);
        if (!nbuf) {
            b->overflow++;   /* out of memory: the record is lost, and counted */
            return 0;
        }
        b->buf = nbuf;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, &sz, 4);
    memset(b->buf + b->len + 4, 0, 4);
    memcpy(b->buf + b->len + 8, data, size);
    b->len += need;
    b->count++;
    return 0;
}

static struct ring_buffer *pybpf_rb_new_batch(int map_fd, struct pybpf_rb_batch *batch)
{
    return ring_buffer__new(map_fd, pybpf_rb_batch_cb, batch, NULL);
}

static void pybpf_rb_batch_free(struct pybpf_rb_batch *batch)
{
    free(batch->buf);
    batch->buf = NULL;
    batch->cap = batch->len = 0;
}

/* -- Batch record collection shared by ring and perf buffers (perfbuf.h) --
 * Each record goes into batch->buf as [u32 size][s32 cpu][data padded to 8].
 * A callback that fails makes libbpf drop the record, so these never fail:
 * when memory runs out the record is counted in `overflow`. */
struct pybpf_rec_batch {
    uint8_t *buf;
    size_t cap;
    size_t len;
    uint64_t count;
    uint64_t overflow;
    uint64_t lost;
    int64_t size;
    size_t hint;    /* capacity to start from after the buffer was handed out */
};

static void pybpf_recs_put(struct pybpf_rec_batch *b, int cpu, const void *data, size_t size)
{
    size_t need = 8 + ((size + 7) & ~(size_t)7);
    uint32_t sz = (uint32_t)size;
    int32_t c = cpu;

    if (b->len + need > b->cap) {
        size_t cap = b->cap ? b->cap : (b->hint ? b->hint : 65536);
        uint8_t *nbuf;
        while (b->len + need > cap)
            cap *= 2;
        nbuf = realloc(b->buf, cap);
        if (!nbuf) {
            b->overflow++;
            return;
        }
        b->buf = nbuf;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, &sz, 4);
    memcpy(b->buf + b->len + 4, &c, 4);
    memcpy(b->buf + b->len + 8, data, size);
    if (need > 8 + size)
        memset(b->buf + b->len + 8 + size, 0, need - 8 - size);
    b->len += need;
    b->count++;
    if (b->size == 0)
        b->size = (int64_t)size;
    else if (b->size != (int64_t)size)
        b->size = -1;
}

/* The ring buffer's own collector, on the hot path of batch consumption.
 * A ring record's space is rounded up to 8 bytes by the kernel, so it is
 * copied in 8-byte words (the padding is zeroed in the copy). */
static int pybpf_rb_recs_cb(void *ctx, void *data, size_t size)
{
    struct pybpf_rec_batch *b = ctx;
    size_t words = (size + 7) >> 3, need = 8 + (words << 3), i;
    const uint64_t *src = data;
    uint64_t *dst;

    if (__builtin_expect(b->len + need > b->cap, 0)) {
        pybpf_recs_put(b, -1, data, size);
        return 0;
    }
    dst = (uint64_t *)(b->buf + b->len);
    dst[0] = (uint32_t)size | ((uint64_t)0xffffffffu << 32);   /* size, cpu -1 */
    for (i = 0; i < words; i++)
        dst[1 + i] = src[i];
    if (size & 7)
        dst[words] &= ~(uint64_t)0 >> (64 - 8 * (size & 7));
    b->len += need;
    b->count++;
    if (__builtin_expect(b->size != (int64_t)size, 0))
        b->size = b->size == 0 ? (int64_t)size : -1;
    return 0;
}

static void pybpf_pb_recs_cb(void *ctx, int cpu, void *data, __u32 size)
{
    pybpf_recs_put(ctx, cpu, data, size);
}

static void pybpf_pb_recs_lost(void *ctx, int cpu, __u64 cnt)
{
    ((struct pybpf_rec_batch *)ctx)->lost += cnt;
}

static struct ring_buffer *pybpf_rb_new_recs(int map_fd, struct pybpf_rec_batch *batch)
{
    return ring_buffer__new(map_fd, pybpf_rb_recs_cb, batch, NULL);
}

static struct perf_buffer *pybpf_pb_new_recs(int map_fd, size_t page_cnt, struct pybpf_rec_batch *batch)
{
    return perf_buffer__new(map_fd, page_cnt, pybpf_pb_recs_cb, pybpf_pb_recs_lost, batch, NULL);
}

/* Defined by cffi from perfbuf.h's extern "Python" declarations. */
static void pybpf_perf_sample_cb(void *ctx, int cpu, void *data, uint32_t size);
static void pybpf_perf_lost_cb(void *ctx, int cpu, uint64_t cnt);

static struct perf_buffer *pybpf_pb_new_cb(int map_fd, size_t page_cnt, void *ctx)
{
    return perf_buffer__new(map_fd, page_cnt, (perf_buffer_sample_fn)pybpf_perf_sample_cb,
                            (perf_buffer_lost_fn)pybpf_perf_lost_cb, ctx, NULL);
}

static void pybpf_recs_reset(struct pybpf_rec_batch *batch)
{
    batch->len = 0;
    batch->count = 0;
    batch->size = 0;
}

/* Hand the collected records' buffer to the caller (who frees it with
 * pybpf_recs_buf_free) and start a new one next time, as large as this one. */
static uint8_t *pybpf_recs_detach(struct pybpf_rec_batch *batch)
{
    uint8_t *buf = batch->buf;

    batch->hint = batch->cap;
    batch->buf = NULL;
    batch->cap = batch->len = 0;
    batch->count = 0;
    batch->size = 0;
    return buf;
}

static void pybpf_recs_buf_free(void *buf)
{
    free(buf);
}

static void pybpf_recs_free(struct pybpf_rec_batch *batch)
{
    free(batch->buf);
    batch->buf = NULL;
    batch->cap = batch->len = 0;
    batch->count = 0;
    batch->size = 0;
}

/* -- Map hot path (perfbuf.h): integer keys/values of up to 8 bytes ------------
 * x86-64 and arm64 are little-endian: the first key_size bytes of `key` are
 * the key the kernel reads; the value is zeroed first so a smaller value
 * reads back as the integer it holds. */
static int pybpf_map_lookup_int(int fd, uint64_t key, uint64_t *value)
{
    *value = 0;
    return bpf_map_lookup_elem(fd, &key, value) ? -errno : 0;
}

static int pybpf_map_update_int(int fd, uint64_t key, uint64_t value, uint64_t flags)
{
    return bpf_map_update_elem(fd, &key, &value, flags) ? -errno : 0;
}

/* Gate of libbpf's DEBUG messages (perfbuf.h); returns the previous setting. */
static int pybpf_set_libbpf_debug(int on)
{
    int old = pybpf_libbpf_debug;

    pybpf_libbpf_debug = on;
    return old;
}
