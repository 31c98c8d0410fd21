"""Map operations: single-element lookup/update (array and hash) and batch
lookup of a 1M-entry hash, through pybpf and in C with libbpf, same maps.

Run: python3 benchmarks/bench_maps.py [--quick] [--json]
"""
from __future__ import annotations

import array
from _harness import Result, clock, compiled, paired, parse_args, rate, report, run_c


def main() -> int:
    args = parse_args(__doc__)
    import pybpf
    from pybpf import raw
    from pybpf._binding import ffi, lib

    n = 50_000 if args.quick else 300_000
    span = 1024
    results: list[Result] = []
    with pybpf.Object.open(compiled("bench_maps")) as obj:
        obj.load()
        for name in ("arr", "hash"):
            m = obj.maps[name]
            for k in range(span):
                m[k] = k
            mid = m.id

            def lookups() -> None:
                for i in range(n):
                    m[i % span]

            def updates() -> None:
                for i in range(n):
                    m[i % span] = i

            fast_lookup, out, fd = lib.pybpf_map_lookup_int, ffi.new("uint64_t *"), m.fd

            def floor() -> None:
                for i in range(n):
                    fast_lookup(fd, i % span, out)

            py_l, c_l = paired(lambda: rate(n, lookups), lambda: float(run_c("map_ops", mid, "lookup", n, span)[0]),
                               args.rounds)
            results.append(Result(f"{name} lookup m[k]", "ops/s", py_l, c_l, 0.7))
            py_u, c_u = paired(lambda: rate(n, updates), lambda: float(run_c("map_ops", mid, "update", n, span)[0]),
                               args.rounds)
            results.append(Result(f"{name} update m[k]=v", "ops/s", py_u, c_u, 0.7))
            py_f, c_f = paired(lambda: rate(n, floor), lambda: float(run_c("map_ops", mid, "lookup", n, span)[0]),
                               args.rounds)
            results.append(Result(f"{name} lookup, bare cffi call", "ops/s", py_f, c_f, None,
                                  "floor: one cffi call per lookup, no Map"))

        big = obj.maps["big"]
        total = big.max_entries
        # Fill with BPF_MAP_UPDATE_BATCH straight from flat arrays (set-up, not measured).
        chunk = 65536
        for start in range(0, total, chunk):
            keys = array.array("I", range(start, start + chunk)).tobytes()
            vals = array.array("Q", range(start, start + chunk)).tobytes()
            raw.map_batch(raw.Cmd.MAP_UPDATE_BATCH, big.fd, None, None, ffi.from_buffer(keys),
                          ffi.from_buffer(vals), chunk)
        rounds = 1 if args.quick else 3

        def c_batch() -> float:
            rate_s, per_round = run_c("map_batch", big.id, 4096, rounds)[:2]
            assert int(per_round) == total, f"C read {per_round} of {total} entries"
            return float(rate_s)

        def batch_raw() -> float:
            t = 0.0
            for _ in range(rounds):
                t0 = clock()
                k, v = big.lookup_batch_raw(chunk=4096)
                t += clock() - t0
                assert len(k) == 4 * total
            return rounds * total / t

        def batch_decoded() -> float:
            t0 = clock()
            pairs = big.lookup_batch(chunk=4096)
            dt = clock() - t0
            assert len(pairs) == total and pairs[0][0] == pairs[0][1]
            return total / dt

        py_b, c_b = paired(batch_raw, c_batch, 3)
        results.append(Result("1M hash lookup_batch_raw()", "entries/s", py_b, c_b, 0.8,
                              "keys and values as two flat buffers"))
        py_d, c_d = paired(batch_decoded, c_batch, 3)
        results.append(Result("1M hash lookup_batch()", "entries/s", py_d, c_d, 0.8, "decoded (key, value) pairs"))
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
