"""Command line of the VM harness: ``python -m pybpf.vm``.

Examples::

    python -m pybpf.vm run --kernel 6.1 -- python -m pytest tests/ -m trampoline
    python -m pybpf.vm run --kernel host -- python -m pytest tests/
    python -m pybpf.vm run --kernel ~/linux/arch/x86/boot/bzImage --modules ~/mods/lib/modules -- uname -r
    python -m pybpf.vm fetch 6.1 6.12 7.3
    python -m pybpf.vm compile --kernel 6.1,7.3 tests/progs/*.bpf.c
    python -m pybpf.vm list

Exit status of ``run``: the command's own status, or 122 (guest stopped
without a status), 123 (kernel panic/oops), 124 (timeout), 125 (QEMU or the
kernel could not be started/prepared), 128+N (harness killed by signal N).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import EXIT_START_FAILED, run_command
from .kernels import FetchError, cache_dir, load_matrix, prepare_kernel
from .runner import detect_accel, snapshot_dir


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pybpf.vm", description="Run commands on other kernels under QEMU.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="boot a kernel and run a command inside it")
    r.add_argument("--kernel", "-k", default=os.environ.get("PYBPF_VM_KERNEL_DEFAULT", "6.1"),
                   help="a matrix name (see `list`), 'host', or a path to a bzImage/vmlinux")
    r.add_argument("--modules", type=Path, help="module tree for a --kernel path (lib/modules or lib/modules/RELEASE)")
    r.add_argument("--share", action="append", type=Path, default=[],
                   help="directory shared writable at the same path (repeatable; default: the current directory); "
                        "the command runs in the first one unless --cwd is given")
    r.add_argument("--cwd", type=Path, help="working directory of the command (default: first share)")
    r.add_argument("--timeout", type=float, default=float(os.environ.get("PYBPF_VM_TIMEOUT", "1800")),
                   help="seconds before the guest is killed (boot included; 0: none; default 1800)")
    r.add_argument("--memory", "-m", default=os.environ.get("PYBPF_VM_MEMORY", "1G"))
    r.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE", help="extra environment variable")
    r.add_argument("--console", action="store_true", help="show the guest's kernel console on stderr")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress messages")
    r.add_argument("--append", default="", help="extra kernel command line")
    r.add_argument("--accel", choices=("kvm", "tcg"), help="force an accelerator (default: probe)")
    r.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                   help="boot the kernel every time instead of starting from a cached boot snapshot "
                        "(also PYBPF_VM_SNAPSHOT=0)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    f = sub.add_parser("fetch", help="download and prepare matrix kernels")
    f.add_argument("kernels", nargs="*", help="names (default: all)")
    f.add_argument("--refresh", action="store_true", help="re-resolve and download even if cached")
    c = sub.add_parser("compile", help="compile BPF C on the host for guest kernels (into the cache guests share)")
    c.add_argument("--kernel", "-k", action="append", required=True,
                   help="matrix names, comma-separated or repeated (e.g. 6.1,7.3)")
    c.add_argument("--cflag", action="append", default=[], help="extra clang flag (repeatable)")
    c.add_argument("sources", nargs="+", type=Path, help="BPF C files")
    sub.add_parser("list", help="show the kernel matrix and what is cached")
    sub.add_parser("accel", help="print the accelerator the harness would use")
    return ap


def _compile(args: argparse.Namespace) -> int:
    """Compile each source for each kernel on the host (clang in a TCG
    guest is about 15 times slower) into pybpf's compile cache, which the
    harness shares with its guests: there, pybpf.compile finds the object."""
    from pybpf.compiler import compile as bpf_compile
    from pybpf.errors import BPFError

    from . import resolve_kernel

    names = [n.strip() for item in args.kernel for n in item.split(",") if n.strip()]
    rc = 0
    for name in names:
        try:
            k = resolve_kernel(name)
        except FetchError as e:
            print(f"pybpf.vm: {e}", file=sys.stderr)
            return EXIT_START_FAILED
        for src in args.sources:
            try:
                # absolute, as test suites name their sources: the path is part of the cache key
                obj = bpf_compile(src.resolve(), cflags=args.cflag, kernel_btf=k.image, kernel_release=k.release)
            except BPFError as e:
                print(f"pybpf.vm: {name}: {src}: {e}", file=sys.stderr)
                rc = 1
                continue
            print(f"{name}\t{src}\t{obj}")
    return rc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "run":
        cmd = args.command
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            print("pybpf.vm: no command given (run ... -- COMMAND)", file=sys.stderr)
            return 2
        env = {}
        for item in args.env:
            k, sep, v = item.partition("=")
            if not sep:
                print(f"pybpf.vm: --env {item}: expected NAME=VALUE", file=sys.stderr)
                return 2
            env[k] = v
        return run_command(
            args.kernel, cmd, shares=args.share or None, cwd=args.cwd, timeout=args.timeout or None,
            memory=args.memory, extra_env=env, console=args.console, quiet=args.quiet,
            append=args.append, accel=args.accel, modules=args.modules,
            snapshot=None if args.snapshot else False,
        ).status
    if args.cmd == "fetch":
        matrix = load_matrix()
        names = args.kernels or list(matrix)
        rc = 0
        for n in names:
            if n not in matrix:
                print(f"pybpf.vm: unknown kernel {n!r}; known: {', '.join(matrix)}", file=sys.stderr)
                rc = 2
                continue
            try:
                k = prepare_kernel(matrix[n], refresh=args.refresh)
                print(f"{n}\t{k.release}\t{k.image}")
            except FetchError as e:
                print(f"pybpf.vm: {n}: {e}", file=sys.stderr)
                rc = EXIT_START_FAILED
        return rc
    if args.cmd == "compile":
        return _compile(args)
    if args.cmd == "list":
        matrix = load_matrix()
        print(f"cache: {cache_dir()}")
        for n, spec in matrix.items():
            from .kernels import _load_prepared

            k = _load_prepared(cache_dir() / "kernels" / n)
            state = f"{k.release} ({k.image.name})" if k else "not fetched"
            print(f"{n:8} {', '.join(spec.suites):32} {state}")
        snaps = sorted(snapshot_dir().glob("*.vmstate"))
        size = sum(p.stat().st_size for p in snaps) >> 20
        print(f"boot snapshots: {len(snaps)} ({size} MiB) in {snapshot_dir()} (safe to delete)")
        return 0
    if args.cmd == "accel":
        print(detect_accel())
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
