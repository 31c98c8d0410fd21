"""Concurrency: threads sharing one Object or Map, and processes racing for
one interface.  The guarantees checked here are written down in
docs/guarantees.md ("Threads" and "Processes")."""
from __future__ import annotations

import subprocess
import threading
import time
from typing import Any, Callable

import pytest

import pybpf
from pybpf.features import xdp
from rel_util import HERE, compiled, env_int, popen_python, run_python

pytestmark = pytest.mark.usefixtures("fd_leak_check")

OPS = env_int("PYBPF_CONCURRENCY_OPS", 1500)
RACES = env_int("PYBPF_RACES", 4)


def _run_threads(*targets: Callable[[], None]) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                start.wait()
                fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


@pytest.fixture
def obj() -> Any:
    with pybpf.Object.open(compiled("rel_hyg")) as o:
        o.load()
        yield o


def test_threads_sharing_one_map_see_their_own_writes(obj: Any) -> None:
    """Writers own disjoint keys and read back exactly what they wrote;
    readers iterate (items, batch lookups, len) meanwhile and every value they
    decode is one some writer wrote whole (hash map elements are replaced
    atomically by the kernel)."""
    m = obj.maps["rel_pairs"]
    stop = threading.Event()
    seen = [0]

    def writer(t: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(OPS):
                key = t * 1000 + i % 64
                m[key] = {"packets": i, "bytes": key * 7 + i}
                got = m[key]
                assert (got.packets, got.bytes) == (i, key * 7 + i), f"thread {t} wrote {i} to {key}, read {got}"
                if i % 10 == 9:
                    del m[key]
                    assert key not in m
        return run

    def reader() -> None:
        while not stop.is_set():
            for k, v in m.items():
                assert v.bytes == k * 7 + v.packets, f"torn or foreign value at {k}: {v}"
                seen[0] += 1
            for k, v in m.lookup_batch(chunk=64):
                assert v.bytes == k * 7 + v.packets, f"batch: torn value at {k}: {v}"
            len(m)

    def writers_then_stop() -> None:
        try:
            _run_threads(*(writer(t) for t in range(3)))
        finally:
            stop.set()

    _run_threads(writers_then_stop, reader, reader)
    assert seen[0] > 0, "the readers never saw an element"
    # what is left is exactly the writers' last values
    for k, v in m.items():
        assert v.bytes == k * 7 + v.packets


def test_threads_sharing_one_object_count_every_run(obj: Any) -> None:
    """test_run, variables and map reads from several threads on one Object:
    the program's atomic counters see every run."""
    prog, counts = obj.programs["rel_xdp"], obj.maps["rel_counts"]
    per_thread = OPS // 10

    def runner() -> None:
        for _ in range(per_thread):
            assert prog.test_run(bytes(64)).retval == 2
            obj.variables["rel_seen"]

    def prober() -> None:
        for _ in range(per_thread):
            counts[0]
            obj.maps["rel_hash"][1] = 1
            prog.info()

    _run_threads(runner, runner, runner, prober)
    assert counts[0].packets == 3 * per_thread
    assert obj.variables["rel_seen"] == 3 * per_thread


def test_concurrent_load_of_one_object_loads_once() -> None:
    """Two threads loading the same opened Object: one loads, the other gets
    StateError. (libbpf is not thread-safe: before Object.load took a lock,
    this segfaulted in bpf_object__load.) Run in a child: a regression is a crash."""
    r = run_python('''
        import threading, logging, pybpf
        from rel_util import compiled
        logging.disable(logging.CRITICAL)
        res = {}
        for _ in range(30):
            o = pybpf.Object.open(compiled("rel_hyg"))
            out, b = [], threading.Barrier(3)
            def load():
                b.wait()
                try:
                    o.load(); out.append("ok")
                except pybpf.StateError:
                    out.append("StateError")
            def close_late():
                b.wait()
                time.sleep(0.001)
            import time
            ts = [threading.Thread(target=load), threading.Thread(target=load), threading.Thread(target=close_late)]
            [t.start() for t in ts]; [t.join() for t in ts]
            o.close()
            key = ",".join(sorted(out)); res[key] = res.get(key, 0) + 1
        print(res)
    ''', timeout=240)
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stderr[-3000:]}"
    assert r.stdout.strip() == "{'StateError,ok': 30}", r.stdout


def test_close_racing_with_load_never_crashes() -> None:
    """close() from one thread while another loads: either the load finished
    first, or it fails with ClosedError; never a crash (child process)."""
    r = run_python('''
        import threading, logging, pybpf
        from rel_util import compiled
        logging.disable(logging.CRITICAL)
        res = {}
        for _ in range(30):
            o = pybpf.Object.open(compiled("rel_hyg"))
            out, b = [], threading.Barrier(2)
            def load():
                b.wait()
                try:
                    o.load(); out.append("loaded")
                except pybpf.ClosedError:
                    out.append("closed")
            def close():
                b.wait()
                o.close()
            ts = [threading.Thread(target=load), threading.Thread(target=close)]
            [t.start() for t in ts]; [t.join() for t in ts]
            res[out[0]] = res.get(out[0], 0) + 1
        print(sorted(res))
    ''', timeout=240)
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stderr[-3000:]}"
    assert set(eval(r.stdout)) <= {"loaded", "closed"}, r.stdout


RACER = '''
import sys, time, pybpf
from pybpf.features import xdp
from rel_util import compiled
o = pybpf.Object.open(compiled("rel_hyg")); o.load()
p = o.programs["rel_xdp"]
print("ready", flush=True)
go = float(sys.stdin.readline())
while time.time() < go:
    pass
try:
    if {how!r} == "link":
        link = p.attach_xdp({iface!r}, mode="skb", netns={ns!r})
        link.pin({pin!r} + "-" + str(p.id))
    else:
        xdp.attach(p, {iface!r}, "skb", netns={ns!r})
    print("won", p.id, flush=True)
except pybpf.BPFError as e:
    print("lost", type(e).__name__, str(e).replace(chr(10), " "), flush=True)
'''


@pytest.mark.parametrize("how", ["link", "netlink"])
def test_two_processes_racing_for_one_interface(how: str, veth_pair: Any, bpffs: str) -> None:
    """Two processes attach to one interface at the same instant: exactly one
    wins, the other gets BPFBusyError/BPFExistsError naming the holder;
    the winner's program is the one attached."""
    import os

    vp = veth_pair
    pin = os.path.join(bpffs, "race")
    for r in range(RACES):
        kids = [popen_python(RACER.format(how=how, iface=vp.if_b, ns=vp.b.name, pin=pin), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        try:
            for k in kids:
                assert k.stdout is not None and k.stdout.readline().strip() == "ready"
            go = time.time() + 0.3
            outs = []
            for k in kids:
                out, err = k.communicate(f"{go}\n", timeout=60)
                assert k.returncode == 0, err[-3000:]
                outs.append(out.strip())
        finally:
            for k in kids:
                if k.poll() is None:
                    k.kill()
                    k.communicate()
        won = [o for o in outs if o.startswith("won")]
        lost = [o for o in outs if o.startswith("lost")]
        assert len(won) == 1 and len(lost) == 1, f"race {r}: {outs}"
        assert ("BPFBusyError" in lost[0] or "BPFExistsError" in lost[0]) and "already" in lost[0], lost[0]
        winner = int(won[0].split()[1])
        st = xdp.query(vp.if_b, netns=vp.b.name)
        assert st.attached and st.prog_id == winner, (st, outs)
        # clean up for the next round
        if how == "link":
            with pybpf.Link.from_pinned(f"{pin}-{winner}") as link:
                link.detach()
            os.unlink(f"{pin}-{winner}")
        else:
            assert xdp.detach(vp.if_b, netns=vp.b.name, expected=winner)
        assert not xdp.query(vp.if_b, netns=vp.b.name).attached


def test_libbpf_log_capture_is_per_thread() -> None:
    """Two threads failing at the same time, in ways libbpf logs about: each
    error quotes its own thread's libbpf messages, never the other's."""
    bad_elf = (HERE / "corpus" / "elf" / "extern-kcfg-error-pointer.o").read_bytes()
    rejected = compiled("verifier_reject")
    rounds = 40
    seen: dict[str, list[str]] = {"open": [], "load": []}

    def opener() -> None:
        for _ in range(rounds):
            with pytest.raises(pybpf.ELFError) as ei:
                pybpf.Object.open(bad_elf)
            seen["open"].append(str(ei.value))

    def loader() -> None:
        for _ in range(rounds):
            with pybpf.Object.open(rejected) as o:
                with pytest.raises(pybpf.VerifierError) as ei:
                    o.load()
            seen["load"].append(str(ei.value) + ei.value.log)

    _run_threads(opener, loader)
    assert len(seen["open"]) == len(seen["load"]) == rounds
    for text in seen["open"]:
        assert "LINUX_KERNEL_VERSION" in text and "verifier" not in text and "no_null_check" not in text, text
    for text in seen["load"]:
        assert "no_null_check" in text and "LINUX_KERNEL_VERSION" not in text and ".symtab" not in text, text
