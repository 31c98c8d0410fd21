"""pybpf's VM harness: run commands (test suites) on other kernels under QEMU.

Needs no compiled part of pybpf: standard library only (plus pytest for the
plugin in :mod:`pybpf.vm.pytest_plugin`). See docs/vm.md.

>>> from pybpf.vm import run_command
>>> run_command("6.1", ["uname", "-r"]).status   # doctest: +SKIP
0
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from .kernels import FetchError, PreparedKernel, cache_dir, load_matrix, prepare_custom_kernel, prepare_kernel
from .runner import (
    EXIT_NO_STATUS,
    EXIT_PANIC,
    EXIT_START_FAILED,
    EXIT_TIMEOUT,
    RunResult,
    VMConfig,
    detect_accel,
    guest_environment,
    run_in_vm,
    run_on_host,
)

__all__ = [
    "EXIT_NO_STATUS",
    "EXIT_PANIC",
    "EXIT_START_FAILED",
    "EXIT_TIMEOUT",
    "FetchError",
    "PreparedKernel",
    "RunResult",
    "VMConfig",
    "cache_dir",
    "detect_accel",
    "load_matrix",
    "resolve_kernel",
    "run_command",
]


def _pybpf_cache_share() -> Path | None:
    """pybpf's compile cache ($PYBPF_CACHE or ~/.cache/pybpf), shared
    writable with guests so that generated vmlinux.h files (per kernel) and
    compiled objects persist across boots and are reused from the host.
    ``PYBPF_VM_SHARE_CACHE=0`` turns this off."""
    if os.environ.get("PYBPF_VM_SHARE_CACHE", "1") == "0":
        return None
    p = Path(os.environ.get("PYBPF_CACHE") or Path.home() / ".cache" / "pybpf")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    p = p.resolve()
    return p if os.access(p, os.W_OK) and p != Path("/") else None


def resolve_kernel(name: str, modules: Path | None = None) -> PreparedKernel:
    """A matrix name (fetched on first use) or a path to a kernel image."""
    matrix = load_matrix()
    if name in matrix:
        return prepare_kernel(matrix[name])
    p = Path(name).expanduser()
    if p.exists() or "/" in name:
        return prepare_custom_kernel(p, modules)
    raise FetchError(f"unknown kernel {name!r}: not in the matrix ({', '.join(matrix)}), 'host', nor a file")


def run_command(
    kernel: str,
    argv: Sequence[str],
    *,
    shares: Sequence[Path] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    memory: str = "1G",
    extra_env: dict[str, str] | None = None,
    console: bool = False,
    quiet: bool = False,
    append: str = "",
    accel: str | None = None,
    modules: Path | None = None,
    timing: bool = False,
    label: str | None = None,
    snapshot: bool | None = None,
) -> RunResult:
    """Run ``argv`` on ``kernel`` ("host", a matrix name or an image path).

    The first of ``shares`` (default: the current directory) is shared
    writable and is the working directory unless ``cwd`` is given.
    """
    share_list = [Path(s).resolve() for s in (shares or [Path.cwd()])]
    workdir = Path(cwd).resolve() if cwd else share_list[0]
    if kernel == "host":
        env = dict(os.environ)
        env.update(extra_env or {})
        return run_on_host(list(argv), workdir, timeout, env)
    try:
        k = resolve_kernel(kernel, modules)
    except FetchError as e:
        print(f"pybpf.vm: {e}", file=sys.stderr)
        return RunResult(EXIT_START_FAILED, "start-failed", {}, "")
    env_extra = dict(extra_env or {})
    pcache = _pybpf_cache_share()
    if pcache is not None and "PYBPF_CACHE" not in env_extra:
        share_list.append(pcache)
        env_extra["PYBPF_CACHE"] = str(pcache)
    cfg = VMConfig(memory=memory, console=console, quiet=quiet, accel=accel, timing=timing)
    if snapshot is not None:
        cfg.snapshot = snapshot
    if append:
        cfg.cmdline_extra = (cfg.cmdline_extra + " " + append).strip()
    return run_in_vm(
        k, argv, cwd=workdir, shares=share_list, env=guest_environment(env_extra),
        timeout=timeout, config=cfg, label=label or kernel,
    )
