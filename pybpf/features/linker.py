"""Static linking of BPF ELF objects (libbpf's ``bpf_linker``).

:func:`link_objects` joins several ``.bpf.o`` files into one: ``extern``
functions, maps (``extern struct {...} m SEC(".maps")``) and variables are
resolved across the inputs, ``__weak`` definitions give way to strong ones,
and the result loads like an object compiled from a single source.  Conflicts
(two strong definitions, mismatched types) raise :class:`LinkError` naming the
symbol, with libbpf's own explanation.
"""
from __future__ import annotations

import errno as _errno
import os
import re
from pathlib import Path
from typing import Iterable

from pybpf._binding import capture_libbpf_log, ffi, lib
from pybpf.errors import BPFError, BPFNotFoundError, ELFError, strerror

__all__ = ["link_objects", "LinkError"]

_EM_BPF = 247


class LinkError(BPFError):
    """libbpf's static linker refused the inputs. ``symbol`` is the name of
    the symbol in conflict when libbpf named one; ``log`` is libbpf's output."""

    def __init__(self, err: int, message: str, *, symbol: str | None = None, log: str = "",
                 hint: str | None = None):
        super().__init__(err, message, op="link", hint=hint)
        self.symbol = symbol
        self.log = log


# libbpf's wording (linker.c) for the symbol in trouble: "global 'NAME': ...",
# "conflicting non-weak symbol #N (NAME) definition", "extern (func ksym) 'NAME': ...", "map 'NAME': ..."
_SYMBOL_RES = [
    re.compile(r"symbol #\d+ \(([^)]+)\)"),
    re.compile(r"(?:global|extern|map|var|func|sym)[^']*'([^']+)'"),
    re.compile(r"'([A-Za-z_][A-Za-z0-9_.]*)'"),
]


def _symbol_of(text: str) -> str | None:
    for line in text.splitlines():
        for rx in _SYMBOL_RES:
            m = rx.search(line)
            if m:
                return m.group(1)
    return None


def _check_input(path: str) -> None:
    if not os.path.exists(path):
        raise BPFNotFoundError(_errno.ENOENT, f"link BPF objects: input {path} does not exist",
                               hint="compile it first, e.g. pybpf.compile('x.bpf.c')")
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ELFError(_errno.EINVAL, f"link BPF objects: {path} is not an ELF file",
                       hint="pass objects built with clang -target bpf -g (pybpf.compile)")
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    if machine != _EM_BPF:
        raise ELFError(_errno.EINVAL, f"link BPF objects: {path} is an ELF object for machine {machine}, not BPF",
                       hint="pass objects built with clang -target bpf -g (pybpf.compile)")


def link_objects(inputs: Iterable[str | os.PathLike[str]], output: str | os.PathLike[str]) -> Path:
    """Statically link BPF objects ``inputs`` into ``output`` and return its path.

    The output is written atomically (a temporary file renamed into place),
    so a failed link leaves no partial object behind.  Raises
    :class:`LinkError` naming the conflicting symbol when definitions clash.
    """
    paths = [os.fspath(p) for p in inputs]
    if not paths:
        raise LinkError(_errno.EINVAL, "link BPF objects: no input objects given", hint="pass one or more .o paths")
    for p in paths:
        _check_input(p)
    out = Path(output)
    if out.is_dir():
        raise LinkError(_errno.EISDIR, f"link BPF objects: output {out} is a directory",
                        hint="give the output object's file name")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with capture_libbpf_log() as log:
        linker = lib.bpf_linker__new(os.fsencode(tmp), ffi.NULL)
        if linker == ffi.NULL:
            err = ffi.errno or _errno.EINVAL
            tmp.unlink(missing_ok=True)
            raise LinkError(err, f"link BPF objects: cannot create {out}: {strerror(err)}", log=log.text,
                            hint="is the output directory writable?")
        try:
            for p in paths:
                ret = lib.bpf_linker__add_file(linker, os.fsencode(p), ffi.NULL)
                if ret < 0:
                    _fail(-ret, f"add {p}", paths, log.text)
            ret = lib.bpf_linker__finalize(linker)
            if ret < 0:
                _fail(-ret, "finalize", paths, log.text)
        except BaseException:
            lib.bpf_linker__free(linker)
            tmp.unlink(missing_ok=True)
            raise
        lib.bpf_linker__free(linker)
    os.replace(tmp, out)
    return out


def _fail(err: int, step: str, paths: list[str], text: str) -> None:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln[len("libbpf: "):] if ln.startswith("libbpf: ") else ln for ln in lines]
    lines = [ln for ln in lines if not ln.startswith("linker: adding object file")]
    symbol = _symbol_of("\n".join(lines))
    detail = "; ".join(lines[-3:])
    names = ", ".join(os.path.basename(p) for p in paths)
    what = f"link BPF objects ({names}): {step} failed"
    if symbol:
        what += f": symbol '{symbol}'"
    what += f": {detail or strerror(err)}"
    hint = None
    if "non-weak" in text or "conflicting" in text:
        hint = (f"'{symbol}' is defined (non-weak) in more than one input: keep one definition, or mark the "
                "default one __weak")
    elif "incompatible" in text or "mismatch" in text or "conflict" in text.lower():
        hint = f"every declaration of '{symbol}' must have the same type/definition in all inputs"
    elif "unresolved" in text or "extern" in text:
        hint = "an extern is not defined by any input: add the object that defines it"
    raise LinkError(err, what, symbol=symbol, log=text, hint=hint)
