/* Kernel ABI structures for the raw bpf(2) layer.
 *
 * These mirror include/uapi/linux/bpf.h of the kernels pybpf targets (up to
 * 7.x).  They are our own copies, under our own names, because the headers
 * installed on a build machine (linux-libc-dev) are often older than the
 * kernel the library runs on; the bpf(2) ABI is append-only, so a newer kernel
 * accepts these layouts and an older one rejects non-zero tail fields with
 * E2BIG, which the raw layer reports.
 *
 * This file is valid both as cffi cdef text and as C: build_ffi.py feeds it to
 * both, so the compiler checks every offset cffi uses.
 */

struct pybpf_attr_map_create {
    uint32_t map_type;
    uint32_t key_size;
    uint32_t value_size;
    uint32_t max_entries;
    uint32_t map_flags;
    uint32_t inner_map_fd;
    uint32_t numa_node;
    char map_name[16];
    uint32_t map_ifindex;
    uint32_t btf_fd;
    uint32_t btf_key_type_id;
    uint32_t btf_value_type_id;
    uint32_t btf_vmlinux_value_type_id;
    uint64_t map_extra;
};

struct pybpf_attr_map_elem {
    uint32_t map_fd;
    uint32_t _pad0;
    uint64_t key;
    uint64_t value;          /* or next_key */
    uint64_t flags;
};

struct pybpf_attr_map_batch {
    uint64_t in_batch;
    uint64_t out_batch;
    uint64_t keys;
    uint64_t values;
    uint32_t count;
    uint32_t map_fd;
    uint64_t elem_flags;
    uint64_t flags;
};

struct pybpf_attr_prog_load {
    uint32_t prog_type;
    uint32_t insn_cnt;
    uint64_t insns;
    uint64_t license;
    uint32_t log_level;
    uint32_t log_size;
    uint64_t log_buf;
    uint32_t kern_version;
    uint32_t prog_flags;
    char prog_name[16];
    uint32_t prog_ifindex;
    uint32_t expected_attach_type;
    uint32_t prog_btf_fd;
    uint32_t func_info_rec_size;
    uint64_t func_info;
    uint32_t func_info_cnt;
    uint32_t line_info_rec_size;
    uint64_t line_info;
    uint32_t line_info_cnt;
    uint32_t attach_btf_id;
    uint32_t attach_prog_fd;   /* or attach_btf_obj_fd */
    uint32_t core_relo_cnt;
    uint64_t fd_array;
    uint64_t core_relos;
    uint32_t core_relo_rec_size;
    uint32_t log_true_size;
};

struct pybpf_attr_obj {
    uint64_t pathname;
    uint32_t bpf_fd;
    uint32_t file_flags;
};

struct pybpf_attr_test_run {
    uint32_t prog_fd;
    uint32_t retval;
    uint32_t data_size_in;
    uint32_t data_size_out;
    uint64_t data_in;
    uint64_t data_out;
    uint32_t repeat;
    uint32_t duration;
    uint32_t ctx_size_in;
    uint32_t ctx_size_out;
    uint64_t ctx_in;
    uint64_t ctx_out;
    uint32_t flags;
    uint32_t cpu;
    uint32_t batch_size;
    uint32_t _pad0;
};

struct pybpf_attr_get_id {
    uint32_t id;             /* start_id, prog_id, map_id, btf_id or link_id */
    uint32_t next_id;
    uint32_t open_flags;
};

struct pybpf_attr_info {
    uint32_t bpf_fd;
    uint32_t info_len;
    uint64_t info;
};

struct pybpf_attr_link_create {
    uint32_t prog_fd;        /* or map_fd for struct_ops links */
    uint32_t target_fd;      /* or target_ifindex */
    uint32_t attach_type;
    uint32_t flags;
    uint32_t target_btf_id;  /* tracing / freplace target */
    uint32_t _pad0;
    uint64_t cookie;         /* tracing.cookie (6.x) */
    uint64_t _reserved[4];
};

struct pybpf_attr_link_update {
    uint32_t link_fd;
    uint32_t new_fd;         /* new_prog_fd or new_map_fd */
    uint32_t flags;
    uint32_t old_fd;         /* old_prog_fd or old_map_fd */
};

struct pybpf_attr_link_detach {
    uint32_t link_fd;
};

struct pybpf_attr_enable_stats {
    uint32_t type;
};

struct pybpf_attr_btf_load {
    uint64_t btf;
    uint64_t btf_log_buf;
    uint32_t btf_size;
    uint32_t btf_log_size;
    uint32_t btf_log_level;
    uint32_t btf_log_true_size;
};

struct pybpf_prog_info {
    uint32_t type;
    uint32_t id;
    uint8_t  tag[8];
    uint32_t jited_prog_len;
    uint32_t xlated_prog_len;
    uint64_t jited_prog_insns;
    uint64_t xlated_prog_insns;
    uint64_t load_time;
    uint32_t created_by_uid;
    uint32_t nr_map_ids;
    uint64_t map_ids;
    char name[16];
    uint32_t ifindex;
    uint32_t gpl_compatible;  /* bit 0 */
    uint64_t netns_dev;
    uint64_t netns_ino;
    uint32_t nr_jited_ksyms;
    uint32_t nr_jited_func_lens;
    uint64_t jited_ksyms;
    uint64_t jited_func_lens;
    uint32_t btf_id;
    uint32_t func_info_rec_size;
    uint64_t func_info;
    uint32_t nr_func_info;
    uint32_t nr_line_info;
    uint64_t line_info;
    uint64_t jited_line_info;
    uint32_t nr_jited_line_info;
    uint32_t line_info_rec_size;
    uint32_t jited_line_info_rec_size;
    uint32_t nr_prog_tags;
    uint64_t prog_tags;
    uint64_t run_time_ns;
    uint64_t run_cnt;
    uint64_t recursion_misses;
    uint32_t verified_insns;
    uint32_t attach_btf_obj_id;
    uint32_t attach_btf_id;
    uint32_t _pad0;
};

struct pybpf_map_info {
    uint32_t type;
    uint32_t id;
    uint32_t key_size;
    uint32_t value_size;
    uint32_t max_entries;
    uint32_t map_flags;
    char name[16];
    uint32_t ifindex;
    uint32_t btf_vmlinux_value_type_id;
    uint64_t netns_dev;
    uint64_t netns_ino;
    uint32_t btf_id;
    uint32_t btf_key_type_id;
    uint32_t btf_value_type_id;
    uint32_t btf_vmlinux_id;  /* 6.x: id of the vmlinux/module BTF */
    uint64_t map_extra;
};

struct pybpf_btf_info {
    uint64_t btf;
    uint32_t btf_size;
    uint32_t id;
    uint64_t name;
    uint32_t name_len;
    uint32_t kernel_btf;
};

struct pybpf_link_info {
    uint32_t type;
    uint32_t id;
    uint32_t prog_id;
    uint32_t _pad0;
    /* The kernel's union: interpret by type.
     *   raw_tracepoint: u64 tp_name, u32 tp_name_len
     *   tracing:        u32 attach_type, u32 target_obj_id, u32 target_btf_id
     *   cgroup:         u64 cgroup_id, u32 attach_type
     *   netns:          u32 netns_ino, u32 attach_type
     *   xdp:            u32 ifindex
     *   struct_ops:     u32 map_id
     *   netfilter/tcx/netkit/...: see the raw layer
     */
    union {
        uint32_t u32[16];
        uint64_t u64[8];
    } u;
};
