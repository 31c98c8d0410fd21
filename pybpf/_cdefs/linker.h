/* Static linking of BPF ELF objects (libbpf's bpf_linker). */
struct bpf_linker;
struct bpf_linker_opts { size_t sz; ...; };
struct bpf_linker_file_opts { size_t sz; ...; };
struct bpf_linker *bpf_linker__new(const char *filename, struct bpf_linker_opts *opts);
int bpf_linker__add_file(struct bpf_linker *linker, const char *filename, const struct bpf_linker_file_opts *opts);
int bpf_linker__finalize(struct bpf_linker *linker);
void bpf_linker__free(struct bpf_linker *linker);
