"""Shared fixtures of pybpf's own suite (the generic ones come from the
pybpf pytest plugin: netns, veth_pair, bpffs, bpf_compile, fd_leak_check)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

import pybpf

PROGS = Path(__file__).parent / "progs"
EXAMPLES = Path(pybpf.__file__).parent / "examples"


@pytest.fixture(scope="session")
def progs() -> Path:
    return PROGS


def compiled(name: str) -> Path:
    """Compile tests/progs/NAME.bpf.c (or a shipped example) once; cached."""
    src = PROGS / f"{name}.bpf.c"
    if not src.exists():
        src = EXAMPLES / f"{name}.bpf.c"
    return pybpf.compile(src)


@pytest.fixture
def load() -> Iterator[object]:
    """load("name") -> a loaded Object of tests/progs/name.bpf.c, closed after the test."""
    opened: list[pybpf.Object] = []

    def _load(name: str, **kw: object) -> pybpf.Object:
        obj = pybpf.Object.open(compiled(name), **kw)  # type: ignore[arg-type]
        opened.append(obj)
        obj.load()
        return obj

    yield _load
    for o in opened:
        o.close()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="session", autouse=True)
def suite_fd_leak_check() -> Iterator[None]:
    """The whole suite must give back every fd it opened (modulo caches that
    open once: scapy, the kernel BTF, which are opened before counting)."""
    import gc

    import scapy.all  # noqa: F401 - loads its caches before counting
    pybpf.Btf.vmlinux()
    gc.collect()
    before = set(os.listdir("/proc/self/fd"))
    yield
    gc.collect()
    leaked = set(os.listdir("/proc/self/fd")) - before
    links = []
    for fd in leaked:
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    bpf_leaks = [ln for ln in links if "bpf" in ln]
    assert not bpf_leaks, f"the suite leaked BPF fds: {bpf_leaks}"


@pytest.fixture(scope="session", autouse=True)
def no_libxdp_lock_dir_left() -> Iterator[None]:
    """libxdp (xdp-loader, and the dispatchers' libxdp-compatible state)
    creates /sys/fs/bpf/xdp and keeps it; the suite removes it again if it
    made it and left it empty."""
    lock_dir = Path("/sys/fs/bpf/xdp")
    existed = lock_dir.exists()
    yield
    if not existed:
        try:
            lock_dir.rmdir()
        except OSError:
            pass  # absent, or not empty: then something of the suite's is still there and other checks say so
