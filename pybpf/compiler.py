"""Compiling BPF C with clang, against a vmlinux.h generated from the running
kernel's BTF and cached per kernel.

Debian's default clang 14 silently drops ``btf_type_tag`` on struct pointers,
so kptr fields (``__kptr``) would arrive as plain pointers.  :func:`compile`
therefore prefers clang 16 or newer, and :func:`check_type_tags` verifies the
produced object.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

from pybpf.errors import CompileError

#: Headers shipped with pybpf for BPF C code (bpf_helpers.h comes from libbpf-dev).
INCLUDE_DIR = Path(__file__).resolve().parent / "include"
MIN_TYPE_TAG_CLANG = 16
_CANDIDATES = ["clang-21", "clang-20", "clang-19", "clang-18", "clang-17", "clang-16", "clang", "clang-15", "clang-14"]


def cache_dir() -> Path:
    """Where pybpf caches generated headers and objects: $PYBPF_CACHE, else
    ~/.cache/pybpf, else a temporary directory (read-only homes, VM guests)."""
    for cand in (os.environ.get("PYBPF_CACHE"), os.path.join(os.path.expanduser("~"), ".cache", "pybpf"),
                 os.path.join(tempfile.gettempdir(), f"pybpf-cache-{os.getuid()}")):
        if not cand:
            continue
        try:
            os.makedirs(cand, exist_ok=True)
            if os.access(cand, os.W_OK):
                return Path(cand)
        except OSError:
            continue
    raise CompileError("no writable cache directory", hint="set PYBPF_CACHE to a writable directory")


#: Seconds one clang run may take (``$PYBPF_CLANG_TIMEOUT`` overrides): a header that is a FIFO would
#: otherwise block it forever.
CLANG_TIMEOUT = 600.0


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess[bytes]:
    """Run a compiler command (stdin closed, bounded by CLANG_TIMEOUT);
    a command that cannot run or never ends is a CompileError."""
    try:
        timeout = float(os.environ.get("PYBPF_CLANG_TIMEOUT") or CLANG_TIMEOUT)
    except ValueError:
        timeout = CLANG_TIMEOUT
    try:
        return subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CompileError(f"{what}: {cmd[0]} did not finish within {timeout:.0f} s",
                           hint="a header that is a FIFO or a device blocks clang; set PYBPF_CLANG_TIMEOUT to "
                                "allow more time") from None
    except OSError as e:
        raise CompileError(f"{what}: cannot run {cmd[0]}: {e.strerror or e}",
                           hint="install clang-19 (apt-get install clang-19), or pass clang= or set PYBPF_CLANG "
                                "to an executable clang") from None


_clang_versions: dict[str, int] = {}


def clang_version(clang: str) -> int:
    """The major version of ``clang``. Remembered per binary (path, size,
    mtime) in the process and in the cache: starting clang costs seconds
    in a TCG guest, where the cache is the host's."""
    import json

    try:
        real = os.path.realpath(clang)
        st = os.stat(real)
        key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        key = ""
    if key in _clang_versions:
        return _clang_versions[key]
    store: Path | None = None
    known: dict[str, int] = {}
    if key:
        try:
            store = cache_dir() / "clang-versions.json"
            loaded = json.loads(store.read_text())
        except (CompileError, OSError, ValueError):
            loaded = None
        known = loaded if isinstance(loaded, dict) else {}
        if isinstance(known.get(key), int):
            _clang_versions[key] = known[key]
            return known[key]
    out = _run([clang, "--version"], "clang --version").stdout.decode("utf-8", "replace")
    m = re.search(r"clang version (\d+)", out)
    v = int(m.group(1)) if m else 0
    if key and v:
        _clang_versions[key] = v
        if store is not None:
            try:
                known[key] = v
                tmp = store.with_name(f".{store.name}.{_unique()}")
                tmp.write_text(json.dumps(known))
                os.replace(tmp, store)
            except OSError:
                pass
    return v


def find_clang(min_version: int = 0) -> tuple[str, int]:
    """The newest clang on PATH (at least ``min_version``): (path, major)."""
    env = os.environ.get("PYBPF_CLANG")
    cands = [env] if env else _CANDIDATES
    best: tuple[str, int] | None = None
    for c in cands:
        path = shutil.which(c) if c else None
        if path:
            v = clang_version(path)
            if best is None or v > best[1]:
                best = (path, v)
    if best is None:
        raise CompileError("no clang found to compile BPF C",
                           hint="install clang-19 (apt-get install clang-19) or set PYBPF_CLANG")
    if best[1] < min_version:
        raise CompileError(f"{best[0]} is clang {best[1]}; clang {min_version} or newer is needed",
                           hint="install clang-19 (Debian bookworm has it) or set PYBPF_CLANG")
    return best


def _unique() -> str:
    """A temp-file suffix unique across processes and VM guests sharing the cache."""
    return f"{os.uname().nodename}.{os.getpid()}.{os.urandom(4).hex()}"


_btf_digests: dict[tuple[str, int, int], str] = {}


def kernel_btf_digest(btf_path: str = "/sys/kernel/btf/vmlinux") -> str:
    """A digest of the BTF at ``btf_path`` (remembered per path, size and
    mtime for the life of the process)."""
    try:
        st = os.stat(btf_path)
        memo: tuple[str, int, int] | None = (btf_path, st.st_size, st.st_mtime_ns)
    except OSError:
        memo = None
    if memo in _btf_digests:
        return _btf_digests[memo]  # type: ignore[index]
    h = hashlib.sha256()
    with open(btf_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if memo is not None:
        _btf_digests[memo] = h.hexdigest()[:16]
    return h.hexdigest()[:16]


def raw_kernel_btf(path: str | os.PathLike[str]) -> str:
    """The path of a raw BTF blob for ``path``: the path itself for raw BTF
    (like /sys/kernel/btf/vmlinux), or for a vmlinux ELF image the bytes of
    its ``.BTF`` section (what that kernel exposes as
    /sys/kernel/btf/vmlinux), extracted once into the cache."""
    import struct

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if ident[:4] != b"\x7fELF":
                return path
            if ident[4] != 2 or ident[5] != 1:
                raise CompileError(f"{path}: only 64-bit little-endian vmlinux images are supported")
            shoff, = struct.unpack_from("<Q", ident, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ident, 0x3A)
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            if shentsize < 64 or len(table) != shentsize * shnum or shstrndx >= shnum:
                raise CompileError(f"{path}: truncated or malformed ELF section table")
            secs = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
            f.seek(secs[shstrndx][4])
            names = f.read(secs[shstrndx][5])
            for name_off, _type, _flags, _addr, off, size in secs:
                end = names.find(b"\0", name_off)
                if names[name_off:end] == b".BTF":
                    f.seek(off)
                    data = f.read(size)
                    break
            else:
                raise CompileError(f"{path} has no .BTF section",
                                   hint="the kernel must be built with CONFIG_DEBUG_INFO_BTF=y")
    except OSError as e:
        raise CompileError(f"cannot read kernel image {path}: {e.strerror}") from None
    out = cache_dir() / "btf" / f"{hashlib.sha256(data).hexdigest()[:16]}.btf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{_unique()}")
        tmp.write_bytes(data)
        os.replace(tmp, out)
    return str(out)


def vmlinux_h(btf_path: str = "/sys/kernel/btf/vmlinux", release: str | None = None) -> Path:
    """A vmlinux.h for the kernel whose BTF is at ``btf_path`` (raw BTF),
    released as ``release`` (default: the running kernel's), generated once
    per kernel (keyed by release and BTF digest) and cached."""
    key = f"{release or os.uname().release}-{kernel_btf_digest(btf_path)}"
    d = cache_dir() / "vmlinux" / key
    out = d / "vmlinux.h"
    if out.exists():
        return out
    from pybpf.core.btf import Btf  # (the binding: only when a header must be made)

    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".vmlinux.h.{_unique()}"
    btf = Btf.vmlinux() if btf_path == "/sys/kernel/btf/vmlinux" else Btf.from_file(btf_path)
    btf.dump_c(tmp)
    os.replace(tmp, out)
    return out


def compile(source: str | os.PathLike[str], output: str | os.PathLike[str] | None = None, *,
            cflags: Iterable[str] = (), include_dirs: Iterable[str | os.PathLike[str]] = (),
            clang: str | None = None, vmlinux: bool = True, cache: bool = True,
            kernel_btf: str | os.PathLike[str] | None = None, kernel_release: str | None = None) -> Path:
    """Compile a BPF C file to an ELF object and return its path.

    ``clang -g -O2 -target bpf`` with ``vmlinux.h`` of the running kernel and
    libbpf's headers on the include path.  Without ``output`` the object is
    cached under :func:`cache_dir` keyed by the source, flags, compiler and
    kernel, so recompiling an unchanged file is free.

    ``kernel_btf`` and ``kernel_release`` compile for another kernel: its
    BTF (raw, or a vmlinux ELF image with a ``.BTF`` section) and its
    ``uname -r``. The object lands in the cache under the key that kernel
    computes, so a VM guest sharing the cache finds it instead of running
    clang itself (``python -m pybpf.vm compile`` does this for the matrix).
    """
    src = Path(source)
    user_flags: list[str] = [os.fspath(f) for f in cflags]
    user_incs: list[str] = [os.fspath(i) for i in include_dirs]
    for what, arg in (("source", os.fspath(src)), ("output", os.fspath(output or "")), ("clang", clang or ""),
                      *(("cflag", f) for f in user_flags), *(("include dir", i) for i in user_incs)):
        if "\0" in arg:
            raise CompileError(f"compile: the {what} {arg!r} contains a NUL byte", hint="no path or flag can hold one")
    mode = _mode(src, "BPF source")
    if mode is None:
        raise CompileError(f"BPF source {src} does not exist")
    if not stat.S_ISREG(mode):
        raise CompileError(f"BPF source {src} is not a regular file", hint="give the path of a .c file")
    try:
        text = src.read_bytes()
    except OSError as e:
        raise CompileError(f"cannot read BPF source {src}: {e.strerror}") from None
    clang_path, ver = (clang, clang_version(clang)) if clang else find_clang()
    flags = ["-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Wno-unused-function",
             "-Wno-compare-distinct-pointer-types", *user_flags]
    incs: list[str] = [str(INCLUDE_DIR), str(src.parent), *user_incs]
    release = os.uname().release
    if kernel_btf is not None or kernel_release is not None:
        if kernel_btf is None or not kernel_release:
            raise CompileError("compile: kernel_btf and kernel_release go together",
                               hint="give the target kernel's BTF (or vmlinux image) and its uname -r")
        release = kernel_release
    if vmlinux:
        if kernel_btf is not None:
            incs.insert(0, str(vmlinux_h(raw_kernel_btf(kernel_btf), release).parent))
        else:
            incs.insert(0, str(vmlinux_h().parent))
    needs_tags = _wants_type_tags(text)
    if needs_tags and not clang:
        clang_path, ver = find_clang(MIN_TYPE_TAG_CLANG)
    if needs_tags and ver < MIN_TYPE_TAG_CLANG:
        raise CompileError(f"{src} declares kptr fields (__kptr), but {clang_path} is clang {ver}, which drops "
                           "BTF type tags on struct pointers: the kernel would see plain pointers",
                           hint=f"install clang-{MIN_TYPE_TAG_CLANG} or newer (apt-get install clang-19)")
    if output is None:
        h = hashlib.sha256(text)
        for part in (*flags, *incs, clang_path, str(ver), release):
            h.update(os.fsencode(part))
        for hdr in _local_headers(src, text):
            try:
                h.update(hdr.read_bytes())
            except OSError:
                h.update(os.fsencode(hdr))     # unreadable: clang will say so
        out = cache_dir() / "obj" / f"{src.stem[:100]}-{h.hexdigest()[:16]}.o"   # a name fits NAME_MAX
        if cache and out.exists():
            if needs_tags:  # cheap, and catches objects cached by an older pybpf
                check_type_tags(out, text, source_name=str(src), compiler=f"{clang_path} (clang {ver})")
            return out
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CompileError(f"cannot create the cache directory {out.parent}: {e.strerror}",
                               hint="set PYBPF_CACHE to a writable directory") from None
    else:
        out = Path(output)
        mode = _mode(out, "output")
        if mode is not None and not stat.S_ISREG(mode):    # a directory, or /dev/null that the rename would replace
            raise CompileError(f"output {out} exists and is not a regular file",
                               hint="give the path of the .o file to write")
    tmp = out.with_name(f".{out.name}.{_unique()}")
    # a source named like an option (-o.c) is still the source
    src_arg = str(src) if not str(src).startswith("-") else os.path.join(".", src)
    cmd = [clang_path, *flags, *[f"-I{i}" for i in incs], "-c", src_arg, "-o", str(tmp)]
    try:
        proc = _run(cmd, f"compile {src}")
        if proc.returncode != 0:
            raise CompileError(f"clang failed to compile {src}", proc.stderr.decode("utf-8", "replace"))
        try:
            with open(tmp, "rb") as f:
                magic = f.read(4)
        except OSError:
            magic = b""
        if magic != b"\x7fELF":
            raise CompileError(f"{clang_path} exited 0 but wrote no ELF object for {src}",
                               hint="a flag such as -E, -S, -fsyntax-only or --version keeps clang from writing "
                                    "an object; drop it from cflags")
        if needs_tags:
            # Check before the object enters the cache: a cached object is a checked one.
            check_type_tags(tmp, text, source_name=str(src), compiler=f"{clang_path} (clang {ver})")
        try:
            os.replace(tmp, out)
        except OSError as e:
            raise CompileError(f"cannot write {out}: {e.strerror}") from None
    except BaseException:
        # our temporary object, and clang's own (STEM-XXXXXXXX.SUFFIX.tmp) when it was killed
        for leftover in [tmp, *tmp.parent.glob(f"{glob.escape(tmp.stem)}-*{glob.escape(tmp.suffix)}.tmp")]:
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
        raise
    return out


#: Annotations that ask for a kptr-like field (libbpf's and pybpf's macros).
_KPTR_MACROS = ("__kptr", "__kptr_untrusted", "__kptr_ref", "__percpu_kptr", "__uptr")
_TAG_ATTR = rb'__attribute__\s*\(\(\s*btf_type_tag\s*\(\s*"(?:kptr\w*|percpu_kptr|uptr)"\s*\)\s*\)\)'


def _kptr_annotations(text: bytes) -> list[bytes]:
    """The words that mark a kptr field in ``text``: the standard macros,
    the raw attribute, and local macros defined as one of them."""
    words = [re.escape(m.encode()) for m in _KPTR_MACROS] + [_TAG_ATTR]
    alt = b"|".join(words)
    for m in re.finditer(rb"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+(?:" + alt + rb")[ \t]*$", text, re.M):
        if m.group(1).decode() not in _KPTR_MACROS:
            words.append(re.escape(m.group(1)))
    return words


def _wants_type_tags(text: bytes) -> bool:
    """Whether BPF C source ``text`` declares kptr fields."""
    return bool(_kptr_fields(text)) or bool(re.search(
        rb"__kptr\b|__kptr_untrusted\b|__kptr_ref\b|__percpu_kptr\b|__uptr\b|btf_type_tag\(\s*\"(kptr|percpu_kptr|uptr)",
        _strip_defines(text)))


def _strip_defines(text: bytes) -> bytes:
    return re.sub(rb"^[ \t]*#[ \t]*(define|ifndef|ifdef|undef)\b.*$", b"", text, flags=re.M)


def _kptr_fields(text: bytes) -> list[tuple[str, str]]:
    """(pointee struct, field name) of every field declared as
    ``struct T <kptr annotation> *name`` in ``text``."""
    body = _strip_defines(re.sub(rb"//[^\n]*|/\*.*?\*/", b" ", text, flags=re.S))
    alt = b"|".join(_kptr_annotations(text))
    pat = rb"struct\s+(\w+)\s+(?:" + alt + rb")\s*\*\s*(\w+)"
    return [(m.group(1).decode(), m.group(2).decode()) for m in re.finditer(pat, body)]


def _mode(path: Path, what: str) -> int | None:
    """st_mode of ``path``, None when it does not exist; any other failure
    (a name too long, a symlink loop, a file used as a directory) is a CompileError."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CompileError(f"{what} {path}: {e.strerror}") from None


def _local_headers(src: Path, text: bytes) -> list[Path]:
    out = []
    for m in re.finditer(rb'#include\s+"([^"]+)"', text):
        p = src.parent / os.fsdecode(m.group(1))
        try:
            mode = os.stat(p).st_mode
        except (OSError, ValueError):
            continue    # clang will say what is wrong with it
        if stat.S_ISREG(mode):     # not a directory, FIFO or device: reading those would fail or block
            out.append(p)
    return out


def check_type_tags(obj_path: str | os.PathLike[str], source: str | os.PathLike[str] | bytes | None = None, *,
                    source_name: str | None = None, compiler: str | None = None) -> None:
    """Check that the kptr fields the source asked for reached the object's BTF.

    Raises :class:`CompileError` when

    * a field declared ``struct T __kptr *name`` (or ``__kptr_untrusted``,
      ``__kptr_ref``, ``__percpu_kptr``, ``__uptr``, a local macro for one of
      them, or the raw ``btf_type_tag`` attribute) is a plain pointer in the
      BTF: the compiler dropped the tag (clang before 16 does) or a macro
      defined it away, and the kernel would treat the field as an ordinary
      integer, refusing ``bpf_kptr_xchg`` on it;
    * the source asks for kptrs (``source`` None: always) and the BTF holds
      no kptr type tag at all;
    * a kptr points to a struct that the BTF only forward-declares: the kernel
      refuses such a kptr (map creation or BTF load fails with EINVAL).

    ``source`` is the C source (path or bytes); without it only the last two
    checks run.
    """
    from pybpf.core.btf import Btf, Kind
    from pybpf.core.codec import KPTR_TAGS

    if isinstance(source, (str, os.PathLike)):
        source_name = source_name or os.fspath(source)
        source = Path(source).read_bytes()
    where = source_name or os.fspath(obj_path)
    how = f" ({compiler})" if compiler else ""
    hint = (f"compile with clang {MIN_TYPE_TAG_CLANG} or newer (apt-get install clang-19), and do not define "
            "__kptr away")
    wanted = _kptr_fields(source) if source is not None else []
    with Btf.from_file(obj_path) as btf:
        tags: list[tuple[str, str]] = []        # (tag, target kind name) per kptr tag
        members: dict[tuple[str, str], list[tuple[str, str | None]]] = {}  # (target, field) -> [(struct, tag)]
        for t in btf:
            if t.kind == Kind.TYPE_TAG and t.name in KPTR_TAGS:
                pointee = t.type.resolved()
                if pointee.kind == Kind.FWD:
                    raise CompileError(
                        f"{where}: a '{t.name}' field points to struct {pointee.name}, which the object's BTF only "
                        "forward-declares; the kernel does not take a pointer to an incomplete type as a kptr (BTF load "
                        "or map creation fails with EINVAL, or bpf_kptr_xchg finds 'no valid kptr')",
                        hint=f"make the compiler emit struct {pointee.name} in full: use one of its members in the "
                             "program (or include a kfunc prototype that takes it by pointer and is called)")
                tags.append((t.name, pointee.name))
            if t.kind in (Kind.STRUCT, Kind.UNION):
                for m in t.members:
                    mt = btf[m.type_id]
                    while mt.kind in (Kind.TYPEDEF, Kind.CONST, Kind.VOLATILE, Kind.RESTRICT):
                        mt = mt.type
                    while mt.kind == Kind.ARRAY:
                        mt = btf[mt.array[0]]
                    if mt.kind != Kind.PTR or not mt.type_id:
                        continue
                    p = mt.type
                    tag = None
                    while p.kind in (Kind.TYPE_TAG, Kind.CONST, Kind.VOLATILE, Kind.RESTRICT):
                        if p.kind == Kind.TYPE_TAG and p.name in KPTR_TAGS:
                            tag = p.name
                        p = p.type
                    if p.kind in (Kind.STRUCT, Kind.FWD):
                        members.setdefault((p.name, m.name), []).append((t.name or "(anon)", tag))
        if source is None or wanted:
            if not tags:
                raise CompileError(f"{where}: the source declares kptr fields but the object's BTF has no 'kptr' "
                                   f"type tag; the compiler{how} dropped it, and the kernel would treat the fields "
                                   "as plain pointers", hint=hint)
        for target, field in wanted:
            found = members.get((target, field), [])
            plain = [st for st, tag in found if tag is None]
            if found and len(plain) == len(found):
                raise CompileError(
                    f"{where}: field '{field}' (struct {target} *) of struct {plain[0]} is declared as a kptr but "
                    f"the object's BTF has it as a plain pointer, without the 'kptr' type tag; the compiler{how} "
                    "dropped the tag or a macro defined it away. The kernel would treat the field as an ordinary "
                    "8-byte value: bpf_kptr_xchg on it is refused and no reference is ever released",
                    hint=hint)
