/* bpf_link: libbpf's owner of an attachment. */
struct bpf_link *bpf_link__open(const char *path);
int bpf_link__fd(const struct bpf_link *link);
const char *bpf_link__pin_path(const struct bpf_link *link);
int bpf_link__pin(struct bpf_link *link, const char *path);
int bpf_link__unpin(struct bpf_link *link);
int bpf_link__update_program(struct bpf_link *link, struct bpf_program *prog);
void bpf_link__disconnect(struct bpf_link *link);
int bpf_link__detach(struct bpf_link *link);
int bpf_link__destroy(struct bpf_link *link);
