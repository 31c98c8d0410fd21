/* BTF through libbpf's btf__* API. The record layouts are the kernel's
 * (include/uapi/linux/btf.h). */
struct btf_type {
    uint32_t name_off;
    uint32_t info;
    uint32_t size;   /* or type */
};
struct btf_member { uint32_t name_off; uint32_t type; uint32_t offset; };
struct btf_array { uint32_t type; uint32_t index_type; uint32_t nelems; };
struct btf_enum { uint32_t name_off; int32_t val; };
struct btf_enum64 { uint32_t name_off; uint32_t val_lo32; uint32_t val_hi32; };
struct btf_param { uint32_t name_off; uint32_t type; };
struct btf_var { uint32_t linkage; };
struct btf_var_secinfo { uint32_t type; uint32_t offset; uint32_t size; };
struct btf_decl_tag { int32_t component_idx; };

struct btf *btf__new(const void *data, uint32_t size);
struct btf_ext;
struct btf *btf__parse(const char *path, struct btf_ext **btf_ext);
struct btf *btf__parse_split(const char *path, struct btf *base_btf);
struct btf *btf__load_vmlinux_btf(void);
struct btf *btf__load_module_btf(const char *module_name, struct btf *vmlinux_btf);
struct btf *btf__load_from_kernel_by_id(uint32_t id);
struct btf *btf__load_from_kernel_by_id_split(uint32_t id, struct btf *base_btf);
void btf__free(struct btf *btf);
uint32_t btf__type_cnt(const struct btf *btf);
const struct btf *btf__base_btf(const struct btf *btf);
const struct btf_type *btf__type_by_id(const struct btf *btf, uint32_t id);
int32_t btf__find_by_name(const struct btf *btf, const char *type_name);
int32_t btf__find_by_name_kind(const struct btf *btf, const char *type_name, uint32_t kind);
const char *btf__name_by_offset(const struct btf *btf, uint32_t offset);
int64_t btf__resolve_size(const struct btf *btf, uint32_t type_id);
int btf__resolve_type(const struct btf *btf, uint32_t type_id);
int btf__align_of(const struct btf *btf, uint32_t id);
int btf__fd(const struct btf *btf);
const void *btf__raw_data(const struct btf *btf, uint32_t *size);
size_t btf__pointer_size(const struct btf *btf);

/* The shim writes C declarations of all types of a BTF (vmlinux.h). */
int pybpf_btf_dump_c(const struct btf *btf, const char *path);
