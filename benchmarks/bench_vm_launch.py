"""Benchmark: time from launching the VM harness to the command starting,
to Python's first output, and to the first pytest test running inside the
guest, under the accelerator the harness picks (TCG here).

Usage::

    python benchmarks/bench_vm_launch.py [--kernels 6.1,6.12,7.3] [--runs 3] [--no-baseline] [--no-pytest]

Variants, measured in the same run, one guest at a time:

    snapshot  the harness's default: the guest is restored from its boot
              snapshot (the warm-up run saves it if missing)
    boot      the harness booting the kernel (``snapshot=False``: qboot,
              uncompressed vmlinux, tuned kernel command line)
    naive     the naive recipe: compressed bzImage, SeaBIOS, ``-cpu max``
              with 5-level paging, 2 GiB, only ``console=ttyS0 quiet
              mitigations=off panic=-1``; same initramfs and 9p setup

Phases (medians):

    guest     launch -> the guest has its run's files (QEMU start, then
              restore, or firmware + kernel boot + module loading)
    9p root   mounting the host's root over virtio-9p
    mounts    API filesystems, module tree, shares, channels
    exec      switch_root and the guest's PID 1 up to the command
    python    command start -> ``python3 -c "print()"``'s output

plus the QEMU process's CPU time to the command start / first output (user
+ system, all threads: unlike wall time it barely grows when other
processes compete for the two cores), and ``->pytest``: launch -> the body
of the first test of ``python3 -m pytest -q -s -p no:cacheprovider`` on a
one-test file (pytest's own imports run at TCG speed).

Kernels are fetched first (not timed).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pybpf.vm import VMConfig, guest_environment, load_matrix, resolve_kernel  # noqa: E402
from pybpf.vm.runner import detect_accel, run_in_vm  # noqa: E402

PHASES = ("guest", "9p root", "mounts", "exec", "python")

FIRST_TEST = "def test_first():\n    print('FIRST-TEST-RUNNING', flush=True)\n"


def one_run(kernel, cfg: VMConfig) -> dict[str, float]:
    out = io.BytesIO()
    t0 = time.monotonic()
    r = run_in_vm(kernel, ["python3", "-c", "print('first')"], cwd=Path("/tmp"), shares=[],
                  env=guest_environment(tty=False), timeout=180, config=cfg, stdout=out, stderr=io.BytesIO())
    total = time.monotonic() - t0
    if r.status != 0 or b"first" not in out.getvalue():
        raise SystemExit(f"benchmark boot failed: {r.reason} {r.status}\n{r.console}")
    m = r.marks
    return {
        "guest": m["params"],
        "9p root": m["rootfs"] - m["params"],
        "mounts": m["mounts"] - m["rootfs"],
        "exec": m["start"] - m["mounts"],
        "python": m["output"] - m["start"],
        "to_command": m["start"],
        "cpu_command": m["cpu:start"],
        "cpu_output": m["cpu:output"],
        "to_output": m["output"],
        "total": total,
    }


def pytest_run(kernel, cfg: VMConfig, workdir: Path) -> float:
    """Launch -> the first test's body running (its first output line)."""
    out = io.BytesIO()
    r = run_in_vm(kernel, ["python3", "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_first.py"],
                  cwd=workdir, shares=[workdir], env=guest_environment(tty=False), timeout=300, config=cfg,
                  stdout=out, stderr=io.BytesIO())
    if r.status != 0 or not out.getvalue().startswith(b"FIRST-TEST-RUNNING"):
        raise SystemExit(f"benchmark pytest run failed: {r.reason} {r.status}\n{out.getvalue()!r}\n{r.console}")
    return r.marks["output"]


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", default=",".join(load_matrix()))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true", help="only the snapshot variant")
    ap.add_argument("--no-pytest", action="store_true", help="skip the ->pytest column")
    args = ap.parse_args()
    accel = detect_accel()
    print(f"accelerator: {accel}; runs per variant: {args.runs} (median shown); "
          f"host load average at the start: {os.getloadavg()[0]:.1f}", flush=True)
    variants = {"snapshot": lambda k: (k, VMConfig(quiet=True, snapshot=True))}
    if not args.no_baseline:
        variants["boot"] = lambda k: (k, VMConfig(quiet=True, snapshot=False))
        variants["naive"] = lambda k: (dataclasses.replace(k, image=k.dir / "vmlinuz"),
                                       VMConfig(quiet=True, bios="", cpu="max", memory="2G", fast_boot=False,
                                                snapshot=False))
    header = (f"{'kernel':8} {'variant':8} " + " ".join(f"{p:>8}" for p in PHASES)
              + f" {'->cmd':>7} {'->output':>8} {'cpu->cmd':>8} {'cpu->out':>8} {'->pytest':>8}")
    print(header, flush=True)
    rows = []
    summary = []
    with tempfile.TemporaryDirectory(prefix="pybpf-bench-") as d:
        workdir = Path(d)
        (workdir / "test_first.py").write_text(FIRST_TEST)
        for name in [k.strip() for k in args.kernels.split(",") if k.strip()]:
            kernel = resolve_kernel(name)
            med = {}
            for vname, make in variants.items():
                k, cfg = make(kernel)
                one_run(k, cfg)  # warm-up: host page cache, initramfs, the snapshot
                runs = [one_run(k, cfg) for _ in range(args.runs)]
                m = med[vname] = median_of(runs)
                if not args.no_pytest:
                    pytest_run(k, cfg, workdir)  # warm-up (the share's snapshot)
                    m["pytest"] = statistics.median(pytest_run(k, cfg, workdir) for _ in range(args.runs))
                pt = f"{m['pytest']:8.2f}" if "pytest" in m else f"{'-':>8}"
                rows.append(f"{name:8} {vname:8} " + " ".join(f"{m[p]:8.2f}" for p in PHASES)
                            + f" {m['to_command']:7.2f} {m['to_output']:8.2f} {m['cpu_command']:8.2f}"
                            f" {m['cpu_output']:8.2f} {pt}")
                print(rows[-1], flush=True)
            summary.append((name, med))
    print()
    print(header)
    print("\n".join(rows))
    print()
    for name, med in summary:
        fast = med["snapshot"]
        line = (f"{name}: launch -> command start {fast['to_command']:.2f} s, -> first Python output "
                f"{fast['to_output']:.2f} s (QEMU CPU {fast['cpu_output']:.2f} s)")
        if "pytest" in fast:
            line += f", -> first pytest test {fast['pytest']:.2f} s"
        for base in ("boot", "naive"):
            if base in med:
                b = med[base]
                line += (f"; {base}: {b['to_output']:.2f} s (CPU {b['cpu_output']:.2f} s), "
                         f"{b['to_output'] / fast['to_output']:.2f}x wall, {b['cpu_output'] / fast['cpu_output']:.2f}x CPU")
        print(line)
    print(f"host load average at the end: {os.getloadavg()[0]:.1f} (wall times inflate with load; CPU times much less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
