"""What the CLI prints, with bpftool's field names and value conventions.

* :func:`prog_json`, :func:`map_json`, :func:`link_json`: the objects of
  ``bpftool -j prog show`` / ``map show`` / ``link show``;
* :func:`entry_json`: one element of ``bpftool -j map lookup`` (values
  formatted by :class:`pybpf.core.dump.BtfJson`, bpftool's BTF dumper).
"""
from __future__ import annotations

import os
import time
from typing import Any

from pybpf import raw
from pybpf._binding import ffi, lib
from pybpf.core.btf import Btf

PERCPU_MAP_TYPES = {5, 6, 10, 21}   # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE
OBJ_NAME_LEN = 16


def _type_str(fn: Any, t: int) -> str | int:
    p = fn(t)
    return ffi.string(p).decode() if p != ffi.NULL else t


def prog_type_str(t: int) -> str | int:
    return _type_str(lib.libbpf_bpf_prog_type_str, t)


def map_type_str(t: int) -> str | int:
    return _type_str(lib.libbpf_bpf_map_type_str, t)


def link_type_str(t: int) -> str | int:
    return _type_str(lib.libbpf_bpf_link_type_str, t)


def attach_type_str(t: int) -> str | int:
    return _type_str(lib.libbpf_bpf_attach_type_str, t)


def fdinfo(fd: int) -> dict[str, str]:
    """The ``key:\\tvalue`` lines of /proc/self/fdinfo/FD."""
    out: dict[str, str] = {}
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def boot_to_epoch(ns: int) -> int:
    """A CLOCK_BOOTTIME timestamp (ns) as wall-clock seconds, as bpftool computes it."""
    real = time.clock_gettime(time.CLOCK_REALTIME)
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    return int(real) - int(boot) + ns // 1_000_000_000


def _prog_full_name(fd: int, info: Any) -> str:
    """The program's name; names cut at 15 characters by the kernel are
    completed from the program's BTF (func_info), as bpftool does."""
    name = ffi.string(info.name).decode("utf-8", "replace")
    if len(name) < OBJ_NAME_LEN - 1 or not info.btf_id or not info.nr_func_info:
        return name
    rec = int(info.func_info_rec_size) or 8
    buf = ffi.new("char[]", rec)

    def prep(i: Any) -> None:
        i.nr_func_info, i.func_info_rec_size = 1, rec
        i.func_info = int(ffi.cast("uintptr_t", buf))

    try:
        raw.obj_info(fd, "pybpf_prog_info", prep)
        type_id = int(ffi.cast("uint32_t *", buf)[1])   # struct bpf_func_info { insn_off; type_id; }
        btf = Btf.from_kernel_id(int(info.btf_id))
        try:
            full = btf[type_id].name
        finally:
            btf.close()
        return full or name
    except Exception:  # noqa: BLE001 - fall back to the kernel's name
        return name


def prog_json(fd: int, pinned: list[str] | None = None) -> dict[str, Any]:
    """``bpftool -j prog show`` for one program fd."""
    i = raw.prog_info(fd)
    d: dict[str, Any] = {"id": int(i.id), "type": prog_type_str(int(i.type))}
    if i.name[0] != b"\0":
        d["name"] = _prog_full_name(fd, i)
    d["tag"] = bytes(ffi.buffer(i.tag, 8)).hex()
    d["gpl_compatible"] = bool(i.gpl_compatible & 1)
    if i.run_time_ns:
        d["run_time_ns"] = int(i.run_time_ns)
        d["run_cnt"] = int(i.run_cnt)
    if i.recursion_misses:
        d["recursion_misses"] = int(i.recursion_misses)
    if i.ifindex:
        d["dev"] = {"ifindex": int(i.ifindex), "ns_dev": int(i.netns_dev), "ns_inode": int(i.netns_ino)}
    if i.load_time:
        d["loaded_at"] = boot_to_epoch(int(i.load_time))
        d["uid"] = int(i.created_by_uid)
    d["bytes_xlated"] = int(i.xlated_prog_len)
    if i.jited_prog_len:
        d["jited"] = True
        d["bytes_jited"] = int(i.jited_prog_len)
    else:
        d["jited"] = False
    memlock = fdinfo(fd).get("memlock")
    if memlock is not None:
        d["bytes_memlock"] = int(memlock)
    if i.nr_map_ids:
        d["map_ids"] = raw.prog_map_ids(fd)
    if i.btf_id:
        d["btf_id"] = int(i.btf_id)
    if pinned:
        d["pinned"] = pinned
    return d


def map_json(fd: int, pinned: list[str] | None = None) -> dict[str, Any]:
    """``bpftool -j map show`` for one map fd."""
    i = raw.map_info(fd)
    fi = fdinfo(fd)
    t = int(i.type)
    d: dict[str, Any] = {"id": int(i.id), "type": map_type_str(t)}
    if i.name[0] != b"\0":
        d["name"] = ffi.string(i.name).decode("utf-8", "replace")
    d["flags"] = int(i.map_flags)
    if i.ifindex:
        d["dev"] = {"ifindex": int(i.ifindex), "ns_dev": int(i.netns_dev), "ns_inode": int(i.netns_ino)}
    d["bytes_key"] = int(i.key_size)
    d["bytes_value"] = int(i.value_size)
    d["max_entries"] = int(i.max_entries)
    if "memlock" in fi:
        d["bytes_memlock"] = int(fi["memlock"])
    if t == 3 and "owner_prog_type" in fi:   # PROG_ARRAY
        d["owner_prog_type"] = prog_type_str(int(fi["owner_prog_type"]))
        d["owner_jited"] = bool(int(fi.get("owner_jited", "0")))
    d["frozen"] = int(fi.get("frozen", "0"))
    if i.btf_id:
        d["btf_id"] = int(i.btf_id)
    if pinned:
        d["pinned"] = pinned
    return d


def link_json(fd: int, pinned: list[str] | None = None) -> dict[str, Any]:
    """``bpftool -j link show`` for one link fd (common link types)."""
    i = raw.link_info(fd)
    t = int(i.type)
    d: dict[str, Any] = {"id": int(i.id), "type": link_type_str(t), "prog_id": int(i.prog_id)}
    u32 = i.u.u32
    name = d["type"]
    if name == "tracing":
        d["attach_type"] = attach_type_str(int(u32[0]))
        d["target_obj_id"] = int(u32[1])
        d["target_btf_id"] = int(u32[2])
    elif name == "cgroup":
        d["cgroup_id"] = int(i.u.u64[0])
        d["attach_type"] = attach_type_str(int(u32[2]))
    elif name == "netns":
        d["netns_ino"] = int(u32[0])
        d["attach_type"] = attach_type_str(int(u32[1]))
    elif name == "xdp":
        d["ifindex"] = int(u32[0])
    elif name == "struct_ops" or t == 11:
        d["map_id"] = int(u32[0])
    elif name == "tcx":
        d["ifindex"] = int(u32[0])
        d["attach_type"] = attach_type_str(int(u32[1]))
    if pinned:
        d["pinned"] = pinned
    return d


# -- map elements, bpftool style (values through pybpf.core.dump's BTF dumper) ------------------------

def hex_bytes(b: bytes) -> list[str]:
    return [f"0x{x:02x}" for x in b]


def entry_json(info: Any, btf: Btf | None, key: bytes, value: bytes, ncpus: int) -> dict[str, Any]:
    """One element as ``bpftool -j map dump``/``lookup`` prints it."""
    percpu = int(info.type) in PERCPU_MAP_TYPES
    vs = int(info.value_size)
    stride = (vs + 7) & ~7
    d: dict[str, Any] = {"key": hex_bytes(key)}
    if percpu:
        d["values"] = [{"cpu": c, "value": hex_bytes(value[c * stride:c * stride + vs])} for c in range(ncpus)]
    else:
        d["value"] = hex_bytes(value[:vs])
    if btf is not None:
        from pybpf.core.dump import BtfJson

        fmt = BtfJson(btf)
        f: dict[str, Any] = {}
        kid = int(info.btf_key_type_id)
        vid = int(info.btf_vmlinux_value_type_id) or int(info.btf_value_type_id)
        if kid:
            f["key"] = fmt.value(kid, key)
        if percpu:
            f["values"] = [{"cpu": c, "value": fmt.value(vid, value, c * stride)} for c in range(ncpus)]
        else:
            f["value"] = fmt.value(vid, value)
        d["formatted"] = f
    return d


def pinned_paths(kind: str, root: str = "/sys/fs/bpf", limit: int = 5000) -> dict[int, list[str]]:
    """id -> pinned paths of objects of ``kind`` ("prog", "map", "link")
    under ``root`` (bpftool's ``-f``)."""
    out: dict[int, list[str]] = {}
    getter = {"prog": raw.prog_info, "map": raw.map_info, "link": raw.link_info}[kind]
    seen = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            seen += 1
            if seen > limit:
                return out
            p = os.path.join(dirpath, f)
            try:
                fd = raw.obj_get(p, "pinned object")
            except Exception:  # noqa: BLE001
                continue
            try:
                oid = int(getter(fd.raw).id)
                out.setdefault(oid, []).append(p)
            except Exception:  # noqa: BLE001 - another kind of object
                pass
            finally:
                fd.close()
    return out
