/* Ring buffer consumption.  Two modes:
 *  - per record: libbpf calls pybpf_ringbuf_cb (extern "Python"), which
 *    never lets an exception cross into C;
 *  - batch: the shim copies records into one flat buffer
 *    ([u32 size][data, padded to 8]...) and Python decodes many at once. */
struct ring_buffer;
struct ring_buffer_opts { size_t sz; ...; };
typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);

struct ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb, void *ctx, const struct ring_buffer_opts *opts);
void ring_buffer__free(struct ring_buffer *rb);
int ring_buffer__add(struct ring_buffer *rb, int map_fd, ring_buffer_sample_fn sample_cb, void *ctx);
int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__consume(struct ring_buffer *rb);
int ring_buffer__epoll_fd(const struct ring_buffer *rb);

extern "Python" int pybpf_ringbuf_cb(void *ctx, void *data, size_t size);

struct pybpf_rb_batch {
    uint8_t *buf;
    size_t cap;
    size_t len;
    uint64_t count;
    uint64_t overflow;   /* records lost because memory ran out */
};
int pybpf_rb_batch_cb(void *ctx, void *data, size_t size);
struct ring_buffer *pybpf_rb_new_batch(int map_fd, struct pybpf_rb_batch *batch);
void pybpf_rb_batch_free(struct pybpf_rb_batch *batch);
