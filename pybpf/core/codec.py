"""Encoding and decoding of map keys, values and global variables through BTF.

:func:`codec_for` turns a BTF type into a :class:`Codec`:

==============  ===========================================================
BTF             Python
==============  ===========================================================
INT, bool       ``int`` / ``bool``
ENUM, ENUM64    :class:`EnumInt` (an ``int`` that knows its name); a name
                string is accepted when encoding
FLOAT           ``float``
PTR             ``int`` (the address); kptr fields: :class:`Special`
ARRAY           ``list``; ``char[N]`` decodes to ``str`` up to the first NUL
                (``bytes`` if it is not UTF-8) and accepts ``str``/``bytes``
STRUCT, UNION   :class:`Struct`, a ``dict`` with attribute access; encoding
                takes a mapping (missing members are zero)
kernel-managed  :class:`Special` (spin locks, timers, list heads, kptrs...):
fields          decoded as a marker, never written from userspace
==============  ===========================================================

Raw ``bytes`` of exactly the type's size are always accepted by ``encode``.

kptr tags changed meaning in Linux 6.4: before, ``kptr`` was the
*unreferenced* kptr and ``kptr_ref`` the referenced one; since, ``kptr`` is
the *referenced* kptr and ``kptr_untrusted`` the unreferenced one.  A kptr
field decodes as ``kptr<T>`` (referenced) or ``kptr_untrusted<T>``
(unreferenced) according to the running kernel's reading of its tag
(:func:`kptr_meaning`); :attr:`Special.tag` keeps the tag as written.
"""
from __future__ import annotations

import functools
import re
import struct as _struct
import threading
from typing import Any, Mapping

from pybpf.core.btf import INT_BOOL, INT_CHAR, Btf, BtfType, Kind
from pybpf.errors import BPFInvalidError

# Structs the kernel manages inside map values (kernel/bpf/btf.c, btf_get_field_type):
# bpf_spin_lock, bpf_timer (5.15), bpf_list_head/node, bpf_rb_root/node (6.2-6.3),
# bpf_refcount (6.4), bpf_wq (6.10), bpf_res_spin_lock (6.15), bpf_task_work (6.18).
SPECIAL_STRUCTS = {
    "bpf_spin_lock", "bpf_res_spin_lock", "bpf_timer", "bpf_wq", "bpf_list_head", "bpf_list_node",
    "bpf_rb_root", "bpf_rb_node", "bpf_refcount", "bpf_task_work",
}
#: Type tags that make a pointer field kernel-managed.  ``percpu_kptr`` (6.7)
#: holds a referenced per-CPU object; ``uptr`` (6.13, task storage) is a user
#: address that userspace writes and the kernel pins.
KPTR_TAGS = {"kptr", "kptr_untrusted", "kptr_ref", "percpu_kptr", "uptr"}


@functools.lru_cache(maxsize=1)
def _kptr_tag_is_referenced() -> bool:
    """Whether the running kernel reads the ``kptr`` tag as a referenced kptr
    (6.4+) rather than an unreferenced one (5.19-6.3)."""
    try:
        from pybpf.probes import kernel_version, probe
        if kernel_version()[:2] < (5, 19):
            return True  # no kptrs at all: describe the current meaning
        return bool(probe("kptr_untrusted"))
    except Exception:  # noqa: BLE001 - no permission to probe: fall back to the version
        from pybpf.probes import kernel_version
        return kernel_version()[:2] >= (6, 4)


def kptr_meaning(tag: str) -> tuple[str, bool]:
    """(kind, referenced) of a pointer field tagged ``tag`` on the running
    kernel: kind is ``kptr`` (referenced), ``kptr_untrusted`` (unreferenced),
    ``percpu_kptr`` or ``uptr``."""
    if tag == "kptr":
        return ("kptr", True) if _kptr_tag_is_referenced() else ("kptr_untrusted", False)
    if tag == "kptr_ref":
        return "kptr", True
    if tag == "kptr_untrusted":
        return "kptr_untrusted", False
    if tag == "percpu_kptr":
        return "percpu_kptr", True
    return tag, False


class EnumInt(int):
    """An enum value: an ``int`` with the enumerator's ``name`` (None when the
    value has no enumerator)."""

    name: str | None

    def __new__(cls, value: int, name: str | None) -> "EnumInt":
        obj = super().__new__(cls, value)
        obj.name = name
        return obj

    def __repr__(self) -> str:
        return f"{self.name}({int(self)})" if self.name else str(int(self))


class Struct(dict):  # type: ignore[type-arg]
    """A decoded struct or union: a ``dict`` of member name to value, with
    attribute access (``v.pid`` as well as ``v["pid"]``; assigning
    ``v.pid = 3`` sets an existing member)."""

    __slots__ = ("_type_name",)
    _type_name: str

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{self._type_name} has no member '{name}'") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_type_name":
            object.__setattr__(self, name, value)
        elif name in self:
            self[name] = value
        else:
            raise AttributeError(f"{self._type_name} has no member '{name}'")

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.items())
        return f"{self._type_name}({inner})"


class Special:
    """A kernel-managed field in a map value: a kptr (``kptr<task_struct>``
    referenced, ``kptr_untrusted<task_struct>`` unreferenced,
    ``percpu_kptr<T>``, ``uptr<T>``) or a special struct (``bpf_spin_lock``,
    ``bpf_timer``, ``bpf_list_head``...).

    Userspace never sees the kernel's contents: a lookup returns these bytes
    zeroed, and an update leaves the kernel's copy alone (``uptr`` aside,
    which userspace sets to one of its own addresses)."""

    __slots__ = ("kind", "target", "raw", "tag", "referenced")

    def __init__(self, kind: str, target: str | None, raw: bytes, tag: str | None = None,
                 referenced: bool | None = None):
        #: ``kptr``, ``kptr_untrusted``, ``percpu_kptr``, ``uptr`` or the special struct's name.
        self.kind = kind
        #: The pointee struct of a kptr (None for special structs).
        self.target = target
        #: The bytes userspace read (zeros: the kernel hides these fields).
        self.raw = raw
        #: The BTF type tag as written in the program (``kptr``, ``kptr_ref``...).
        self.tag = tag
        #: For kptrs: whether the map holds a reference on the object.
        self.referenced = referenced

    @property
    def is_kptr(self) -> bool:
        return self.target is not None

    def __repr__(self) -> str:
        return f"{self.kind}<{self.target}>" if self.target else self.kind

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Special):
            return (self.kind, self.target) == (other.kind, other.target)
        if isinstance(other, str):
            return repr(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.kind, self.target))


class Codec:
    """Converts between Python values and the bytes of one C type."""

    size: int
    type_name: str = "bytes"

    def decode(self, buf: bytes | memoryview, off: int = 0) -> Any:
        raise NotImplementedError

    def encode_into(self, buf: bytearray, off: int, value: Any) -> None:
        raise NotImplementedError

    def encode(self, value: Any) -> bytes:
        if isinstance(value, (bytes, bytearray, memoryview)) and not isinstance(self, (RawCodec, CharArrayCodec)):
            return _exact(value, self.size, self.type_name)
        buf = bytearray(self.size)
        self.encode_into(buf, 0, value)
        return bytes(buf)


def _exact(value: bytes | bytearray | memoryview, size: int, what: str) -> bytes:
    b = bytes(value)
    if len(b) != size:
        raise BPFInvalidError(None, f"{what} is {size} bytes; got {len(b)} bytes",
                              hint=f"pass exactly {size} bytes, or a Python value of the type")
    return b


class RawCodec(Codec):
    """No type information: bytes of exactly ``size``; ints are accepted as
    little-endian unsigned of that size."""

    def __init__(self, size: int, type_name: str = "bytes"):
        self.size = size
        self.type_name = type_name

    def decode(self, buf: bytes | memoryview, off: int = 0) -> Any:
        return bytes(buf[off:off + self.size])

    def encode_into(self, buf: bytearray, off: int, value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and self.size <= 8:
            try:
                buf[off:off + self.size] = value.to_bytes(self.size, "little", signed=value < 0)
            except OverflowError:
                raise BPFInvalidError(None, f"{value} does not fit in {self.size} bytes") from None
            return
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise BPFInvalidError(None, f"{self.type_name} takes bytes of size {self.size}; got {type(value).__name__}",
                                  hint="the map has no BTF: pass raw bytes (or an int for sizes up to 8)")
        buf[off:off + self.size] = _exact(value, self.size, self.type_name)


class IntCodec(Codec):
    def __init__(self, size: int, signed: bool, is_bool: bool = False, type_name: str = "int"):
        self.size = size
        self.signed = signed
        self.is_bool = is_bool
        self.type_name = type_name

    def decode(self, buf: bytes | memoryview, off: int = 0) -> Any:
        v = int.from_bytes(buf[off:off + self.size], "little", signed=self.signed)
        return bool(v) if self.is_bool else v

    def encode_into(self, buf: bytearray, off: int, value: Any) -> None:
        if not isinstance(value, int):
            raise BPFInvalidError(None, f"{self.type_name} takes an int; got {type(value).__name__} {value!r}")
        try:
            buf[off:off + self.size] = int(value).to_bytes(self.size, "little", signed=self.signed)
        except OverflowError:
            lo, hi = (-(1 << (8 * self.size - 1)), (1 << (8 * self.size - 1)) - 1) if self.signed else (0, (1 << (8 * self.size)) - 1)
            raise BPFInvalidError(None, f"{value} is out of range for {self.type_name} ({lo}..{hi})") from None


class EnumCodec(IntCodec):
    def __init__(self, t: BtfType):
        super().__init__(t.size, t.signed, type_name=t.describe())
        self.by_value = {e.value: e.name for e in t.enumerators}
        self.by_name = {e.name: e.value for e in t.enumerators}

    def decode(self, buf: bytes | memoryview, off: int = 0) -> Any:
        v = int.from_bytes(buf[off:off + self.size], "little", signed=self.signed)
        return EnumInt(v, self.by_value.get(v))

    def encode_into(self, buf: bytearray, off: int, value: Any) -> None:
        if isinstance(value, str):
            if value not in self.by_name:
                raise BPFInvalidError(None, f"{self.type_name} has no enumerator '{value}' "
                                      f"(known: {', '.join(self.by_name)})")
            value = self.by_name[value]
        super().encode_into(buf, off, value)


class FloatCodec(Codec):
    def __init__(self, size: int):
        self.size = size
        self.fmt = {4: "<f", 8: "<d"}.get(size)
        self.type_name = {4: "float", 8: "double"}.get(size, f"float{size * 8}")

    def decode(self, buf: bytes | memoryview, off: int = 0) -> Any:
        if self.fmt is None:
            return bytes(buf[off:off + self.size])
        return _struct.unpack_from(self.fmt, buf, off)[0]

    def encode_into(self, buf: bytearray, off: int, value: Any) -> None:
        if self.fmt is None:
            buf[off:off + self.size] = _exact(value, self.size, self.type_name)
        else:
            _struct.pack_into(self.fmt, buf, off, float(value))


class SpecialCodec(Codec):
    """A kernel-managed field: decoded as a :class:`Special`, left zero when
    encoding (the kernel ignores what userspace writes there).  ``uptr``
    fields are the exception: they take the user address to store."""

    def __init__(self, size: int, kind: str, target: str | None, tag: str | None = None,
                 referenced: bool | None = None):
        self.size = size
        self.kind = kind
        self.target = target
        self.tag = tag
        self.referenced = referenced
        self.type_name = f"{kind}<{target}>" if target else kind

    def decode(self, buf: bytes | memoryview, off: int = 0) -> Any:
        return Special(self.kind, self.target, bytes(buf[off:off + self.size]), self.tag, self.referenced)

    def encode_into(self, buf: bytearray, off: int, value: Any) -> None:
        if value is None or isinstance(value, Special):
            return
        if self.kind == "uptr" and isinstance(value, int) and not isinstance(value, bool):
            try:
                buf[off:off + 8] = value.to_bytes(8, "little")
            except OverflowError:
                raise BPFInvalidError(None, f"{value} is not a user address (uptr<{self.target}>)") from None
            return
        if isinstance(value, int) and value == 0:
            return
        raise BPFInvalidError(None, f"{self.type_name} is kernel-managed; userspace cannot write it "
                              f"(got {value!r})",
                              hint="leave it out of the value (or pass None): an update keeps the kernel's "
                                   "copy, and BPF programs set it (bpf_kptr_xchg for kptrs)")


class ArrayCodec(Codec):
    def __init__(self, elem: Codec, n: int):
        self.elem = elem
        self.n = n
        self.size = elem.size * n
        self.type_name = f"{elem.type_name}[{n}]"

    def decode(self, buf: bytes | memoryview, off: int = 0) -> Any:
        es = self.elem.size
        return [self.elem.decode(buf, off + i * es) for i in range(self.n)]

    def encode_into(self, buf: bytearray, off: int, value: Any) -> None:
        if isinstance(value, (bytes, bytearray, memoryview)):
            buf[off:off + self.size] = _exact(value, self.size, self.type_name)
            return
        try:
            items = list(value)
        except TypeError:
            raise BPFInvalidError(None, f"{self.type_name} takes a list of up to {self.n} elements or {self.size} "
                                  f"bytes; got {type(value).__name__}") from None
        if len(items) > self.n:
            raise BPFInvalidError(None, f"{self.type_name} holds {self.n} elements; got {len(items)}")
        es = self.elem.size
        for i, item in enumerate(items):
            self.elem.encode_into(buf, off + i * es, item)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class CharArrayCodec(Codec):
    """``char[N]``: a NUL-terminated string when its bytes up to the first
    NUL are UTF-8 text without control characters (tab and newlines
    allowed); otherwise the raw ``bytes`` of the whole array."""

    def __init__(self, n: int):
        self.size = n
        self.type_name = f"char[{n}]"

    def decode(self, buf: bytes | memoryview, off: int = 0) -> Any:
        raw = bytes(buf[off:off + self.size])
        text = raw.split(b"\0", 1)[0]
        try:
            s = text.decode("utf-8")
        except UnicodeDecodeError:
            return raw
        return raw if _CONTROL.search(s) else s

    def encode_into(self, buf: bytearray, off: int, value: Any) -> None:
        if isinstance(value, str):
            try:
                raw = value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as e:
                raise BPFInvalidError(None, f"{self.type_name}: {value!r} cannot be encoded: {e.reason}") from None
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
        else:  # (bytes(5) would be five NUL bytes, bytes(None) a TypeError)
            raise BPFInvalidError(None, f"{self.type_name} takes a str or bytes; got {type(value).__name__} {value!r}")
        if len(raw) > self.size:
            raise BPFInvalidError(None, f"{self.type_name} holds {self.size} bytes; got {len(raw)}")
        buf[off:off + self.size] = raw.ljust(self.size, b"\0")


class _Field:
    __slots__ = ("name", "codec", "off", "bit_off", "bits", "enum")

    def __init__(self, name: str, codec: Codec, off: int, bit_off: int, bits: int,
                 enum: "EnumCodec | None" = None):
        self.name, self.codec, self.off, self.bit_off, self.bits = name, codec, off, bit_off, bits
        self.enum = enum  # an enum bitfield decodes to EnumInt and accepts names


class StructCodec(Codec):
    def __init__(self, t: BtfType, fields: list[_Field]):
        self.size = t.size
        self.type_name = t.describe()
        self.is_union = t.kind == Kind.UNION
        self.fields = fields
        self.by_name = {f.name: f for f in fields}

    @property
    def special_fields(self) -> dict[str, "SpecialCodec"]:
        """Kernel-managed members (directly in this struct) by name."""
        return {f.name: f.codec for f in self.fields if isinstance(f.codec, SpecialCodec)}

    def decode(self, buf: bytes | memoryview, off: int = 0) -> Any:
        out = Struct()
        out._type_name = self.type_name
        for f in self.fields:
            if f.bits:
                word = int.from_bytes(buf[off + f.off: off + f.off + f.codec.size], "little")
                v = (word >> f.bit_off) & ((1 << f.bits) - 1)
                if getattr(f.codec, "signed", False) and v >> (f.bits - 1):
                    v -= 1 << f.bits
                out[f.name] = EnumInt(v, f.enum.by_value.get(v)) if f.enum is not None else v
            else:
                out[f.name] = f.codec.decode(buf, off + f.off)
        return out

    def encode_into(self, buf: bytearray, off: int, value: Any) -> None:
        if isinstance(value, (bytes, bytearray, memoryview)):
            buf[off:off + self.size] = _exact(value, self.size, self.type_name)
            return
        if not isinstance(value, Mapping):
            raise BPFInvalidError(None, f"{self.type_name} takes a dict of its members; got {type(value).__name__}",
                                  hint=f"members: {', '.join(self.by_name)}")
        for name, v in value.items():
            f = self.by_name.get(name)
            if f is None:
                raise BPFInvalidError(None, f"{self.type_name} has no member '{name}'",
                                      hint=f"members: {', '.join(self.by_name)}")
            if f.bits:
                if f.enum is not None and isinstance(v, str):
                    if v not in f.enum.by_name:
                        raise BPFInvalidError(None, f"{f.enum.type_name} has no enumerator '{v}' "
                                              f"(known: {', '.join(f.enum.by_name)})")
                    v = f.enum.by_name[v]
                if not isinstance(v, int):
                    raise BPFInvalidError(None, f"bitfield {self.type_name}.{name} takes an int")
                lo = -(1 << (f.bits - 1)) if getattr(f.codec, "signed", False) else 0
                hi = (1 << (f.bits - (1 if lo else 0))) - 1
                if not lo <= v <= hi:
                    raise BPFInvalidError(None, f"{v} does not fit bitfield {self.type_name}.{name} ({f.bits} bits)")
                sz = f.codec.size
                word = int.from_bytes(buf[off + f.off: off + f.off + sz], "little")
                mask = ((1 << f.bits) - 1) << f.bit_off
                word = (word & ~mask) | ((v << f.bit_off) & mask)
                buf[off + f.off: off + f.off + sz] = word.to_bytes(sz, "little")
            else:
                try:
                    f.codec.encode_into(buf, off + f.off, v)
                except BPFInvalidError as e:
                    if isinstance(f.codec, SpecialCodec):
                        e.strerror = f"{self.type_name}.{name}: {e.strerror}"
                    raise

    def encode_fields(self, base: Any = None, /, **fields: Any) -> bytes:
        """Bytes of this struct from keyword arguments, on top of ``base``
        (a mapping, or bytes of the struct; zeros when None)."""
        buf = bytearray(self.size)
        if base is not None:
            self.encode_into(buf, 0, base)
        self.encode_into(buf, 0, fields)
        return bytes(buf)


def _kptr(t: BtfType) -> tuple[str, str] | None:
    """(tag, target struct) if ``t`` is PTR -> [modifiers] -> TYPE_TAG(kptr...) -> STRUCT."""
    if t.kind != Kind.PTR or not t.type_id:
        return None
    tag = t.type
    while tag.kind in (Kind.CONST, Kind.VOLATILE, Kind.RESTRICT):
        tag = tag.type
    if tag.kind == Kind.TYPE_TAG and tag.name in KPTR_TAGS:
        return tag.name, tag.type.resolved().name
    return None


def codec_for(btf: Btf | None, type_id: int, size: int | None = None) -> Codec:
    """The codec of BTF type ``type_id``; a :class:`RawCodec` of ``size``
    bytes when there is no BTF (``btf`` None or ``type_id`` 0)."""
    if btf is None or not type_id:
        if size is None:
            raise ValueError("size is needed when there is no BTF")
        return RawCodec(size)
    return _build(btf, btf[type_id])


_building = threading.local()


def _build(btf: Btf, t: BtfType) -> Codec:
    """Build the codec of ``t``, refusing BTF whose types contain themselves
    by value (possible only in malformed BTF: an array of itself, a struct
    member of its own type), which would otherwise recurse without end."""
    stack: set[tuple[int, int]] = getattr(_building, "stack", None) or set()
    _building.stack = stack
    key = (id(btf), t.id)
    if key in stack:
        raise BPFInvalidError(None, f"malformed BTF: type [{t.id}] {t.kind.name} '{t.name}' contains itself",
                              hint="the object's BTF is corrupt; rebuild it with clang -g")
    stack.add(key)
    try:
        return _build_one(btf, t)
    finally:
        stack.discard(key)


def _build_one(btf: Btf, t: BtfType) -> Codec:
    kp = _kptr(t.resolved() if t.kind != Kind.PTR else t)
    if kp is not None:
        kind, referenced = kptr_meaning(kp[0])
        return SpecialCodec(8, kind, kp[1], kp[0], referenced)
    t = t.resolved()
    k = t.kind
    if k == Kind.INT:
        enc = t.int_encoding
        if enc & INT_CHAR and t.size == 1:
            return IntCodec(1, False, type_name="char")
        return IntCodec(t.size, t.signed, bool(enc & INT_BOOL), type_name=t.name)
    if k in (Kind.ENUM, Kind.ENUM64):
        return EnumCodec(t)
    if k == Kind.FLOAT:
        return FloatCodec(t.size)
    if k == Kind.PTR:
        return IntCodec(8, False, type_name=t.describe())
    if k == Kind.ARRAY:
        elem_id, _, n = t.array
        elem = btf[elem_id].resolved()
        if elem.kind == Kind.INT and elem.size == 1 and (elem.int_encoding & INT_CHAR or elem.name == "char"):
            return CharArrayCodec(n)
        return ArrayCodec(_build(btf, btf[elem_id]), n)
    if k in (Kind.STRUCT, Kind.UNION):
        if t.name in SPECIAL_STRUCTS:
            return SpecialCodec(t.size, t.name, None)
        fields = []
        for i, m in enumerate(t.members):
            codec = _build(btf, btf[m.type_id])
            name = m.name or f"__anon{i}"
            if m.bitfield_size or (m.bit_offset % 8 and isinstance(codec, IntCodec)):
                bits = m.bitfield_size or codec.size * 8
                # Read a container of the member's type size aligned at the byte of the first bit.
                byte = (m.bit_offset // 8)
                span = (m.bit_offset % 8 + bits + 7) // 8
                csize = max(codec.size, 1)
                while csize < span:
                    csize *= 2
                container = IntCodec(csize, getattr(codec, "signed", False))
                if byte + csize > t.size:
                    byte = t.size - csize
                fields.append(_Field(name, container, byte, m.bit_offset - byte * 8, bits,
                                     codec if isinstance(codec, EnumCodec) else None))
            else:
                fields.append(_Field(name, codec, m.bit_offset // 8, 0, 0))
        return StructCodec(t, fields)
    if k == Kind.DATASEC:
        # A global-variable section: decoded as a struct of its variables.
        dfields = [_Field(btf[si.type_id].name, _build(btf, btf[btf[si.type_id].type_id]), si.offset, 0, 0)
                   for si in t.secinfo if btf[si.type_id].kind == Kind.VAR]
        return StructCodec(t, dfields)
    size = t.byte_size if k != Kind.UNKN else 0
    return RawCodec(size, t.describe())
