"""Ring buffer and perf buffer consumers against records produced by real
XDP runs (BPF_PROG_TEST_RUN): none lost at a modest rate, drops reported
when the buffers overflow, batch and callback modes, select/asyncio."""
from __future__ import annotations

import asyncio
import os
import select
import struct
import threading
import time

import pytest

import pybpf
from pybpf.core.ringbuf import PerfBuffer, RawBatch, RingBuffer
from pybpf.errors import BPFInvalidError, ClosedError, StateError

pytestmark = pytest.mark.usefixtures("fd_leak_check")

REC = struct.Struct("<QII")          # struct rec { u64 seq; u32 len; u32 cpu; }
RING_BYTES = 4096 * 4                # events' max_entries
RING_CAPACITY = RING_BYTES // (8 + REC.size)


def seqs(records: list[bytes]) -> list[int]:
    return [REC.unpack_from(r)[0] for r in records]


@pytest.fixture
def rb_obj(load):
    return load("rb_events")


@pytest.fixture
def one_cpu():
    """Pin this thread to one CPU for the test. A perf buffer has one ring
    per CPU, and the kernel reports a loss (PERF_RECORD_LOST) only in the
    ring that lost records, at its next successful write: if the scheduler
    moves test_run's thread to another CPU between the overflow and the
    next write, the loss is never reported (seen in CI)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield min(before)
    finally:
        os.sched_setaffinity(0, before)


def produce(prog: pybpf.Program, total: int, *, per_run: int = 50, pause: float = 0.002) -> threading.Thread:
    """A producer thread: `total` records, `per_run` per test_run call."""
    def run() -> None:
        left = total
        while left:
            n = min(per_run, left)
            prog.test_run(bytes(64), repeat=n)
            left -= n
            time.sleep(pause)

    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.needs("ringbuf")
def test_ringbuf_callback_receives_every_record_at_modest_rate(rb_obj):
    got: list[bytes] = []
    total = 3000
    with RingBuffer(rb_obj.maps["events"], got.append, dropped_counter=rb_obj.maps["dropped"]) as rb:
        t = produce(rb_obj.programs["rb_produce"], total)
        deadline = time.monotonic() + 30
        while len(got) < total and time.monotonic() < deadline:
            rb.poll(timeout_ms=50)
        t.join()
        rb.consume()
        assert rb.dropped == 0
        assert rb.received == total and rb.lost == 0
    assert seqs(got) == list(range(total))
    assert {REC.unpack(r)[1] for r in got} == {64}


@pytest.mark.needs("ringbuf")
def test_ringbuf_batch_receives_every_record_at_modest_rate(rb_obj):
    got: list[bytes] = []
    total = 3000
    with RingBuffer(rb_obj.maps["events"], dropped_counter=(rb_obj.maps["dropped"], 0)) as rb:
        t = produce(rb_obj.programs["rb_produce"], total)
        deadline = time.monotonic() + 30
        batches = 0
        while len(got) < total and time.monotonic() < deadline:
            b = rb.poll_batch(timeout_ms=50)
            batches += bool(b)
            got.extend(b)
        t.join()
        got.extend(rb.consume_batch())
        assert rb.dropped == 0 and rb.lost == 0 and rb.received == total
    assert seqs(got) == list(range(total))
    assert batches < total       # many records per call


@pytest.mark.needs("ringbuf")
def test_ringbuf_overflow_drops_are_counted_by_the_producer(rb_obj):
    total = 2000
    with RingBuffer(rb_obj.maps["events"], dropped_counter=rb_obj.maps["dropped"]) as rb:
        rb_obj.programs["rb_produce"].test_run(bytes(64), repeat=total)   # nobody consumes meanwhile
        recs = rb.consume_batch()
        assert 0 < len(recs) <= RING_CAPACITY
        assert rb.dropped == total - len(recs) > 0
        assert seqs(recs) == list(range(len(recs)))       # the first ones got in, in order
        # Space is back: the next records are accepted again.
        rb_obj.programs["rb_produce"].test_run(bytes(64), repeat=10)
        assert seqs(rb.consume_batch()) == list(range(len(recs), len(recs) + 10))
        assert rb.dropped == total - len(recs)


@pytest.mark.needs("ringbuf")
def test_ringbuf_batch_mixed_sizes_and_raw(rb_obj):
    prog = rb_obj.programs["rb_produce_var"]
    with RingBuffer(rb_obj.maps["events"]) as rb:
        lens = [20, 30, 40, 47, 60, 14]
        for n in lens:
            prog.test_run(bytes(n))
        recs = rb.consume_batch()
        assert [len(r) for r in recs] == [(n & 31) + 8 for n in lens]
        assert all(r == bytes(range(len(r))) for r in recs)
        for _ in range(3):
            rb_obj.programs["rb_produce"].test_run(bytes(64))
        raw = rb.consume_raw()
        assert isinstance(raw, RawBatch) and raw.count == 3 and raw.size == REC.size
        assert raw.stride == 8 + REC.size
        rows = list(struct.iter_unpack("<IiQII", raw.data))       # header + struct rec, in one pass
        assert [(size, cpu, seq, ln) for size, cpu, seq, ln, _ in rows] == [(REC.size, -1, i, 64) for i in range(3)]
        assert [REC.unpack(r)[0] for r in raw] == [0, 1, 2]
        assert rb.consume_raw().count == 0


@pytest.mark.needs("ringbuf")
def test_ringbuf_epoll_fd_works_with_select(rb_obj):
    with RingBuffer(rb_obj.maps["events"]) as rb:
        r, _, _ = select.select([rb], [], [], 0)
        assert r == []
        rb_obj.programs["rb_produce"].test_run(bytes(64))
        r, _, _ = select.select([rb], [], [], 2)
        assert r == [rb]
        assert seqs(rb.consume_batch()) == [0]


@pytest.mark.needs("ringbuf")
def test_ringbuf_asyncio(rb_obj):
    total = 500

    async def main() -> list[bytes]:
        got: list[bytes] = []
        loop = asyncio.get_running_loop()
        with RingBuffer(rb_obj.maps["events"]) as rb:
            assert await rb.poll_async(timeout=0.05) == []        # nothing yet: times out empty
            fut = loop.run_in_executor(None, lambda: produce(rb_obj.programs["rb_produce"], total).join())
            async for batch in rb:
                got.extend(batch)
                if len(got) >= total:
                    break
            await fut
        return got

    assert seqs(asyncio.run(asyncio.wait_for(main(), 60))) == list(range(total))


@pytest.mark.needs("ringbuf")
def test_ringbuf_asyncio_callback_mode(rb_obj):
    got: list[bytes] = []

    async def main() -> int:
        with RingBuffer(rb_obj.maps["events"], got.append) as rb:
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, lambda: rb_obj.programs["rb_produce"].test_run(bytes(64), repeat=3))
            return await rb.poll_async(timeout=10)

    assert asyncio.run(main()) == 3 and seqs(got) == [0, 1, 2]


def test_perfbuf_callback_receives_every_record(rb_obj):
    got: list[tuple[int, bytes]] = []
    total = 2000
    with PerfBuffer(rb_obj.maps["perf_events"], lambda cpu, d: got.append((cpu, d)), with_cpu=True) as pb:
        assert pb.buffer_count >= 1
        t = produce(rb_obj.programs["pb_produce"], total)
        deadline = time.monotonic() + 30
        while len(got) < total and time.monotonic() < deadline:
            pb.poll(timeout_ms=50)
        t.join()
        pb.consume()
        assert pb.lost == 0 and pb.received == total
    assert sorted(seqs([d for _, d in got])) == list(range(total))
    # The record says which CPU ran the program; the consumer saw it on that CPU's ring.
    assert all(REC.unpack_from(d)[2] == cpu for cpu, d in got)
    # perf pads a sample (u32 size + data) to 8 bytes: the record carries that padding.
    assert {len(d) for _, d in got} == {REC.size + 4}


def test_perfbuf_overflow_reports_lost_records(rb_obj, one_cpu):
    lost: list[tuple[int, int]] = []
    got: list[bytes] = []
    prog = rb_obj.programs["pb_produce"]
    with PerfBuffer(rb_obj.maps["perf_events"], got.append, lost_callback=lambda c, n: lost.append((c, n)),
                    pages=1) as pb:
        prog.test_run(bytes(64), repeat=2000)     # one 4 KiB ring per CPU: most cannot fit
        pb.consume()
        assert 0 < len(got) < 2000
        prog.test_run(bytes(64))                  # room again: the kernel reports the loss first
        pb.consume()
        assert lost and sum(n for _, n in lost) == pb.lost
        assert pb.received + pb.lost == 2001
    assert sorted(seqs(got))[:len(got) - 1] == list(range(len(got) - 1))


def test_perfbuf_batch_mode_and_lost(rb_obj, one_cpu):
    prog = rb_obj.programs["pb_produce"]
    with PerfBuffer(rb_obj.maps["perf_events"], pages=1, with_cpu=True) as pb:
        prog.test_run(bytes(64), repeat=10)
        recs = pb.consume_batch()
        assert sorted(seqs([d for _, d in recs])) == list(range(10))
        assert {cpu for cpu, _ in recs} == {one_cpu}
        prog.test_run(bytes(64), repeat=2000)
        first = pb.consume_batch()
        prog.test_run(bytes(64))
        second = pb.consume_batch()
        assert pb.lost > 0 and len(first) + len(second) + pb.lost == 2001


def test_callback_exceptions_reach_the_caller(rb_obj):
    def boom(*a: object) -> None:
        raise RuntimeError("callback failed")

    with RingBuffer(rb_obj.maps["events"], boom) as rb:
        rb_obj.programs["rb_produce"].test_run(bytes(64), repeat=2)
        with pytest.raises(RuntimeError, match="callback failed"):
            rb.consume()
    calls: list[bytes] = []

    def first_fails(d: bytes) -> None:
        calls.append(d)
        if len(calls) == 1:
            raise RuntimeError("first record")

    with PerfBuffer(rb_obj.maps["perf_events"], first_fails) as pb:
        rb_obj.programs["pb_produce"].test_run(bytes(64), repeat=3)
        with pytest.raises(RuntimeError, match="first record"):
            pb.consume()
        pb.consume()                                   # the records after the failure are not lost
        assert sorted(seqs(calls)) == [0, 1, 2]


def test_consumer_misuse_is_clear(rb_obj):
    with pytest.raises(BPFInvalidError, match="not a RINGBUF"):
        RingBuffer(rb_obj.maps["dropped"])
    with pytest.raises(BPFInvalidError, match="not a PERF_EVENT_ARRAY"):
        PerfBuffer(rb_obj.maps["events"])
    with pytest.raises(BPFInvalidError, match="power of two"):
        PerfBuffer(rb_obj.maps["perf_events"], pages=3)
    with RingBuffer(rb_obj.maps["events"], lambda d: None) as rb:
        with pytest.raises(StateError, match="without a callback"):
            rb.consume_batch()
        with pytest.raises(StateError, match="no dropped_counter"):
            rb.dropped
    with RingBuffer(rb_obj.maps["events"]) as rb:
        with pytest.raises(StateError, match="with a callback"):
            rb.poll()
    rb.close()
    with pytest.raises(ClosedError):
        rb.consume_batch()


def test_consumer_of_unloaded_map_is_state_error():
    from conftest import compiled

    with pybpf.Object.open(compiled("rb_events")) as obj:
        with pytest.raises(StateError, match="not loaded"):
            RingBuffer(obj.maps["events"])


# -- Map hot path (the integer fast path benchmarked with the consumers in benchmarks/) -----------------------

def test_map_int_fast_path_matches_regular_path(load):
    """Integer keys/values take a C fast path; results and errors must be
    those of the regular path (also after close, out of range, per type)."""
    obj = load("maps")
    arr, lru, pcpu = obj.maps["arr"], obj.maps["lru"], obj.maps["pcpu_arr"]
    arr[3] = 7
    assert arr._fast and arr[3] == 7 and arr.lookup(3) == 7
    arr[3] = (1 << 64) - 1
    assert arr[3] == (1 << 64) - 1 and arr.lookup_bytes((3).to_bytes(4, "little")) == b"\xff" * 8
    with pytest.raises(pybpf.BPFKeyError, match="key 99 not in map 'arr'"):
        arr[99]
    with pytest.raises(BPFInvalidError, match="out of range for unsigned int"):
        arr[-1]
    with pytest.raises(BPFInvalidError, match="out of range for unsigned long long"):
        arr[1] = -1
    with pytest.raises(BPFInvalidError, match="the map is full"):
        arr[8] = 1                                       # E2BIG from the kernel, explained as before
    with pytest.raises(FileExistsError, match="already present"):
        arr.update(1, 1, pybpf.NOEXIST)
    lru[2**40] = 5                                       # u64 keys, u32 values
    assert lru[2**40] == 5 and dict(lru.lookup_batch()) == {2**40: 5}
    with pytest.raises(BPFInvalidError, match="out of range"):
        lru[1] = 1 << 32
    pcpu[1] = 4                                          # per-CPU: the regular path (a list per CPU)
    assert pcpu[1] == [4] * len(pcpu[1]) and not pcpu._fast_path()
    assert dict(arr.lookup_batch())[3] == (1 << 64) - 1
    with pybpf.Map.from_id(arr.id) as again:             # typed through the kernel's BTF, owns its fd
        assert again[3] == (1 << 64) - 1 and again._fast
    with pytest.raises(pybpf.ClosedError):
        again[3]
    obj.close()
    with pytest.raises(pybpf.ClosedError):
        arr[3]
    with pytest.raises(pybpf.ClosedError):
        arr[3] = 1


def test_map_int_fast_path_standalone_map_closed():
    with pybpf.Map.create("hash", 4, 8, 4, name="fast") as m:
        m[1] = 2
        assert m[1] == (2).to_bytes(8, "little")        # no BTF: values stay bytes (regular path)
    with pytest.raises(pybpf.ClosedError):
        m[1]
