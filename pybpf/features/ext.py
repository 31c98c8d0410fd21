"""What is attached to the functions of a loaded BPF program.

The kernel keeps one BPF trampoline per (program, function): fentry, fexit
and fmod_ret programs hang off it, or one extension (freplace) replaces the
function.  Each attachment is a tracing link whose info names the target
program id and the function's BTF id; this module scans the links and turns
them back into names::

    from pybpf.features import ext
    for a in ext.attachments(target_prog):
        print(a.function, a.kind, a.prog_name, a.prog_id)
    ext.replacements(target_prog)   # {"classify": Attachment(kind="freplace", ...)}
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pybpf import raw
from pybpf.core.link import LinkInfo
from pybpf.core.program import ProgramInfo, target_fd
from pybpf.errors import BPFError
from pybpf.raw import AttachType, LinkType, ProgType

__all__ = ["Attachment", "attachments", "replacements", "tracing_links", "kind_of"]


@dataclass(frozen=True)
class Attachment:
    """One program attached to a function of a target program.

    ``kind`` is ``"freplace"``, ``"fentry"``, ``"fexit"``, ``"fmod_ret"`` (or
    the attach type's name for anything else); ``function`` the name of the
    target's function (its BTF id is ``btf_id``); ``prog_id``/``prog_name``
    the attached program; ``link_id`` the link that holds the attachment.
    """

    target_prog_id: int
    function: str
    btf_id: int
    kind: str
    prog_id: int
    prog_name: str
    link_id: int

    def __str__(self) -> str:
        return (f"{self.kind} program '{self.prog_name}' (id {self.prog_id}, link id {self.link_id}) "
                f"on {self.function}() of program id {self.target_prog_id}")


def kind_of(prog_type: int, attach_type: int) -> str:
    """Name of a tracing attachment from the attached program's type and the
    link's attach type."""
    if prog_type == ProgType.EXT:
        return "freplace"
    names = {AttachType.TRACE_FENTRY: "fentry", AttachType.TRACE_FEXIT: "fexit",
             AttachType.MODIFY_RETURN: "fmod_ret", AttachType.LSM_MAC: "lsm", AttachType.TRACE_RAW_TP: "tp_btf",
             AttachType.TRACE_ITER: "iter"}
    if attach_type in names:
        return names[AttachType(attach_type)]
    return AttachType(attach_type).name.lower() if attach_type in AttachType._value2member_map_ else str(attach_type)


def tracing_links() -> list[tuple[int, LinkInfo]]:
    """Every tracing link in the kernel: (link id, info).  Links that vanish
    while scanning are skipped."""
    out: list[tuple[int, LinkInfo]] = []
    for lid in raw.ids("link"):
        try:
            with raw.fd_by_id("link", lid) as fd:
                info = LinkInfo.from_fd(fd.raw)
        except BPFError:
            continue
        if info.type == LinkType.TRACING:
            out.append((lid, info))
    return out


def _prog_summary(prog_id: int) -> tuple[int, str]:
    """(type, name) of a program by id; (-1, '?') if it is gone."""
    try:
        with raw.fd_by_id("prog", prog_id) as fd:
            i = ProgramInfo.from_fd(fd.raw)
            return int(i.type), full_name(fd.raw, i.name, i.btf_id)
    except BPFError:
        return -1, "?"


def full_name(prog_fd: int, name: str, btf_id: int) -> str:
    """The untruncated name of a loaded program: the kernel keeps 15
    characters of the name, its BTF the whole name of the main function
    (the first func_info record)."""
    from pybpf._binding import ffi
    from pybpf.core.btf import Btf

    if len(name) < 15 or not btf_id:
        return name
    rec = ffi.new("uint32_t[2]")          # struct bpf_func_info {insn_off, type_id}

    def prep(info: Any) -> None:
        info.nr_func_info, info.func_info_rec_size = 1, 8
        info.func_info = int(ffi.cast("uintptr_t", rec))

    try:
        raw.obj_info(prog_fd, "pybpf_prog_info", prep)
        btf = Btf.from_kernel_id(btf_id)
    except BPFError:
        return name
    try:
        full = btf[int(rec[1])].name if rec[1] else ""
    except KeyError:
        full = ""
    finally:
        btf.close()
    return full if full.startswith(name) else name


def _func_names(target_id: int) -> dict[int, str]:
    """BTF id -> function name for a program's BTF ({} without BTF)."""
    from pybpf.core.btf import Btf, Kind

    try:
        with raw.fd_by_id("prog", target_id) as fd:
            btf_id = ProgramInfo.from_fd(fd.raw).btf_id
    except BPFError:
        return {}
    if not btf_id:
        return {}
    btf = Btf.from_kernel_id(btf_id)
    try:
        return {t.id: t.name for t in btf if t.kind == Kind.FUNC}
    finally:
        btf.close()


def _target_id(target: Any) -> int:
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    keep: list[raw.FD] = []
    try:
        return ProgramInfo.from_fd(target_fd(target, keep=keep)).id
    finally:
        for k in keep:
            k.close()


def attachments(target: Any, function: str | int | None = None) -> list[Attachment]:
    """Programs attached to functions of ``target`` (a Program, program id
    or pinned path) through trampolines: extensions, fentry/fexit/fmod_ret.
    ``function`` (a name or BTF id) limits the list to one function."""
    tid = _target_id(target)
    links = [(lid, li) for lid, li in tracing_links() if li.details.get("target_obj_id") == tid]
    if not links:
        return []
    names = _func_names(tid)
    out = []
    for lid, li in links:
        btf_id = li.details.get("target_btf_id", 0)
        fname = names.get(btf_id, f"<btf id {btf_id}>")
        if function is not None and function not in (fname, btf_id):
            continue
        ptype, pname = _prog_summary(li.prog_id)
        out.append(Attachment(tid, fname, btf_id, kind_of(ptype, li.details.get("attach_type", 0)), li.prog_id,
                              pname, lid))
    return sorted(out, key=lambda a: (a.function, a.link_id))


def replacements(target: Any) -> dict[str, Attachment]:
    """Which functions of ``target`` are replaced, and by which extension:
    ``{function name: Attachment}`` (a function has at most one)."""
    return {a.function: a for a in attachments(target) if a.kind == "freplace"}


def describe(target: Any) -> str:
    """A human-readable list of what is attached to ``target``'s functions."""
    lines = [str(a) for a in attachments(target)]
    return os.linesep.join(lines) if lines else "nothing attached"
