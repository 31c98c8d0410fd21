"""BPF maps: dict-like access with BTF-typed keys and values.

A :class:`Map` is either part of an :class:`~pybpf.Object` (its settings are
editable until the object is loaded) or stands alone, created with
:meth:`Map.create` or opened with :meth:`Map.from_pinned` / :meth:`Map.from_id`.
"""
from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from pybpf import raw
from pybpf._binding import ffi, lib
from pybpf.core.btf import Btf
from pybpf.core.codec import Codec, RawCodec, codec_for
from pybpf.errors import (BPFError, BPFInvalidError, BPFKeyError, BPFPermissionError, ClosedError, StateError,
                          check, raise_errno)
from pybpf.raw import FD, Cmd, MapType

if TYPE_CHECKING:
    from pybpf.core.link import Link
    from pybpf.core.object import Object

# Update flags (BPF_ANY, BPF_NOEXIST, BPF_EXIST, BPF_F_LOCK).
ANY, NOEXIST, EXIST, F_LOCK = 0, 1, 2, 4

PERCPU_TYPES = {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH, MapType.PERCPU_CGROUP_STORAGE}
# Maps whose values are fds on update and ids on lookup.
FD_VALUE_TYPES = {MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS, MapType.PERF_EVENT_ARRAY,
                  MapType.CGROUP_ARRAY, MapType.SOCKMAP, MapType.SOCKHASH, MapType.DEVMAP, MapType.CPUMAP,
                  MapType.XSKMAP}
NO_KEY_TYPES = {MapType.RINGBUF, MapType.USER_RINGBUF, MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER}


@dataclass(frozen=True)
class MapInfo:
    """What the kernel reports about a loaded map (BPF_OBJ_GET_INFO_BY_FD)."""

    id: int
    type: MapType | int
    name: str
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    btf_id: int
    btf_key_type_id: int
    btf_value_type_id: int
    btf_vmlinux_value_type_id: int
    ifindex: int

    @classmethod
    def from_fd(cls, fd: int) -> "MapInfo":
        i = raw.map_info(fd)
        t = int(i.type)
        return cls(id=int(i.id), type=MapType(t) if t in MapType._value2member_map_ else t,
                   name=ffi.string(i.name).decode(), key_size=int(i.key_size), value_size=int(i.value_size),
                   max_entries=int(i.max_entries), flags=int(i.map_flags), btf_id=int(i.btf_id),
                   btf_key_type_id=int(i.btf_key_type_id), btf_value_type_id=int(i.btf_value_type_id),
                   btf_vmlinux_value_type_id=int(i.btf_vmlinux_value_type_id), ifindex=int(i.ifindex))


def _possible_cpus() -> int:
    n = lib.libbpf_num_possible_cpus()
    return check(int(n), "count possible CPUs")


class Map:
    """A BPF map.

    Lookups use the map's BTF: ``m[0]`` returns an ``int`` for a ``__u64``
    value, a :class:`~pybpf.core.codec.Struct` for a struct.  Raw ``bytes`` of
    the right size are always accepted as keys and values.  Per-CPU maps
    return a list with one value per possible CPU, and take either such a
    list or one value (written to every CPU).
    """

    def __init__(self, *, obj: "Object | None" = None, ptr: Any = None, fd: FD | None = None,
                 info: MapInfo | None = None, btf: Btf | None = None):
        self._obj = obj        # keeps the Object (owner of ptr) alive
        self._ptr = ptr        # libbpf struct bpf_map *, when part of an Object
        self._fd = fd          # owned fd of a standalone map
        self._info = info
        self._btf = btf
        self._codecs: tuple[Codec, Codec] | None = None
        self._ncpus = 0
        self._fast: Any = None   # _FastPath, False (not eligible), None (not decided yet)

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def create(cls, map_type: MapType | int | str, key_size: int, value_size: int, max_entries: int, *,
               name: str = "", flags: int = 0, inner_map: "Map | None" = None, map_extra: int = 0) -> "Map":
        """Create a map with no object behind it (``BPF_MAP_CREATE``)."""
        if isinstance(map_type, str):
            try:
                map_type = MapType[map_type.upper()]
            except KeyError:
                raise BPFInvalidError(None, f"unknown map type '{map_type}'",
                                      hint=f"one of: {', '.join(m.name.lower() for m in MapType)}") from None
        fd = raw.map_create(int(map_type), key_size, value_size, max_entries, name=name, flags=flags,
                            inner_map_fd=inner_map.fd if inner_map is not None else 0, map_extra=map_extra)
        return cls(fd=fd, info=MapInfo.from_fd(fd.raw))

    @classmethod
    def from_fd(cls, fd: int | FD) -> "Map":
        """Adopt an fd (the Map owns it from now on)."""
        owned = fd if isinstance(fd, FD) else FD(fd, "map")
        info = MapInfo.from_fd(owned.raw)
        btf = None
        if info.btf_id:
            try:
                btf = Btf.from_kernel_id(info.btf_id)
            except BPFPermissionError:
                # Opening BTF by id needs CAP_SYS_ADMIN; a process handed a map fd without it still
                # gets a working map, with keys and values as raw bytes.
                btf = None
        return cls(fd=owned, info=info, btf=btf)

    @classmethod
    def from_pinned(cls, path: str | os.PathLike[str]) -> "Map":
        """Open a map pinned in bpffs."""
        fd = raw.obj_get(os.fspath(path), "pinned map", kind="map")
        try:
            return cls.from_fd(fd)
        except BPFError:
            fd.close()
            raise BPFInvalidError(_errno.EINVAL, f"{os.fspath(path)} is not a pinned map") from None

    @classmethod
    def from_id(cls, map_id: int) -> "Map":
        """Open a map by its kernel id."""
        return cls.from_fd(raw.fd_by_id("map", map_id))

    # -- identity and metadata ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._obj is not None:
            self._obj._check_open()
        elif self._fd is None or self._fd.closed:
            raise ClosedError(f"map '{self._name_or_unknown()}'")

    def _name_or_unknown(self) -> str:
        if self._info is not None:
            return self._info.name
        if self._ptr is not None and self._obj is not None and not self._obj.closed:
            return ffi.string(lib.bpf_map__name(self._ptr)).decode()
        return "?"

    @property
    def name(self) -> str:
        self._check_open()
        if self._ptr is not None:
            return ffi.string(lib.bpf_map__name(self._ptr)).decode()
        assert self._info is not None
        return self._info.name

    @property
    def fd(self) -> int:
        """The map's fd (owned by the Map or its Object); -1 before load."""
        self._check_open()
        if self._ptr is not None:
            return int(lib.bpf_map__fd(self._ptr))
        assert self._fd is not None
        return self._fd.raw

    def _loaded_fd(self, op: str) -> int:
        fd = self.fd
        if fd < 0:
            raise StateError(f"cannot {op} map '{self.name}': its object is not loaded yet",
                             hint="call Object.load() first")
        return fd

    @property
    def type(self) -> MapType | int:
        self._check_open()
        t = int(lib.bpf_map__type(self._ptr)) if self._ptr is not None else int(self._info.type)  # type: ignore[union-attr]
        return MapType(t) if t in MapType._value2member_map_ else t

    @property
    def key_size(self) -> int:
        self._check_open()
        return int(lib.bpf_map__key_size(self._ptr)) if self._ptr is not None else self._info.key_size  # type: ignore[union-attr]

    @property
    def value_size(self) -> int:
        self._check_open()
        return int(lib.bpf_map__value_size(self._ptr)) if self._ptr is not None else self._info.value_size  # type: ignore[union-attr]

    @property
    def max_entries(self) -> int:
        self._check_open()
        return int(lib.bpf_map__max_entries(self._ptr)) if self._ptr is not None else self._info.max_entries  # type: ignore[union-attr]

    @property
    def flags(self) -> int:
        self._check_open()
        return int(lib.bpf_map__map_flags(self._ptr)) if self._ptr is not None else self._info.flags  # type: ignore[union-attr]

    @property
    def id(self) -> int:
        return self.info().id

    def info(self) -> MapInfo:
        """The kernel's view of the loaded map."""
        return MapInfo.from_fd(self._loaded_fd("query"))

    @property
    def btf(self) -> Btf | None:
        """The BTF describing keys and values (None without BTF)."""
        self._check_open()
        if self._obj is not None:
            return self._obj.btf
        return self._btf

    @property
    def is_percpu(self) -> bool:
        return self.type in PERCPU_TYPES

    def __repr__(self) -> str:
        try:
            return f"<Map '{self.name}' {getattr(self.type, 'name', self.type)} key={self.key_size} value={self.value_size}>"
        except BPFError:
            return "<Map (closed)>"

    # -- open-time settings (object maps, before load) ----------------------------------------------

    def _settable(self, what: str) -> Any:
        self._check_open()
        if self._ptr is None:
            raise StateError(f"cannot set {what} of standalone map '{self.name}'",
                             hint="open-time settings apply to maps of an Object before load")
        if self._obj is not None and self._obj.loaded:
            raise StateError(f"cannot set {what} of map '{self.name}' after its object was loaded",
                             hint="change open-time settings between Object.open() and load()")
        return self._ptr

    def set_max_entries(self, n: int) -> None:
        check(lib.bpf_map__set_max_entries(self._settable("max_entries"), n), f"set max_entries of map '{self.name}'")

    def set_type(self, map_type: MapType | int) -> None:
        check(lib.bpf_map__set_type(self._settable("type"), int(map_type)), f"set type of map '{self.name}'")

    def set_flags(self, flags: int) -> None:
        check(lib.bpf_map__set_map_flags(self._settable("flags"), flags), f"set flags of map '{self.name}'")

    def set_pin_path(self, path: str | os.PathLike[str] | None) -> None:
        """Pin the map at ``path`` on load (reusing a compatible pinned map)."""
        p = os.fsencode(path) if path is not None else ffi.NULL
        check(lib.bpf_map__set_pin_path(self._settable("pin path"), p), f"set pin path of map '{self.name}'")

    def reuse(self, other: "Map") -> None:
        """Make this object's map share ``other``'s kernel map on load."""
        check(lib.bpf_map__reuse_fd(self._settable("fd"), other.fd), f"reuse fd for map '{self.name}'")

    # -- codecs --------------------------------------------------------------------------------------

    def _setup_codecs(self) -> tuple[Codec, Codec]:
        if self._codecs is None:
            btf = self.btf
            if self._ptr is not None:
                kid, vid = int(lib.bpf_map__btf_key_type_id(self._ptr)), int(lib.bpf_map__btf_value_type_id(self._ptr))
            elif self._info is not None:
                kid, vid = self._info.btf_key_type_id, self._info.btf_value_type_id
            else:
                kid = vid = 0
            ks, vs = self.key_size, self.value_size
            kc = codec_for(btf, kid, ks) if kid else RawCodec(ks, "key")
            vc = codec_for(btf, vid, vs) if vid else RawCodec(vs, "value")
            if kc.size != ks:
                kc = RawCodec(ks, "key")
            if vc.size != vs:
                vc = RawCodec(vs, "value")
            self._codecs = (kc, vc)
            if self.is_percpu:
                self._ncpus = _possible_cpus()
        return self._codecs

    @property
    def key_codec(self) -> Codec:
        return self._setup_codecs()[0]

    @property
    def value_codec(self) -> Codec:
        return self._setup_codecs()[1]

    def encode_key(self, key: Any) -> bytes:
        kc = self._setup_codecs()[0]
        if isinstance(key, (bytes, bytearray, memoryview)):
            if len(key) != kc.size:
                raise BPFInvalidError(None, f"key of map '{self.name}' is {kc.size} bytes; got {len(key)} bytes",
                                      hint=f"pass exactly {kc.size} bytes, or a Python value of type {kc.type_name}")
            return bytes(key)
        return kc.encode(key)

    def _vstride(self) -> int:
        return (self.value_size + 7) & ~7

    def encode_value(self, value: Any) -> bytes:
        vc = self._setup_codecs()[1]
        if isinstance(value, (bytes, bytearray, memoryview)):
            expect = self._vstride() * self._ncpus if self.is_percpu else vc.size
            if len(value) == expect:
                return bytes(value)
            if not (self.is_percpu and len(value) == vc.size):
                raise BPFInvalidError(None, f"value of map '{self.name}' is {expect} bytes; got {len(value)} bytes",
                                      hint=f"pass exactly {expect} bytes, or a Python value of type {vc.type_name}")
        if self.is_percpu:
            stride = self._vstride()
            buf = bytearray(stride * self._ncpus)
            for i, v in enumerate(self._per_cpu(value, vc)):
                buf[i * stride:i * stride + vc.size] = vc.encode(v)
            return bytes(buf)
        return vc.encode(value)

    def _per_cpu(self, value: Any, vc: Codec) -> list[Any]:
        """A per-CPU map takes one value per possible CPU, or one value for
        all. For array-typed values a per-CPU list is a list of lists."""
        if isinstance(value, (list, tuple)):
            per_cpu = not _is_list_value(vc) or (value and isinstance(value[0], (list, tuple)))
            if per_cpu:
                if len(value) != self._ncpus:
                    raise BPFInvalidError(None, f"per-CPU map '{self.name}' takes {self._ncpus} values "
                                          f"(one per possible CPU) or a single value; got {len(value)}")
                return list(value)
        return [value] * self._ncpus

    def decode_value(self, data: bytes | memoryview) -> Any:
        vc = self._setup_codecs()[1]
        if self.is_percpu:
            stride = self._vstride()
            return [vc.decode(data, i * stride) for i in range(self._ncpus)]
        return vc.decode(data)

    def decode_key(self, data: bytes | memoryview) -> Any:
        return self._setup_codecs()[0].decode(data)

    def _value_buf_size(self) -> int:
        self._setup_codecs()
        return self._vstride() * self._ncpus if self.is_percpu else self.value_size

    # -- element operations ------------------------------------------------------------------------------

    def lookup(self, key: Any, default: Any = None, *, flags: int = 0) -> Any:
        """The value at ``key``, or ``default`` when absent."""
        fd = self._loaded_fd("look up in")
        k = self.encode_key(key) if self.key_size else None
        buf = ffi.new("char[]", self._value_buf_size())
        if not raw.map_lookup(fd, ffi.from_buffer(k) if k is not None else None, buf, flags):
            return default
        return self.decode_value(ffi.buffer(buf))

    def lookup_bytes(self, key: bytes) -> bytes | None:
        """Raw lookup: key bytes in, value bytes out (None when absent)."""
        fd = self._loaded_fd("look up in")
        buf = ffi.new("char[]", self._value_buf_size())
        if not raw.map_lookup(fd, ffi.from_buffer(key), buf):
            return None
        return bytes(ffi.buffer(buf))

    def _fast_path(self) -> Any:
        """Decide once whether element operations on int keys/values can take
        the hot path (:class:`_FastPath`); False when they cannot."""
        if self._fast is None:
            fd = self._loaded_fd("look up in")
            self._fast = _FastPath.make(self, fd)
        return self._fast

    def __getitem__(self, key: Any) -> Any:
        f = self._fast
        if f and type(key) is int and f.alive in _LIVE and f.kmin <= key <= f.kmax:
            r = _lookup_int(f.fd, key & f.kmask, f.out)
            if r == 0:
                v = f.out[0]
                return v - f.vspan if v > f.vmax else v
            if r == -_errno.ENOENT:
                raise BPFKeyError(_errno.ENOENT, f"key {key!r} not in map '{self.name}'", op="map_lookup_elem")
        elif f is None:
            self._fast_path()
        fd = self._loaded_fd("look up in")
        k = self.encode_key(key)
        buf = ffi.new("char[]", self._value_buf_size())
        if not raw.map_lookup(fd, ffi.from_buffer(k), buf):
            raise BPFKeyError(_errno.ENOENT, f"key {key!r} not in map '{self.name}'", op="map_lookup_elem")
        return self.decode_value(ffi.buffer(buf))

    def get(self, key: Any, default: Any = None) -> Any:
        return self.lookup(key, default)

    def update(self, key: Any, value: Any, flags: int = ANY) -> None:
        """Set ``key`` to ``value``. ``flags``: ANY, NOEXIST (fail with
        FileExistsError if present), EXIST (KeyError if absent), F_LOCK."""
        f = self._fast
        if (f and type(key) is int and type(value) is int and f.alive in _LIVE and f.kmin <= key <= f.kmax
                and f.vmin <= value <= f.vumax and type(flags) is int):
            if _update_int(f.fd, key & f.kmask, value & f.vmask, flags) == 0:
                return
        elif f is None:
            self._fast_path()
        fd = self._loaded_fd("update")
        k = self.encode_key(key) if self.key_size else b""
        v = self._encode_for_update(value)
        try:
            raw.map_update(fd, ffi.from_buffer(k) if k else None, ffi.from_buffer(v), flags)
        except BPFError as e:
            raise self._explain(e, "update", key) from None

    def _encode_for_update(self, value: Any) -> bytes:
        if self.type in FD_VALUE_TYPES and not isinstance(value, (bytes, bytearray, memoryview)):
            target = getattr(value, "fd", value)
            return int(target).to_bytes(4, "little") if self.value_size == 4 else int(target).to_bytes(self.value_size, "little")
        return self.encode_value(value)

    def _explain(self, e: BPFError, op: str, key: Any) -> BPFError:
        if e.errno == _errno.ENOENT:
            return BPFKeyError(e.errno, f"{op} map '{self.name}': key {key!r} not present (flag EXIST)", op=op)
        if e.errno == _errno.EEXIST:
            e.strerror = f"{op} map '{self.name}': key {key!r} already present (flag NOEXIST)"
        elif e.errno == _errno.E2BIG:
            e.strerror = f"{op} map '{self.name}': the map is full ({self.max_entries} entries)"
        else:
            e.strerror = f"{op} map '{self.name}' at key {key!r}: {e.strerror}"
        return e

    def __setitem__(self, key: Any, value: Any) -> None:
        f = self._fast
        if (f and type(key) is int and type(value) is int and f.alive in _LIVE and f.kmin <= key <= f.kmax
                and f.vmin <= value <= f.vumax):
            if _update_int(f.fd, key & f.kmask, value & f.vmask, ANY) == 0:
                return
        self.update(key, value)

    def update_fields(self, key: Any, /, **fields: Any) -> None:
        """Set named members of the struct value at ``key``, keeping the
        others (read, change, write back; zeros when ``key`` is absent):
        ``m.update_fields(7, count=3, name="eth0")``.  Kernel-managed fields
        (kptrs, locks, timers) are never written; the update of a hash
        element replaces it, which releases a kptr it held."""
        from pybpf.core.codec import StructCodec

        vc = self._setup_codecs()[1]
        if not isinstance(vc, StructCodec):
            raise BPFInvalidError(None, f"values of map '{self.name}' are {vc.type_name}, not a struct with "
                                  "named fields", hint="use update(key, value)")
        if self.is_percpu:
            raise BPFInvalidError(None, f"update_fields on per-CPU map '{self.name}'",
                                  hint="per-CPU values differ per CPU: pass the whole list to update()")
        current = self.lookup_bytes(self.encode_key(key))
        self.update(key, vc.encode_fields(current, **fields))

    def delete(self, key: Any) -> None:
        """Delete ``key``; KeyError when absent."""
        fd = self._loaded_fd("delete from")
        k = self.encode_key(key)
        try:
            found = raw.map_delete(fd, ffi.from_buffer(k))
        except BPFError as e:
            raise self._explain(e, "delete from", key) from None
        if not found:
            raise BPFKeyError(_errno.ENOENT, f"key {key!r} not in map '{self.name}'", op="map_delete_elem")

    def __delitem__(self, key: Any) -> None:
        self.delete(key)

    def pop(self, key: Any = None) -> Any:
        """Lookup-and-delete (queue/stack maps: ``pop()`` without a key)."""
        fd = self._loaded_fd("pop from")
        buf = ffi.new("char[]", self._value_buf_size())
        k = ffi.from_buffer(self.encode_key(key)) if (key is not None and self.key_size) else ffi.NULL
        ret = lib.bpf_map_lookup_and_delete_elem(fd, k, buf)
        if ret < 0:
            if -ret == _errno.ENOENT:
                raise BPFKeyError(_errno.ENOENT, f"map '{self.name}' has no element" +
                                  (f" at key {key!r}" if key is not None else ""), op="map_lookup_and_delete_elem")
            raise_errno(-ret, f"pop from map '{self.name}'")
        return self.decode_value(ffi.buffer(buf))

    def push(self, value: Any, flags: int = ANY) -> None:
        """Push onto a queue/stack map (or add to a bloom filter)."""
        self.update(None, value, flags) if not self.key_size else self.update(value, value, flags)

    def __contains__(self, key: Any) -> bool:
        fd = self._loaded_fd("look up in")
        buf = ffi.new("char[]", self._value_buf_size())
        return raw.map_lookup(fd, ffi.from_buffer(self.encode_key(key)), buf)

    def keys_raw(self) -> Iterator[bytes]:
        fd = self._loaded_fd("iterate")
        ks = self.key_size
        cur = ffi.new("char[]", ks)
        nxt = ffi.new("char[]", ks)
        if not raw.map_next_key(fd, None, nxt):
            return
        while True:
            yield bytes(ffi.buffer(nxt, ks))
            cur, nxt = nxt, cur
            if not raw.map_next_key(fd, cur, nxt):
                return

    def keys(self) -> Iterator[Any]:
        for k in self.keys_raw():
            yield self.decode_key(k)

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def items(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs; keys deleted meanwhile are skipped."""
        fd = self._loaded_fd("iterate")
        buf = ffi.new("char[]", self._value_buf_size())
        for k in self.keys_raw():
            if raw.map_lookup(fd, ffi.from_buffer(k), buf):
                yield self.decode_key(k), self.decode_value(ffi.buffer(buf))

    def values(self) -> Iterator[Any]:
        for _, v in self.items():
            yield v

    def __len__(self) -> int:
        """Number of keys (counted by iterating)."""
        return sum(1 for _ in self.keys_raw())

    def clear(self) -> None:
        """Delete every key (arrays cannot be cleared: ValueError)."""
        if self.type in (MapType.ARRAY, MapType.PERCPU_ARRAY):
            raise BPFInvalidError(None, f"array map '{self.name}' cannot be cleared; its elements always exist")
        fd = self._loaded_fd("clear")
        for k in list(self.keys_raw()):
            raw.map_delete(fd, ffi.from_buffer(k))

    def dump_json(self) -> list[dict[str, Any]]:
        """Every element in the JSON form of ``bpftool map dump -j`` (parsed:
        a list of dicts); see :mod:`pybpf.core.dump`."""
        from pybpf.core.dump import dump

        return dump(self)

    def to_json(self, indent: int | None = 4) -> str:
        """:meth:`dump_json` as JSON text."""
        import json

        return json.dumps(self.dump_json(), indent=indent)

    def freeze(self) -> None:
        """Make the map read-only for userspace (BPF_MAP_FREEZE)."""
        raw.map_freeze(self._loaded_fd("freeze"))

    # -- batch operations --------------------------------------------------------------------------------

    def lookup_batch(self, *, chunk: int = 4096, delete: bool = False) -> list[tuple[Any, Any]]:
        """Every (key, value) pair, read with BPF_MAP_LOOKUP_BATCH in chunks
        (``delete=True``: BPF_MAP_LOOKUP_AND_DELETE_BATCH)."""
        keys, values = self.lookup_batch_raw(chunk=chunk, delete=delete)
        f = self._fast_path()
        if f and f.batch_fmt is not None:   # plain integers: decode whole arrays at once
            return list(zip(memoryview(keys).cast(f.batch_fmt[0]).tolist(),
                            memoryview(values).cast(f.batch_fmt[1]).tolist()))
        ks, vs = self.key_size, self._value_buf_size()
        return [(self.decode_key(keys[i * ks:(i + 1) * ks]), self.decode_value(values[i * vs:(i + 1) * vs]))
                for i in range(len(keys) // ks if ks else 0)]

    def lookup_batch_raw(self, *, chunk: int = 4096, delete: bool = False) -> tuple[bytes, bytes]:
        """All keys and all values as two flat byte strings (no per-element
        Python work): element i is at ``i*key_size`` and
        ``i*value_stride``."""
        fd = self._loaded_fd("batch look up in")
        cmd = Cmd.MAP_LOOKUP_AND_DELETE_BATCH if delete else Cmd.MAP_LOOKUP_BATCH
        ks, vs = self.key_size, self._value_buf_size()
        # Hash maps need a batch token as large as a bucket index; the key size
        # is not always enough, so use at least 8 bytes.
        tok = max(ks, 8)
        in_b, out_b = ffi.new("char[]", tok), ffi.new("char[]", tok)
        kbuf, vbuf = ffi.new("char[]", ks * chunk), ffi.new("char[]", vs * chunk)
        kparts: list[bytes] = []
        vparts: list[bytes] = []
        first = True
        while True:
            try:
                n, done = raw.map_batch(cmd, fd, None if first else in_b, out_b, kbuf, vbuf, chunk)
            except BPFError as e:
                if e.errno == _errno.ENOSPC and chunk < (1 << 20):  # a bucket larger than the chunk
                    chunk *= 2
                    kbuf, vbuf = ffi.new("char[]", ks * chunk), ffi.new("char[]", vs * chunk)
                    continue
                e.strerror = f"batch lookup in map '{self.name}': {e.strerror}"
                raise
            if n:
                kparts.append(bytes(ffi.buffer(kbuf, n * ks)))
                vparts.append(bytes(ffi.buffer(vbuf, n * vs)))
            if done:
                break
            first = False
            in_b, out_b = out_b, in_b
        return b"".join(kparts), b"".join(vparts)

    def update_batch(self, items: Iterable[tuple[Any, Any]] | dict[Any, Any], flags: int = ANY) -> int:
        """Write many elements in one BPF_MAP_UPDATE_BATCH. Returns the count."""
        fd = self._loaded_fd("batch update")
        pairs = list(items.items()) if isinstance(items, dict) else list(items)
        if not pairs:
            return 0
        kb = b"".join(self.encode_key(k) for k, _ in pairs)
        vb = b"".join(self._encode_for_update(v) for _, v in pairs)
        n, _ = raw.map_batch(Cmd.MAP_UPDATE_BATCH, fd, None, None, ffi.from_buffer(kb), ffi.from_buffer(vb),
                             len(pairs), elem_flags=flags)
        return n

    def delete_batch(self, keys: Iterable[Any]) -> int:
        """Delete many keys in one BPF_MAP_DELETE_BATCH. Returns the count
        deleted; a missing key stops the batch with KeyError."""
        fd = self._loaded_fd("batch delete")
        ks = [self.encode_key(k) for k in keys]
        if not ks:
            return 0
        kb = b"".join(ks)
        n, stopped = raw.map_batch(Cmd.MAP_DELETE_BATCH, fd, None, None, ffi.from_buffer(kb), None, len(ks))
        if stopped and n < len(ks):
            raise BPFKeyError(_errno.ENOENT, f"batch delete in map '{self.name}' stopped after {n} of {len(ks)} keys: "
                              "a key was not present", op="map_delete_batch")
        return n

    # -- pins, lifetime --------------------------------------------------------------------------------

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin the map at ``path`` in bpffs."""
        p = os.fspath(path)
        if self._ptr is not None:
            ret = lib.bpf_map__pin(self._ptr, os.fsencode(p))
            if ret < 0:
                raise_errno(-ret, f"pin map '{self.name}' at {p}", hint=_pin_hint(p))
        else:
            try:
                raw.obj_pin(self._loaded_fd("pin"), p)
            except BPFError as e:
                e.hint = e.hint or _pin_hint(p)
                raise

    def unpin(self, path: str | os.PathLike[str] | None = None) -> None:
        """Remove the pin (at ``path``, or where :meth:`pin` put it)."""
        if self._ptr is not None:
            check(lib.bpf_map__unpin(self._ptr, os.fsencode(path) if path is not None else ffi.NULL),
                  f"unpin map '{self.name}'")
            # libbpf keeps the old pin path, and refuses any other path with EINVAL
            # afterwards: forget it so the map can be pinned again elsewhere.
            lib.bpf_map__set_pin_path(self._ptr, ffi.NULL)
        else:
            if path is None:
                raise BPFInvalidError(None, "unpin of a standalone map needs the path")
            os.unlink(path)

    def ringbuf(self, callback: Any = None) -> Any:
        """A :class:`~pybpf.core.ringbuf.RingBuffer` consumer of this map."""
        from pybpf.core.ringbuf import RingBuffer

        return RingBuffer(self, callback)

    def attach_struct_ops(self) -> "Link":
        """Register this struct_ops map with the kernel; closing the returned
        link unregisters it."""
        from pybpf.features.struct_ops import attach_struct_ops

        return attach_struct_ops(self)

    def close(self) -> None:
        """Close a standalone map's fd (maps of an Object close with it)."""
        if self._fd is not None:
            self._fd.close()

    def __enter__(self) -> "Map":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_lookup_int = lib.pybpf_map_lookup_int
_update_int = lib.pybpf_map_update_int


class _Live:
    """``finalizer in _LIVE``: is the owner (Object or FD) of a map's fd still
    open?  weakref.finalize keeps its live finalizers in a registry dict; a
    membership test there is much cheaper than the ``alive`` property."""

    _registry: Any = getattr(__import__("weakref").finalize, "_registry", None)

    def __contains__(self, fin: Any) -> bool:
        return bool(fin.alive)


_LIVE: Any = _Live._registry if isinstance(_Live._registry, dict) else _Live()


class _FastPath:
    """What the hot path of :class:`Map` needs for one map whose keys and
    values are plain integers of up to 8 bytes (no per-CPU, fd or enum
    values): the fd, its owner's liveness, the accepted ranges (outside them
    the regular path raises its usual errors), and a reusable output cell.
    Any failure other than a missing key falls back to the regular path, so
    errors stay exactly the same."""

    __slots__ = ("fd", "alive", "kmin", "kmax", "kmask", "vmin", "vumax", "vmask", "vmax", "vspan", "out",
                 "batch_fmt")
    fd: int
    alive: Any
    kmin: int
    kmax: int
    kmask: int
    vmin: int
    vumax: int
    vmask: int
    vmax: int
    vspan: int
    out: Any
    batch_fmt: tuple[str, str] | None

    @classmethod
    def make(cls, m: "Map", fd: int) -> "_FastPath | bool":
        from pybpf.core.codec import EnumCodec, IntCodec

        kc, vc = m._setup_codecs()
        if m.is_percpu or m.type in FD_VALUE_TYPES or type(vc) is not IntCodec or vc.is_bool:
            return False
        if not (type(kc) is IntCodec and not kc.is_bool) and type(kc) is not RawCodec or isinstance(kc, EnumCodec):
            return False
        ks, vs = kc.size, vc.size
        if not (1 <= ks <= 8 and 1 <= vs <= 8):
            return False
        alive = m._obj._finalizer if m._obj is not None else (m._fd._finalizer if m._fd is not None else None)
        if alive is None:
            return False
        f = cls()
        f.fd, f.alive = fd, alive
        kbits, vbits = 8 * ks, 8 * vs
        if isinstance(kc, RawCodec):   # ints as little-endian, negative ones as two's complement
            f.kmin, f.kmax = -(1 << (kbits - 1)), (1 << kbits) - 1
        elif kc.signed:
            f.kmin, f.kmax = -(1 << (kbits - 1)), (1 << (kbits - 1)) - 1
        else:
            f.kmin, f.kmax = 0, (1 << kbits) - 1
        f.kmask = (1 << kbits) - 1
        f.vmask = (1 << vbits) - 1
        if vc.signed:
            f.vmin, f.vumax = -(1 << (vbits - 1)), (1 << (vbits - 1)) - 1
            f.vmax, f.vspan = (1 << (vbits - 1)) - 1, 1 << vbits
        else:
            f.vmin, f.vumax = 0, (1 << vbits) - 1
            f.vmax, f.vspan = (1 << vbits) - 1, 0
        f.out = ffi.new("uint64_t *")
        codes = {1: "b", 2: "h", 4: "i", 8: "q"}
        f.batch_fmt = None
        if isinstance(kc, IntCodec) and ks in codes and vs in codes:
            f.batch_fmt = (codes[ks] if kc.signed else codes[ks].upper(), codes[vs] if vc.signed else codes[vs].upper())
        return f


def _is_list_value(vc: Codec) -> bool:
    from pybpf.core.codec import ArrayCodec
    return isinstance(vc, ArrayCodec)


def _pin_hint(path: str) -> str:
    return (f"the path must be inside a mounted bpffs (mount -t bpf bpf /sys/fs/bpf), must not exist yet, "
            f"and its name must not contain '.' ({path})")
