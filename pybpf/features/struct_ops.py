"""struct_ops: kernel structs of function pointers implemented in BPF.

A struct_ops map (``SEC(".struct_ops")`` or ``SEC(".struct_ops.link")`` in
BPF C) holds one value: a kernel struct such as ``tcp_congestion_ops`` whose
function pointers are BPF programs.  The kernel wraps it in
``struct bpf_struct_ops_<name>`` (a reference count, a state, the struct).

Registering (:func:`attach_struct_ops`, also ``Map.attach_struct_ops()``)
returns a :class:`StructOpsLink`; the registration belongs to it:

* maps of ``SEC(".struct_ops.link")`` (flag ``BPF_F_LINK``) register through
  a BPF link on kernels with struct_ops links (6.4+).  Closing the link, its
  garbage collection or the death of the process unregister; a pinned link
  keeps the registration alive.  The link can be updated in place to another
  map (:meth:`StructOpsLink.update`).  On older kernels such maps fall back
  to registration by map update (below), with a log message.
* maps of ``SEC(".struct_ops")`` register by updating the map (the kernel's
  original interface).  Such a registration outlives every fd, so the
  :class:`StructOpsLink` deletes the map's element when it is closed or
  collected and at interpreter exit, unless it was pinned.  A process killed
  by a signal cannot do that: prefer ``.struct_ops.link`` where available.

:func:`inspect` decodes a map's value through the kernel's BTF (state,
refcount, the program behind each function pointer), :func:`list_struct_ops`
lists every struct_ops map on the system (also ones registered by other
tools, like ``bpftool struct_ops show``/``dump``), :func:`unregister` removes
a registration by map, id or pin.

libbpf 1.1 (the linked version on Debian 12) does not know
``.struct_ops.link``; :func:`open_hook`, called by :meth:`Object.open`, renames
the section for libbpf and sets ``BPF_F_LINK`` on its maps.
"""
from __future__ import annotations

import enum
import errno as _errno
import logging
import os
import struct as _st
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pybpf import raw
from pybpf._binding import LIBBPF_VERSION, capture_libbpf_log, ffi, lib
from pybpf.core.btf import Btf, BtfType, Kind
from pybpf.core.codec import Struct, codec_for
from pybpf.core.link import Link
from pybpf.errors import (BPFError, BPFExistsError, BPFInvalidError, BPFNotFoundError, ClosedError,
                          NotSupportedError, StateError, error_for)
from pybpf.raw import FD, AttachType, LinkType, MapType

if TYPE_CHECKING:
    from pybpf.core.map import Map
    from pybpf.core.object import Object

__all__ = [
    "State", "MemberProgram", "StructOpsInfo", "StructOpsSpec", "StructOpsLink", "attach_struct_ops",
    "inspect", "list_struct_ops", "find_registered", "unregister", "open_hook", "BPF_F_LINK",
]

log = logging.getLogger("pybpf.struct_ops")

#: Map flag asking for registration through a BPF link (uapi ``BPF_F_LINK``).
BPF_F_LINK = 1 << 13

SEC_PLAIN = ".struct_ops"
SEC_LINK = ".struct_ops.link"
_ZERO_KEY = b"\0\0\0\0"

# What each kernel subsystem accepts, for explaining a bare EINVAL.
# nonzero_ok: non-function members the subsystem's init_member() consumes;
# required: groups of function pointers of which at least one must be set.
_RULES: dict[str, dict[str, Any]] = {
    "tcp_congestion_ops": {
        "nonzero_ok": {"name", "flags"},
        "required": [("ssthresh",), ("undo_cwnd",), ("cong_avoid", "cong_control")],
        "known_flags": {0x1: "TCP_CONG_NON_RESTRICTED", 0x2: "TCP_CONG_NEEDS_ECN", 0x4: "TCP_CONG_NEEDS_ACCECN"},
    },
}


class State(enum.IntEnum):
    """``enum bpf_struct_ops_state``: INIT (created, no value), INUSE
    (registered by map update), TOBEFREE (unregistered, waiting for its last
    users), READY (value set, registered through links; 6.4+)."""

    INIT = 0
    INUSE = 1
    TOBEFREE = 2
    READY = 3


@dataclass(frozen=True)
class MemberProgram:
    """The BPF program behind one function-pointer member."""

    member: str
    prog_id: int
    prog_name: str


@dataclass(frozen=True)
class StructOpsInfo:
    """A struct_ops map as the kernel reports it (:func:`inspect`).

    ``programs`` maps each function-pointer member that has a program to it;
    ``data`` is the whole kernel struct decoded through the kernel's BTF
    (function pointers appear as program ids); ``ops_name`` is the struct's
    own ``name`` member when it has one (a TCP congestion control's name);
    ``registered`` is True when the map is in use by the kernel subsystem:
    state INUSE, or a struct_ops link points at it (``link_ids``).
    """

    map_id: int
    map_name: str
    type_name: str
    state: State | int
    refcnt: int
    flags: int
    link_ids: tuple[int, ...]
    programs: dict[str, MemberProgram]
    data: Struct | None
    ops_name: str | None = None

    @property
    def uses_link(self) -> bool:
        """The map was created with ``BPF_F_LINK`` (registers through links)."""
        return bool(self.flags & BPF_F_LINK)

    @property
    def registered(self) -> bool:
        return self.state == State.INUSE or bool(self.link_ids)

    def __str__(self) -> str:
        st = self.state.name if isinstance(self.state, State) else str(self.state)
        head = f"{self.map_id}: {self.map_name}  {self.type_name}  state {st}  refcnt {self.refcnt}"
        if self.ops_name:
            head += f"  name '{self.ops_name}'"
        if self.link_ids:
            head += f"  links {','.join(map(str, self.link_ids))}"
        lines = [head] + [f"    {m}: prog {p.prog_id} '{p.prog_name}'" for m, p in self.programs.items()]
        return "\n".join(lines)


@dataclass
class StructOpsSpec:
    """What the ELF object asks for, per struct_ops map: the local struct's
    bytes and layout, and the program of each function-pointer member."""

    map_name: str
    type_name: str
    link: bool
    data: bytes
    members: dict[str, tuple[int, int, bool]] = field(default_factory=dict)   # name -> (offset, size, is_func)
    programs: dict[str, str] = field(default_factory=dict)                    # member -> program name

    def member_bytes(self, name: str) -> bytes:
        off, size, _ = self.members[name]
        return self.data[off:off + size]

    @property
    def ops_name(self) -> str | None:
        if "name" not in self.members:
            return None
        return self.member_bytes("name").split(b"\0", 1)[0].decode("utf-8", "replace")


# -- ELF: the struct_ops sections and their relocations --------------------------------------------

class _Elf:
    """Just enough of an ELF64 little-endian reader for struct_ops sections."""

    def __init__(self, data: bytes):
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ValueError("not an ELF64 little-endian object")
        self.data = data
        shoff, = _st.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = _st.unpack_from("<HHH", data, 0x3A)
        self.sections: list[dict[str, int]] = []
        for i in range(shnum):
            (name, typ, flags, _addr, off, size, link, info, _al, entsize) = _st.unpack_from(
                "<IIQQQQIIQQ", data, shoff + i * shentsize)
            self.sections.append({"name_off": name, "type": typ, "offset": off, "size": size, "link": link,
                                  "info": info, "entsize": entsize, "hdr": shoff + i * shentsize})
        self.shstr = self.sections[shstrndx]
        self.names = [self._str(self.shstr, s["name_off"]) for s in self.sections]

    def _str(self, sec: dict[str, int], off: int) -> str:
        start = sec["offset"] + off
        end = self.data.index(b"\0", start)
        return self.data[start:end].decode("utf-8", "replace")

    def index(self, name: str) -> int | None:
        try:
            return self.names.index(name)
        except ValueError:
            return None

    def section_data(self, idx: int) -> bytes:
        s = self.sections[idx]
        if s["type"] == 8:  # SHT_NOBITS
            return bytes(s["size"])
        return self.data[s["offset"]:s["offset"] + s["size"]]

    def relocations(self, target_idx: int) -> Iterator[tuple[int, str]]:
        """(offset in the target section, symbol name) of its REL entries;
        a section symbol is resolved to the function at the implicit addend."""
        for s in self.sections:
            if s["type"] != 9 or s["info"] != target_idx:  # SHT_REL
                continue
            symtab = self.sections[s["link"]]
            strtab = self.sections[symtab["link"]]
            target = self.section_data(target_idx)
            for off in range(s["offset"], s["offset"] + s["size"], 16):
                r_offset, r_info = _st.unpack_from("<QQ", self.data, off)
                name_off, info, _other, shndx, value, _size = _st.unpack_from(
                    "<IBBHQQ", self.data, symtab["offset"] + (r_info >> 32) * 24)
                name = self._str(strtab, name_off)
                if info & 0xF == 3 and r_offset + 8 <= len(target):  # STT_SECTION
                    addend, = _st.unpack_from("<Q", target, r_offset)
                    name = self._func_at(symtab, strtab, shndx, value + addend) or name
                yield r_offset, name

    def _func_at(self, symtab: dict[str, int], strtab: dict[str, int], shndx: int, value: int) -> str | None:
        for off in range(symtab["offset"], symtab["offset"] + symtab["size"], 24):
            name_off, info, _other, sh, val, _size = _st.unpack_from("<IBBHQQ", self.data, off)
            if info & 0xF == 2 and sh == shndx and val == value:  # STT_FUNC
                return self._str(strtab, name_off)
        return None


def _rename_in_place(data: bytearray, elf: _Elf, idx: int, new_len: int) -> None:
    """Cut section ``idx``'s name to its first ``new_len`` bytes (a NUL in
    the string table; tail-merged names such as ``.rel.X``/``X`` follow)."""
    pos = elf.shstr["offset"] + elf.sections[idx]["name_off"] + new_len
    data[pos] = 0


def _rename_btf_datasec(data: bytearray, elf: _Elf) -> bool:
    """Rename the BTF DATASEC ``.struct_ops.link`` to ``.struct_ops``."""
    idx = elf.index(".BTF")
    if idx is None:
        return False
    base = elf.sections[idx]["offset"]
    hdr_len, = _st.unpack_from("<I", data, base + 4)
    str_off, str_len = _st.unpack_from("<II", data, base + 16)
    start = base + hdr_len + str_off
    needle = b"\0" + SEC_LINK.encode() + b"\0"
    found = False
    pos = bytes(data[start:start + str_len]).find(needle)
    while pos >= 0:
        data[start + pos + 1 + len(SEC_PLAIN)] = 0
        found = True
        pos = bytes(data[start:start + str_len]).find(needle, pos + 1)
    return found


def open_hook(source: Any, name: str | None) -> tuple[Any, str | None, Callable[["Object"], None]]:
    """Called by :meth:`Object.open` before libbpf sees the object.

    Records each struct_ops map's spec (for error messages), and, when the
    linked libbpf predates ``.struct_ops.link`` (1.2), hands libbpf a copy of
    the ELF image with that section renamed ``.struct_ops``; the maps then
    get ``BPF_F_LINK`` where the kernel has struct_ops links.  Returns the
    (possibly replaced) source and name, and a function to run on the opened
    Object.
    """
    def nothing(obj: "Object") -> None:
        return None

    data: bytes | None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = os.fspath(source)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return source, name, nothing   # Object.open reports it
    if SEC_PLAIN.encode() not in data:
        return source, name, nothing
    try:
        elf = _Elf(data)
    except (ValueError, _st.error, IndexError):
        return source, name, nothing      # libbpf will say what is wrong
    plain, linked = elf.index(SEC_PLAIN), elf.index(SEC_LINK)
    if plain is None and linked is None:
        return source, name, nothing
    sec_idx = linked if linked is not None else plain
    assert sec_idx is not None
    sec_data = elf.section_data(sec_idx)
    relocs = dict(elf.relocations(sec_idx))
    rewrite = linked is not None and LIBBPF_VERSION < (1, 2)
    if rewrite:
        if plain is not None:
            raise NotSupportedError(_errno.EOPNOTSUPP, f"open BPF object {name or source!r}: it has both "
                                    f"{SEC_PLAIN} and {SEC_LINK} sections, and libbpf "
                                    f"{LIBBPF_VERSION[0]}.{LIBBPF_VERSION[1]} handles one struct_ops section",
                                    hint=f"put all struct_ops maps of one object in the same section "
                                    f"(or use libbpf 1.2+)")
        buf = bytearray(data)
        _rename_in_place(buf, elf, linked, len(SEC_PLAIN))           # type: ignore[arg-type]
        rel = elf.index(".rel" + SEC_LINK)
        if rel is not None:
            _rename_in_place(buf, elf, rel, len(".rel" + SEC_PLAIN))
        _rename_btf_datasec(buf, elf)
        if name is None and not isinstance(source, (bytes, bytearray, memoryview)):
            # what libbpf would have derived from the path
            name = os.path.basename(os.fspath(source)).split(".", 1)[0]
        source = bytes(buf)

    def after_open(obj: "Object") -> None:
        specs = _specs_from_btf(obj, sec_data, relocs, linked is not None)
        obj._struct_ops_specs = specs   # type: ignore[attr-defined]
        if linked is None:
            return
        from pybpf.probes import probe
        has_links = bool(probe("struct_ops_link"))
        for spec in specs.values():
            m = obj._maps.get(spec.map_name)
            if m is None:
                continue
            if has_links:
                if rewrite:
                    m.set_flags(m.flags | BPF_F_LINK)
            else:
                if not rewrite:
                    m.set_flags(m.flags & ~BPF_F_LINK)
                log.info("struct_ops map '%s' (%s): this kernel has no struct_ops links (6.4+); it will be "
                         "registered by map update", spec.map_name, SEC_LINK)

    return source, name, after_open


def _specs_from_btf(obj: "Object", sec_data: bytes, relocs: dict[int, str], link: bool) -> dict[str, StructOpsSpec]:
    btf = obj.btf
    out: dict[str, StructOpsSpec] = {}
    if btf is None:
        return out
    sec = btf.get(SEC_PLAIN, Kind.DATASEC) or btf.get(SEC_LINK, Kind.DATASEC)
    if sec is None:
        return out
    for si in sec.secinfo:
        var = btf[si.type_id]
        st = var.type.resolved()
        if st.kind != Kind.STRUCT:
            continue
        spec = StructOpsSpec(var.name, st.name, link, sec_data[si.offset:si.offset + si.size])
        for m in st.members:
            mt = btf[m.type_id].resolved()
            is_func = mt.kind == Kind.PTR and btf[mt.type_id].resolved().kind == Kind.FUNC_PROTO
            try:
                size = btf[m.type_id].byte_size
            except BPFError:
                size = 0
            off = m.bit_offset // 8
            spec.members[m.name] = (off, size, is_func)
            if is_func and si.offset + off in relocs:
                spec.programs[m.name] = relocs[si.offset + off]
        out[var.name] = spec
    return out


# -- introspection ------------------------------------------------------------------------------------

def _kernel_btf(info: Any) -> Btf:
    """The BTF holding a struct_ops map's value type: vmlinux, or a module's."""
    bid = int(info.btf_vmlinux_id)
    if bid:
        from pybpf.core.btf import _vmlinux_id
        if bid != _vmlinux_id():
            return _module_btf(bid)
    return Btf.vmlinux()


_MODULE_BTF: dict[int, Btf] = {}


def _module_btf(bid: int) -> Btf:
    if bid not in _MODULE_BTF:
        _MODULE_BTF[bid] = Btf.from_kernel_id(bid)
    return _MODULE_BTF[bid]


def _struct_ops_links() -> dict[int, list[int]]:
    """map id -> ids of struct_ops links pointing at it."""
    out: dict[int, list[int]] = {}
    for lid in raw.ids("link"):
        try:
            with raw.fd_by_id("link", lid) as fd:
                i = raw.link_info(fd.raw)
                if int(i.type) == LinkType.STRUCT_OPS:
                    out.setdefault(int(i.u.u32[0]), []).append(lid)
        except BPFError:
            continue   # links come and go
    return out


def _prog_name(prog_id: int) -> str:
    """A program's name: the kernel keeps 15 characters; the full name comes
    from the program's BTF (its first function) when there is one."""
    try:
        with raw.fd_by_id("prog", prog_id) as fd:
            i = raw.prog_info(fd.raw)
            name = ffi.string(i.name).decode()
            n, rec, btf_id = int(i.nr_func_info), int(i.func_info_rec_size), int(i.btf_id)
            if len(name) < 15 or not n or rec < 8 or not btf_id:
                return name
            buf = ffi.new("char[]", n * rec)

            def prep(info: Any) -> None:
                info.nr_func_info, info.func_info_rec_size = n, rec
                info.func_info = int(ffi.cast("uintptr_t", buf))

            raw.obj_info(fd.raw, "pybpf_prog_info", prep)
            type_id = _st.unpack_from("<I", bytes(ffi.buffer(buf, 8)), 4)[0]
        btf = Btf.from_kernel_id(btf_id)
        try:
            full = btf[type_id].name
        finally:
            btf.close()
        return full if full.startswith(name) else name
    except (BPFError, KeyError):
        return ""


def _decode(fd: int, info: Any, links: dict[int, list[int]] | None) -> StructOpsInfo:
    map_id, vsize = int(info.id), int(info.value_size)
    btf = _kernel_btf(info)
    vt = btf[int(info.btf_vmlinux_value_type_id)]
    buf = ffi.new("char[]", vsize)
    key = ffi.new("char[]", 4)
    found = raw.map_lookup(fd, key, buf)
    value = bytes(ffi.buffer(buf, vsize)) if found else bytes(vsize)
    # 6.1: {refcnt, state, data}; 6.9+: {common: {refcnt, state}, data}
    members = {m.name: m for m in vt.members}
    common_off = 0
    if "common" in members:
        common = members["common"]
        common_off = common.bit_offset // 8
        members_c = {m.name: m for m in btf[common.type_id].resolved().members}
    else:
        members_c = members
    refcnt = _st.unpack_from("<i", value, common_off + members_c["refcnt"].bit_offset // 8)[0]
    state_raw = _st.unpack_from("<i", value, common_off + members_c["state"].bit_offset // 8)[0]
    state: State | int = State(state_raw) if state_raw in State._value2member_map_ else state_raw
    data_m = members["data"]
    dt = btf[data_m.type_id].resolved()
    doff = data_m.bit_offset // 8
    programs: dict[str, MemberProgram] = {}
    for m in dt.members:
        mt = btf[m.type_id].resolved()
        if mt.kind == Kind.PTR and btf[mt.type_id].resolved().kind == Kind.FUNC_PROTO:
            pid, = _st.unpack_from("<Q", value, doff + m.bit_offset // 8)
            if pid:
                programs[m.name] = MemberProgram(m.name, int(pid), _prog_name(int(pid)))
    data: Struct | None
    try:
        data = codec_for(btf, dt.id).decode(value, doff)
    except Exception:  # noqa: BLE001 - a kernel type the codec cannot express
        data = None
    ops_name = None
    if data is not None and isinstance(data.get("name"), (str, bytes)):
        n = data["name"]
        ops_name = n if isinstance(n, str) else n.decode("utf-8", "replace")
    if links is None:
        links = _struct_ops_links()
    return StructOpsInfo(map_id=map_id, map_name=ffi.string(info.name).decode(), type_name=dt.name, state=state,
                         refcnt=refcnt, flags=int(info.map_flags), link_ids=tuple(links.get(map_id, ())),
                         programs=programs, data=data, ops_name=ops_name or None)


def inspect(target: "Map | StructOpsLink | int | str | os.PathLike[str]") -> StructOpsInfo:
    """Decode a struct_ops map: a :class:`~pybpf.Map`, a
    :class:`StructOpsLink`, a map id, or a bpffs path (a pinned map or
    link)."""
    with _open_map(target) as fd:
        info = raw.map_info(fd.raw)
        if int(info.type) != MapType.STRUCT_OPS:
            raise BPFInvalidError(_errno.EINVAL, f"{_describe_target(target)} is not a struct_ops map "
                                  f"(type {_type_name(int(info.type))})")
        return _decode(fd.raw, info, None)


def list_struct_ops() -> list[StructOpsInfo]:
    """Every struct_ops map in the kernel, whoever created it (like
    ``bpftool struct_ops show``; :class:`StructOpsInfo` has what ``dump``
    shows)."""
    links = _struct_ops_links()
    out = []
    for mid in raw.ids("map"):
        try:
            with raw.fd_by_id("map", mid) as fd:
                info = raw.map_info(fd.raw)
                if int(info.type) != MapType.STRUCT_OPS:
                    continue
                out.append(_decode(fd.raw, info, links))
        except BPFError:
            continue   # freed meanwhile
    return out


def find_registered(ops_name: str, type_name: str | None = None) -> list[StructOpsInfo]:
    """The registered struct_ops maps whose ``name`` member is ``ops_name``."""
    return [i for i in list_struct_ops() if i.registered and i.ops_name == ops_name
            and (type_name is None or i.type_name == type_name)]


def _fd_kind(fd: int) -> str:
    """"map", "link", "prog" or "" for a bpf fd (OBJ_GET_INFO_BY_FD answers
    for any kind, so the anon inode's name is what tells them apart)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
    for kind, labels in (("map", ("bpf-map",)), ("link", ("bpf_link", "bpf-link")), ("prog", ("bpf-prog",))):
        if any(label in target for label in labels):
            return kind
    return ""


def _type_name(t: int) -> str:
    return MapType(t).name if t in MapType._value2member_map_ else str(t)


def _describe_target(target: Any) -> str:
    if isinstance(target, int):
        return f"map id {target}"
    if isinstance(target, (str, os.PathLike)):
        return f"pinned object {os.fspath(target)}"
    return repr(target)


class _open_map:
    """Context manager: an owned map fd for any accepted target."""

    def __init__(self, target: Any):
        self.target = target
        self.fd: FD | None = None

    def __enter__(self) -> FD:
        t = self.target
        if isinstance(t, StructOpsLink):
            self.fd = FD(os.dup(t._map_fd.raw), "struct_ops map")
        elif isinstance(t, int):
            self.fd = raw.fd_by_id("map", t)
        elif isinstance(t, (str, os.PathLike)):
            fd = raw.obj_get(os.fspath(t), "pinned struct_ops map or link")
            if _fd_kind(fd.raw) == "link":
                try:
                    li = raw.link_info(fd.raw)
                finally:
                    fd.close()
                if int(li.type) != LinkType.STRUCT_OPS:
                    raise BPFInvalidError(_errno.EINVAL, f"{os.fspath(t)} pins a link that is not a struct_ops link")
                self.fd = raw.fd_by_id("map", int(li.u.u32[0]))
            else:
                self.fd = fd
        else:
            self.fd = FD(os.dup(t._loaded_fd("inspect")), "struct_ops map")
        return self.fd

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            self.fd.close()


# -- who holds a name --------------------------------------------------------------------------------

def _fd_holders(map_ids: set[int], link_ids: set[int]) -> list[str]:
    """Processes with an fd on one of the maps or links (from /proc/*/fdinfo)."""
    out = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if not target.startswith(("anon_inode:bpf-map", "anon_inode:bpf_link", "anon_inode:bpf-link")):
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    text = f.read()
            except OSError:
                continue
            fields = dict(ln.split(":", 1) for ln in text.splitlines() if ":" in ln)
            mid = int(fields.get("map_id", "0").strip() or 0)
            lid = int(fields.get("link_id", "0").strip() or 0)
            if mid in map_ids or lid in link_ids:
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                who = "this process" if int(pid) == os.getpid() else f"pid {pid} ({comm})"
                if who not in out:
                    out.append(who)
    return out


def _pins_of(map_ids: set[int], link_ids: set[int], root: str = "/sys/fs/bpf", limit: int = 2000) -> list[str]:
    """bpffs paths pinning one of the maps or links (a bounded walk)."""
    out: list[str] = []
    seen = 0
    for dirpath, _dirs, files in os.walk(root):
        for fname in files:
            seen += 1
            if seen > limit:
                return out
            p = os.path.join(dirpath, fname)
            try:
                with raw.obj_get(p, "pinned object") as fd:
                    kind = _fd_kind(fd.raw)
                    if kind == "link" and int(raw.link_info(fd.raw).id) in link_ids:
                        out.append(p)
                    elif kind == "map" and int(raw.map_info(fd.raw).id) in map_ids:
                        out.append(p)
            except BPFError:
                continue
    return out


def describe_holder(info: StructOpsInfo) -> str:
    """Who keeps a registration: map, link, processes, pins."""
    how = (f"through link id {', '.join(map(str, info.link_ids))}" if info.link_ids
           else "by map update")
    text = f"struct_ops map id {info.map_id} '{info.map_name}' (registered {how})"
    holders = _fd_holders({info.map_id}, set(info.link_ids))
    pins = _pins_of({info.map_id}, set(info.link_ids))
    if holders:
        text += f", held by {', '.join(holders)}"
    if pins:
        text += f", pinned at {', '.join(pins)}"
    if not holders and not pins and not info.link_ids:
        text += (", held by no process: it was registered by map update by a process that exited without "
                 "unregistering (libbpf 1.1's bpf_map__attach_struct_ops leaves it so)")
    return text


def _name_taken(type_name: str, ops_name: str | None, own_map_id: int) -> tuple[str, int]:
    """Who holds ``ops_name``: (description, map id or 0)."""
    if ops_name is None:
        return "", 0
    others = [i for i in find_registered(ops_name, type_name) if i.map_id != own_map_id]
    if others:
        return "; ".join(describe_holder(i) for i in others), others[0].map_id
    if type_name == "tcp_congestion_ops" and ops_name in _available_cc():
        return "a congestion control built into the kernel (or a kernel module)", 0
    return "", 0


def _available_cc() -> list[str]:
    try:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            return f.read().split()
    except OSError:
        return []


# -- explaining refusals --------------------------------------------------------------------------------

def _spec_of(m: "Map") -> StructOpsSpec | None:
    obj = m._obj
    specs = getattr(obj, "_struct_ops_specs", None) if obj is not None else None
    if not specs:
        return None
    return specs.get(m.name)


def _problems(spec: StructOpsSpec) -> list[str]:
    """What in the object's struct the kernel will refuse."""
    rules = _RULES.get(spec.type_name, {})
    ok = rules.get("nonzero_ok", set())
    out = []
    for name, (off, size, is_func) in spec.members.items():
        if is_func or name in ok or not size:
            continue
        b = spec.data[off:off + size]
        if any(b):
            val = int.from_bytes(b, "little") if size <= 8 else b.hex()
            out.append(f"member '{name}' is not a function pointer and must be zero (it is {val}); the kernel "
                       f"accepts non-zero values only in {', '.join(sorted(ok)) or 'none'} for "
                       f"struct {spec.type_name}")
    for group in rules.get("required", []):
        if not any(g in spec.programs for g in group):
            out.append(f"mandatory operation {' or '.join(repr(g) for g in group)} has no program")
    if "name" in spec.members and spec.type_name in _RULES and not spec.ops_name:
        out.append("member 'name' is empty")
    known = rules.get("known_flags")
    if known and "flags" in spec.members:
        flags = int.from_bytes(spec.member_bytes("flags"), "little")
        unknown = flags & ~sum(known)
        if unknown:
            out.append(f"flags 0x{flags:x} has unknown bits 0x{unknown:x} (known: "
                       f"{', '.join(f'0x{k:x} {v}' for k, v in known.items())})")
    return out


def _explain(m: "Map | None", spec: StructOpsSpec | None, err: int, what: str, map_id: int = 0,
             type_name: str = "", ops_name: str | None = None) -> BPFError:
    """A typed error for a refused registration, with the reason in words."""
    name = spec.map_name if spec else (m.name if m is not None else f"id {map_id}")
    type_name = spec.type_name if spec else type_name
    ops_name = spec.ops_name if spec else ops_name
    label = f"struct_ops map '{name}'" + (f" ({type_name} '{ops_name}')" if ops_name else
                                          (f" ({type_name})" if type_name else ""))
    if err == _errno.EEXIST:
        holder, holder_id = _name_taken(type_name, ops_name, map_id)
        msg = f"{what} {label}: the name '{ops_name}' is already registered"
        if holder:
            msg += f" by {holder}"
        e = error_for(err, msg, op="register", cls=BPFExistsError)
        if holder_id:
            e.hint = (f"unregister the holder first (close its link, or pybpf.features.struct_ops.unregister("
                      f"{holder_id}), or 'bpftool struct_ops unregister id {holder_id}'), or give this one "
                      "another name")
        else:
            e.hint = "give this one another name (member 'name' of the struct in the BPF C source)"
        return e
    if err == _errno.EBUSY:
        e = error_for(err, f"{what} {label}: the map is already registered (or was registered and then "
                      "unregistered: a struct_ops map registered by map update can be registered only once)",
                      op="register")
        e.hint = "load the object again to register a fresh map; maps of .struct_ops.link can be re-attached"
        return e
    if err == _errno.EINVAL:
        reasons = _problems(spec) if spec is not None else []
        if reasons:
            e = error_for(err, f"{what} {label}: the kernel refused the struct: " + "; ".join(reasons),
                          op="register", cls=BPFInvalidError)
            e.hint = "fix the struct in the BPF C source"
        else:
            e = error_for(err, f"{what} {label}: the kernel refused the struct (a non-zero member that is not a "
                          "function pointer, a missing mandatory operation, an invalid name or flags)",
                          op="register", cls=BPFInvalidError)
            e.hint = "the kernel log (dmesg) may say more"
        return e
    return error_for(err, f"{what} {label}", op="register")


# -- registration ------------------------------------------------------------------------------------------

def _check_struct_ops_map(m: "Map", op: str) -> int:
    fd = m._loaded_fd(op)
    if m.type != MapType.STRUCT_OPS:
        raise BPFInvalidError(_errno.EINVAL, f"cannot {op} map '{m.name}': it is a "
                              f"{getattr(m.type, 'name', m.type)} map, not a struct_ops map",
                              hint="struct_ops maps come from SEC(\".struct_ops\") or SEC(\".struct_ops.link\")")
    return fd


def _map_state(fd: int, vsize: int, info: Any) -> int:
    buf = ffi.new("char[]", vsize)
    key = ffi.new("char[]", 4)
    if not raw.map_lookup(fd, key, buf):
        return State.INIT
    value = bytes(ffi.buffer(buf, vsize))
    btf = _kernel_btf(info)
    vt = btf[int(info.btf_vmlinux_value_type_id)]
    members = {mm.name: mm for mm in vt.members}
    off = 0
    if "common" in members:
        off = members["common"].bit_offset // 8
        members = {mm.name: mm for mm in btf[members["common"].type_id].resolved().members}
    return int(_st.unpack_from("<i", value, off + members["state"].bit_offset // 8)[0])


def _fill_value(m: "Map", spec: StructOpsSpec | None, what: str) -> None:
    """Write the map's value (program fds in the function pointers) through
    libbpf: for a BPF_F_LINK map the kernel only stores it (state READY), for
    a plain map this registers it (state INUSE).  libbpf's own link object is
    dropped without detaching: the :class:`StructOpsLink` owns the
    registration."""
    if m._ptr is None:
        raise StateError(f"cannot {what} struct_ops map '{m.name}': its value is not set and this map has no "
                         "object behind it", hint="register maps of a loaded Object (obj.maps[NAME])")
    with capture_libbpf_log() as logbuf:
        lp = lib.bpf_map__attach_struct_ops(m._ptr)
    if lp == ffi.NULL:
        err = ffi.errno or _errno.EINVAL
        info = raw.map_info(m.fd)
        exc = _explain(m, spec, err, what, map_id=int(info.id))
        detail = logbuf.text.strip().splitlines()
        if detail and err not in (_errno.EEXIST,):
            exc.strerror = f"{exc.strerror}\n  libbpf: {detail[-1].strip()}"
        raise exc
    libbpf_link_fd = int(lib.bpf_link__fd(lp))
    lib.bpf_link__disconnect(lp)
    lib.bpf_link__destroy(lp)
    if LIBBPF_VERSION >= (1, 2) and m.flags & BPF_F_LINK and libbpf_link_fd >= 0 and libbpf_link_fd != m.fd:
        # libbpf 1.2+ made a kernel link of its own: drop it, the value stays (READY)
        os.close(libbpf_link_fd)


def attach_struct_ops(m: "Map") -> "StructOpsLink":
    """Register struct_ops map ``m`` with its kernel subsystem.

    Through a BPF link when the map has ``BPF_F_LINK`` (``.struct_ops.link``
    on 6.4+ kernels), else by map update.  The returned
    :class:`StructOpsLink` owns the registration: closing it unregisters.
    """
    fd = _check_struct_ops_map(m, "register")
    spec = _spec_of(m)
    info = raw.map_info(fd)
    map_id = int(info.id)
    what = "register"
    uses_link = bool(int(info.map_flags) & BPF_F_LINK)
    state = _map_state(fd, int(info.value_size), info)
    if not uses_link:
        if state != State.INIT:
            raise _explain(m, spec, _errno.EBUSY, what, map_id=map_id)
        _fill_value(m, spec, what)
        try:
            map_fd = FD(os.dup(fd), f"struct_ops map '{m.name}'")
        except OSError:
            raw.map_delete(fd, ffi.new("char[]", 4))
            raise
        return StructOpsLink(m, map_fd, None, spec)
    if state == State.INIT:
        _fill_value(m, spec, what)
    map_fd = FD(os.dup(fd), f"struct_ops map '{m.name}'")
    try:
        lfd = _link_create(map_fd.raw, m, spec, map_id)
    except BaseException:
        map_fd.close()
        raise
    return StructOpsLink(m, map_fd, lfd, spec)


def _link_create(map_fd: int, m: "Map | None", spec: StructOpsSpec | None, map_id: int) -> FD:
    failure: list[int] = []
    try:
        return raw.link_create(map_fd, 0, AttachType.STRUCT_OPS, on_error=failure.append,
                               what=f"create struct_ops link for map id {map_id}")
    except BPFError:
        err = failure[0] if failure else _errno.EINVAL
        ops = None
        type_name = ""
        if spec is None:
            try:
                i = inspect(map_id)
                ops, type_name = i.ops_name, i.type_name
            except BPFError:
                pass
        raise _explain(m, spec, err, "register", map_id=map_id, type_name=type_name, ops_name=ops) from None


class StructOpsLink(Link):
    """A struct_ops registration (returned by :func:`attach_struct_ops`).

    ``uses_link`` tells how it was made: through a kernel BPF link (then
    :meth:`info`, :meth:`update` work) or by map update.  Either way
    :meth:`close` (or garbage collection, or interpreter exit) unregisters,
    unless :meth:`pin` was called: a pin keeps the registration, and
    :func:`unregister` with the pin path removes it later.
    """

    def __init__(self, m: "Map", map_fd: FD, link_fd: FD | None, spec: StructOpsSpec | None):
        self._ptr = None
        self._fd = link_fd if link_fd is not None else map_fd
        self._owner = m
        self._on_close = None
        self._map_fd = map_fd
        self._link_fd = link_fd
        self._spec = spec
        self.map = m
        self.map_id = int(raw.map_info(map_fd.raw).id)
        self.ops_name = spec.ops_name if spec is not None else None
        mode = f"link {_link_id(link_fd)}" if link_fd is not None else "map update"
        self._desc = f"struct_ops '{m.name}' (map id {self.map_id}, {mode})"
        self._state: dict[str, Any] = {"pinned": None}
        self._finalizer = _finalize(self, StructOpsLink._release_so, link_fd, map_fd, self._state)

    @staticmethod
    def _release_so(link_fd: FD | None, map_fd: FD, state: dict[str, Any]) -> None:
        # Runs from close(), GC or atexit: never raises.
        try:
            if link_fd is not None:
                link_fd.close()    # the kernel unregisters with the link's last reference
            elif state.get("pinned") is None and not map_fd.closed:
                key = ffi.new("char[]", 4)
                try:
                    raw.map_delete(map_fd.raw, key)
                except BPFError as e:
                    log.warning("unregistering struct_ops map fd %s failed: %s", map_fd, e)
        except Exception:  # noqa: BLE001 - finalizer
            pass
        finally:
            map_fd.close()

    @property
    def uses_link(self) -> bool:
        """True when registered through a kernel BPF link."""
        return self._link_fd is not None

    @property
    def pinned(self) -> str | None:
        return self._state["pinned"]

    def struct_ops_info(self) -> StructOpsInfo:
        """:func:`inspect` of the registered map."""
        if self.closed:
            raise ClosedError(self._desc)
        return inspect(self)

    def info(self) -> Any:
        if self._link_fd is None:
            raise NotSupportedError(_errno.EOPNOTSUPP, f"{self._desc} is not a kernel link: it was registered by "
                                    "map update", hint="use struct_ops_info() for the registration's state")
        return super().info()

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin the registration: the link (link mode) or the map (map-update
        mode) at ``path`` in bpffs; it then survives close and the process.
        Remove it later with :func:`unregister` (``path``)."""
        p = os.fspath(path)
        try:
            raw.obj_pin(self.fd, p)
        except BPFError as e:
            e.hint = e.hint or ("the path must be inside a mounted bpffs, must not exist, "
                                "and its name must not contain '.'")
            raise
        self._state["pinned"] = p

    def unpin(self, path: str | os.PathLike[str] | None = None) -> None:
        """Remove the pin; closing then unregisters again."""
        p = os.fspath(path) if path is not None else self._state["pinned"]
        if p is None:
            raise StateError(f"{self._desc} is not pinned")
        os.unlink(p)
        if p == self._state["pinned"]:
            self._state["pinned"] = None

    def update(self, new: Any, *, old: Any = None) -> None:
        """Swap the implementation in place (BPF_LINK_UPDATE, 6.4+): the
        registered name now runs ``new``'s programs; sockets that already
        use the old implementation keep it until they select it again.
        ``new`` must be a struct_ops map of the same type and name, created
        with ``BPF_F_LINK`` (``.struct_ops.link``)."""
        if self.closed:
            raise ClosedError(self._desc)
        if self._link_fd is None:
            raise NotSupportedError(_errno.EOPNOTSUPP, f"update {self._desc}: registered by map update, which the "
                                    "kernel cannot swap in place",
                                    hint="struct_ops links (SEC(\".struct_ops.link\"), Linux 6.4+) can be updated; "
                                    "else close this registration and attach the new map")
        fd = _check_struct_ops_map(new, "update to")
        info = raw.map_info(fd)
        spec = _spec_of(new)
        if not int(info.map_flags) & BPF_F_LINK:
            raise BPFInvalidError(_errno.EINVAL, f"update {self._desc} to map '{new.name}': that map was not created "
                                  "with BPF_F_LINK", hint="declare it in SEC(\".struct_ops.link\")")
        if (spec is not None and self._spec is not None and spec.ops_name is not None
                and spec.ops_name != self._spec.ops_name):
            raise BPFInvalidError(_errno.EINVAL, f"update {self._desc} to map '{new.name}': the new struct is named "
                                  f"'{spec.ops_name}' but the registered one is '{self._spec.ops_name}'",
                                  hint="an update keeps the registered name; register a different name separately")
        if _map_state(fd, int(info.value_size), info) == State.INIT:
            _fill_value(new, spec, "prepare")
        old_fd = old.fd if old is not None else 0
        try:
            raw.link_update(self._link_fd.raw, fd, old_fd=old_fd, flags=4 if old is not None else 0,
                            what=f"update {self._desc} to map '{new.name}'")
        except BPFError as e:
            if e.errno in (_errno.EOPNOTSUPP, 524):
                raise NotSupportedError(e.errno, f"update {self._desc}: this kernel cannot update struct_ops links",
                                        hint="close and attach the new map") from None
            if e.errno == _errno.EINVAL:
                e.hint = ("the new map must have the same struct type and name, and be ready (its programs "
                          "loaded); with old=..., the old map must be the one registered")
            raise
        new_map_fd = FD(os.dup(fd), f"struct_ops map '{new.name}'")
        self._map_fd.close()
        self._map_fd = new_map_fd
        self._owner = new
        self.map = new
        self.map_id = int(info.id)
        self._spec = spec
        self._desc = f"struct_ops '{new.name}' (map id {self.map_id}, link {_link_id(self._link_fd)})"
        # the finalizer must close the new map fd
        self._finalizer.detach()
        self._finalizer = _finalize(self, StructOpsLink._release_so, self._link_fd, self._map_fd, self._state)

    def detach(self) -> None:
        """Unregister now, even if pinned, then close."""
        if self.closed:
            return
        if self._link_fd is not None:
            try:
                raw.link_detach(self._link_fd.raw)
            except BPFError as e:
                if e.errno not in (_errno.EOPNOTSUPP, 524, _errno.EINVAL):
                    raise
                if self._state["pinned"]:
                    raise NotSupportedError(e.errno, f"detach {self._desc}: this kernel cannot detach struct_ops "
                                            f"links (6.9+) and the link is pinned at {self._state['pinned']}",
                                            hint="unpin() then close()") from None
        else:
            raw.map_delete(self._map_fd.raw, ffi.new("char[]", 4))
        self.close()

    def disown(self) -> int:
        """Hand the registration's fd (link, or map in map-update mode) to
        the caller; a map-update registration then stays until the caller
        deletes the map's element."""
        fd = os.dup(self.fd)
        self._state["pinned"] = "(disowned)"
        self.close()
        return fd

    def close(self) -> None:
        """Unregister (unless pinned) and release. Idempotent."""
        self._finalizer()
        self._owner = None


def _finalize(obj: Any, fn: Callable[..., None], *args: Any) -> Any:
    """weakref.finalize, typed loosely (Link declares a narrower signature)."""
    return weakref.finalize(obj, fn, *args)


def _link_id(fd: FD | None) -> int:
    if fd is None:
        return 0
    try:
        return int(raw.link_info(fd.raw).id)
    except BPFError:
        return 0


def unregister(target: "StructOpsLink | Map | int | str | os.PathLike[str]", *, timeout: float = 5.0) -> None:
    """Remove a registration: a :class:`StructOpsLink`, a struct_ops
    :class:`~pybpf.Map`, a map id (also one registered by another tool), or a
    bpffs pin made by :meth:`StructOpsLink.pin` (the pin is removed).

    Registrations by map update are deleted; link registrations are
    detached (6.9+) or, for a pin, released with the pin.  Waits up to
    ``timeout`` seconds for the kernel to drop it.
    """
    if isinstance(target, StructOpsLink):
        target.detach()
        return
    path = os.fspath(target) if isinstance(target, (str, os.PathLike)) else None
    if path is not None:
        fd = raw.obj_get(path, "pinned struct_ops map or link")
        try:
            kind = _fd_kind(fd.raw)
            if kind == "link":
                li = raw.link_info(fd.raw)
                if int(li.type) != LinkType.STRUCT_OPS:
                    raise BPFInvalidError(_errno.EINVAL, f"{path} pins a link that is not a struct_ops link")
                map_id = int(li.u.u32[0])
                try:
                    raw.link_detach(fd.raw)
                except BPFError:
                    pass   # older kernels: dropping the pin and the fd releases it
                os.unlink(path)
                fd.close()
                _wait_unregistered(map_id, timeout)
                return
            if kind != "map":
                raise BPFInvalidError(_errno.EINVAL, f"{path} is not a pinned struct_ops map or link "
                                      f"(it pins a {kind or 'non-BPF'} object)")
            info = raw.map_info(fd.raw)
            if int(info.type) != MapType.STRUCT_OPS:
                raise BPFInvalidError(_errno.EINVAL, f"{path} is not a pinned struct_ops map or link "
                                      f"(map type {_type_name(int(info.type))})")
            _unregister_map_fd(fd.raw, info, f"pinned at {path}", timeout)
            os.unlink(path)
        finally:
            fd.close()
        return
    with _open_map(target) as mfd:
        info = raw.map_info(mfd.raw)
        if int(info.type) != MapType.STRUCT_OPS:
            raise BPFInvalidError(_errno.EINVAL, f"{_describe_target(target)} is not a struct_ops map")
        _unregister_map_fd(mfd.raw, info, _describe_target(target), timeout)


def _unregister_map_fd(fd: int, info: Any, label: str, timeout: float) -> None:
    map_id = int(info.id)
    if int(info.map_flags) & BPF_F_LINK:
        links = _struct_ops_links().get(map_id, [])
        if not links:
            raise BPFNotFoundError(_errno.ENOENT, f"struct_ops map id {map_id} ({label}) is not registered")
        for lid in links:
            try:
                with raw.fd_by_id("link", lid) as lfd:
                    raw.link_detach(lfd.raw)
            except BPFError as e:
                raise NotSupportedError(e.errno, f"unregister struct_ops map id {map_id} ({label}): its link id "
                                        f"{lid} cannot be detached from outside on this kernel (6.9+)",
                                        hint="close the link's owner (see describe_holder) or remove its pin") \
                    from None
    else:
        if not raw.map_delete(fd, ffi.new("char[]", 4)):
            raise BPFNotFoundError(_errno.ENOENT, f"struct_ops map id {map_id} ({label}) is not registered")
    _wait_unregistered(map_id, timeout)


def _wait_unregistered(map_id: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with raw.fd_by_id("map", map_id) as fd:
                info = raw.map_info(fd.raw)
                st = _map_state(fd.raw, int(info.value_size), info)
                links = _struct_ops_links().get(map_id, [])
                if st != State.INUSE and not links:
                    return
        except BPFError:
            return   # the map is gone
        if time.monotonic() > deadline:
            raise BPFError(_errno.ETIMEDOUT, f"struct_ops map id {map_id} is still registered after {timeout}s")
        time.sleep(0.02)
