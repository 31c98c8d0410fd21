"""Fuzz targets of the reliability suite, run inside a worker process.

``python3 fuzz_targets.py TARGET SECONDS CRASH_FILE`` runs Hypothesis on one
target for about SECONDS seconds.  Before each input is tried it is written
to CRASH_FILE, so when the worker dies of a signal (a segfault in libbpf,
an abort) the parent still has the input that killed it.  Any exception
other than a :class:`pybpf.BPFError` (or a leaked fd) is a failure that
Hypothesis shrinks; the worker then prints ``FAILED <target>`` with the
minimal input written to CRASH_FILE and exits 1.

Targets (each a function taking one input, plus a Hypothesis strategy):

* ``elf``: compiled objects from tests/progs with bytes flipped, overwritten,
  inserted or cut, in the whole file or in one section (``.BTF``,
  ``.BTF.ext``, the section table, ``.maps``...), to Object.open and load;
* ``btf``: BTF blobs (real ones, mutated) to Btf.from_bytes, every type
  walked and turned into a codec, and the kernel's BTF_LOAD;
* ``mapops``: keys and values of every shape to the BTF-typed maps of
  tests/progs/maps.bpf.c;
* ``packets``: frames and XDP contexts to test_run;
* ``compile``: pybpf.compile on hostile sources (garbage and non-UTF-8 C,
  odd includes) and arguments (odd file names, outputs that are directories
  or FIFOs, flags that write no object, NUL bytes, a missing clang): an ELF
  path or a BPFError, no temporary left in the output directory or cache;
* ``cli``: ``pybpf.cli.main`` on mutated argv, in private network and mount
  namespaces: a status, one ``Error:`` line on failure, never a Python bug
  underneath.
"""
from __future__ import annotations

import ast
import gc
import math
import os
import struct
import sys
import tempfile
import time
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import pybpf
from pybpf.core.map import PERCPU_TYPES, _possible_cpus
from pybpf.errors import BPFError
from rel_util import compiled, open_fds

# -- ELF layout (enough to aim mutations at one section) --------------------------------------------


def sections(data: bytes) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of the sections of a well-formed ELF64 LE file,
    plus pseudo sections 'ehdr' and 'shdrs' (the section header table)."""
    out = {"ehdr": (0, 64)}
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    out["shdrs"] = (shoff, shentsize * shnum)
    hdrs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    stroff = hdrs[shstrndx][4]
    for h in hdrs:
        name_off, sh_type, _, _, off, size = h[:6]
        end = data.index(b"\0", stroff + name_off)
        name = data[stroff + name_off:end].decode()
        if name and sh_type != 8:  # NOBITS has no bytes in the file
            out[name] = (off, size)
    return out


SEED_NAMES = ("maps", "xdp_count", "verifier_reject", "rel_core")
_seeds: list[bytes] = []
_regions: list[dict[str, tuple[int, int]]] = []


def seeds() -> list[bytes]:
    if not _seeds:
        for n in SEED_NAMES:
            data = compiled(n).read_bytes()
            _seeds.append(data)
            _regions.append(sections(data))
    return _seeds


REGIONS = ["any", "any", "ehdr", "shdrs", ".BTF", ".BTF", ".BTF.ext", ".BTF.ext", ".maps", ".symtab", "xdp", ".text",
           ".rel"]
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x10000, 24, 64]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.sampled_from(REGIONS), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("byte"), st.sampled_from(REGIONS), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("u32"), st.sampled_from(REGIONS), st.integers(0, 1 << 20), st.sampled_from(INTERESTING)),
    st.tuples(st.just("insert"), st.sampled_from(REGIONS), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("cut"), st.sampled_from(REGIONS), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.just("any"), st.integers(0, 1 << 20), st.just(0)),
)
elf_input = st.tuples(st.integers(0, len(SEED_NAMES) - 1), st.lists(mutation, min_size=1, max_size=6))


def mutate(seed: int, muts: list[tuple[Any, ...]]) -> bytes:
    data = bytearray(seeds()[seed])
    regions = _regions[seed]
    for kind, region, pos, arg in muts:
        if region == "any" or not data:
            lo, size = 0, len(data)
        elif region == ".rel":
            rels = [v for k, v in regions.items() if k.startswith(".rel")]
            lo, size = rels[pos % len(rels)] if rels else (0, len(data))
        else:
            lo, size = regions.get(region, (0, len(data)))
        if size <= 0 or lo >= len(data):
            continue
        off = lo + pos % size
        off = min(off, len(data) - 1)
        if kind == "flip":
            data[off] ^= 1 << arg
        elif kind == "byte":
            data[off] = arg
        elif kind == "u32":
            data[off:off + 4] = struct.pack("<I", arg)[:max(0, len(data) - off)]
        elif kind == "insert":
            data[off:off] = arg
        elif kind == "cut":
            del data[off:off + arg]
        elif kind == "truncate":
            del data[off:]
    return bytes(data)


_POSSIBLE_CPUS = _possible_cpus()
_bpffs_dir: list[str] = []


def _scratch_bpffs() -> str:
    """Where mutated objects that ask for pinning pin their maps; removed
    with everything in it when the worker exits."""
    if not _bpffs_dir:
        import atexit
        import shutil

        d = f"/sys/fs/bpf/pybpf-fuzz-{os.getpid()}"
        os.makedirs(d, exist_ok=True)
        _bpffs_dir.append(d)
        atexit.register(shutil.rmtree, d, True)
    return _bpffs_dir[0]


# Harness policy, not a library behaviour: what one mutated object may ask
# the kernel for. A mutated BTF can make a value type hundreds of MB; eight
# such entries are gigabytes of kernel memory charged to the run's cgroup
# (one CI run lost its pytest process to the OOM killer that way).
MAP_BUDGET = 16 << 20          # bytes per map
OBJECT_BUDGET = 64 << 20       # bytes per object, all maps together
ENTRY_OVERHEAD = 64            # hash element header, rounding
RING_TYPES = (pybpf.MapType.RINGBUF, pybpf.MapType.USER_RINGBUF)   # sized in bytes, not entries


def _map_bytes(m: pybpf.Map, max_entries: int) -> int:
    """A generous estimate of the kernel memory a map of this shape takes."""
    if m.type in RING_TYPES:
        return 2 * max_entries               # data pages, and mapped twice
    cpus = _POSSIBLE_CPUS if m.type in PERCPU_TYPES else 1
    entry = max(m.key_size, 0) + max(m.value_size, 1) * cpus + ENTRY_OVERHEAD
    return max_entries * entry


def _clamp_maps(obj: pybpf.Object) -> bool:
    """Shrink every map to MAP_BUDGET; False when the object would still
    ask for more than OBJECT_BUDGET (then it is not loaded)."""
    total = 0
    for m in obj.maps.values():
        try:
            n = m.max_entries
            if _map_bytes(m, n) > MAP_BUDGET:
                if m.type in RING_TYPES:
                    n = 4096
                else:
                    n = max(1, MAP_BUDGET // max(1, _map_bytes(m, 1)))
                m.set_max_entries(n)
            total += _map_bytes(m, n)
        except BPFError:
            pass
    return total <= OBJECT_BUDGET


def try_elf(data: bytes) -> None:
    """Object.open, walk, load, test-run and close one (mutated) ELF image."""
    try:
        obj = pybpf.Object.open(data, pin_root_path=_scratch_bpffs())
    except BPFError:
        return
    with obj:
        for p in obj.programs.values():
            (p.name, p.section, p.type)
        btf = obj.btf
        if btf is not None:
            for t in btf:
                t.describe()
        fits = _clamp_maps(obj)
        try:
            list(obj.variables)
        except BPFError:
            pass
        if not fits:
            return
        try:
            obj.load()
        except BPFError:
            return
        for p in obj.programs.values():
            if p.fd >= 0 and p.type == pybpf.ProgType.XDP:
                try:
                    p.test_run(bytes(64))
                except BPFError:
                    pass
        for m in obj.maps.values():
            try:
                list(m.items())
            except BPFError:
                pass


# -- BTF -------------------------------------------------------------------------------------------

_btf_seeds: list[bytes] = []


def btf_seeds() -> list[bytes]:
    if not _btf_seeds:
        for data in seeds():
            off, size = sections(data)[".BTF"]
            _btf_seeds.append(data[off:off + size])
    return _btf_seeds


btf_mutation = st.one_of(
    st.tuples(st.just("u32"), st.integers(0, 1 << 20), st.sampled_from(INTERESTING + [4, 8, 12, 16, 20, 32])),
    st.tuples(st.just("byte"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
)
btf_input = st.one_of(
    st.tuples(st.integers(0, len(SEED_NAMES) - 1), st.lists(btf_mutation, min_size=1, max_size=6)),
    st.tuples(st.just(-1), st.binary(max_size=256)),
)


def make_btf(inp: tuple[int, Any]) -> bytes:
    seed, muts = inp
    if seed < 0:
        # header + random tail: a valid-looking header over garbage types
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(muts), len(muts), 0)
        return hdr + bytes(muts)
    data = bytearray(btf_seeds()[seed])
    for kind, pos, arg in muts:
        if not data:
            break
        # aim half of the mutations at the 24-byte header and the first types
        off = pos % (len(data) if pos & 1 else min(len(data), 96))
        if kind == "u32":
            data[off:off + 4] = struct.pack("<I", arg)[:max(0, len(data) - off)]
        elif kind == "byte":
            data[off] = arg
        elif kind == "cut":
            del data[off:off + arg]
        elif kind == "truncate":
            del data[off:]
        elif kind == "insert":
            data[off:off] = arg
    return bytes(data)


def try_btf(data: bytes) -> None:
    from pybpf.core.codec import codec_for
    from pybpf import raw

    try:
        btf = pybpf.Btf.from_bytes(data)
    except BPFError:
        return
    with btf:
        for t in btf:
            t.describe()
            try:
                codec_for(btf, t.id)
            except BPFError:
                pass
    try:
        raw.btf_load(data).close()
    except BPFError:
        pass


# -- map operations --------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(1 << 70), 1 << 70), st.sampled_from([0, -1, 1 << 32, 1 << 64]),
    st.floats(allow_nan=True), st.text(max_size=12), st.binary(max_size=80),
    st.sampled_from(["RED", "GREEN", "BLUE", "PURPLE", "", "pybpf", "x" * 20]),
)
FIELDS = ["addr", "in", "port", "flags", "hist", "color", "label", "u", "as_u32", "as_bytes", "bits_lo", "bits_hi",
          "sbits", "nope", "packets", "bytes", ""]
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5)),
    max_leaves=8,
)
MAPS = ("arr", "flows", "lru", "pcpu_arr", "pcpu_hash")
OPS = ("update", "lookup", "delete", "contains", "update_batch", "getitem", "noexist", "exist")
mapop = st.tuples(st.sampled_from(MAPS), st.sampled_from(OPS), values, values)
mapops_input = st.lists(mapop, min_size=1, max_size=16)

_maps_obj: list[pybpf.Object] = []


def maps_object() -> pybpf.Object:
    if not _maps_obj:
        obj = pybpf.Object.open(compiled("maps"))
        obj.load()
        _maps_obj.append(obj)
    return _maps_obj[0]


def try_mapops(ops: list[tuple[str, str, Any, Any]]) -> None:
    obj = maps_object()
    for name, op, key, value in ops:
        m = obj.maps[name]
        try:
            if op == "update":
                m.update(key, value)
            elif op == "noexist":
                m.update(key, value, pybpf.NOEXIST)
            elif op == "exist":
                m.update(key, value, pybpf.EXIST)
            elif op == "lookup":
                m.lookup(key)
            elif op == "getitem":
                m[key]
            elif op == "delete":
                m.delete(key)
            elif op == "contains":
                key in m
            elif op == "update_batch":
                m.update_batch([(key, value), (value, key)])
        except BPFError:
            continue
        if op in ("update", "noexist", "exist"):
            # accepted: what is read back encodes to the same bytes
            got = m.lookup(key)
            assert got is not None, f"{name}[{key!r}] vanished after update"
            assert m.encode_value(got) == m.encode_value(value), f"{name}[{key!r}]: {value!r} read back as {got!r}"
    for m in obj.maps.values():
        if m.type != pybpf.MapType.RINGBUF:
            list(m.items())


# -- packets ---------------------------------------------------------------------------------------

packet_input = st.one_of(
    st.tuples(st.just("data"), st.binary(max_size=2048), st.none(), st.none()),
    st.tuples(st.just("big"), st.integers(0, 70000), st.none(), st.none()),
    st.tuples(st.just("ctx"), st.binary(min_size=14, max_size=128), st.binary(max_size=40), st.none()),
    st.tuples(st.just("out"), st.binary(min_size=14, max_size=256), st.none(), st.integers(0, 300)),
)

_pkt_obj: list[pybpf.Object] = []


def packets_object() -> pybpf.Object:
    if not _pkt_obj:
        obj = pybpf.Object.open(compiled("xdp_count"))
        obj.load()
        _pkt_obj.append(obj)
    return _pkt_obj[0]


def try_packet(inp: tuple[str, Any, Any, Any]) -> None:
    obj = packets_object()
    prog = obj.programs["xdp_count"]
    counts = obj.maps["counts"]
    kind, data, ctx, out = inp
    if kind == "big":
        data = bytes(data)
    before = sum(c.packets for c in counts.values())
    try:
        r = prog.test_run(data, ctx=ctx, data_size_out=out)
    except BPFError:
        return
    assert r.retval == 2, f"xdp_count returned {r.retval}"   # XDP_PASS
    assert r.data == data[:len(r.data)]
    assert sum(c.packets for c in counts.values()) == before + 1


# -- pybpf.compile: hostile sources and arguments ----------------------------------------------------

OK_PROG = (b'#include "pybpf.bpf.h"\nSEC("xdp") int fz_pass(struct xdp_md *ctx) { return XDP_PASS; }\n'
           b'char LICENSE[] SEC("license") = "GPL";\n')
C_PIECES = [
    OK_PROG, b"int fz_x = 1;\n", b"int x = \xff\xfe garbage;\n", b'#include "nope.h"\n', b'#include "sub"\n',
    b'#include "hdr.h"\n', b'#include "\xff\xfe.h"\n', b'#include "fifo.h"\n', b"#include </dev/zero>\n",
    b"#include __FILE__\n", b"/* unterminated", b"\0\0\0", b"#error fuzz says no\n", b"#if\n", b"#endif\n",
    b'#pragma clang diagnostic error "-Weverything"\n', b"x" * 5000, b'SEC("xdp") int f(void) { return',
    b"struct fz_s { struct task_struct __kptr *t; };\nstruct fz_s fz_v;\n", b"#define __kptr\n", b"\xef\xbb\xbf",
    b"\r\n", b"??=define Y\n", b"\\\n", b"__attribute__((btf_type_tag(\"kptr\"))) int *p;\n",
]
SOURCE_PLACES = ["file"] * 8 + ["missing", "dir", "devzero", "fifo", "symlink_loop"]
SOURCE_NAMES = ["prog.bpf.c", "\udcff\udcfe.c", "a b\nc.c", "-o.c", "x" * 240 + ".c", ".c", "no_ext", "sub/in.c"]
OUTPUTS = [None, None, None, "out.o", "missing/out.o", ".", "afile/out.o", "/proc/fz.o", "\udcff.o",
           "y" * 300 + ".o", "fifo.h", "afile"]
CFLAGS = [[], [], ["-DFOO"], ['-DX="a b"'], ["-D'"], ["-D"], ["-DFOO=\udcff"], ["-I"], ["-include", "/nonexistent.h"],
          ["--version"], ["-fsyntax-only"], ["-E"], ["-Werror"], ["-DSEC(x)=int"], ["-O9"], ["-target", "x86_64"],
          ["-x", "c++"], ["-DA=" + "x" * 10000], ["-\n"], ["-DA=\0"], ["-o", "stray.o"], ["-DKPTR="]]
INCLUDES = [[], [], ["/nonexistent"], ["afile"], ["\udcff"], ["/" + "a" * 5000], ["sub"], ["/tmp/a\0b"], ["-Dx"]]
CLANGS = [None] * 8 + ["/nonexistent/clang", "/bin/true", "/bin/false", ".", "afile", "clang-19"]

compile_input = st.fixed_dictionaries({
    "source": st.lists(st.one_of(st.sampled_from(C_PIECES), st.binary(max_size=64)), min_size=0, max_size=4),
    "place": st.sampled_from(SOURCE_PLACES),
    "name": st.sampled_from(SOURCE_NAMES),
    "output": st.sampled_from(OUTPUTS),
    "cflags": st.sampled_from(CFLAGS),
    "include_dirs": st.sampled_from(INCLUDES),
    "clang": st.sampled_from(CLANGS),
    "vmlinux": st.booleans(),
    "cache": st.booleans(),
})


def _compile_workdir() -> str:
    """A fresh directory with the files the inputs refer to."""
    d = tempfile.mkdtemp(prefix="pybpf-fuzz-compile-")
    os.mkdir(os.path.join(d, "sub"))
    with open(os.path.join(d, "hdr.h"), "w") as f:
        f.write("#define FZ_HDR 1\n")
    with open(os.path.join(d, "afile"), "w") as f:
        f.write("not a directory\n")
    os.mkfifo(os.path.join(d, "fifo.h"))
    return d


def _stray_temporaries(*dirs: str) -> list[str]:
    """Temporary files of this process (pybpf's .NAME.HOST.PID.RAND, clang's
    STEM-XXXXXXXX.SUFFIX.tmp) left in ``dirs``."""
    mark = f".{os.uname().nodename}.{os.getpid()}."
    out = []
    for d in dirs:
        for root, _dirs, files in os.walk(d):
            out += [os.path.join(root, n) for n in files if mark in n or n.endswith(".tmp")]
    return out


def _special_file(path: str | None) -> int | None:
    """The file type of ``path`` when it exists and is not a regular file."""
    import stat

    try:
        mode = os.stat(path).st_mode if path else None
    except (OSError, ValueError):
        return None
    return stat.S_IFMT(mode) if mode is not None and not stat.S_ISREG(mode) else None


def try_compile(spec: dict[str, Any]) -> None:
    """pybpf.compile on one hostile (source, arguments) combination: a path
    to an ELF object or a BPFError; no foreign exception, no temporary left
    in the output directory or the cache, no fd leaked (checked by the caller)."""
    d = _compile_workdir()
    cwd = os.getcwd()
    os.chdir(d)     # relative names in the input resolve here
    try:
        name = spec["name"]
        place = spec["place"]
        src = os.path.join(d, name)
        if place == "file":
            with open(src, "wb") as f:
                f.write(b"".join(spec["source"]))
        elif place == "dir":
            os.makedirs(src, exist_ok=True)
        elif place == "devzero":
            src = "/dev/zero"
        elif place == "fifo":
            os.mkfifo(src)
        elif place == "symlink_loop":
            os.symlink(src, src)
        if name.startswith("-"):
            src = name          # relative, as a caller in this directory would write it
        special = _special_file(spec["output"])
        try:
            obj = pybpf.compile(src, spec["output"], cflags=spec["cflags"], include_dirs=spec["include_dirs"],
                                clang=spec["clang"], vmlinux=spec["vmlinux"], cache=spec["cache"])
        except BPFError as e:
            assert str(e).strip(), "an empty error message"
        else:
            with open(obj, "rb") as f:
                assert f.read(4) == b"\x7fELF", f"compile returned {obj}, which is not an ELF object"
        from pybpf.compiler import cache_dir

        if special is not None:
            assert _special_file(spec["output"]) == special, \
                f"compile replaced {spec['output']} (not a regular file: /dev/null in real life) with an object"
        left = _stray_temporaries(d, str(cache_dir() / "obj"))
        assert not left, f"compile left temporaries behind: {left}"
    finally:
        os.chdir(cwd)
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def _compile_setup() -> None:
    """A private cache (so leftovers are ours to see), with the host's
    vmlinux.h linked in rather than regenerated; clang bounded to 10 s."""
    from pybpf.compiler import cache_dir, vmlinux_h

    real = vmlinux_h()
    priv = tempfile.mkdtemp(prefix="pybpf-fuzz-cache-")
    import atexit
    import shutil

    atexit.register(shutil.rmtree, priv, True)
    os.makedirs(os.path.join(priv, "vmlinux"))
    os.symlink(real.parent, os.path.join(priv, "vmlinux", real.parent.name))
    os.environ["PYBPF_CACHE"] = priv
    os.environ.setdefault("PYBPF_CLANG_TIMEOUT", "10")
    assert str(cache_dir()) == priv


# -- the pybpf command line: mutated argv ------------------------------------------------------------
#
# The worker runs in private network and mount namespaces (a fresh bpffs on /sys/fs/bpf, an empty
# /run/netns): pins, XDP attachments and namespaces the commands touch are its own and vanish with it.
# Kernel ids are global, so an id word names one of the worker's own objects, an id that cannot
# exist (2147483000: ids are allocated upwards from 1), or no number at all: the fuzzer never
# writes to, detaches or test-runs another process's program, map or link. Absolute paths are only
# ever taken whole from the pools (a mutated /proc/nope could be a new directory at the root).

FZ_SOURCE = r"""
#include "pybpf.bpf.h"
enum fz_color { FZ_RED, FZ_GREEN = 7 };
struct fz_key { __u32 addr; __u16 port; __u8 proto; __u8 pad; };
struct fz_val { __u64 packets; enum fz_color color; char label[8]; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16);
         __type(key, struct fz_key); __type(value, struct fz_val); } fzcli_flows SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 4);
         __type(key, __u32); __type(value, __u64); } fzcli_pcpu SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } fzcli_ring SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 2);
         __type(key, __u32); __type(value, __u8); } fzcli_arr SEC(".maps");
SEC("xdp") int fzcli_xdp(struct xdp_md *ctx)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(&fzcli_pcpu, &k);
    if (v)
        (*v)++;
    return XDP_PASS;
}
SEC("xdp") int fzcli_a_long_program_name(struct xdp_md *ctx) { return XDP_DROP; }
char LICENSE[] SEC("license") = "GPL";
"""
NO_ID = 2147483000          # an id no object has (checked at setup)
_cli: dict[str, Any] = {}   # the worker's objects and the tokens that name them


def _isolate() -> None:
    """Move this (single-threaded) worker into new network and mount
    namespaces with a fresh bpffs and an empty /run/netns."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    check(libc.unshare(0x00020000 | 0x40000000), "unshare(CLONE_NEWNS | CLONE_NEWNET)")
    check(libc.mount(b"none", b"/", None, 0x4000 | (1 << 18), None), "mount --make-rprivate /")
    check(libc.mount(b"bpf", b"/sys/fs/bpf", b"bpf", 0, None), "mount bpffs")
    if os.path.isdir("/run/netns"):
        check(libc.mount(b"tmpfs", b"/run/netns", b"tmpfs", 0, b"size=64k"), "mount tmpfs on /run/netns")


def _cli_setup() -> None:
    """Load the worker's own objects, write the files the pools name, and
    fill the token table (@map_flows -> its id...)."""
    if _cli:
        return
    import atexit
    import shutil

    work = tempfile.mkdtemp(prefix="pybpf-fuzz-cli-")
    atexit.register(shutil.rmtree, work, True)
    src = os.path.join(work, "fzcli.bpf.c")
    with open(src, "w") as f:
        f.write(FZ_SOURCE)
    obj_path = str(pybpf.compile(src))
    shutil.copy(obj_path, os.path.join(work, "fzcli.o"))
    _isolate()
    os.chdir(work)      # relative words resolve here
    bpffs = "/sys/fs/bpf/fz"
    os.mkdir(bpffs)
    files = {
        "garbage.o": b"\x7fELF" + bytes(range(256)) * 4, "empty": b"", "bad.c": b"int x = ;\n",
        "pkt.bin": bytes(64), "ctx.bin": bytes(24),
        "ok.pcap": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        + struct.pack("<IIII", 0, 0, 60, 60) + bytes(60),
        "trunc.pcap": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack("<IIII", 0, 0, 999, 999),
        "be.pcap": struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack(">IIII", 0, 0, 14, 14)
        + bytes(14),
        "short.pcap": b"\xd4\xc3\xb2\xa1",
        "ng.pcap": b"\x0a\x0d\x0d\x0a" + bytes(60),
        "afile": b"text\n",
    }
    for name, data in files.items():
        with open(os.path.join(work, name), "wb") as f:
            f.write(data)
    shutil.copy(obj_path, os.path.join(work, "\udcff.o"))
    obj = pybpf.Object.open(obj_path)
    obj.load()
    prog = obj.programs["fzcli_xdp"]
    prog.pin(f"{bpffs}/prog")
    obj.maps["fzcli_flows"].pin(f"{bpffs}/flows")
    link = prog.attach_xdp("lo", mode="skb")
    link.pin(f"{bpffs}/link")
    raw_map = pybpf.Map.create("array", 4, 4, 2, name="fzcli_raw")
    for kind in ("prog", "map", "link", "btf"):
        try:
            from pybpf import raw

            raw.fd_by_id(kind, NO_ID).close()
        except BPFError:
            continue
        raise RuntimeError(f"a {kind} with id {NO_ID} exists: pick another NO_ID")
    ids = {"prog": prog.id, "prog2": obj.programs["fzcli_a_long_program_name"].id, "link": link.id,
           "raw": raw_map.id, "btf": prog.info().btf_id,
           **{m.name.removeprefix("fzcli_"): m.id for m in obj.maps.values() if m.name.startswith("fzcli_")}}
    # "@dir" ends in "/." so that a word mutated from it ("@dir0") still lies inside the scratch directory
    tokens = {"@dir": work + "/.", "@bpffs": bpffs + "/.", "@obj": os.path.join(work, "fzcli.o"), "@src": src,
              "@tag": prog.info().tag}
    for k, v in ids.items():
        tokens[f"@{k}_id"] = str(v)
        tokens[f"@{k}_hex"] = hex(v)
        tokens[f"@{k}_plus"] = f"+{v}"
        tokens[f"@{k}_wrap"] = str(v - (1 << 32))      # masked to 32 bits it is the same object
        tokens[f"@{k}_big"] = str(v + (1 << 32))
    _cli.update(work=work, obj=obj, link=link, raw_map=raw_map, tokens=tokens,
                order=sorted(tokens, key=len, reverse=True))


def _subst(word: str) -> str:
    for t in _cli["order"]:
        if t in word:
            word = word.replace(t, _cli["tokens"][t])
    return word


def _ids(kind: str) -> list[str]:
    own = {"prog": ["prog", "prog2"], "map": ["flows", "pcpu", "ring", "arr", "raw"], "link": ["link"],
           "btf": ["btf"]}[kind]
    out = []
    for o in own:
        out += [f"@{o}_id", f"@{o}_id", f"@{o}_hex", f"@{o}_plus", f"@{o}_wrap", f"@{o}_big"]
    n = NO_ID
    return out + [str(n), hex(n), "0", "-1", "", " ", "x", "0x", "1e3", "99999999999999999999999", "\u00b2",
                  "".join(chr(0x660 + int(c)) for c in str(n)), f"{n:_}", bin(n), "07", "\udcff"]


NAMES = ["fzcli_xdp", "fzcli_flows", "fzcli_pcpu", "fzcli_ring", "fzcli_raw", "fzcli_a_long_program_name",
         "fzcli_a_long_p", "fzcli_nope", "", "\udcff", "x" * 300]
PINS = ["@bpffs/prog", "@bpffs/flows", "@bpffs/link", "@bpffs", "@bpffs/nope", "@dir/afile", "@dir", "/",
        "./rel", "\udcff", "@bpffs/" + "x" * 300, "/sys/fs/bpf"]
OBJS = ["@obj", "@obj", "@src", "@dir/garbage.o", "@dir/empty", "@dir", "@dir/missing.o", "@dir/bad.c",
        "@dir/\udcff.o", "/dev/null", ""]
NEW_PINS = ["@bpffs/p1", "@bpffs/p2", "@bpffs/sub/p", "@bpffs/prog", "@dir/notbpffs", "/proc/nope", "@bpffs/\udcff",
            "@bpffs/" + "x" * 300, "", "relpin"]
DIRS = ["@bpffs/all", "@dir/all", "", "/proc/nope", "@bpffs/maps", "@bpffs/prog"]
IN_FILES = ["@dir/pkt.bin", "@dir/empty", "@dir", "-", "@dir/missing", "/dev/null", "@dir/\udcff.o"]
PCAPS = ["@dir/ok.pcap", "@dir/trunc.pcap", "@dir/short.pcap", "@dir/ng.pcap", "@dir/be.pcap", "@dir/pkt.bin",
         "@dir/empty", "@dir"]
OUT_FILES = ["-", "@dir/out.bin", "@dir", "/dev/full", "@dir/missing/out", "@dir/afile/x"]
NUMS = ["0", "1", "-1", "100000", "x", "4294967296", "18446744073709551616", "", "0x10", "1e3", "\u00b2"]
IFACES = ["lo", "lo", "nope", "\udcff", "x" * 20, "", "1"]
NETNS = ["nope", "/proc/self/ns/net", "@dir/afile", "\udcff", "", "/nonexistent/ns", "@dir"]
JSON_TEXTS = ['{"addr": 1, "port": 2, "proto": 3}', '{"packets": 5, "color": "FZ_GREEN", "label": "edge"}', "[1,2]",
              "null", "NaN", "1e400", '"\udcff"', "{", '{"packets": -1}', '{"label": "' + "x" * 20 + '"}',
              '{"nope": 1}', "18446744073709551616", '"FZ_RED"', "[]", '{"addr": {"x": 1}}', "true", "7", "-7",
              '{"color": 99}', '{"color": "PURPLE"}', '"' + "\\ud800" + '"']
BYTE_WORDS = ["0", "1", "255", "256", "-1", "0x10", "ff", "1.5", "", "00"]
TEXTS = ["7", "FZ_GREEN", "edge", "-1", "1.5", '{"packets":1}', "", "\udcff", "x" * 100, "4294967296"]

w = st.sampled_from


def _spec(kind: str) -> Any:
    opts = [st.tuples(st.just("id"), w(_ids(kind))), st.tuples(st.just("pinned"), w(PINS)),
            st.tuples(w(_ids(kind))), st.tuples(w([p for p in PINS if p.startswith(("/", ".", "@"))]))]
    if kind in ("prog", "map"):
        opts.append(st.tuples(st.just("name"), w(NAMES)))
    if kind == "prog":
        opts.append(st.tuples(st.just("tag"), w(["@tag", "@tag", "zz", "", "00:11", "@tag:"])))
    return st.one_of(*opts).map(list)


def _data() -> Any:
    return st.one_of(
        st.lists(w(BYTE_WORDS), max_size=10),
        st.lists(w(BYTE_WORDS), max_size=10).map(lambda ws: ["hex", *ws]),
        w(JSON_TEXTS).map(lambda t: ["json", t]),
        w(TEXTS).map(lambda t: [t]),
        w(JSON_TEXTS).map(lambda t: [t]),
    )


def _seq(*parts: Any) -> Any:
    """Concatenate word lists / words drawn from ``parts`` (strategies or literals)."""
    strats = [p if isinstance(p, st.SearchStrategy) else st.just(p) for p in parts]
    return st.tuples(*strats).map(lambda ps: [x for p in ps for x in (p if isinstance(p, list) else [p])])


def _opt(*parts: Any) -> Any:
    return st.one_of(st.just([]), _seq(*parts))


def _run_opts() -> Any:
    opt = st.one_of(_seq("data_in", w(IN_FILES)), _seq("data_hex", w(["00" * 14, "zz", "", "0:1", "00 11", "000"])),
                    _seq("data_pcap", w(PCAPS)), _seq("data_out", w(OUT_FILES)), _seq("data_size_out", w(NUMS)),
                    _seq("ctx_in", w(["@dir/ctx.bin", "@dir/pkt.bin", "@dir/empty"])), _seq("repeat", w(NUMS)),
                    st.just(["bogus"]))
    return st.lists(opt, max_size=4).map(lambda ls: [x for p in ls for x in p])


def _xdp_opts(keys: list[str]) -> Any:
    table = {"dev": w(IFACES), "mode": w(["skb", "drv", "hw", "", "nope"]), "netns": w(NETNS),
             "priority": w(NUMS), "prog": w(_ids("prog"))}
    opts = [_seq(k, table[k]) if k in table else st.just([k]) for k in keys]
    return st.lists(st.one_of(*opts), max_size=4).map(lambda ls: [x for p in ls for x in p])


def _commands() -> Any:
    return st.one_of(
        _seq(w(["prog", "p", "PROG"]), w(["show", "list", "sh"]), _opt(_spec("prog"))),
        _seq("prog", w(["load", "loadall"]), w(OBJS), w(NEW_PINS + DIRS),
             _opt("type", w(["xdp", "XDP", "kprobe", "nope", "", "\udcff", "socket_filter", "ext"])),
             _opt("name", w(["fzcli_xdp", "nope", ""])), _opt("pinmaps", w(DIRS))),
        _seq("prog", "run", _spec("prog"), _run_opts()),
        _seq("map", w(["show", "list", "dump"]), _opt(_spec("map"))),
        _seq("map", w(["lookup", "delete", "lo", "del"]), _spec("map"), "key", _data()),
        _seq("map", "update", _spec("map"), "key", _data(), "value", _data(),
             _opt(w(["any", "exist", "noexist", "e", "n", "", "bogus"]))),
        _seq("link", w(["show", "list", "detach"]), _opt(_spec("link"))),
        _seq("btf", w(["show", "list"]), _opt("id", w(_ids("btf")))),
        _seq("btf", "dump", st.one_of(_seq("id", w(_ids("btf"))), _seq("prog", _spec("prog")),
                                      _seq("map", _spec("map")),
                                      _seq("file", w(["@obj", "@dir/garbage.o", "@dir/empty", "@dir", "@dir/missing",
                                                      "/dev/null", "@dir/\udcff.o"]))),
             _opt("format", w(["raw", "c", "x", ""]))),
        _seq(w(["struct-ops", "struct_ops", "s"]), w(["show", "list", "dump", "unregister"]),
             _opt(st.one_of(_seq("id", w(_ids("map"))), _seq("name", w(NAMES)), _seq("pinned", w(PINS)),
                            _seq(w(_ids("map")))))),
        _seq("struct-ops", "register", w(OBJS), _opt(w(DIRS))),
        _seq("ext", "attach", w(OBJS), _opt("prog", w(["fzcli_xdp", "nope"])), _opt("target", _spec("prog")),
             _opt("func", w(["f", "", "\udcff"])), _opt("pin", w(NEW_PINS))),
        _seq("ext", w(["show", "list"]), _spec("prog")),
        _seq("xdp", "attach", _spec("prog"), _xdp_opts(["dev", "mode", "netns", "replace", "dispatcher", "priority"])),
        _seq("xdp", "detach", _xdp_opts(["dev", "prog", "mode", "netns"])),
        _seq("xdp", "status", _xdp_opts(["dev", "netns"])),
        _seq("link-objects", w(["@dir/linked.o", "@dir", "/proc/x.o"]),
             st.lists(w(["@obj", "@dir/garbage.o", "@dir/missing.o", "@dir/empty"]), max_size=3)),
        st.just([]), st.just(["help"]), st.just(["version"]), st.just(["-V"]),
        _seq(w(["nosuch", "", "\udcff", "l", "li", "-x", "--", "-h", "PROG", "help"]), w(["", "list", "help"])),
    )


OPTION_WORDS = ["-j", "--json", "-p", "--pretty", "-v", "--verbose", "-f", "--bpffs", "-jp", "-jpv", "-h", "--help",
                "-V", "--", "-x", "--nope"]
cli_mutation = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 30), st.just("")),
    st.tuples(st.just("dup"), st.integers(0, 30), st.just("")),
    st.tuples(st.just("swap"), st.integers(0, 30), st.just("")),
    st.tuples(st.just("option"), st.integers(0, 30), w(OPTION_WORDS)),
    st.tuples(st.just("replace"), st.integers(0, 30),
              w(["", "\udcff", "id", "key", "value", "json", "hex", "dev", "x" * 4096, "-", "help", "0", "@map_id"])),
    st.tuples(st.just("prefix"), st.integers(0, 30), st.integers(0, 8).map(str)),
    st.tuples(st.just("append"), st.integers(0, 30), w(["\udcff", " ", "\n", "x", "0", ":", "/"])),
)
cli_input = st.tuples(st.deferred(_commands), st.lists(cli_mutation, max_size=3))


def mutate_argv(inp: tuple[list[str], list[tuple[str, int, str]]]) -> list[str]:
    """Apply the mutations; words that are absolute paths are only ever moved
    or dropped whole (see above)."""
    argv, muts = list(inp[0]), inp[1]
    for kind, pos, arg in muts:
        i = pos % (len(argv) + 1)
        if kind == "option":
            argv.insert(i, arg)
            continue
        if not argv or i >= len(argv):
            continue
        if kind == "drop":
            del argv[i]
        elif kind == "dup":
            argv.insert(i, argv[i])
        elif kind == "swap" and i + 1 < len(argv):
            argv[i], argv[i + 1] = argv[i + 1], argv[i]
        elif kind == "replace":
            argv[i] = arg
        elif argv[i].startswith("/"):
            continue
        elif kind == "prefix":
            argv[i] = argv[i][:int(arg)]
        elif kind == "append":
            argv[i] += arg
    return argv


def _never_vm(argv: list[str]) -> list[str]:
    """`pybpf vm` boots QEMU: never let the object word select it."""
    from pybpf.cli import _split_options
    from pybpf.cli._common import Ctx

    argv = list(argv)
    words = argv if argv and argv[0] == "vm" else _split_options(list(argv), Ctx())
    if words and words[0] and "vm".startswith(words[0].replace("_", "-")):
        argv[argv.index(words[0])] = "prog"
    return argv


def try_cli(argv: list[str]) -> None:
    """``pybpf.cli.main(argv)``: returns a status; a failure is non-zero with
    one ``Error: ...`` line on stderr (more only with -v) and no traceback;
    what failed underneath is a pybpf error, a usage error or an OS error
    with its words, never a Python bug (TypeError, ValueError...)."""
    import contextlib
    import io

    import pybpf.cli as cli

    argv = _never_vm([_subst(a) for a in argv])
    # what a UTF-8 locale gives the real command: stdout strict, stderr backslashreplace
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    seen: list[BaseException] = []
    real_one_line = cli.one_line

    def spy(e: BaseException) -> str:
        seen.append(e)
        return real_one_line(e)

    cli.one_line = spy
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(list(argv))
    finally:
        cli.one_line = real_one_line
    assert isinstance(rc, int), f"main returned {rc!r}"
    out.flush()
    err.flush()
    text = err.buffer.getvalue().decode()   # type: ignore[attr-defined]
    for e in seen:
        ok = isinstance(e, BPFError) or (isinstance(e, OSError) and bool(e.strerror))
        assert ok, f"argv {argv!r}: a {type(e).__name__} reached the CLI's catch-all: {e!r}"
    assert "Traceback" not in text, f"argv {argv!r}: a traceback on stderr:\n{text}"
    if rc != 0:
        lines = text.splitlines()
        assert lines and lines[-1].startswith("Error: ") and len(lines[-1]) > len("Error: ") + 3, \
            f"argv {argv!r}: exit {rc} without a clear message on stderr: {text!r}"
        verbose = any(a in ("-v", "--verbose") or (a.startswith("-") and not a.startswith("--") and "v" in a)
                      for a in argv)
        assert verbose or len(lines) == 1, f"argv {argv!r}: more than one line on stderr: {text!r}"


# -- a target that crashes on purpose: proves the harness catches a segfault with its input ----------

def _segv(data: bytes) -> None:
    if len(data) >= 4 and data[0] >= 0x80:
        import ctypes
        ctypes.string_at(0)   # a NULL read: SIGSEGV, as a libbpf bug would


# -- the worker ------------------------------------------------------------------------------------

TARGETS: dict[str, tuple[Callable[[Any], None], Any, Callable[[Any], Any]]] = {
    # name: (function on the built input, strategy, build input from the drawn example)
    "elf": (try_elf, elf_input, lambda ex: mutate(*ex)),
    "btf": (try_btf, btf_input, make_btf),
    "mapops": (try_mapops, mapops_input, lambda ex: ex),
    "packets": (try_packet, packet_input, lambda ex: ex),
    "compile": (try_compile, compile_input, lambda ex: ex),
    "cli": (try_cli, cli_input, mutate_argv),
    "selftest_segv": (_segv, st.binary(min_size=2, max_size=8), lambda ex: ex),
}


def serialize(target: str, built: Any) -> bytes:
    if isinstance(built, bytes):
        return built
    return repr(built).encode()


def deserialize(target: str, blob: bytes) -> Any:
    if target in ("elf", "btf", "selftest_segv"):
        return blob
    return _literal(blob.decode())


def _literal(text: str) -> Any:
    # repr() of floats nan/inf is not a literal: map them back.
    return eval(text, {"__builtins__": {}}, {"nan": math.nan, "inf": math.inf})  # noqa: S307 - our own corpus


def check_one(target: str, built: Any, baseline: set[int]) -> None:
    """Run one input; raise AssertionError on an fd leak."""
    TARGETS[target][0](built)
    now = set(open_fds())
    if now - baseline:
        gc.collect()
        leaked = {fd: w for fd, w in open_fds().items() if fd not in baseline}
        if leaked:
            for fd in leaked:   # do not let one leak fail every later input
                baseline.add(fd)
            raise AssertionError(f"fd leak after {target} input: {leaked}")


def setup(target: str) -> None:
    """What a target's inputs run against, made before the fd baseline is taken."""
    seeds()
    if target == "mapops":
        maps_object()
    if target == "packets":
        packets_object()
    if target == "compile":
        _compile_setup()
    if target == "cli":
        _cli_setup()


def run(target: str, seconds: float, crash_file: str) -> int:
    fn, strategy, build = TARGETS[target]
    setup(target)
    baseline = set(open_fds())
    crash_fd = os.open(crash_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    baseline.add(crash_fd)
    examples = [0]
    failure: list[str] = []

    def record(blob: bytes) -> None:
        os.ftruncate(crash_fd, 0)
        os.pwrite(crash_fd, blob, 0)

    @settings(max_examples=20, deadline=None, database=None, derandomize=False, print_blob=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
    @given(strategy)
    def prop(ex: Any) -> None:
        built = build(ex)
        record(serialize(target, built))
        examples[0] += 1
        check_one(target, built, baseline)

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            prop()
        except Exception as e:  # noqa: BLE001 - hypothesis re-raises the shrunk failure
            import traceback
            failure.append("".join(traceback.format_exception(e))[-6000:])
            break
    os.close(crash_fd)
    if failure:
        # the last recorded input is the shrunk failing one (hypothesis replays it last)
        print(f"FAILED {target} after {examples[0]} inputs: {failure[0]}")
        return 1
    os.unlink(crash_file)
    print(f"OK {target} {examples[0]} inputs in {seconds:.0f}s")
    return 0


def replay(target: str, paths: list[str]) -> list[str]:
    """Run stored inputs (corpus files) one after the other in this process;
    returns one line per input that failed (a segfault still ends it all:
    the targets that can crash libbpf replay one file per worker)."""
    import traceback

    blobs = []
    for path in paths:
        with open(path, "rb") as f:
            blobs.append((path, f.read()))
    setup(target)
    baseline = set(open_fds())
    failed = []
    for path, blob in blobs:
        try:
            check_one(target, deserialize(target, blob), baseline)
        except Exception as e:  # noqa: BLE001 - reported with the input's name
            failed.append(f"FAIL {path}: {''.join(traceback.format_exception(e))[-3000:]}")
    return failed


def _selftest_bigmap(gib: int) -> str:
    """Ask the kernel for a GIB GiB array map: inside the worker's memory
    cgroup the allocation must fail (or the OOM killer end this process),
    which is what keeps a hostile input from taking the host's memory."""
    try:
        with pybpf.Map.create("array", 4, 1 << 20, gib << 10, name="fz_big"):
            return "created"
    except BPFError as e:
        return f"refused {type(e).__name__} errno={getattr(e, 'errno', None)}"


if __name__ == "__main__":
    import logging
    logging.disable(logging.CRITICAL)
    if sys.argv[1] == "selftest_bigmap":
        print(_selftest_bigmap(int(sys.argv[2])))
        sys.exit(0)
    if sys.argv[1] == "replay":
        bad = replay(sys.argv[2], sys.argv[3:])
        print("\n".join(bad) if bad else f"OK replay {len(sys.argv) - 3}")
        sys.exit(1 if bad else 0)
    sys.exit(run(sys.argv[1], float(sys.argv[2]), sys.argv[3]))
