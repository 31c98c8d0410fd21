"""Consumers of ring buffers (``BPF_MAP_TYPE_RINGBUF``) and perf buffers
(``BPF_MAP_TYPE_PERF_EVENT_ARRAY``).

Both come in two modes:

* **callback**: give a ``callback``; :meth:`poll`/:meth:`consume` call it
  once per record (with the record's bytes).  An exception raised by the
  callback is kept while C runs and re-raised from the ``poll``/``consume``
  call; it never crosses into C.
* **batch**: give no callback; :meth:`poll_batch`/:meth:`consume_batch`
  return many records per call, collected in C into one flat buffer with no
  Python call per record.  :meth:`consume_raw` hands over that buffer as is
  (a :class:`RawBatch`) for code that decodes records itself (``struct``,
  numpy) at memory speed.

Accounting: :attr:`received` (records delivered to Python), :attr:`lost`
(records the kernel reported lost: perf buffers only; a ring buffer's producer
gets a failed ``bpf_ringbuf_reserve`` instead and nothing is counted by the
kernel), :attr:`overflow` (records dropped in userspace because memory ran
out) and :attr:`dropped` (producer-side drops read from a counter the BPF
program keeps, see ``dropped_counter``).

Every consumer has an epoll fd (:meth:`fileno`): use it with ``select`` or
let :meth:`poll_async` / ``async for batch in consumer`` wait on it in an
asyncio event loop.
"""
from __future__ import annotations

import asyncio
import errno as _errno
import struct as _struct
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, Union

from pybpf._binding import ffi, lib
from pybpf.errors import BPFInvalidError, ClosedError, StateError, check, raise_errno
from pybpf.raw import MapType

if TYPE_CHECKING:
    from pybpf.core.map import Map

__all__ = ["RingBuffer", "PerfBuffer", "RawBatch", "DropCounter"]

#: Where a producer counts the records it could not reserve: a Map (key 0),
#: a (Map, key) pair, or a callable returning the count.
DropCounter = Union["Map", "tuple[Map, Any]", Callable[[], int]]

_consumers: dict[int, "_Consumer"] = {}
_HDR = _struct.Struct("<Ii")


@ffi.def_extern(error=-1)  # type: ignore[misc]
def pybpf_ringbuf_cb(ctx: Any, data: Any, size: int) -> int:
    # Called from C: an exception is stored and re-raised after the C call.
    rb = _consumers.get(int(ffi.cast("uintptr_t", ctx)))
    if rb is None:
        return -1
    try:
        rb.received += 1
        rb._callback(bytes(ffi.buffer(data, size)))  # type: ignore[misc]
        return 0
    except BaseException as e:  # noqa: BLE001 - nothing may cross into C
        rb._error = e
        return -1


@ffi.def_extern(error=None)  # type: ignore[misc]
def pybpf_perf_sample_cb(ctx: Any, cpu: int, data: Any, size: int) -> None:
    pb = _consumers.get(int(ffi.cast("uintptr_t", ctx)))
    if pb is None:
        return
    try:
        pb.received += 1
        if pb._error is not None:
            # An earlier record's callback failed in this same poll: keep the
            # record for the next call instead of calling again.
            pb._pending.append((int(cpu), bytes(ffi.buffer(data, size))))
            return
        rec = bytes(ffi.buffer(data, size))
        if pb._with_cpu:
            pb._callback(int(cpu), rec)  # type: ignore[misc]
        else:
            pb._callback(rec)  # type: ignore[misc]
    except BaseException as e:  # noqa: BLE001 - nothing may cross into C
        pb._error = e


@ffi.def_extern(error=None)  # type: ignore[misc]
def pybpf_perf_lost_cb(ctx: Any, cpu: int, cnt: int) -> None:
    pb = _consumers.get(int(ffi.cast("uintptr_t", ctx)))
    if pb is None:
        return
    try:
        pb._lost += int(cnt)
        if pb._lost_callback is not None:
            pb._lost_callback(int(cpu), int(cnt))
    except BaseException as e:  # noqa: BLE001
        if pb._error is None:
            pb._error = e


@dataclass(frozen=True)
class RawBatch:
    """Records as one flat buffer: each is ``[u32 size][s32 cpu][data padded
    to 8 bytes]`` (``cpu`` is -1 for ring buffers).  ``size`` is the common
    record size when all records have the same size, else -1 (0: empty).
    ``data`` supports the buffer protocol (``memoryview``, ``struct``,
    ``numpy.frombuffer``); it is the consumer's C buffer, handed over without
    a copy (``bytes(data)`` copies it)."""

    data: Any
    count: int
    size: int

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[bytes]:
        return iter(_split(self.data, self.size, False))

    def records(self, with_cpu: bool = False) -> list[Any]:
        """The records as a list of bytes (or of ``(cpu, bytes)``)."""
        return _split(self.data, self.size, with_cpu)

    @property
    def stride(self) -> int:
        """Bytes from one record to the next when all have the same size
        (header included): ``struct.iter_unpack`` or
        ``numpy.frombuffer(...).reshape(count, stride)`` decode them in one go."""
        if self.size <= 0:
            raise BPFInvalidError(None, "stride needs records of one size; this batch is empty or mixed")
        return 8 + ((self.size + 7) & ~7)


def _split(data: bytes, size: int, with_cpu: bool) -> list[Any]:
    if not data:
        return []
    if size > 0 and not with_cpu:
        # One size for all: slice at a fixed stride (no header parsing per record).
        stride = 8 + ((size + 7) & ~7)
        return [data[off:off + size] for off in range(8, len(data), stride)]
    out: list[Any] = []
    off, end, unpack = 0, len(data), _HDR.unpack_from
    while off < end:
        sz, cpu = unpack(data, off)
        rec = data[off + 8:off + 8 + sz]
        out.append((cpu, rec) if with_cpu else rec)
        off += 8 + ((sz + 7) & ~7)
    return out


class _Consumer:
    """What ring and perf buffer consumers share: the two modes, the epoll
    fd, asyncio integration, accounting, lifetime."""

    _kind = "buffer"

    def __init__(self, map_: "Map", callback: Callable[..., Any] | None, dropped_counter: DropCounter | None):
        self._map = map_
        self._callback = callback
        self._error: BaseException | None = None
        self._dropped_counter = dropped_counter
        self._lost = 0
        self._pending: list[tuple[int, bytes]] = []
        self._with_cpu = False
        self._lost_callback: Callable[[int, int], Any] | None = None
        self.received = 0
        """Records delivered to Python so far."""
        self._batch: Any = None
        self._key = id(self)
        self._ptr_: Any = None
        self._finalizer: Any = None

    # -- lifetime ---------------------------------------------------------------------------------

    def _setup(self, ptr: Any, free: Callable[[Any], None], what: str) -> None:
        if ptr == ffi.NULL:
            err = ffi.errno or _errno.EINVAL
            _consumers.pop(self._key, None)
            if self._batch is not None:
                lib.pybpf_recs_free(self._batch)
            raise_errno(err, what)
        self._ptr_ = ptr
        self._finalizer = weakref.finalize(self, _Consumer._free, free, ptr, self._batch, self._key)

    @staticmethod
    def _free(free: Callable[[Any], None], ptr: Any, batch: Any, key: int) -> None:
        free(ptr)
        if batch is not None:
            lib.pybpf_recs_free(batch)
        _consumers.pop(key, None)

    @property
    def closed(self) -> bool:
        return self._finalizer is None or not self._finalizer.alive

    def _ptr(self) -> Any:
        if self.closed:
            raise ClosedError(f"{self._kind} consumer")
        return self._ptr_

    def close(self) -> None:
        """Stop consuming and release the consumer (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- C calls ------------------------------------------------------------------------------------

    def _c_poll(self, ptr: Any, timeout_ms: int) -> int:
        raise NotImplementedError

    def _c_consume(self, ptr: Any) -> int:
        raise NotImplementedError

    def _c_fd(self, ptr: Any) -> int:
        raise NotImplementedError

    def _reraise(self) -> None:
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def _run(self, timeout_ms: int | None) -> int:
        ptr = self._ptr()
        if timeout_ms is None:
            n = self._c_consume(ptr)
        else:
            n = self._c_poll(ptr, timeout_ms)
        if n == -_errno.EINTR:
            n = 0
        self._reraise()
        return check(int(n), f"{'consume' if timeout_ms is None else 'poll'} {self._kind}")

    def _need_callback(self, what: str) -> None:
        if self._batch is not None:
            raise StateError(f"{what}() is for consumers made with a callback; this one is in batch mode",
                             hint="use poll_batch()/consume_batch()/consume_raw(), or pass a callback")

    def _need_batch(self, what: str) -> None:
        if self._batch is None:
            raise StateError(f"{what}() is for consumers made without a callback; this one calls its callback",
                             hint="use poll()/consume(), or create the consumer without a callback")

    # -- callback mode --------------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> int:
        """Callback mode: wait up to ``timeout_ms`` (-1: forever) for records
        and hand each to the callback. Returns how many were handled."""
        self._need_callback("poll")
        before = self.received - self._flush_pending()
        self._run(int(timeout_ms))
        return self.received - before

    def consume(self) -> int:
        """Callback mode: handle what is there now, without waiting."""
        self._need_callback("consume")
        before = self.received - self._flush_pending()
        self._run(None)
        return self.received - before

    def _flush_pending(self) -> int:
        n = 0
        while self._pending:
            cpu, rec = self._pending.pop(0)
            n += 1
            assert self._callback is not None
            self._callback(cpu, rec) if self._with_cpu else self._callback(rec)
        return n

    # -- batch mode -------------------------------------------------------------------------------------

    def _take_raw(self, copy: bool = True) -> RawBatch:
        b = self._batch
        n, ln, size = int(b.count), int(b.len), int(b.size)
        data: Any = b""
        if ln and copy:
            data = ffi.buffer(b.buf, ln)[:]
            lib.pybpf_recs_reset(b)
        elif ln:
            # Hand C's buffer over as is (no copy); freed with the RawBatch.
            data = ffi.buffer(ffi.gc(lib.pybpf_recs_detach(b), lib.pybpf_recs_buf_free), ln)
        else:
            lib.pybpf_recs_reset(b)
        self.received += n
        return RawBatch(data, n, size)

    def consume_raw(self, timeout_ms: int | None = None) -> RawBatch:
        """Batch mode: everything available (waiting up to ``timeout_ms``
        first when given) as one :class:`RawBatch`."""
        self._need_batch("consume_raw")
        try:
            self._run(timeout_ms)
        except BaseException:
            lib.pybpf_recs_reset(self._batch)
            raise
        return self._take_raw(copy=False)

    def consume_batch(self) -> list[Any]:
        """Batch mode: consume everything available now and return the records."""
        self._need_batch("consume_batch")
        self._run(None)
        return self._take_raw().records(self._with_cpu)

    def poll_batch(self, timeout_ms: int = 0) -> list[Any]:
        """Batch mode: wait up to ``timeout_ms`` for records, then return all
        that are available."""
        self._need_batch("poll_batch")
        self._run(int(timeout_ms))
        return self._take_raw().records(self._with_cpu)

    # -- select / asyncio ---------------------------------------------------------------------------------

    def fileno(self) -> int:
        """The epoll fd: readable when records are waiting (for ``select``,
        ``selectors``, event loops)."""
        return int(self._c_fd(self._ptr()))

    def _drain(self) -> Any:
        if self._batch is not None:
            return self.consume_batch()
        return self.consume()

    async def poll_async(self, timeout: float | None = None) -> Any:
        """Wait in the running asyncio loop until records arrive (or
        ``timeout`` seconds pass), then consume them: the records (batch
        mode) or how many the callback handled (callback mode)."""
        got = self._drain()
        if got:
            return got
        loop = asyncio.get_running_loop()
        fd = self.fileno()
        ready: asyncio.Future[None] = loop.create_future()

        def on_ready() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, on_ready)
        try:
            await asyncio.wait_for(ready, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            loop.remove_reader(fd)
        return self._drain()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Any]:
        while not self.closed:
            got = await self.poll_async()
            if got:
                yield got

    # -- accounting ----------------------------------------------------------------------------------------

    @property
    def overflow(self) -> int:
        """Records dropped in userspace because memory ran out (batch mode)."""
        return int(self._batch.overflow) if self._batch is not None else 0

    @property
    def lost(self) -> int:
        """Records lost: reported by the kernel (perf buffers) plus
        :attr:`overflow`."""
        return self._lost + (int(self._batch.lost) if self._batch is not None else 0) + self.overflow

    @property
    def dropped(self) -> int:
        """Producer-side drops, read from ``dropped_counter`` (summed over
        CPUs for per-CPU maps). StateError when no counter was given."""
        c = self._dropped_counter
        if c is None:
            raise StateError(f"this {self._kind} consumer has no dropped_counter",
                             hint="count failed bpf_ringbuf_reserve() calls in a map in the BPF program and "
                                  "pass it as dropped_counter=map or (map, key)")
        if callable(c):
            return int(c())
        m, key = c if isinstance(c, tuple) else (c, 0)
        v = m.lookup(key, 0)
        if isinstance(v, (list, tuple)):
            return sum(int(x) for x in v)
        if isinstance(v, (bytes, bytearray)):
            return int.from_bytes(v, "little")
        return int(v)


class RingBuffer(_Consumer):
    """Consumes the records of a ring buffer map (see the module doc).

    ``RingBuffer(obj.maps["events"], print)`` calls ``print`` per record;
    ``RingBuffer(obj.maps["events"])`` collects batches.
    """

    _kind = "ring buffer"

    def __init__(self, map_: "Map", callback: Callable[[bytes], Any] | None = None, *,
                 dropped_counter: DropCounter | None = None):
        if map_.type != MapType.RINGBUF:
            raise BPFInvalidError(None, f"map '{map_.name}' is a {getattr(map_.type, 'name', map_.type)} map, "
                                  "not a RINGBUF", hint="use PerfBuffer for PERF_EVENT_ARRAY maps")
        super().__init__(map_, callback, dropped_counter)
        fd = map_._loaded_fd("consume")
        what = f"create ring buffer consumer for map '{map_.name}'"
        if callback is None:
            self._batch = ffi.new("struct pybpf_rec_batch *")
            rb = lib.pybpf_rb_new_recs(fd, self._batch)
        else:
            _consumers[self._key] = self
            rb = lib.ring_buffer__new(fd, lib.pybpf_ringbuf_cb, ffi.cast("void *", self._key), ffi.NULL)
        self._setup(rb, lib.ring_buffer__free, what)

    def _c_poll(self, ptr: Any, timeout_ms: int) -> int:
        return int(lib.ring_buffer__poll(ptr, timeout_ms))

    def _c_consume(self, ptr: Any) -> int:
        return int(lib.ring_buffer__consume(ptr))

    def _c_fd(self, ptr: Any) -> int:
        return int(lib.ring_buffer__epoll_fd(ptr))

    def take_raw(self) -> tuple[bytes, int]:
        """Batch mode: the records collected by the last poll/consume that
        were not taken yet, as (flat buffer, count); see :class:`RawBatch`."""
        self._need_batch("take_raw")
        r = self._take_raw()
        return r.data, r.count


class PerfBuffer(_Consumer):
    """Consumes a perf buffer (``PERF_EVENT_ARRAY`` map written with
    ``bpf_perf_event_output``): one ring of ``pages`` pages per CPU.

    The callback gets ``callback(data)`` (``callback(cpu, data)`` with
    ``with_cpu=True``); ``lost_callback(cpu, count)`` is told when the kernel
    had to drop records because a CPU's ring was full (also counted in
    :attr:`lost`).  Batch mode returns bytes (``(cpu, bytes)`` with
    ``with_cpu=True``).  perf aligns each sample (a u32 size plus the data)
    to 8 bytes, so a record may end with up to 4 bytes of padding: a 16-byte
    ``bpf_perf_event_output`` arrives as 20 bytes.
    """

    _kind = "perf buffer"

    def __init__(self, map_: "Map", callback: Callable[..., Any] | None = None, *,
                 lost_callback: Callable[[int, int], Any] | None = None, pages: int = 8, with_cpu: bool = False,
                 dropped_counter: DropCounter | None = None):
        if map_.type != MapType.PERF_EVENT_ARRAY:
            raise BPFInvalidError(None, f"map '{map_.name}' is a {getattr(map_.type, 'name', map_.type)} map, "
                                  "not a PERF_EVENT_ARRAY", hint="use RingBuffer for RINGBUF maps")
        if pages <= 0 or pages & (pages - 1):
            raise BPFInvalidError(None, f"pages must be a power of two; got {pages}")
        super().__init__(map_, callback, dropped_counter)
        self._with_cpu = with_cpu
        self._lost_callback = lost_callback
        fd = map_._loaded_fd("consume")
        what = f"create perf buffer consumer for map '{map_.name}' ({pages} pages per CPU)"
        if callback is None:
            if lost_callback is not None:
                raise BPFInvalidError(None, "lost_callback needs callback mode",
                                      hint="in batch mode read .lost after each batch")
            self._batch = ffi.new("struct pybpf_rec_batch *")
            pb = lib.pybpf_pb_new_recs(fd, pages, self._batch)
        else:
            _consumers[self._key] = self
            pb = lib.pybpf_pb_new_cb(fd, pages, ffi.cast("void *", self._key))
        self._setup(pb, lib.perf_buffer__free, what)

    def _c_poll(self, ptr: Any, timeout_ms: int) -> int:
        return int(lib.perf_buffer__poll(ptr, timeout_ms))

    def _c_consume(self, ptr: Any) -> int:
        return int(lib.perf_buffer__consume(ptr))

    def _c_fd(self, ptr: Any) -> int:
        return int(lib.perf_buffer__epoll_fd(ptr))

    @property
    def buffer_count(self) -> int:
        """Number of per-CPU rings."""
        return int(lib.perf_buffer__buffer_cnt(self._ptr()))
