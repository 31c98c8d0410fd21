/* Compile-time checks: our uapi copies agree with the installed kernel
 * headers on every field both know. */
#include <stddef.h>
#define PYBPF_SAME(ours, theirs, field) \
    _Static_assert(offsetof(struct ours, field) == offsetof(theirs, field), #ours "." #field)
PYBPF_SAME(pybpf_prog_info, struct bpf_prog_info, run_cnt);
PYBPF_SAME(pybpf_prog_info, struct bpf_prog_info, attach_btf_id);
PYBPF_SAME(pybpf_prog_info, struct bpf_prog_info, netns_dev);
PYBPF_SAME(pybpf_prog_info, struct bpf_prog_info, name);
PYBPF_SAME(pybpf_map_info, struct bpf_map_info, map_extra);
PYBPF_SAME(pybpf_map_info, struct bpf_map_info, btf_value_type_id);
PYBPF_SAME(pybpf_btf_info, struct bpf_btf_info, kernel_btf);
_Static_assert(offsetof(struct bpf_link_info, tracing.target_btf_id) - offsetof(struct bpf_link_info, tracing) == 8, "link info tracing");
_Static_assert(offsetof(struct pybpf_link_info, u) == offsetof(struct bpf_link_info, tracing), "link info union");
PYBPF_SAME(pybpf_attr_prog_load, union bpf_attr, attach_prog_fd);
PYBPF_SAME(pybpf_attr_prog_load, union bpf_attr, fd_array);
#define PYBPF_SAME_SUB(ours, field, sub, theirs) \
    _Static_assert(offsetof(struct ours, field) == offsetof(union bpf_attr, sub.theirs) - offsetof(union bpf_attr, sub), #ours "." #field)
PYBPF_SAME_SUB(pybpf_attr_test_run, batch_size, test, batch_size);
PYBPF_SAME_SUB(pybpf_attr_test_run, ctx_out, test, ctx_out);
PYBPF_SAME_SUB(pybpf_attr_link_create, target_btf_id, link_create, target_btf_id);
PYBPF_SAME_SUB(pybpf_attr_link_create, flags, link_create, flags);
PYBPF_SAME_SUB(pybpf_attr_map_batch, flags, batch, flags);
PYBPF_SAME_SUB(pybpf_attr_map_batch, map_fd, batch, map_fd);
PYBPF_SAME_SUB(pybpf_attr_link_update, old_fd, link_update, old_prog_fd);
PYBPF_SAME_SUB(pybpf_attr_info, info, info, info);
PYBPF_SAME(pybpf_attr_map_create, union bpf_attr, map_extra);
PYBPF_SAME(pybpf_attr_btf_load, union bpf_attr, btf_log_level);
