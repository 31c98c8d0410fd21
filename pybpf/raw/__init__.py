"""The raw bpf(2) layer: one syscall entry point, one typed function per
command.

Used where libbpf has no API for what the kernel can do (struct_ops links and
their update, program extensions by id, info structs newer than the installed
headers), for feature probes, and for objects that have no libbpf handle
(opened from a pin or an id).  Functions take and return Python values;
file descriptors come back wrapped in :class:`FD` the moment they exist.
"""
from __future__ import annotations

import errno as _errno
import os
from typing import Any, Callable

from pybpf._binding import ffi, lib
from pybpf.errors import BPFError, raise_errno
from pybpf.raw.enums import AttachType, Cmd, LinkType, MapType, ProgType
from pybpf.raw.fd import FD

__all__ = [
    "FD", "Cmd", "MapType", "ProgType", "AttachType", "LinkType", "sys_bpf",
    "map_create", "map_lookup", "map_update", "map_delete", "map_next_key", "map_freeze",
    "prog_load", "obj_pin", "obj_get", "prog_test_run", "next_id", "fd_by_id", "prog_info", "map_info",
    "link_info", "btf_info", "link_create", "link_update", "link_detach", "enable_stats", "btf_load",
    "ids",
]

_EAGAIN_RETRIES = 5


def sys_bpf(cmd: Cmd, attr: Any, what: str, *, retry_eagain: bool = False,
            on_error: Callable[[int], None] | None = None) -> int:
    """The single entry point to bpf(2).

    ``attr`` is a cffi pointer to one of the ``pybpf_attr_*`` structs.  On
    failure ``on_error(errno)`` may raise a more specific exception; otherwise
    the typed exception for errno is raised with ``what`` as its message.
    EINTR is always retried; EAGAIN too when ``retry_eagain`` (program loads,
    which a signal can interrupt inside the verifier).
    """
    size = ffi.sizeof(attr[0])
    tries = 0
    while True:
        ret = lib.pybpf_sys_bpf(int(cmd), attr, size)
        if ret >= 0:
            return int(ret)
        err = ffi.errno
        if err == _errno.EINTR or (retry_eagain and err == _errno.EAGAIN and tries < _EAGAIN_RETRIES):
            tries += 1
            continue
        if on_error is not None:
            on_error(err)
        raise_errno(err, what, op=cmd.name.lower())


def _new(ctype: str) -> Any:
    return ffi.new(f"struct {ctype} *")


def _ptr(buf: Any) -> int:
    return int(ffi.cast("uintptr_t", buf)) if buf is not None else 0


def _name16(dst: Any, name: str) -> None:
    raw = name.encode()[:15]
    ffi.memmove(dst, raw, len(raw))


# -- maps ----------------------------------------------------------------------------------------

def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, *, name: str = "",
               flags: int = 0, btf_fd: int = 0, btf_key_type_id: int = 0, btf_value_type_id: int = 0,
               btf_vmlinux_value_type_id: int = 0, inner_map_fd: int = 0, map_extra: int = 0) -> FD:
    a = _new("pybpf_attr_map_create")
    a.map_type, a.key_size, a.value_size, a.max_entries = map_type, key_size, value_size, max_entries
    a.map_flags, a.inner_map_fd, a.map_extra = flags, inner_map_fd, map_extra
    a.btf_fd, a.btf_key_type_id, a.btf_value_type_id = btf_fd, btf_key_type_id, btf_value_type_id
    a.btf_vmlinux_value_type_id = btf_vmlinux_value_type_id
    _name16(a.map_name, name)
    what = f"create map '{name}' ({MapType(map_type).name if map_type in MapType._value2member_map_ else map_type})"
    return FD(sys_bpf(Cmd.MAP_CREATE, a, what), f"map '{name}'")


def _elem(fd: int, key: Any, value: Any, flags: int) -> Any:
    a = _new("pybpf_attr_map_elem")
    a.map_fd, a.key, a.value, a.flags = fd, _ptr(key), _ptr(value), flags
    return a


def map_lookup(fd: int, key: Any, value: Any, flags: int = 0) -> bool:
    """Look ``key`` up into the ``value`` buffer; False when absent."""
    a = _elem(fd, key, value, flags)
    ret = lib.pybpf_sys_bpf(Cmd.MAP_LOOKUP_ELEM, a, ffi.sizeof("struct pybpf_attr_map_elem"))
    if ret == 0:
        return True
    if ffi.errno == _errno.ENOENT:
        return False
    raise_errno(ffi.errno, "map lookup", op="map_lookup_elem")


def map_update(fd: int, key: Any, value: Any, flags: int = 0) -> None:
    sys_bpf(Cmd.MAP_UPDATE_ELEM, _elem(fd, key, value, flags), "map update")


def map_delete(fd: int, key: Any) -> bool:
    """Delete ``key``; False when it was absent."""
    a = _elem(fd, key, None, 0)
    ret = lib.pybpf_sys_bpf(Cmd.MAP_DELETE_ELEM, a, ffi.sizeof("struct pybpf_attr_map_elem"))
    if ret == 0:
        return True
    if ffi.errno == _errno.ENOENT:
        return False
    raise_errno(ffi.errno, "map delete", op="map_delete_elem")


def map_next_key(fd: int, key: Any, next_key: Any) -> bool:
    """Write the key after ``key`` (first key when ``key`` is None) into
    ``next_key``; False at the end."""
    a = _elem(fd, key, next_key, 0)
    ret = lib.pybpf_sys_bpf(Cmd.MAP_GET_NEXT_KEY, a, ffi.sizeof("struct pybpf_attr_map_elem"))
    if ret == 0:
        return True
    if ffi.errno == _errno.ENOENT:
        return False
    raise_errno(ffi.errno, "map get_next_key", op="map_get_next_key")


def map_freeze(fd: int) -> None:
    a = _new("pybpf_attr_map_elem")
    a.map_fd = fd
    sys_bpf(Cmd.MAP_FREEZE, a, "map freeze")


def map_batch(cmd: Cmd, fd: int, in_batch: Any, out_batch: Any, keys: Any, values: Any, count: int,
              elem_flags: int = 0) -> tuple[int, bool]:
    """One batch command. Returns (elements processed, reached the end)."""
    a = _new("pybpf_attr_map_batch")
    a.map_fd, a.in_batch, a.out_batch = fd, _ptr(in_batch), _ptr(out_batch)
    a.keys, a.values, a.count, a.elem_flags = _ptr(keys), _ptr(values), count, elem_flags
    ret = lib.pybpf_sys_bpf(int(cmd), a, ffi.sizeof("struct pybpf_attr_map_batch"))
    if ret == 0:
        return int(a.count), False
    if ffi.errno == _errno.ENOENT:
        return int(a.count), True
    raise_errno(ffi.errno, f"map {cmd.name.lower()}", op=cmd.name.lower())


# -- programs ------------------------------------------------------------------------------------

def prog_load(prog_type: int, insns: bytes, *, license: str = "GPL", name: str = "",
              expected_attach_type: int = 0, attach_btf_id: int = 0, attach_prog_fd: int = 0,
              attach_btf_obj_fd: int = 0, prog_flags: int = 0, log_level: int = 0,
              log_size: int = 1 << 20, prog_btf_fd: int = 0, func_info: bytes = b"", func_info_rec_size: int = 0,
              ) -> FD:
    """BPF_PROG_LOAD of raw instructions.

    Without ``log_level`` the load is tried without a log first; on failure it
    is retried with one, grown on ENOSPC, and a
    :class:`~pybpf.errors.VerifierError` carries it.
    """
    from pybpf.errors import VerifierError

    code = ffi.from_buffer(insns)
    lic = ffi.new("char[]", license.encode())
    finfo = ffi.from_buffer(func_info) if func_info else None
    level = log_level
    while True:
        a = _new("pybpf_attr_prog_load")
        a.prog_type, a.insn_cnt, a.insns, a.license = prog_type, len(insns) // 8, _ptr(code), _ptr(lic)
        a.expected_attach_type, a.attach_btf_id = expected_attach_type, attach_btf_id
        a.attach_prog_fd = attach_prog_fd or attach_btf_obj_fd
        a.prog_flags, a.prog_btf_fd = prog_flags, prog_btf_fd
        if finfo is not None:
            a.func_info, a.func_info_cnt, a.func_info_rec_size = _ptr(finfo), len(func_info) // func_info_rec_size, func_info_rec_size
        _name16(a.prog_name, name)
        log = None
        if level:
            log = ffi.new("char[]", log_size)
            a.log_level, a.log_size, a.log_buf = level, log_size, _ptr(log)
        failure: list[int] = []
        try:
            return FD(sys_bpf(Cmd.PROG_LOAD, a, f"load program '{name}'", retry_eagain=True,
                              on_error=failure.append), f"program '{name}'")
        except BPFError:
            err = failure[0] if failure else 0
            if not level:
                level = 1
                continue
            if err == _errno.ENOSPC and log_size < (1 << 28):
                log_size *= 4
                continue
            text = ffi.string(log).decode("utf-8", "replace") if log is not None else ""
            if err in (_errno.EACCES, _errno.EINVAL) and text:
                raise VerifierError(err, name, text) from None
            raise


def prog_test_run(fd: int, data: bytes = b"", *, ctx: bytes | None = None, repeat: int = 1,
                  data_size_out: int | None = None, ctx_size_out: int | None = None, flags: int = 0,
                  cpu: int = 0, batch_size: int = 0) -> tuple[int, bytes, int, bytes | None]:
    """BPF_PROG_TEST_RUN. Returns (retval, data_out, duration_ns, ctx_out)."""
    a = _new("pybpf_attr_test_run")
    din = ffi.from_buffer(data) if data else None
    out_size = data_size_out if data_size_out is not None else (len(data) + 4096 if data else 0)
    dout = ffi.new("char[]", out_size) if out_size else None
    cin = ffi.from_buffer(ctx) if ctx else None
    csize = ctx_size_out if ctx_size_out is not None else (len(ctx) if ctx else 0)
    cout = ffi.new("char[]", csize) if csize else None
    a.prog_fd, a.data_in, a.data_size_in = fd, _ptr(din), len(data)
    a.data_out, a.data_size_out = _ptr(dout), out_size
    a.ctx_in, a.ctx_size_in = _ptr(cin), len(ctx) if ctx else 0
    a.ctx_out, a.ctx_size_out = _ptr(cout), csize
    a.repeat, a.flags, a.cpu, a.batch_size = repeat, flags, cpu, batch_size
    sys_bpf(Cmd.PROG_TEST_RUN, a, "test run")
    out = bytes(ffi.buffer(dout, min(a.data_size_out, out_size))) if dout is not None else b""
    cdata = bytes(ffi.buffer(cout, min(a.ctx_size_out, csize))) if cout is not None else None
    return int(a.retval), out, int(a.duration), cdata


# -- objects: pins, ids, info ---------------------------------------------------------------------

def _path_bytes(path: str) -> bytes:
    """A path for the kernel: any file-name bytes (non-UTF-8 names arrive as surrogates), no NUL."""
    b = os.fsencode(path)
    if b"\0" in b:
        raise_errno(_errno.EINVAL, f"path {path!r} contains a NUL byte")
    return b


def obj_pin(fd: int, path: str) -> None:
    a = _new("pybpf_attr_obj")
    p = ffi.new("char[]", _path_bytes(path))
    a.pathname, a.bpf_fd = _ptr(p), fd
    sys_bpf(Cmd.OBJ_PIN, a, f"pin to {path}")


# a new link's fd is "bpf_link"; one opened again (OBJ_GET, GET_FD_BY_ID: bpf_link_new_fd) is "bpf-link"
_ANON_INODES = {"anon_inode:bpf-prog": "prog", "anon_inode:bpf-map": "map", "anon_inode:bpf_link": "link",
                "anon_inode:bpf-link": "link", "anon_inode:btf": "btf"}


def fd_kind(fd: int) -> str | None:
    """What a BPF fd refers to: "prog", "map", "link" or "btf" (from the
    name of its anonymous inode), None for anything else. OBJ_GET and
    OBJ_GET_INFO_BY_FD do not say: the kernel fills a map's info into a
    program's info buffer without complaint."""
    try:
        return _ANON_INODES.get(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def obj_get(path: str, what: str = "pinned object", *, flags: int = 0, kind: str | None = None) -> FD:
    """Open a bpffs pin; with ``kind`` ("prog", "map", "link", "btf") a pin
    of another kind is a BPFInvalidError naming what it is."""
    a = _new("pybpf_attr_obj")
    p = ffi.new("char[]", _path_bytes(path))
    a.pathname, a.file_flags = _ptr(p), flags
    fd = FD(sys_bpf(Cmd.OBJ_GET, a, f"open {what} {path}"), f"{what} {path}")
    if kind is not None:
        got = fd_kind(fd.raw)
        if got != kind:
            fd.close()
            from pybpf.errors import BPFInvalidError

            raise BPFInvalidError(_errno.EINVAL, f"{path} is a pinned {got or 'object of unknown kind'}, not a {kind}",
                                  hint=f"open it as a {got}" if got else None)
    return fd


_NEXT = {"prog": Cmd.PROG_GET_NEXT_ID, "map": Cmd.MAP_GET_NEXT_ID, "btf": Cmd.BTF_GET_NEXT_ID,
         "link": Cmd.LINK_GET_NEXT_ID}
_BY_ID = {"prog": Cmd.PROG_GET_FD_BY_ID, "map": Cmd.MAP_GET_FD_BY_ID, "btf": Cmd.BTF_GET_FD_BY_ID,
          "link": Cmd.LINK_GET_FD_BY_ID}


def next_id(kind: str, start: int) -> int | None:
    """The next id of ``kind`` ("prog", "map", "btf", "link") after ``start``."""
    a = _new("pybpf_attr_get_id")
    a.id = start
    ret = lib.pybpf_sys_bpf(int(_NEXT[kind]), a, ffi.sizeof("struct pybpf_attr_get_id"))
    if ret == 0:
        return int(a.next_id)
    if ffi.errno == _errno.ENOENT:
        return None
    raise_errno(ffi.errno, f"list {kind} ids", op=_NEXT[kind].name.lower())


def ids(kind: str) -> list[int]:
    """All ids of ``kind`` currently in the kernel."""
    out, cur = [], 0
    while (nxt := next_id(kind, cur)) is not None:
        out.append(nxt)
        cur = nxt
    return out


def fd_by_id(kind: str, obj_id: int, *, flags: int = 0) -> FD:
    a = _new("pybpf_attr_get_id")
    a.id, a.open_flags = obj_id, flags
    return FD(sys_bpf(_BY_ID[kind], a, f"open {kind} id {obj_id}"), f"{kind} id {obj_id}")


def obj_info(fd: int, ctype: str, prepare: Callable[[Any], None] | None = None) -> Any:
    """BPF_OBJ_GET_INFO_BY_FD into a fresh ``struct <ctype>``."""
    info = ffi.new(f"struct {ctype} *")
    if prepare is not None:
        prepare(info)
    a = _new("pybpf_attr_info")
    a.bpf_fd, a.info_len, a.info = fd, ffi.sizeof(info[0]), _ptr(info)
    sys_bpf(Cmd.OBJ_GET_INFO_BY_FD, a, "get object info")
    return info


def prog_info(fd: int) -> Any:
    return obj_info(fd, "pybpf_prog_info")


def map_info(fd: int) -> Any:
    return obj_info(fd, "pybpf_map_info")


def link_info(fd: int) -> Any:
    return obj_info(fd, "pybpf_link_info")


def btf_info(fd: int) -> Any:
    return obj_info(fd, "pybpf_btf_info")


def prog_map_ids(fd: int) -> list[int]:
    n = int(prog_info(fd).nr_map_ids)
    if not n:
        return []
    buf = ffi.new("uint32_t[]", n)

    def prep(info: Any) -> None:
        info.nr_map_ids, info.map_ids = n, _ptr(buf)

    obj_info(fd, "pybpf_prog_info", prep)
    return [int(buf[i]) for i in range(n)]


# -- links -----------------------------------------------------------------------------------------

def link_create(prog_fd: int, target_fd: int, attach_type: int, *, flags: int = 0, target_btf_id: int = 0,
                cookie: int = 0, what: str = "create link",
                on_error: Callable[[int], None] | None = None) -> FD:
    """BPF_LINK_CREATE. ``prog_fd`` is a map fd for struct_ops links,
    ``target_fd`` an ifindex for XDP."""
    a = _new("pybpf_attr_link_create")
    a.prog_fd, a.target_fd, a.attach_type, a.flags = prog_fd, target_fd, attach_type, flags
    a.target_btf_id, a.cookie = target_btf_id, cookie
    return FD(sys_bpf(Cmd.LINK_CREATE, a, what, on_error=on_error), "link")


def link_update(link_fd: int, new_fd: int, *, old_fd: int = 0, flags: int = 0, what: str = "update link") -> None:
    """BPF_LINK_UPDATE to a new program (or struct_ops map)."""
    a = _new("pybpf_attr_link_update")
    a.link_fd, a.new_fd, a.old_fd, a.flags = link_fd, new_fd, old_fd, flags
    sys_bpf(Cmd.LINK_UPDATE, a, what)


def link_detach(link_fd: int) -> None:
    a = _new("pybpf_attr_link_detach")
    a.link_fd = link_fd
    sys_bpf(Cmd.LINK_DETACH, a, "detach link")


def enable_stats(stats_type: int = 0) -> FD:
    """BPF_ENABLE_STATS: run time/count accounting while the FD is open."""
    a = _new("pybpf_attr_enable_stats")
    a.type = stats_type
    return FD(sys_bpf(Cmd.ENABLE_STATS, a, "enable run-time statistics"), "stats")


def btf_load(data: bytes, *, log_size: int = 1 << 16) -> FD:
    buf = ffi.from_buffer(data)
    log = ffi.new("char[]", log_size)
    a = _new("pybpf_attr_btf_load")
    a.btf, a.btf_size, a.btf_log_buf, a.btf_log_size, a.btf_log_level = _ptr(buf), len(data), _ptr(log), log_size, 1
    failure: list[int] = []
    try:
        return FD(sys_bpf(Cmd.BTF_LOAD, a, "load BTF", on_error=failure.append), "btf")
    except BPFError as e:
        text = ffi.string(log).decode("utf-8", "replace").strip()
        if text:
            e.strerror = f"{e.strerror}\n{text}"
        raise
