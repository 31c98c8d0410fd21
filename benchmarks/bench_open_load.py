"""Open + load of a medium object (8 programs of 5 kinds, 10 maps, ~460
instructions): pybpf's Object.open().load() against bpf_object__open_file +
bpf_object__load in C, then close, repeated.

Run: python3 benchmarks/bench_open_load.py [--quick] [--json]
"""
from __future__ import annotations

from _harness import Result, clock, compiled, paired, parse_args, report, run_c


def main() -> int:
    args = parse_args(__doc__)
    import pybpf

    n = 5 if args.quick else 20
    path = compiled("medium")

    def py() -> float:
        t0 = clock()
        for _ in range(n):
            with pybpf.Object.open(path) as obj:
                obj.load()
        return n / (clock() - t0)

    py()   # warm caches (BTF of the kernel, imports) as the C side's page cache is warm
    py_rate, c_rate = paired(py, lambda: 1.0 / float(run_c("open_load", path, n)[0]), args.rounds)
    # Target "within 1.1x of C's time" is a rate ratio of at least 1/1.1.
    return report([Result("open+load medium object", "loads/s", py_rate, c_rate, 1 / 1.1,
                          f"{1e3 / py_rate:.1f} ms vs {1e3 / c_rate:.1f} ms")], args.json)


if __name__ == "__main__":
    raise SystemExit(main())
