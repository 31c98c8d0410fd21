"""Per-component statistics of dispatchers (beyond libxdp).

The kernel's own run statistics (``kernel.bpf_stats_enabled``,
:func:`pybpf.enable_stats`) never count a component: the dispatcher's call
jumps straight into the freplace'd program, so libxdp (and ``bpftool prog``)
credit everything to the dispatcher.  Here an ``fexit`` program is attached
to each component (fexit on an extension program is allowed), counting its
runs and its return values in a per-CPU array.  Its link and map are pinned
under ``/sys/fs/bpf/pybpf-stats/`` as ``IFINDEX-PROGID-{link,map}``, which
is independent of dispatcher rebuilds (the component programs outlive them);
pins of components that left the dispatcher are removed on the next change
or read.
"""
from __future__ import annotations

import errno as _errno
import os
from typing import TYPE_CHECKING

from pybpf import raw
from pybpf._binding import ffi
from pybpf.errors import BPFError, NotSupportedError

if TYPE_CHECKING:
    from pybpf.features.dispatcher import ComponentStats, _Dispatcher

NCOUNTS = 34
SUBDIR = "pybpf-stats"


def _dir(d: "_Dispatcher") -> str:
    return os.path.join(d.bpffs, SUBDIR)


def _paths(d: "_Dispatcher", prog_id: int) -> tuple[str, str]:
    base = os.path.join(_dir(d), f"{d._hook.kind}-{d.ifindex}-{prog_id}")
    return base + "-link", base + "-map"


def _main_func(prog_fd: int) -> str:
    """The BTF name of a loaded program's main function (its full name)."""
    from pybpf.core.btf import Btf, Kind

    info = raw.prog_info(prog_fd)
    short = ffi.string(info.name).decode()
    if not info.btf_id:
        return short
    with Btf.from_kernel_id(int(info.btf_id)) as btf:
        for t in btf:
            if t.kind == Kind.FUNC and t.name[:15] == short:
                return t.name
    return short


def enable(d: "_Dispatcher") -> None:
    from pybpf.compiler import compile as bpf_compile
    from pybpf.core.object import Object
    from pybpf.features.dispatcher import SOURCE_DIR

    os.makedirs(_dir(d), mode=0o700, exist_ok=True)
    obj_path = bpf_compile(SOURCE_DIR / "component_stats.bpf.c")
    for c in d.components():
        link_path, map_path = _paths(d, c.prog_id)
        if os.path.exists(link_path):
            continue
        with raw.fd_by_id("prog", c.prog_id) as pfd, Object.open(obj_path) as obj:
            prog = obj.programs["component_exit"]
            prog.set_attach_target(c.prog_id, _main_func(pfd.raw))
            try:
                obj.load()
            except BPFError as e:
                if e.errno == _errno.EPERM:
                    raise NotSupportedError(e.errno, f"per-component statistics need fexit programs on extension "
                                            f"programs, which this kernel refuses: {e.strerror}",
                                            hint="needs Linux 5.10+ with BPF trampolines allowed") from e
                raise
            link = prog.attach_trace()
            try:
                obj.maps["counts"].pin(map_path)
                link.pin(link_path)
            except BaseException:
                for p in (map_path, link_path):
                    if os.path.exists(p):
                        os.unlink(p)
                raise
            finally:
                link.close()
    gc(d)


def _entries(d: "_Dispatcher") -> dict[int, tuple[str, str]]:
    out: dict[int, tuple[str, str]] = {}
    prefix = f"{d._hook.kind}-{d.ifindex}-"
    try:
        names = os.listdir(_dir(d))
    except FileNotFoundError:
        return out
    for n in names:
        if n.startswith(prefix) and n.endswith("-link"):
            try:
                pid = int(n[len(prefix):-len("-link")])
            except ValueError:
                continue
            out[pid] = _paths(d, pid)
    return out


def gc(d: "_Dispatcher", keep: set[int] | None = None) -> None:
    """Remove the stats pins of components no longer in the dispatcher."""
    if keep is None:
        keep = {c.prog_id for c in d.components()}
    for pid, paths in _entries(d).items():
        if pid not in keep:
            for p in paths:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
    try:
        os.rmdir(_dir(d))           # only when empty
    except OSError:
        pass


def disable(d: "_Dispatcher") -> None:
    gc(d, keep=set())


def read(d: "_Dispatcher") -> "list[ComponentStats]":
    from pybpf.core.map import Map
    from pybpf.features.dispatcher import ComponentStats

    comps = d.components()
    gc(d, {c.prog_id for c in comps})
    entries = _entries(d)
    out = []
    for c in comps:
        if c.prog_id not in entries:
            continue
        with Map.from_pinned(entries[c.prog_id][1]) as m:
            vals = []
            for k in range(NCOUNTS):
                v = m[k]
                vals.append(sum(v) if isinstance(v, (list, tuple)) else int(v))
        returns = {k - 2: n for k, n in enumerate(vals) if 1 <= k < NCOUNTS - 1 and n}
        if vals[NCOUNTS - 1]:
            returns[-99] = vals[NCOUNTS - 1]
        # Each run bumps exactly one return bucket.  The buckets are read one
        # lookup at a time while packets keep arriving, so counts[0] read
        # first can lag the buckets read after it; the buckets' sum is a
        # snapshot in which runs and returns always agree.
        out.append(ComponentStats(prog_id=c.prog_id, name=c.name, runs=sum(vals[1:]), returns=returns))
    return out
