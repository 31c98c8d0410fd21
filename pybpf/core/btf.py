"""BTF through libbpf's ``btf__*`` API.

:class:`Btf` owns (or borrows from an :class:`~pybpf.Object`) a libbpf
``struct btf``; :class:`BtfType` is a read-only view of one type record.
"""
from __future__ import annotations

import enum
import errno as _errno
import functools
import os
from dataclasses import dataclass
from typing import Any, Iterator

from pybpf._binding import ffi, lib, ptr_errno
from pybpf.errors import BPFNotFoundError, ClosedError, raise_errno


class Kind(enum.IntEnum):
    """BTF kinds (``BTF_KIND_*``)."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


class Linkage(enum.IntEnum):
    """Linkage of a FUNC (``BTF_FUNC_*``) or VAR (``BTF_VAR_*``)."""

    STATIC = 0
    GLOBAL = 1
    EXTERN = 2


INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4


@dataclass(frozen=True)
class Member:
    """A struct/union member: ``bit_offset`` from the start, ``bitfield_size``
    0 unless a bitfield."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


@dataclass(frozen=True)
class Param:
    name: str
    type_id: int


@dataclass(frozen=True)
class EnumValue:
    name: str
    value: int


@dataclass(frozen=True)
class SecInfo:
    type_id: int
    offset: int
    size: int


class BtfType:
    """One BTF type record of a :class:`Btf`."""

    __slots__ = ("btf", "id", "_t")

    def __init__(self, btf: "Btf", type_id: int, t: Any):
        self.btf = btf
        self.id = type_id
        self._t = t

    @property
    def kind(self) -> Kind:
        return Kind((self._t.info >> 24) & 0x1F)

    @property
    def vlen(self) -> int:
        return self._t.info & 0xFFFF

    @property
    def kflag(self) -> bool:
        return bool(self._t.info >> 31)

    @property
    def name(self) -> str:
        return self.btf.string(self._t.name_off)

    @property
    def size(self) -> int:
        """Byte size for INT, STRUCT, UNION, ENUM, DATASEC, FLOAT."""
        return int(self._t.size)

    @property
    def type_id(self) -> int:
        """The referenced type for PTR, TYPEDEF, modifiers, FUNC, VAR, tags."""
        return int(self._t.size)

    @property
    def type(self) -> "BtfType":
        if self.kind == Kind.ARRAY:
            return self.btf[self.array[0]]
        return self.btf[self.type_id]

    def _extra(self, ctype: str) -> Any:
        return ffi.cast(f"struct {ctype} *", self._t + 1)

    # INT
    @property
    def int_encoding(self) -> int:
        return (self._extra_u32() >> 24) & 0x0F

    @property
    def int_bits(self) -> int:
        return self._extra_u32() & 0xFF

    @property
    def int_offset(self) -> int:
        return (self._extra_u32() >> 16) & 0xFF

    def _extra_u32(self) -> int:
        return int(ffi.cast("uint32_t *", self._t + 1)[0])

    @property
    def signed(self) -> bool:
        if self.kind == Kind.INT:
            return bool(self.int_encoding & INT_SIGNED)
        if self.kind in (Kind.ENUM, Kind.ENUM64):
            return self.kflag
        return False

    # ARRAY
    @property
    def array(self) -> tuple[int, int, int]:
        """(element type id, index type id, number of elements)."""
        a = self._extra("btf_array")
        return int(a.type), int(a.index_type), int(a.nelems)

    # STRUCT / UNION
    @property
    def members(self) -> list[Member]:
        m = self._extra("btf_member")
        out = []
        for i in range(self.vlen):
            off = int(m[i].offset)
            if self.kflag:
                out.append(Member(self.btf.string(m[i].name_off), int(m[i].type), off & 0xFFFFFF, off >> 24))
            else:
                out.append(Member(self.btf.string(m[i].name_off), int(m[i].type), off, 0))
        return out

    # ENUM / ENUM64
    @property
    def enumerators(self) -> list[EnumValue]:
        out = []
        if self.kind == Kind.ENUM:
            e = self._extra("btf_enum")
            for i in range(self.vlen):
                v = int(e[i].val)
                if not self.kflag and v < 0:
                    v &= 0xFFFFFFFF
                out.append(EnumValue(self.btf.string(e[i].name_off), v))
        elif self.kind == Kind.ENUM64:
            e = self._extra("btf_enum64")
            for i in range(self.vlen):
                v = int(e[i].val_lo32) | (int(e[i].val_hi32) << 32)
                if self.kflag and v >= 1 << 63:
                    v -= 1 << 64
                out.append(EnumValue(self.btf.string(e[i].name_off), v))
        return out

    # FUNC_PROTO
    @property
    def params(self) -> list[Param]:
        p = self._extra("btf_param")
        return [Param(self.btf.string(p[i].name_off), int(p[i].type)) for i in range(self.vlen)]

    # FUNC / VAR
    @property
    def linkage(self) -> Linkage:
        if self.kind == Kind.FUNC:
            return Linkage(self.vlen)
        if self.kind == Kind.VAR:
            return Linkage(int(self._extra("btf_var").linkage))
        raise TypeError(f"{self.kind.name} has no linkage")

    # DATASEC
    @property
    def secinfo(self) -> list[SecInfo]:
        s = self._extra("btf_var_secinfo")
        return [SecInfo(int(s[i].type), int(s[i].offset), int(s[i].size)) for i in range(self.vlen)]

    # DECL_TAG
    @property
    def component_idx(self) -> int:
        return int(self._extra("btf_decl_tag").component_idx)

    def resolved(self) -> "BtfType":
        """This type with typedefs, modifiers and type tags skipped."""
        t = self
        for _ in range(64):   # malformed BTF can make a cycle of modifiers
            if t.kind not in (Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG):
                return t
            t = t.type
        raise_errno(_errno.ELOOP, f"resolve BTF type {self.id}: a cycle of typedefs/modifiers (malformed BTF)")

    @property
    def byte_size(self) -> int:
        n = lib.btf__resolve_size(self.btf._ptr(), self.id)
        if n < 0:
            raise_errno(-n, f"size of BTF type {self.describe()}")
        return int(n)

    def describe(self, _depth: int = 0) -> str:
        """A C-like spelling: ``struct foo``, ``u32 *``, ``int[4]``..."""
        k = self.kind
        if _depth > 32:   # malformed BTF can make a cycle (PTR -> ARRAY -> PTR ...)
            return "..."
        if k in (Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FWD):
            word = {Kind.STRUCT: "struct", Kind.UNION: "union", Kind.FWD: "struct"}.get(k, "enum")
            return f"{word} {self.name or '(anon)'}"
        if k == Kind.PTR:
            return self.type.describe(_depth + 1) + " *" if self.type_id else "void *"
        if k == Kind.ARRAY:
            elem, _, n = self.array
            return f"{self.btf[elem].describe(_depth + 1)}[{n}]"
        if k in (Kind.CONST, Kind.VOLATILE, Kind.RESTRICT):
            return f"{k.name.lower()} {self.type.describe(_depth + 1)}"
        if k == Kind.TYPE_TAG:
            return f"{self.type.describe(_depth + 1)} __tag({self.name})"
        if k == Kind.UNKN:
            return "void"
        return self.name or k.name.lower()

    def __repr__(self) -> str:
        return f"<BtfType [{self.id}] {self.kind.name} '{self.name}'>"


class Btf:
    """A set of BTF types: an object's, the kernel's (:meth:`vmlinux`), or
    one loaded from the kernel by id."""

    def __init__(self, ptr: Any, *, owner: Any = None, owned: bool = True, fd: int = -1):
        self._p = ptr
        self._owner = owner  # keeps a borrowed BTF's Object alive
        self._owned = owned
        self._fd = fd
        self._cache: dict[int, BtfType] = {}

    def _ptr(self) -> Any:
        if self._p is None:
            raise ClosedError("BTF")
        return self._p

    @classmethod
    def vmlinux(cls) -> "Btf":
        """The running kernel's BTF (/sys/kernel/btf/vmlinux), shared and cached."""
        return _vmlinux()

    @classmethod
    def from_kernel_id(cls, btf_id: int) -> "Btf":
        """A BTF object the kernel holds (a program's, a map's), by id. Split
        BTF of modules is resolved against vmlinux."""
        from pybpf import raw

        if not btf_id:
            raise_errno(_errno.ENOENT, "load BTF id 0 from the kernel")
        # Kernel module BTF is split BTF on top of vmlinux; program BTF stands alone.
        with raw.fd_by_id("btf", btf_id) as fd:
            info = raw.btf_info(fd.raw)
            is_module = bool(info.kernel_btf) and btf_id != _vmlinux_id()
        if is_module:
            p = lib.btf__load_from_kernel_by_id_split(btf_id, _vmlinux()._ptr())
        else:
            p = lib.btf__load_from_kernel_by_id(btf_id)
        if err := ptr_errno(p, _errno.ENOENT):
            raise_errno(err, f"load BTF id {btf_id} from the kernel")
        return cls(p)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "Btf":
        """Parse BTF from an ELF file's .BTF section or a raw BTF file."""
        from pybpf.core.validate import check_btf, check_elf

        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise BPFNotFoundError(_errno.ENOENT, f"parse BTF: {os.fspath(path)} does not exist") from None
        if data[:4] == b"\x7fELF":
            check_elf(data, os.fspath(path))   # libbpf 1.1 does not check type references
        elif not os.path.realpath(path).startswith("/sys/kernel/btf/"):   # the kernel's own BTF is trusted
            check_btf(data, what=f"BTF in {os.fspath(path)}")
        p = lib.btf__parse(os.fsencode(path), ffi.NULL)
        if err := ptr_errno(p, _errno.EINVAL):
            if err == _errno.ENOENT:
                raise BPFNotFoundError(err, f"parse BTF: {os.fspath(path)} does not exist")
            raise_errno(err, f"parse BTF from {os.fspath(path)}")
        return cls(p)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Btf":
        """Parse raw BTF bytes (validated by pybpf and libbpf, never trusted)."""
        from pybpf.core.validate import check_btf

        check_btf(data)   # libbpf 1.1 does not check type references
        buf = ffi.from_buffer(data)
        p = lib.btf__new(buf, len(data))
        if err := ptr_errno(p, _errno.EINVAL):
            raise_errno(err, "parse BTF bytes")
        return cls(p)

    def close(self) -> None:
        if self._p is not None and self._owned:
            lib.btf__free(self._p)
        self._p = None
        self._cache.clear()

    def __enter__(self) -> "Btf":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def __len__(self) -> int:
        """Number of type ids, including the void type 0."""
        return int(lib.btf__type_cnt(self._ptr()))

    def __getitem__(self, type_id: int) -> BtfType:
        t = self._cache.get(type_id)
        if t is not None:
            return t
        p = lib.btf__type_by_id(self._ptr(), type_id)
        if p == ffi.NULL:
            raise KeyError(f"no BTF type with id {type_id}")
        t = self._cache[type_id] = BtfType(self, type_id, p)
        return t

    def __iter__(self) -> Iterator[BtfType]:
        for i in range(1, len(self)):
            yield self[i]

    def string(self, offset: int) -> str:
        s = lib.btf__name_by_offset(self._ptr(), offset)
        return ffi.string(s).decode("utf-8", "replace") if s != ffi.NULL else ""

    def find(self, name: str, kind: Kind | None = None) -> BtfType:
        """The type named ``name`` (of ``kind``); KeyError when absent."""
        if kind is None:
            tid = lib.btf__find_by_name(self._ptr(), name.encode())
        else:
            tid = lib.btf__find_by_name_kind(self._ptr(), name.encode(), int(kind))
        if tid < 0:
            what = f"{kind.name} " if kind is not None else ""
            raise KeyError(f"no BTF {what}type named '{name}'")
        return self[int(tid)]

    def get(self, name: str, kind: Kind | None = None) -> BtfType | None:
        try:
            return self.find(name, kind)
        except KeyError:
            return None

    @property
    def fd(self) -> int:
        return int(lib.btf__fd(self._ptr())) if self._fd < 0 else self._fd

    def raw_data(self) -> bytes:
        size = ffi.new("uint32_t *")
        p = lib.btf__raw_data(self._ptr(), size)
        if p == ffi.NULL:
            raise_errno(ffi.errno or _errno.ENOMEM, "serialize BTF")
        return bytes(ffi.buffer(p, size[0]))

    def dump_c(self, path: str | os.PathLike[str]) -> None:
        """Write every type as C declarations (a ``vmlinux.h``)."""
        err = lib.pybpf_btf_dump_c(self._ptr(), os.fsencode(path))
        if err < 0:
            raise_errno(-err, f"write C header {os.fspath(path)}")

    def func_proto(self, func_name: str) -> BtfType:
        """The FUNC_PROTO of function ``func_name``."""
        return self.find(func_name, Kind.FUNC).type


@functools.lru_cache(maxsize=1)
def _vmlinux() -> Btf:
    p = lib.btf__load_vmlinux_btf()
    if err := ptr_errno(p, _errno.ENOENT):
        raise_errno(err, "load the kernel's BTF (/sys/kernel/btf/vmlinux)",
                    hint="the kernel must be built with CONFIG_DEBUG_INFO_BTF=y")
    return Btf(p)


@functools.lru_cache(maxsize=1)
def _vmlinux_id() -> int:
    """The kernel id of vmlinux's BTF object."""
    from pybpf import raw

    for bid in raw.ids("btf"):
        try:
            with raw.fd_by_id("btf", bid) as fd:
                info = raw.btf_info(fd.raw)
                if info.kernel_btf:
                    name = ffi.new("char[]", 64)

                    def prep(i: Any) -> None:
                        i.name, i.name_len = int(ffi.cast("uintptr_t", name)), 64

                    raw.obj_info(fd.raw, "pybpf_btf_info", prep)
                    if ffi.string(name) == b"vmlinux":
                        return bid
        except Exception:  # noqa: BLE001 - ids come and go
            continue
    return -1
