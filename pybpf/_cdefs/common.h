/* Opaque libbpf handles and the shim's own helpers. */
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int32_t __s32;
typedef int64_t __s64;

struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct btf;

/* Version gates computed by the C preamble (shim.c). */
#define PYBPF_HAS_LINK_UPDATE_MAP ...
#define PYBPF_HAS_PROG_INFO_BY_FD ...

uint32_t libbpf_major_version(void);
uint32_t libbpf_minor_version(void);
const char *libbpf_version_string(void);
int libbpf_strerror(int err, char *buf, size_t size);
const char *libbpf_bpf_attach_type_str(int t);
const char *libbpf_bpf_link_type_str(int t);
const char *libbpf_bpf_map_type_str(int t);
const char *libbpf_bpf_prog_type_str(int t);
int libbpf_num_possible_cpus(void);

/* libbpf's printf-style log, turned into one string per message by the shim
 * and handed to Python's logging.  Never raises into C. */
extern "Python" void pybpf_log_cb(int level, const char *msg);
void pybpf_install_print(void);

/* The single entry point of the raw layer: bpf(2). Returns -1 and sets errno
 * on failure (read through ffi.errno). */
long pybpf_sys_bpf(int cmd, void *attr, unsigned int size);
int pybpf_setns(int fd, int nstype);
