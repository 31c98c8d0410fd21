"""BPF ELF objects: open (the editable spec), load (live programs and maps)."""
from __future__ import annotations

import errno as _errno
import os
import re
import threading
import weakref
from typing import Any, Iterator, Mapping, TypeVar

from pybpf._binding import capture_libbpf_log, ffi, lib, ptr_errno
from pybpf.core.btf import Btf, Kind
from pybpf.core.codec import Codec, codec_for
from pybpf.core.map import Map
from pybpf.core.program import Program
from pybpf.core.validate import check_elf
from pybpf.errors import (BPFError, BPFInvalidError, BPFNotFoundError, ClosedError, ELFError, StateError,
                          VerifierError, caps_for_program_types, error_for, permission_hint, raise_errno)
from pybpf.raw import FD, MapType

T = TypeVar("T")

_LOG_BEGIN = re.compile(r"prog '([^']+)': -- BEGIN PROG LOAD LOG --\n(.*?)-- END PROG LOAD LOG --", re.S)
_LOAD_FAILED = re.compile(r"prog '([^']+)': (?:BPF program load failed|failed to load)")


class _Named(Mapping[str, T]):
    """Read-only mapping of an object's programs or maps, in ELF order."""

    def __init__(self, items: dict[str, T], kind: str, owner: str):
        self._items = items
        self._kind = kind
        self._owner = owner

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self._items) or "none"
            raise KeyError(f"object '{self._owner}' has no {self._kind} named '{name}' (it has: {known})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<{self._kind}s of '{self._owner}': {', '.join(self._items)}>"


class Variable:
    """A global variable of a ``.data``/``.bss``/``.rodata`` section."""

    __slots__ = ("name", "map", "offset", "codec", "section")

    def __init__(self, name: str, map_: Map, offset: int, codec: Codec, section: str):
        self.name, self.map, self.offset, self.codec, self.section = name, map_, offset, codec, section


class Variables(Mapping[str, Any]):
    """``obj.variables["name"]`` reads a global variable (typed through
    BTF); assignment writes it. Before load the value goes into the object's
    initial image; after load it is written to the kernel's map.  ``.rodata``
    (``const volatile``) can only be set before load: the kernel freezes it."""

    def __init__(self, obj: "Object"):
        self._obj = obj
        self._vars: dict[str, Variable] | None = None

    def _index(self) -> dict[str, Variable]:
        if self._vars is None:
            out: dict[str, Variable] = {}
            btf = self._obj.btf
            if btf is not None:
                for m in self._obj.maps.values():
                    if not lib.bpf_map__is_internal(m._ptr):
                        continue
                    sec_name = _section_of(m.name)
                    if sec_name is None:
                        continue
                    sec = btf.get(sec_name, Kind.DATASEC)
                    if sec is None:
                        continue
                    for si in sec.secinfo:
                        var = btf[si.type_id]
                        if var.kind != Kind.VAR:
                            continue
                        codec = codec_for(btf, var.type_id, si.size)
                        out[var.name] = Variable(var.name, m, si.offset, codec, sec_name)
            self._vars = out
        return self._vars

    def __getitem__(self, name: str) -> Any:
        v = self._lookup(name)
        return v.codec.decode(self._image(v), v.offset)

    def _lookup(self, name: str) -> Variable:
        self._obj._check_open()
        try:
            return self._index()[name]
        except KeyError:
            raise KeyError(f"object '{self._obj.name}' has no global variable '{name}' "
                           f"(it has: {', '.join(self._index()) or 'none'})") from None

    def _image(self, v: Variable) -> bytes:
        if self._obj.loaded:
            return v.map.lookup_bytes(b"\0\0\0\0") or b""
        size = ffi.new("size_t *")
        p = lib.bpf_map__initial_value(v.map._ptr, size)
        return bytes(ffi.buffer(p, size[0])) if p != ffi.NULL else b""

    def __setitem__(self, name: str, value: Any) -> None:
        v = self._lookup(name)
        data = bytearray(v.codec.encode(value))
        if self._obj.loaded:
            if v.section.startswith(".rodata") or v.section.startswith(".kconfig"):
                raise StateError(f"cannot write read-only variable '{name}' ({v.section}) after load",
                                 hint="set it between Object.open() and load(); the kernel freezes .rodata")
            image = bytearray(self._image(v))
            image[v.offset:v.offset + len(data)] = data
            v.map.update(b"\0\0\0\0", bytes(image))
            return
        size = ffi.new("size_t *")
        p = lib.bpf_map__initial_value(v.map._ptr, size)
        image = bytearray(ffi.buffer(p, size[0]))
        image[v.offset:v.offset + len(data)] = data
        ret = lib.bpf_map__set_initial_value(v.map._ptr, ffi.from_buffer(bytes(image)), len(image))
        if ret < 0:
            raise_errno(-ret, f"set variable '{name}'")

    def __iter__(self) -> Iterator[str]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._index())


def _section_of(map_name: str) -> str | None:
    # libbpf names internal maps "<obj prefix>.<section suffix>", e.g. "prog.bss", "prog.rodata",
    # "prog.data.counters" -> section ".data.counters".
    for sec in (".rodata", ".data", ".bss", ".kconfig"):
        i = map_name.find(sec)
        if i >= 0:
            return map_name[i:]
    return None


class Object:
    """A BPF ELF object.

    ``Object.open(path_or_bytes)`` parses it (programs and maps can then be
    configured), :meth:`load` creates the maps and loads the programs into the
    kernel.  Closing the object (or leaving its ``with`` block) releases
    everything it owns; links made from its programs keep the programs alive
    until they are closed.
    """

    def __init__(self, ptr: Any, name: str, keep: list[Any]):
        self._p = ptr
        self._name = name
        self._keep = keep            # option strings and buffers C may still read
        self._loaded = False
        self._btf: Btf | None = None
        self._programs: dict[str, Program] = {}
        self._maps: dict[str, Map] = {}
        p = lib.bpf_object__next_program(ptr, ffi.NULL)
        while p != ffi.NULL:
            prog = Program(obj=self, ptr=p)
            self._programs[ffi.string(lib.bpf_program__name(p)).decode()] = prog
            p = lib.bpf_object__next_program(ptr, p)
        m = lib.bpf_object__next_map(ptr, ffi.NULL)
        while m != ffi.NULL:
            self._maps[ffi.string(lib.bpf_map__name(m)).decode()] = Map(obj=self, ptr=m)
            m = lib.bpf_object__next_map(ptr, m)
        self.variables = Variables(self)
        self._finalizer = weakref.finalize(self, lib.bpf_object__close, ptr)
        self._lock = threading.RLock()   # load/close from several threads: libbpf is not thread-safe

    @classmethod
    def open(cls, source: str | os.PathLike[str] | bytes | bytearray | memoryview, *, name: str | None = None,
             pin_root_path: str | os.PathLike[str] | None = None, kconfig: str | Mapping[str, Any] | None = None,
             btf_custom_path: str | os.PathLike[str] | None = None) -> "Object":
        """Open a BPF ELF object from a path or from its bytes.

        ``kconfig`` supplies ``CONFIG_*`` values for ``__kconfig`` externs
        (text of a config file, or a mapping), for kernels that expose no
        config; ``pin_root_path`` is where maps with ``pinning`` go.
        """
        from pybpf.features import struct_ops as _struct_ops  # .struct_ops.link for libbpf < 1.2

        source, name, after_open = _struct_ops.open_hook(source, name)
        keep: list[Any] = []
        opts = ffi.new("struct bpf_object_open_opts *")
        opts.sz = ffi.sizeof("struct bpf_object_open_opts")

        def cstr(s: Any) -> Any:
            c = ffi.new("char[]", os.fsencode(s) if not isinstance(s, bytes) else s)
            keep.append(c)
            return c

        if name is not None:
            opts.object_name = cstr(name)
        if pin_root_path is not None:
            opts.pin_root_path = cstr(pin_root_path)
        if kconfig is not None:
            if isinstance(kconfig, Mapping):
                kconfig = "".join(f"{k}={_kconfig_value(v)}\n" for k, v in kconfig.items())
            opts.kconfig = cstr(kconfig)
        elif os.environ.get("PYBPF_KCONFIG") and os.path.exists(os.environ["PYBPF_KCONFIG"]):
            # The VM harness hands guests their kernel's config this way.
            with open(os.environ["PYBPF_KCONFIG"], "rb") as f:
                opts.kconfig = cstr(f.read())
        if btf_custom_path is not None:
            opts.btf_custom_path = cstr(btf_custom_path)

        with capture_libbpf_log() as log:
            if isinstance(source, (bytes, bytearray, memoryview)):
                data = bytes(source)
                check_elf(data, name or "BPF object")   # libbpf 1.1 crashes on some malformed objects
                buf = ffi.new("char[]", data)   # libbpf keeps pointers into the image: keep it alive
                keep.append(buf)
                label = name or f"<{len(data)} bytes>"
                if name is None:
                    opts.object_name = cstr(b"mem_object")
                ptr = lib.bpf_object__open_mem(buf, len(data), opts)
            else:
                path = os.fspath(source)
                label = path
                if not os.path.exists(path):
                    raise BPFNotFoundError(_errno.ENOENT, f"open BPF object: {path} does not exist",
                                           hint="compile it first, e.g. pybpf.compile('prog.bpf.c')")
                with open(path, "rb") as f:
                    check_elf(f.read(), path)   # libbpf 1.1 crashes on some malformed objects
                ptr = lib.bpf_object__open_file(os.fsencode(path), opts)
        err = ptr_errno(ptr, _errno.EINVAL)
        if err:
            detail = _last_lines(log.text)
            exc = error_for(err, f"open BPF object {label}" + (f": {detail}" if detail else ""), op="open",
                            cls=ELFError if err in (_errno.EINVAL, 4000, 4001, 4003, _errno.ENOEXEC, _errno.EBADF,
                                                    _errno.E2BIG) or err > 4095 else None)
            if isinstance(exc, ELFError):
                exc.hint = "is it a BPF ELF object built with clang -target bpf -g?"
            raise exc
        obj_name = os.fsdecode(ffi.string(lib.bpf_object__name(ptr)))   # from the file name: any bytes
        obj = cls(ptr, obj_name, keep)
        try:
            after_open(obj)
        except BaseException:
            obj.close()
            raise
        return obj

    # -- state ------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def loaded(self) -> bool:
        return self._loaded

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"object '{self._name}'")

    def _ptr(self) -> Any:
        self._check_open()
        return self._p

    @property
    def programs(self) -> Mapping[str, Program]:
        self._check_open()
        return _Named(self._programs, "program", self._name)

    @property
    def maps(self) -> Mapping[str, Map]:
        self._check_open()
        return _Named(self._maps, "map", self._name)

    @property
    def btf(self) -> Btf | None:
        """The object's BTF (None when it was built without -g)."""
        self._check_open()
        if self._btf is None:
            p = lib.bpf_object__btf(self._p)
            if p != ffi.NULL:
                self._btf = Btf(p, owner=self, owned=False)
        return self._btf

    # -- load -------------------------------------------------------------------------------------

    def load(self) -> "Object":
        """Create the maps and load the programs into the kernel.

        Raises :class:`~pybpf.errors.VerifierError` (with the whole verifier
        log) when the verifier refuses a program.  After a failed load the
        object can only be closed.
        """
        with self._lock:
            ptr = self._ptr()
            if self._loaded:
                raise StateError(f"object '{self._name}' is already loaded")
            _check_struct_ops_maps(self)   # libbpf 1.1 dereferences NULL loading these
            with capture_libbpf_log() as log:
                ret = lib.bpf_object__load(ptr)
            if ret < 0:
                self._raise_load_error(-ret, log.text)
            self._loaded = True
        return self

    def _raise_load_error(self, err: int, text: str) -> None:
        from pybpf.features import trampolines

        logs = {m.group(1): m.group(2) for m in _LOG_BEGIN.finditer(text)}
        failed = _LOAD_FAILED.findall(text)
        prog = failed[-1] if failed else (next(iter(logs)) if logs else None)
        if prog is not None and prog in self._programs:
            trampolines.explain_load_error(self._programs[prog], err, logs.get(prog, ""), text)
        if prog is not None and prog in logs:
            raise VerifierError(err, prog, logs[prog], hint=_verifier_hint(err, logs[prog]))
        detail = _last_lines(text)
        what = f"load object '{self._name}'" + (f" (program '{prog}')" if prog else "")
        exc = error_for(err, what + (f": {detail}" if detail else ""), op="load")
        if err in (_errno.EPERM, _errno.EACCES) and not logs:
            # name the capabilities the object's program types need, and which this process lacks
            progs = [self._programs[prog]] if prog in self._programs else list(self._programs.values())
            needed = caps_for_program_types([p.type for p in progs if p.autoload])
            exc.hint = permission_hint("load", needed)
        raise exc

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Unload everything the object owns. Idempotent."""
        with self._lock:
            if self._finalizer.alive:
                if self._btf is not None:
                    self._btf._p = None
                for prog in self._programs.values():
                    for fd in prog._keep:
                        fd.close()
                self._finalizer()
            self._keep = []

    def __enter__(self) -> "Object":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("loaded" if self._loaded else "opened")
        return f"<Object '{self._name}' {state} programs={list(self._programs)} maps={list(self._maps)}>"

    def pin_maps(self, directory: str | os.PathLike[str]) -> None:
        for m in self.maps.values():
            m.pin(os.path.join(os.fspath(directory), m.name.replace(".", "_")))


def _check_struct_ops_maps(obj: "Object") -> None:
    """Refuse a STRUCT_OPS map that has no struct_ops variable behind it
    (declared in ``.maps``, or retyped with Map.set_type): libbpf 1.1 crashes
    on it in bpf_object__load. Found by tests/reliability (fuzz target 'elf')."""
    odd = [n for n, m in obj._maps.items() if int(lib.bpf_map__type(m._ptr)) == MapType.STRUCT_OPS]
    if not odd:
        return
    btf = obj.btf
    backed: set[str] = set()
    if btf is not None:
        for t in btf:
            if t.kind == Kind.DATASEC and t.name.startswith(".struct_ops"):
                backed.update(btf[si.type_id].name for si in t.secinfo if si.type_id < len(btf))
    for n in odd:
        if n not in backed:
            raise BPFInvalidError(_errno.EINVAL, f"load object '{obj.name}': map '{n}' has type STRUCT_OPS but is not "
                                  "a struct_ops variable", op="load",
                                  hint="declare struct_ops maps as variables in SEC(\".struct_ops\") or "
                                       "SEC(\".struct_ops.link\"), not in .maps, and do not retype maps to STRUCT_OPS")


def _kconfig_value(v: Any) -> str:
    if v is True:
        return "y"
    if v is False:
        return "n"
    return str(v)


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def _verifier_hint(err: int, log: str) -> str | None:
    if "GPL" in log and "license" in log.lower():
        return "declare char LICENSE[] SEC(\"license\") = \"GPL\"; for GPL-only helpers"
    if "invalid mem access 'scalar'" in log or "R0 invalid mem access 'map_value_or_null'" in log:
        return "check the pointer for NULL before dereferencing it"
    if "unbounded" in log or "out of bounds" in log or "invalid access to packet" in log:
        return "bound the access with an explicit check against data_end / the map value size"
    return None
