"""Run every pybpf-vs-C benchmark and print one summary table.

Run: python3 benchmarks/run_all.py [--quick] [--vm]

``--vm`` also runs bench_vm_launch.py (boots QEMU guests: slow under TCG;
it compares against its own baseline, not C).  Targets are reported, not
enforced: the exit status is 0 unless a benchmark crashed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _harness import Result, report

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_maps.py", "bench_ringbuf.py", "bench_open_load.py"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--vm", action="store_true", help="also run bench_vm_launch.py (boots guests)")
    args = ap.parse_args()
    results: list[Result] = []
    failed = 0
    for b in BENCHES:
        cmd = [sys.executable, str(HERE / b), "--json"] + (["--quick"] if args.quick else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(f"{b} failed:\n{r.stderr.strip()}", file=sys.stderr)
            failed += 1
            continue
        for d in json.loads(r.stdout):
            results.append(Result(d["name"], d["unit"], d["pybpf"], d["c"], d["target"], d["note"]))
    report(results)
    if args.vm:
        print("\nVM harness launch-to-first-test (bench_vm_launch.py):", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / "bench_vm_launch.py"), "--runs", "1"]).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
