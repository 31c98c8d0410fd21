"""Shared helpers of pybpf's benchmarks.

Each benchmark measures the same work done through pybpf and in C with
libbpf, in the same run, and prints pybpf's figure, C's and their ratio
(pybpf / C, higher is better for pybpf) next to the target.  The C
baselines are compiled here from ``benchmarks/c/*.c`` with ``gcc -lbpf``
(cached by content in ``$PYBPF_BENCH_BUILD``, default /tmp/pybpf-bench-build).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
BUILD = Path(os.environ.get("PYBPF_BENCH_BUILD", "/tmp/pybpf-bench-build"))


@dataclass
class Result:
    name: str
    unit: str
    pybpf: float
    c: float
    target: float | None = None   # minimum ratio pybpf / C
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.pybpf / self.c if self.c else float("nan")

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target


def c_binary(name: str) -> Path:
    """Compile benchmarks/c/NAME.c against the system libbpf (cached)."""
    src = HERE / "c" / f"{name}.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    out = BUILD / f"{name}-{digest}"
    if not out.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        r = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(src), "-lbpf", "-lelf", "-lz"],
                           capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"compiling the C baseline {src} failed (needs gcc and libbpf-dev):\n{r.stderr}")
        os.replace(tmp, out)
    return out


def run_c(name: str, *args: Any) -> list[str]:
    """Run a C baseline; its stdout's words."""
    r = subprocess.run([str(c_binary(name)), *map(str, args)], capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise SystemExit(f"C baseline {name} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.split()


def paired(py: Callable[[], float], c: Callable[[], float], rounds: int) -> tuple[float, float]:
    """Measure pybpf and C back to back ``rounds`` times and keep the pair
    with the median ratio: on a shared machine the load changes between
    rounds, and a pair measured together sees the same load."""
    pairs = []
    for _ in range(rounds):
        p, q = py(), c()
        pairs.append((p / q if q else 0.0, p, q))
    pairs.sort()
    _, p, q = pairs[len(pairs) // 2]
    return p, q


def best(fn: Callable[[], float], rounds: int) -> float:
    """The best (highest) of ``rounds`` measurements."""
    return max(fn() for _ in range(rounds))


def clock() -> float:
    """CPU time of this process (user + system), like the C baselines; wall
    time with BENCH_CLOCK=wall. The machines are shared: wall time would
    count the time spent waiting for a CPU."""
    if os.environ.get("BENCH_CLOCK") == "wall":
        return time.perf_counter()
    return time.process_time()


def rate(n: int, fn: Callable[[], Any]) -> float:
    t0 = clock()
    fn()
    return n / (clock() - t0)


def compiled(name: str) -> Path:
    import pybpf
    return pybpf.compile(HERE / "progs" / f"{name}.bpf.c")


def parse_args(doc: str | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (CI smoke run)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--rounds", type=int, default=5,
                    help="paired pybpf/C measurements per figure (the median ratio is kept)")
    return ap.parse_args()


def fmt(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.3g}"


def report(results: list[Result], as_json: bool = False) -> int:
    """Print the table (or JSON). Returns 0 (targets are reported, not enforced)."""
    if as_json:
        print(json.dumps([dict(asdict(r), ratio=r.ratio, met=r.met) for r in results], indent=2))
        return 0
    w = max(len(r.name) for r in results)
    print(f"{'benchmark':<{w}}  {'unit':<10} {'pybpf':>9} {'C libbpf':>9} {'ratio':>6}  target  result")
    for r in results:
        tgt = f">={r.target:.2f}" if r.target is not None else "-"
        res = {True: "met", False: "MISSED", None: ""}[r.met]
        print(f"{r.name:<{w}}  {r.unit:<10} {fmt(r.pybpf):>9} {fmt(r.c):>9} {r.ratio:>6.2f}  {tgt:<6}  {res}"
              + (f"  ({r.note})" if r.note else ""))
    return 0
