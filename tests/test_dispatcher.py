"""Multi-program dispatchers (libxdp protocol v2): components chained in
priority order on a veth, chain-call actions, atomic removal under traffic,
interop with xdp-loader both ways, per-component statistics, the tc flavour,
and the clear refusal where freplace is unavailable.

The dispatcher needs freplace: on the 6.18 host (which refuses extension
programs) only test_freplace_unavailable_is_explained runs; the rest runs in
guests: python3 -m pybpf.vm run --kernel 6.1 -- python3 -m pytest tests/test_dispatcher.py -q
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import threading
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

import pybpf
from pybpf.features import xdp
from pybpf.features.dispatcher import (TC_ACTIONS, XDP_ACTIONS, TcDispatcher, XdpDispatcher, read_run_config,
                                       require_freplace)
from pybpf.probes import probe

from conftest import compiled

pytestmark = pytest.mark.usefixtures("fd_leak_check")
guest = [pytest.mark.needs("xdp", "freplace")]
PASS, DROP = XDP_ACTIONS["XDP_PASS"], XDP_ACTIONS["XDP_DROP"]
XDP_LOADER = shutil.which("xdp-loader")


# -- helpers -----------------------------------------------------------------------------------------

class Trace:
    """One map shared by every component: trace[0] = next slot, then ids."""

    def __init__(self) -> None:
        self.map = pybpf.Map.create("array", 4, 4, 64, name="trace")

    def reset(self) -> None:
        for k in range(64):
            self.map.update(k.to_bytes(4, "little"), b"\0\0\0\0")

    def ids(self) -> str:
        n = int.from_bytes(self.map.lookup_bytes((0).to_bytes(4, "little")), "little")
        return "".join(chr(int.from_bytes(self.map.lookup_bytes((k).to_bytes(4, "little")), "little"))
                       for k in range(1, n + 1))

    def close(self) -> None:
        self.map.close()


@pytest.fixture
def trace():
    t = Trace()
    yield t
    t.close()


@pytest.fixture
def comp(trace):
    """comp("a", verdict=...) -> an opened (not loaded) component Object
    sharing the trace map; closed after the test."""
    opened: list[pybpf.Object] = []

    def _open(name: str, verdict: int | None = None) -> pybpf.Object:
        obj = pybpf.Object.open(compiled(f"disp_{name}"))
        opened.append(obj)
        if verdict is not None:
            obj.variables["verdict"] = verdict
        if "trace" in obj.maps:
            obj.maps["trace"].reuse(trace.map)
        return obj

    yield _open
    for o in opened:
        o.close()


@pytest.fixture
def disp(veth_pair):
    """An XdpDispatcher on veth-b; everything removed after the test."""
    d = XdpDispatcher(veth_pair.if_b, netns=veth_pair.b.name)
    yield d
    d.remove_all()
    assert not xdp.query(veth_pair.if_b, netns=veth_pair.b.name).attached


def hits(obj: pybpf.Object) -> int:
    return obj.maps["hits"][0]


def udp(vp, n: int) -> None:
    vp.send([Ether() / IP(src=vp.ip_a, dst=vp.ip_b) / UDP(dport=9) / b"x"] * n)
    time.sleep(0.2)


def loader(vp, *args: str) -> subprocess.CompletedProcess[str]:
    return vp.b.run(XDP_LOADER, *args, check=False)


# -- host: no freplace --------------------------------------------------------------------------------

@pytest.mark.skipif(bool(probe("freplace")), reason="this kernel has freplace: the guest tests cover dispatchers")
def test_freplace_unavailable_is_explained(veth_pair, bpffs):
    obj = pybpf.Object.open(compiled("disp_a"))
    try:
        for d in (XdpDispatcher(veth_pair.if_b, netns=veth_pair.b.name),
                  TcDispatcher(veth_pair.if_b, "ingress", netns=veth_pair.b.name)):
            with pytest.raises(pybpf.NotSupportedError) as ei:
                d.add(obj.programs["disp_a"])
            e = ei.value
            assert "freplace" in str(e) and os.uname().release in str(e)
            assert "5.10" in e.hint and "pybpf.vm" in e.hint
        with pytest.raises(pybpf.NotSupportedError, match="freplace"):
            require_freplace()
        assert not obj.loaded                                    # nothing was loaded
        assert not xdp.query(veth_pair.if_b, netns=veth_pair.b.name).attached
        assert not [n for n in os.listdir("/sys/fs/bpf/xdp") if n.startswith(f"dispatch-{veth_pair.ifindex_b}-")] \
            if os.path.isdir("/sys/fs/bpf/xdp") else True
    finally:
        obj.close()


def test_run_config_metadata_is_parsed():
    """.xdp_run_config read as libxdp does (runs anywhere: BTF only)."""
    with pybpf.Object.open(compiled("disp_b")) as obj:
        rc = read_run_config(obj.btf, "disp_b")
        assert rc is not None and rc.priority == 20 and rc.chain_call_actions == {PASS}
        assert read_run_config(obj.btf, "other_name") is None
    with pybpf.Object.open(compiled("disp_plain")) as obj:
        assert read_run_config(obj.btf, "disp_plain") is None       # no metadata: libxdp's defaults apply
    with pybpf.Object.open(compiled("disp_tc_y")) as obj:
        rc = read_run_config(obj.btf, "disp_tc_y", TC_ACTIONS)
        assert rc is not None and rc.priority == 20 and rc.chain_call_actions == {TC_ACTIONS["TC_ACT_OK"]}


# -- guests: the dispatcher itself ----------------------------------------------------------------

@pytest.mark.needs("xdp", "freplace")
def test_components_run_in_priority_order(disp, comp, trace, veth_pair):
    c, a, b = comp("c"), comp("a"), comp("b")
    disp.add(c.programs["disp_c"])                      # one at a time, out of order
    disp.add_many([a.programs["disp_a"], b.programs["disp_b"]])
    comps = disp.components()
    assert [(x.name, x.priority, x.slot) for x in comps] == [("disp_a", 10, 0), ("disp_b", 20, 1), ("disp_c", 30, 2)]
    assert all(x.chain_call_actions == {PASS} and x.chain_call_names == ["XDP_PASS"] for x in comps)
    h0 = [hits(o) for o in (a, b, c)]                  # c ran alone for a while: count from here
    trace.reset()
    udp(veth_pair, 10)
    seen = trace.ids()
    assert len(seen) >= 30 and seen == "abc" * (len(seen) // 3)     # every packet: a, then b, then c
    assert hits(a) - h0[0] == hits(b) - h0[1] == hits(c) - h0[2] >= 10
    # the state is pinned in libxdp's layout
    d_id = disp.dispatcher_id
    pin_dir = f"/sys/fs/bpf/xdp/dispatch-{veth_pair.ifindex_b}-{d_id}"
    assert sorted(os.listdir(pin_dir)) == sorted(f"prog{i}-{k}" for i in range(3) for k in ("prog", "link"))
    with pybpf.Program.from_pinned(f"{pin_dir}/prog1-prog") as p:
        assert p.name == "disp_b" and p.type == pybpf.ProgType.EXT
    with pybpf.Program.from_id(d_id) as dp:
        assert dp.name == "xdp_dispatcher" and len(dp.info().map_ids) == 1


@pytest.mark.needs("xdp", "freplace")
def test_caller_priority_and_defaults(disp, comp, trace, veth_pair):
    a, b, p = comp("a"), comp("b"), comp("plain")
    disp.add_many([(a.programs["disp_a"], 40, None), b.programs["disp_b"], p.programs["disp_plain"]])
    assert [(x.name, x.priority) for x in disp.components()] == [("disp_b", 20), ("disp_a", 40), ("disp_plain", 50)]
    trace.reset()
    udp(veth_pair, 5)
    seen = trace.ids()
    assert seen and seen == "ba" * (len(seen) // 2)
    assert hits(p) == hits(a) >= 5


@pytest.mark.needs("xdp", "freplace")
def test_equal_priorities_are_ordered_by_name_as_libxdp_does(disp, comp, trace, veth_pair):
    """libxdp's cmp_xdp_programs(): a priority tie is broken by the program
    name, whatever the order of adding (c added first still runs after a)."""
    c, a = comp("c"), comp("a")
    disp.add(c.programs["disp_c"], priority=25)
    disp.add(a.programs["disp_a"], priority=25)
    assert [(x.name, x.priority, x.slot) for x in disp.components()] == [("disp_a", 25, 0), ("disp_c", 25, 1)]
    trace.reset()
    udp(veth_pair, 5)
    seen = trace.ids()
    assert len(seen) >= 10 and seen == "ac" * (len(seen) // 2)


@pytest.mark.needs("xdp", "freplace")
def test_drop_stops_the_chain_unless_chained(disp, comp, trace, veth_pair):
    a, b, c = comp("a"), comp("b", verdict=DROP), comp("c")
    disp.add_many([a.programs["disp_a"], b.programs["disp_b"], c.programs["disp_c"]])
    trace.reset()
    udp(veth_pair, 8)
    seen = trace.ids()
    assert seen and seen == "ab" * (len(seen) // 2)            # c never runs after b's XDP_DROP
    assert hits(c) == 0 and hits(a) == hits(b) >= 8
    assert veth_pair.ping(1).returncode != 0                    # and the packets are dropped
    # the same program, allowed to chain on DROP: c runs after it
    disp.remove("disp_b")
    b2 = comp("b", verdict=DROP)
    disp.add(b2.programs["disp_b"], chain_call_actions=["XDP_PASS", "XDP_DROP"])
    assert [x.chain_call_actions for x in disp.components()][1] == {PASS, DROP}
    trace.reset()
    udp(veth_pair, 8)
    seen = trace.ids()
    assert seen and seen == "abc" * (len(seen) // 3)
    assert hits(c) >= 8
    assert veth_pair.ping(1).returncode == 0                    # c's XDP_PASS is the final verdict


@pytest.mark.needs("xdp", "freplace")
def test_removing_under_traffic_keeps_a_dispatcher(disp, comp, veth_pair):
    a, b, c = comp("a"), comp("b"), comp("c")
    disp.add_many([a.programs["disp_a"], b.programs["disp_b"], c.programs["disp_c"]])
    first = disp.dispatcher_id
    stop = threading.Event()
    seen_ids: list[int] = []
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            while not stop.is_set():
                seen_ids.append(xdp.query(veth_pair.if_b, netns=veth_pair.b.name).prog_id)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def send() -> None:
        try:
            while not stop.is_set():
                veth_pair.send([Ether() / IP(src=veth_pair.ip_a, dst=veth_pair.ip_b) / UDP(dport=9)] * 5)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=poll), threading.Thread(target=send)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        disp.remove(b.programs["disp_b"].id)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    second = disp.dispatcher_id
    assert second != first and seen_ids and 0 not in seen_ids      # never without a program
    assert {first, second} >= set(seen_ids) and second in seen_ids
    assert [x.name for x in disp.components()] == ["disp_a", "disp_c"]
    before = (hits(a), hits(b), hits(c))
    udp(veth_pair, 6)
    assert hits(a) - before[0] >= 6 and hits(c) - before[2] >= 6 and hits(b) == before[1]
    assert not os.path.exists(f"/sys/fs/bpf/xdp/dispatch-{veth_pair.ifindex_b}-{first}")   # old state unpinned


@pytest.mark.needs("xdp", "freplace")
def test_per_component_statistics(disp, comp, veth_pair):
    a, b, c = comp("a"), comp("b", verdict=DROP), comp("c")
    disp.add_many([a.programs["disp_a"], b.programs["disp_b"], c.programs["disp_c"]])
    # The veth pair has background traffic (IPv6 neighbour discovery) that
    # can pass between any two reads, so the statistics are checked against
    # the components' own counters read on both sides of each step.
    before = (hits(a), hits(b))                          # counted before the stats existed
    disp.enable_stats()
    enabled = (hits(a), hits(b))
    udp(veth_pair, 7)
    sent = (hits(a), hits(b))
    st = {s.name: s for s in disp.stats()}
    read = (hits(a), hits(b))
    assert set(st) == {"disp_a", "disp_b", "disp_c"}
    for i, name in enumerate(("disp_a", "disp_b")):
        assert sent[i] - enabled[i] <= st[name].runs <= read[i] - before[i], (name, before, enabled, sent, read)
    assert st["disp_a"].runs >= 7 and st["disp_a"].returns == {PASS: st["disp_a"].runs}
    assert st["disp_b"].returns == {DROP: st["disp_b"].runs}
    assert st["disp_c"].runs == 0 and st["disp_c"].returns == {}
    # the kernel's own accounting credits the dispatcher only (what libxdp shows)
    with pybpf.enable_stats():
        udp(veth_pair, 3)
        with pybpf.Program.from_id(a.programs["disp_a"].id) as pa:
            assert pa.info().run_cnt == 0
        with pybpf.Program.from_id(disp.dispatcher_id) as dp:
            assert dp.info().run_cnt >= 3
    # removing a component drops its statistics pins
    disp.remove("disp_a")
    assert {s.name for s in disp.stats()} == {"disp_b", "disp_c"}
    disp.disable_stats()
    assert disp.stats() == []


@pytest.mark.needs("xdp", "freplace")
@pytest.mark.skipif(XDP_LOADER is None, reason="xdp-tools (xdp-loader) not installed")
def test_xdp_loader_lists_and_removes_pybpf_components(disp, comp, veth_pair):
    a, b = comp("a"), comp("b")
    disp.add_many([a.programs["disp_a"], b.programs["disp_b"]])
    out = loader(veth_pair, "status", veth_pair.if_b).stdout
    lines = [ln.split() for ln in out.splitlines() if ln.strip().startswith("=>")]
    assert [(ln[1], ln[2], ln[-1]) for ln in lines] == [("10", "disp_a", "XDP_PASS"), ("20", "disp_b", "XDP_PASS")]
    assert "xdp_dispatcher" in out
    r = loader(veth_pair, "unload", veth_pair.if_b, "--id", str(a.programs["disp_a"].id))
    assert r.returncode == 0, r.stderr
    assert [x.name for x in disp.components()] == ["disp_b"]
    udp(veth_pair, 4)
    assert hits(b) >= 4


@pytest.mark.needs("xdp", "freplace")
@pytest.mark.skipif(XDP_LOADER is None, reason="xdp-tools (xdp-loader) not installed")
def test_pybpf_lists_and_removes_xdp_loader_programs(disp, comp, trace, veth_pair):
    r = loader(veth_pair, "load", veth_pair.if_b, str(compiled("disp_c")))   # libxdp: one program
    assert r.returncode == 0, r.stderr
    comps = disp.components()
    assert [(x.name, x.priority, x.chain_call_actions) for x in comps] == [("disp_c", 30, {PASS})]
    a = comp("a")
    disp.add(a.programs["disp_a"])                       # joins xdp-loader's dispatcher
    assert [x.name for x in disp.components()] == ["disp_a", "disp_c"]
    r = loader(veth_pair, "load", veth_pair.if_b, str(compiled("disp_b")))   # libxdp adds to ours
    assert r.returncode == 0, r.stderr
    assert [x.name for x in disp.components()] == ["disp_a", "disp_b", "disp_c"]
    trace.reset()
    udp(veth_pair, 3)
    assert trace.ids().startswith("a")                   # only a writes the trace: it runs
    disp.remove("disp_c", "disp_b")                      # pybpf removes xdp-loader's programs
    out = loader(veth_pair, "status", veth_pair.if_b).stdout
    assert "disp_a" in out and "disp_b" not in out and "disp_c" not in out


@pytest.mark.needs("xdp", "freplace")
def test_lock_is_libxdps_flock(disp, comp):
    a = comp("a")
    os.makedirs("/sys/fs/bpf/xdp", mode=0o700, exist_ok=True)
    fd = os.open("/sys/fs/bpf/xdp", os.O_DIRECTORY | os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = []

    def release() -> None:
        time.sleep(1.5)
        released.append(time.monotonic())
        fcntl.flock(fd, fcntl.LOCK_UN)

    t = threading.Thread(target=release)
    t.start()
    try:
        disp.add(a.programs["disp_a"])
        done = time.monotonic()
    finally:
        t.join()
        os.close(fd)
    assert released and done >= released[0]            # waited for the lock holder


@pytest.mark.needs("xdp", "freplace")
def test_errors_are_clear(disp, comp, load, veth_pair):
    loaded = load("xdp_count").programs["xdp_count"]
    with pytest.raises(pybpf.StateError, match="already loaded as XDP"):
        disp.add(loaded)
    a = comp("a")
    disp.add(a.programs["disp_a"])
    with pytest.raises(pybpf.BPFNotFoundError, match=r"no component 'nope'.*disp_a"):
        disp.remove("nope")
    with pytest.raises(pybpf.BPFInvalidError, match="unknown xdp action"):
        disp.add(comp("b").programs["disp_b"], chain_call_actions=["XDP_BOUNCE"])
    disp.remove_all()
    # a program attached without a dispatcher blocks it, and says so
    with xdp.attach(loaded, veth_pair.if_b, netns=veth_pair.b.name):
        with pytest.raises(pybpf.BPFBusyError, match="is not a xdp dispatcher"):
            disp.add(comp("c").programs["disp_c"])


# -- tc ----------------------------------------------------------------------------------------------

@pytest.mark.needs("freplace")
def test_tc_dispatcher_chains_ingress(comp, trace, veth_pair):
    d = TcDispatcher(veth_pair.if_b, "ingress", netns=veth_pair.b.name)
    try:
        x, y = comp("tc_y"), comp("tc_x")
        d.add_many([x.programs["disp_tc_y"], y.programs["disp_tc_x"]])
        assert [(c.name, c.priority) for c in d.components()] == [("disp_tc_x", 10), ("disp_tc_y", 20)]
        trace.reset()
        udp(veth_pair, 6)
        seen = trace.ids()
        assert seen and seen == "xy" * (len(seen) // 2)
        assert hits(x) == hits(y) >= 6
        assert veth_pair.ping(1).returncode == 0
        # TC_ACT_SHOT from the first component ends the chain and drops
        d.remove("disp_tc_x")
        x2 = comp("tc_x", verdict=TC_ACTIONS["TC_ACT_SHOT"])
        d.add(x2.programs["disp_tc_x"])
        before = hits(x)
        trace.reset()
        udp(veth_pair, 4)
        assert set(trace.ids()) == {"x"} and hits(x) == before
        assert veth_pair.ping(1).returncode != 0
    finally:
        d.remove_all()
    assert d.components() == [] and veth_pair.ping(1).returncode == 0


@pytest.mark.needs("xdp", "freplace")
def test_stale_state_of_a_crashed_change_is_cleaned(disp, comp, veth_pair):
    """A process killed between pinning a new dispatcher and swapping it in
    leaves a dispatch-IFINDEX-ID directory nobody runs; the next change
    removes it (as libxdp_clean_references does), and keeps the live one."""
    a = comp("a")
    disp.add(a.programs["disp_a"])
    live = f"/sys/fs/bpf/xdp/dispatch-{veth_pair.ifindex_b}-{disp.dispatcher_id}"
    stale = f"/sys/fs/bpf/xdp/dispatch-{veth_pair.ifindex_b}-{2**31 - 3}"
    os.mkdir(stale, 0o700)
    a.programs["disp_a"].pin(f"{stale}/prog0-prog")            # what a crash leaves: pins holding programs
    disp.add(comp("b").programs["disp_b"])
    assert not os.path.exists(stale)
    live2 = f"/sys/fs/bpf/xdp/dispatch-{veth_pair.ifindex_b}-{disp.dispatcher_id}"
    assert live2 != live and not os.path.exists(live) and len(os.listdir(live2)) == 4
    assert [c.name for c in disp.components()] == ["disp_a", "disp_b"]
