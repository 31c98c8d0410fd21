"""Shared helpers of the reliability suite: resource snapshots (process fds,
the kernel's program/map/link ids, bpffs) and subprocess workers.

Kept in a module of its own (not conftest) so workers started with
``python3 -c`` can import it too.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROGS = HERE / "progs"
TESTS_PROGS = ROOT / "tests" / "progs"
BPFFS = "/sys/fs/bpf"


def compiled(name: str) -> Path:
    """Compile tests/reliability/progs/NAME.bpf.c (or tests/progs/NAME.bpf.c,
    or a shipped example) once; cached by content."""
    import pybpf

    for d in (PROGS, TESTS_PROGS, Path(pybpf.__file__).parent / "examples"):
        src = d / f"{name}.bpf.c"
        if src.exists():
            return pybpf.compile(src)
    raise FileNotFoundError(f"no BPF source named {name}")


def open_fds() -> dict[int, str]:
    """The process's open fds and what they point at."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return out


def _kernel_names(kind: str, ids: Iterable[int]) -> dict[int, str]:
    """id -> name of kernel objects (programs and maps by their own name,
    links by their program's name); objects that vanished meanwhile are skipped."""
    from pybpf import raw
    from pybpf._binding import ffi
    from pybpf.errors import BPFError

    out: dict[int, str] = {}
    for i in ids:
        try:
            with raw.fd_by_id(kind, i) as fd:
                if kind == "prog":
                    out[i] = ffi.string(raw.prog_info(fd.raw).name).decode()
                elif kind == "map":
                    out[i] = ffi.string(raw.map_info(fd.raw).name).decode()
                else:
                    pid = int(raw.link_info(fd.raw).prog_id)
                    name = ""
                    if pid:
                        try:
                            with raw.fd_by_id("prog", pid) as pfd:
                                name = ffi.string(raw.prog_info(pfd.raw).name).decode()
                        except BPFError:
                            pass
                    out[i] = f"link->{name}"
        except BPFError:
            continue
    return out


@dataclass
class Snapshot:
    """What a test may leave behind: fds, kernel ids, bpffs entries."""

    fds: dict[int, str]
    ids: dict[str, set[int]]
    bpffs: set[str] = field(default_factory=set)

    @classmethod
    def take(cls) -> "Snapshot":
        from pybpf import raw

        gc.collect()
        entries = set()
        for dirpath, dirnames, filenames in os.walk(BPFFS):
            for n in dirnames + filenames:
                entries.add(os.path.join(dirpath, n))
        return cls(open_fds(), {k: set(raw.ids(k)) for k in ("prog", "map", "link")}, entries)

    def leftovers(self, names: Iterable[str] | None = None, *, settle: float = 5.0) -> list[str]:
        """:meth:`_leftovers`, retried for up to ``settle`` seconds: the kernel
        releases the maps of a closed program after an RCU grace period."""
        import time

        deadline = time.monotonic() + settle
        while True:
            out = self._leftovers(names)
            if not out or time.monotonic() > deadline:
                return out
            time.sleep(0.1)

    def _leftovers(self, names: Iterable[str] | None = None) -> list[str]:
        """What exists now and did not at the snapshot. Kernel objects are
        global: with ``names`` only objects of those names count (other
        processes on the host may load their own meanwhile): names are prefixes,
        e.g. "xdp_coun" also matches libbpf's internal maps "xdp_coun.bss"."""
        now = Snapshot.take()
        wanted = set(names) if names is not None else None
        out = [f"fd {fd} -> {what}" for fd, what in now.fds.items() if fd not in self.fds]
        for kind in ("prog", "map", "link"):
            new = now.ids[kind] - self.ids[kind]
            for i, name in _kernel_names(kind, new).items():
                base = name.removeprefix("link->")
                if wanted is None or any(base.startswith(w) for w in wanted):
                    out.append(f"{kind} id {i} '{name}'")
        out += [f"bpffs {p}" for p in sorted(now.bpffs - self.bpffs) if not _others_scratch(p)]
        return out


def _others_scratch(path: str) -> bool:
    """A bpffs scratch directory (pybpf-PID-N) of another live process."""
    rel = os.path.relpath(path, BPFFS).split(os.sep)[0]
    parts = rel.split("-")
    if len(parts) >= 3 and parts[0] == "pybpf" and parts[1].isdigit() and int(parts[1]) != os.getpid():
        return os.path.exists(f"/proc/{parts[1]}")
    if rel.startswith("pybpf-fuzz-") and rel[11:].isdigit():
        return os.path.exists(f"/proc/{rel[11:]}")
    return False


def run_python(code: str, *, timeout: float = 300, env: dict[str, str] | None = None,
               prefix: list[str] | None = None, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (optionally behind ``prefix``, e.g.
    setpriv), with this directory and the repository importable."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env["PYTHONFAULTHANDLER"] = "1"
    if env:
        full_env.update(env)
    cmd = (prefix or []) + [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=str(HERE),
                          pass_fds=pass_fds)


def popen_python(code: str, *, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[str]:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), full_env.get("PYTHONPATH", "")])
    if env:
        full_env.update(env)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=full_env, cwd=str(HERE),
                            text=True, **kw)  # type: ignore[call-overload]


def env_int(name: str, default: int) -> int:
    """An integer knob from the environment (CI-sized default)."""
    v = os.environ.get(name)
    return int(v) if v else default


# -- what the kernel holds now (shared by the hygiene, crash and dispatcher tests) --------------------

def links_on(link_type: int, ifindex: int | None = None) -> list[tuple[int, Any]]:
    """(link id, LinkInfo) of every kernel link of ``link_type`` (a
    ``pybpf.LinkType``), only those on ``ifindex`` when given; links that
    vanish while scanning are skipped."""
    import pybpf
    from pybpf import raw
    from pybpf.errors import BPFError

    out = []
    for lid in raw.ids("link"):
        try:
            with pybpf.Link.from_id(lid) as link:
                info = link.info()
        except BPFError:
            continue
        if info.type == link_type and (ifindex is None or info.details.get("ifindex") == ifindex):
            out.append((lid, info))
    return out


def counted(prog_id: int, map_name: str = "rel_counts") -> int:
    """Packets counted so far in the ``rel_counts`` map (struct rel_counter
    values) of program ``prog_id``."""
    import pybpf

    with pybpf.Program.from_id(prog_id) as p:
        for mid in p.info().map_ids:
            with pybpf.Map.from_id(mid) as m:
                if m.name == map_name:
                    return sum(v.packets for v in m.values())
    raise AssertionError(f"program {prog_id} has no {map_name} map")


def guest_scaled(n: int, factor: int = 20, floor: int = 3) -> int:
    """``n`` rounds on the host; ``n // factor`` (at least ``floor``) inside a
    VM guest (``PYBPF_VM`` set), where TCG runs the kernel 20-50x slower."""
    return max(n // factor, floor) if os.environ.get("PYBPF_VM") else n
