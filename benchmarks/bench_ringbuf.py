"""Ring buffer consumption: records per second drained from a filled ring
buffer, per-record callback and batch modes, against libbpf's
ring_buffer__consume in C on the same map.  The records (16 bytes each) are
produced by an XDP program run through BPF_PROG_TEST_RUN (``repeat``);
production is not timed, only the drain.

Run: python3 benchmarks/bench_ringbuf.py [--quick] [--json]
"""
from __future__ import annotations

from _harness import Result, clock, compiled, paired, parse_args, report, run_c


def main() -> int:
    args = parse_args(__doc__)
    import pybpf
    from pybpf.core.ringbuf import RingBuffer

    n = 200_000 if args.quick else 1_000_000
    results: list[Result] = []
    with pybpf.Object.open(compiled("bench_rb")) as obj:
        obj.load()
        prog, rb_map = obj.programs["produce"], obj.maps["rb"]
        def c_rate() -> float:
            return float(run_c("ringbuf_drain", rb_map.id, prog.id, n, 1)[0])

        def fill() -> None:
            r = prog.test_run(bytes(64), repeat=n)
            assert r.retval == 2, "the ring buffer overflowed: make it larger"

        seen = [0]

        def on_record(data: bytes) -> None:
            seen[0] += data[0]       # read the record, as the C callback does

        with RingBuffer(rb_map, on_record) as rb:
            def callback_mode() -> float:
                fill()
                before = rb.received
                t0 = clock()
                rb.consume()
                dt = clock() - t0
                assert rb.received - before == n
                return n / dt
            cb, c_cb = paired(callback_mode, c_rate, 3)
        with RingBuffer(rb_map) as rb:
            def batch_mode() -> float:
                fill()
                t0 = clock()
                recs = rb.consume_batch()
                dt = clock() - t0
                assert len(recs) == n and len(recs[0]) == 16
                return n / dt

            def raw_mode() -> float:
                fill()
                t0 = clock()
                raw = rb.consume_raw()
                dt = clock() - t0
                assert raw.count == n and raw.size == 16
                return n / dt
            bt, c_bt = paired(batch_mode, c_rate, args.rounds)
            rw, c_rw = paired(raw_mode, c_rate, args.rounds)
    results.append(Result("ringbuf callback per record", "records/s", cb, c_cb, None,
                          "one Python call per record"))
    results.append(Result("ringbuf consume_batch()", "records/s", bt, c_bt, 0.5, "list of bytes per drain"))
    results.append(Result("ringbuf consume_raw()", "records/s", rw, c_rw, 0.5,
                          "one flat buffer per drain (RawBatch)"))
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
