/* Perf buffer (BPF_MAP_TYPE_PERF_EVENT_ARRAY) consumption, and the shared
 * batch collector used by both ring and perf buffers in batch mode.
 *  - per record: libbpf calls pybpf_perf_sample_cb / pybpf_perf_lost_cb
 *    (extern "Python"), which never let an exception cross into C;
 *  - batch: the shim copies records into one flat buffer
 *    ([u32 size][s32 cpu][data padded to 8]...) and Python splits it. */
struct perf_buffer;
void perf_buffer__free(struct perf_buffer *pb);
int perf_buffer__epoll_fd(const struct perf_buffer *pb);
int perf_buffer__poll(struct perf_buffer *pb, int timeout_ms);
int perf_buffer__consume(struct perf_buffer *pb);
size_t perf_buffer__buffer_cnt(const struct perf_buffer *pb);

extern "Python" void pybpf_perf_sample_cb(void *ctx, int cpu, void *data, uint32_t size);
extern "Python" void pybpf_perf_lost_cb(void *ctx, int cpu, uint64_t cnt);
/* perf_buffer__new with the two callbacks above (ctx is handed back to them). */
struct perf_buffer *pybpf_pb_new_cb(int map_fd, size_t page_cnt, void *ctx);

struct pybpf_rec_batch {
    uint8_t *buf;
    size_t cap;
    size_t len;
    uint64_t count;      /* records collected since the last take */
    uint64_t overflow;   /* records dropped in userspace (out of memory) */
    uint64_t lost;       /* records the kernel reported lost (perf buffer) */
    int64_t size;        /* common record size of this batch, -1 if mixed, 0 if empty */
    size_t hint;         /* capacity to start from after the buffer was handed out */
};
struct ring_buffer *pybpf_rb_new_recs(int map_fd, struct pybpf_rec_batch *batch);
struct perf_buffer *pybpf_pb_new_recs(int map_fd, size_t page_cnt, struct pybpf_rec_batch *batch);
void pybpf_recs_reset(struct pybpf_rec_batch *batch);
void pybpf_recs_free(struct pybpf_rec_batch *batch);
uint8_t *pybpf_recs_detach(struct pybpf_rec_batch *batch);
void pybpf_recs_buf_free(void *buf);

/* Map hot path (Map.__getitem__/__setitem__ for integer keys and values of
 * up to 8 bytes): the key and value travel as little-endian integers, so
 * Python builds no buffers.  Return 0 or -errno. */
int pybpf_map_lookup_int(int fd, uint64_t key, uint64_t *value);
int pybpf_map_update_int(int fd, uint64_t key, uint64_t value, uint64_t flags);

/* libbpf's DEBUG-level messages reach Python's "pybpf.libbpf" logger only
 * while this is on (default on). Returns the previous setting. */
int pybpf_set_libbpf_debug(int on);
