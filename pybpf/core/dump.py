"""A whole-map dump in the JSON form of ``bpftool map dump -j``.

:func:`dump` returns the list bpftool prints, entry for entry and field for
field (parsed: ``json.loads(bpftool output) == dump(map)``)::

    [{"key": ["0x01", "0x00", "0x00", "0x00"],          # key bytes, hex
      "value": ["0x2a", ...],                             # value bytes, hex
      "formatted": {"key": 1, "value": {...}}}]           # only with BTF

Per-CPU maps have ``"values": [{"cpu": 0, "value": [...]}, ...]`` instead
of ``"value"`` (and the same under ``"formatted"``).  An element whose
lookup fails is ``{"key": [...], "value": {"error": "..."}}``; for program
arrays and maps of maps a missing element is left out, as bpftool does.

The ``formatted`` part follows bpftool's BTF dumper, which differs from the
typed view of :mod:`pybpf.core.codec` on purpose (this is bpftool's format):

* integers are numbers; ``char`` (``BTF_INT_CHAR``) a one-character string;
  ``bool`` ``true``/``false``; 128-bit integers, bitfields and integers at a
  bit offset are strings of hex digits (``"0x5"``), unsigned;
* ``char[N]`` is a string when its bytes are printable ASCII up to a NUL,
  otherwise an array of numbers;
* enums are the enumerator's name, or the number when no enumerator matches;
* pointers (kptrs included: userspace reads them as 0) are numbers;
* structs and unions are objects keyed by member name; an anonymous member is
  keyed ``""`` (bpftool prints the key for each anonymous member; a JSON
  parser keeps the last);
* a ``.data``/``.bss`` section value is ``{"<section>": [{"<var>": value}, ...]}``.

Where bpftool 7.1 prints something that is not JSON (``float``, and the
``(unknown)`` marker of a void type), this module gives the float value and
the string ``"(unknown)"``.
"""
from __future__ import annotations

import errno as _errno
import json
from typing import TYPE_CHECKING, Any

from pybpf import raw
from pybpf._binding import ffi
from pybpf.core.btf import INT_BOOL, INT_CHAR, INT_SIGNED, Btf, BtfType, Kind
from pybpf.errors import BPFError, BPFInvalidError, strerror

if TYPE_CHECKING:
    from pybpf.core.map import Map

_MODIFIERS = (Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG, Kind.DECL_TAG)


def _hex(data: bytes) -> list[str]:
    return [f"0x{b:02x}" for b in data]


def _hex128(v: int) -> str:
    """bpftool's spelling of a 128-bit (or bitfield) value: ``0x`` and the
    lower 64 bits in hex, the upper ones in front when non-zero."""
    upper, lower = v >> 64, v & ((1 << 64) - 1)
    return f"0x{lower:x}" if upper == 0 else f"0x{upper:x}{lower:016x}"


def _bits(data: bytes, byte_off: int, bit_off: int, nr_bits: int) -> int:
    nbytes = (bit_off + nr_bits + 7) // 8
    word = int.from_bytes(data[byte_off:byte_off + nbytes], "little")
    return (word >> bit_off) & ((1 << nr_bits) - 1)


class BtfJson:
    """bpftool's BTF dumper (``btf_dumper_type``) over one :class:`Btf`."""

    def __init__(self, btf: Btf):
        self.btf = btf

    def value(self, type_id: int, data: bytes, off: int = 0) -> Any:
        """The JSON value of type ``type_id`` stored at ``data[off:]``."""
        return self._do(type_id, 0, data, off)

    def _do(self, type_id: int, bit_offset: int, data: bytes, off: int) -> Any:
        if type_id == 0:
            return "(unknown)"
        t = self.btf[type_id]
        k = t.kind
        if k == Kind.INT:
            return self._int(t, bit_offset, data, off)
        if k in (Kind.STRUCT, Kind.UNION):
            return self._struct(t, data, off)
        if k == Kind.ARRAY:
            return self._array(t, data, off)
        if k == Kind.ENUM:
            return self._enum(t, data, off)
        if k == Kind.ENUM64:
            return self._enum64(t, data, off)
        if k == Kind.PTR:
            return int.from_bytes(data[off:off + 8], "little")
        if k in _MODIFIERS:
            while t.kind in _MODIFIERS:
                t = t.type
            return self._do(t.id, bit_offset, data, off)
        if k == Kind.VAR:
            return {t.name: self._do(t.type_id, bit_offset, data, off)}
        if k == Kind.DATASEC:
            return {t.name: [self._do(si.type_id, 0, data, off + si.offset) for si in t.secinfo]}
        if k == Kind.FLOAT:
            import struct
            fmt = {4: "<f", 8: "<d"}.get(t.size)
            return struct.unpack_from(fmt, data, off)[0] if fmt else _hex(data[off:off + t.size])
        if k == Kind.FWD:
            raise BPFInvalidError(None, f"map key or value of forward-declared type {t.describe()}")
        return f"(unsupported-kind {k.name})"

    def _int(self, t: BtfType, bit_offset: int, data: bytes, off: int) -> Any:
        nr_bits, int_off, enc = t.int_bits, t.int_offset, t.int_encoding
        if bit_offset or int_off or nr_bits % 8:
            total = bit_offset + int_off
            return _hex128(_bits(data, off + total // 8, total % 8, nr_bits))
        if nr_bits == 128:
            return _hex128(int.from_bytes(data[off:off + 16], "little"))
        if enc in (0, INT_SIGNED):
            if nr_bits not in (8, 16, 32, 64):
                return _hex128(_bits(data, off, 0, nr_bits))
            return int.from_bytes(data[off:off + nr_bits // 8], "little", signed=enc == INT_SIGNED)
        if enc == INT_CHAR:
            return chr(data[off])
        if enc == INT_BOOL:
            return int.from_bytes(data[off:off + t.size], "little") != 0
        raise BPFInvalidError(None, f"integer {t.name} has an unknown BTF encoding {enc:#x}")

    def _struct(self, t: BtfType, data: bytes, off: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in t.members:
            moff = off + m.bit_offset // 8
            if m.bitfield_size:
                out[m.name] = _hex128(_bits(data, moff, m.bit_offset % 8, m.bitfield_size))
            else:
                out[m.name] = self._do(m.type_id, m.bit_offset % 8, data, moff)
        return out

    def _array(self, t: BtfType, data: bytes, off: int) -> Any:
        elem_id, _, n = t.array
        s = self._str(elem_id, n, data, off)
        if s is not None:
            return s
        es = self.btf[elem_id].byte_size
        return [self._do(elem_id, 0, data, off + i * es) for i in range(n)]

    def _str(self, elem_id: int, n: int, data: bytes, off: int) -> str | None:
        """The string of a char array whose bytes are printable up to a NUL
        (typedefs to char do not count, as in bpftool)."""
        if not n:
            return None
        e = self.btf[elem_id]
        while e.kind in (Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG):
            e = e.type
        if e.kind != Kind.INT or e.size != 1 or (e.int_encoding != INT_CHAR and e.name != "char"):
            return None
        raw_bytes = data[off:off + n]
        end = raw_bytes.find(b"\0")
        if end < 0 or any(b <= 0x1F or b >= 0x7F for b in raw_bytes[:end]):
            return None
        return raw_bytes[:end].decode("ascii")

    def _enum(self, t: BtfType, data: bytes, off: int) -> Any:
        if t.size not in (1, 2, 4, 8):
            raise BPFInvalidError(None, f"{t.describe()} has size {t.size}")
        v = int.from_bytes(data[off:off + t.size], "little", signed=True)
        mask = (1 << 32) - 1
        for e in t.enumerators:
            if (e.value & mask) == (v & mask) and (t.size <= 4 or v == e.value):
                return e.name
        return v

    def _enum64(self, t: BtfType, data: bytes, off: int) -> Any:
        v = int.from_bytes(data[off:off + 8], "little")
        for e in t.enumerators:
            if e.value & ((1 << 64) - 1) == v:
                return e.name
        return v - (1 << 64) if v >= 1 << 63 else v


def _possible_cpus() -> int:
    from pybpf._binding import lib
    n = int(lib.libbpf_num_possible_cpus())
    if n < 0:
        raise BPFError(-n, "count possible CPUs")
    return n


def dump(m: "Map") -> list[dict[str, Any]]:
    """Every element of map ``m`` as ``bpftool map dump -j`` prints it
    (parsed JSON: a list of dicts)."""
    from pybpf.core.map import FD_VALUE_TYPES, NO_KEY_TYPES, PERCPU_TYPES, MapInfo
    from pybpf.raw import MapType

    fd = m._loaded_fd("dump")
    info = MapInfo.from_fd(fd)
    if info.type in NO_KEY_TYPES:
        raise BPFInvalidError(None, f"map '{info.name}' ({getattr(info.type, 'name', info.type)}) has no keys to "
                              "dump", hint="read it with pop(), a ring buffer consumer, or lookups")
    percpu = info.type in PERCPU_TYPES
    ncpus = _possible_cpus() if percpu else 1
    stride = (info.value_size + 7) & ~7
    vsize = stride * ncpus if percpu else info.value_size
    skip_missing = info.type in FD_VALUE_TYPES and info.type in (
        MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS)
    btf = Btf.from_kernel_id(info.btf_id) if info.btf_id and not info.btf_vmlinux_value_type_id else None
    try:
        fmt = BtfJson(btf) if btf is not None else None
        out: list[dict[str, Any]] = []
        vbuf = ffi.new("char[]", max(vsize, 1))
        for key in m.keys_raw():
            try:
                found = raw.map_lookup(fd, ffi.from_buffer(key), vbuf)
                err = 0 if found else _errno.ENOENT
            except BPFError as e:
                err = e.errno or _errno.EINVAL
            if err:
                if err == _errno.ENOENT and skip_missing:
                    continue
                out.append({"key": _hex(key), "value": {"error": strerror(err)}})
                continue
            value = bytes(ffi.buffer(vbuf, vsize))
            entry: dict[str, Any] = {"key": _hex(key)}
            if not percpu:
                entry["value"] = _hex(value[:info.value_size])
            else:
                entry["values"] = [{"cpu": i, "value": _hex(value[i * stride:i * stride + info.value_size])}
                                   for i in range(ncpus)]
            if fmt is not None:
                f: dict[str, Any] = {}
                if info.btf_key_type_id:
                    f["key"] = fmt.value(info.btf_key_type_id, key)
                if not percpu:
                    f["value"] = fmt.value(info.btf_value_type_id, value)
                else:
                    f["values"] = [{"cpu": i, "value": fmt.value(info.btf_value_type_id, value, i * stride)}
                                   for i in range(ncpus)]
                entry["formatted"] = f
            out.append(entry)
        return out
    finally:
        if btf is not None:
            btf.close()


def dumps(m: "Map", indent: int | None = 4) -> str:
    """:func:`dump` as JSON text."""
    return json.dumps(dump(m), indent=indent)
