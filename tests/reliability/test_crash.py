"""Crash consistency: a process SIGKILLed in the middle of attaching,
replacing, pinning or removing leaves a state that the next pybpf call reads
and repairs.

Each test runs a child that loops over one sequence of operations, kills it
at random points (seeded: the seed is in the failure message) and then
checks, from this process, what the kernel and bpffs hold.
``PYBPF_CRASH_KILLS`` sets the number of kills per test.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

import pybpf
from pybpf.features import xdp
from rel_util import compiled, counted, env_int, guest_scaled, links_on, popen_python

pytestmark = pytest.mark.usefixtures("fd_leak_check")

KILLS = env_int("PYBPF_CRASH_KILLS", 8)
SEED = env_int("PYBPF_CRASH_SEED", 0) or random.randrange(1 << 30)
AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"


def _start(code: str) -> subprocess.Popen[str]:
    child = popen_python(code, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "ready":
        child.kill()
        _, err = child.communicate(timeout=30)
        pytest.fail(f"child did not start: {line!r}\n{err[-3000:]}")
    return child


def _kill(child: subprocess.Popen[str], delay: float) -> None:
    time.sleep(delay)
    alive = child.poll() is None
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=30)
    assert alive, f"the child ended before it was killed: {err[-3000:]}"
    assert child.returncode == -signal.SIGKILL


def _xdp_links_on(ifindex: int) -> list[pybpf.LinkInfo]:
    return [info for _, info in links_on(pybpf.LinkType.XDP, ifindex)]


def _assert_program_runs(vp: Any, prog_id: int) -> None:
    before = counted(prog_id)
    vp.send([Ether() / IP(src=vp.ip_a, dst=vp.ip_b) / UDP(dport=9)] * 5)
    deadline = time.monotonic() + 3
    while counted(prog_id) < before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted(prog_id) >= before + 5, f"program {prog_id} is attached but does not see packets"


XDP_LINK_CHILD = '''
import os, pybpf
from rel_util import compiled
o1 = pybpf.Object.open(compiled("rel_hyg")); o1.load()
o2 = pybpf.Object.open(compiled("rel_hyg")); o2.load()
p1, p2 = o1.programs["rel_xdp"], o2.programs["rel_xdp"]
n = 0
while True:
    if n == 1:
        print("ready", flush=True)  # after one warm-up round: kills land in steady state
    n += 1
    link = p1.attach_xdp({iface!r}, mode="skb", netns={ns!r})
    link.pin({pin!r})
    link.update(p2)
    link.update(p1, old=p2)
    link.close()                       # the pin keeps the attachment
    again = pybpf.Link.from_pinned({pin!r})
    again.detach()
    os.unlink({pin!r})
    again.close()
'''


def test_sigkill_during_xdp_link_attach_pin_replace_detach(veth_pair: Any, bpffs: str) -> None:
    vp = veth_pair
    pin = os.path.join(bpffs, "xdp_link")
    idx = vp.ifindex_b
    rng = random.Random(SEED)
    seen: dict[str, int] = {}
    with pybpf.Object.open(compiled("rel_hyg")) as mine:
        mine.load()
        prog = mine.programs["rel_xdp"]
        for k in range(KILLS):
            child = _start(XDP_LINK_CHILD.format(iface=vp.if_b, ns=vp.b.name, pin=pin))
            _kill(child, rng.uniform(0.02, 0.4))
            where = f"(kill {k}, PYBPF_CRASH_SEED={SEED})"
            # The kernel never holds more than one XDP link per interface and mode.
            links = _xdp_links_on(idx)
            assert len(links) <= 1, f"{where}: several XDP links on one interface: {links}"
            st = xdp.query(vp.if_b, netns=vp.b.name)
            if os.path.exists(pin):
                # A pin left behind always opens as a link: attached (to our interface) or already detached.
                with pybpf.Link.from_pinned(pin) as left:
                    info = left.info()
                    assert info.type == pybpf.LinkType.XDP, where
                    attached = info.details.get("ifindex") == idx
                    state = "pinned-attached" if attached else "pinned-detached"
                    if attached:
                        assert st.attached and st.via == "link" and st.prog_id == info.prog_id, (where, st, info)
                        with pybpf.Program.from_id(info.prog_id) as p:
                            assert p.name == "rel_xdp", where
                        _assert_program_runs(vp, info.prog_id)
                        # the next attach is refused with words, not silently stacked
                        with pytest.raises(pybpf.BPFBusyError, match="already attached"):
                            prog.attach_xdp(vp.if_b, mode="skb", netns=vp.b.name).close()
                    else:
                        assert info.details.get("ifindex", 0) == 0 and not st.attached, (where, st, info)
                    left.detach()                          # repair: detach and remove the pin
                os.unlink(pin)
            else:
                # no pin: the child's fds died with it, and so did its attachment
                state = "clean"
                assert not st.attached and not links, f"{where}: an attachment without a pin survived: {st}"
            seen[state] = seen.get(state, 0) + 1
            # repaired: the hook is free again for a new attachment that works
            with prog.attach_xdp(vp.if_b, mode="skb", netns=vp.b.name):
                _assert_program_runs(vp, prog.id)
            assert not xdp.query(vp.if_b, netns=vp.b.name).attached
    print(f"states after kills: {seen}")


NETLINK_CHILD = '''
import pybpf
from pybpf.features import xdp
from rel_util import compiled
o1 = pybpf.Object.open(compiled("rel_hyg")); o1.load()
o2 = pybpf.Object.open(compiled("rel_hyg")); o2.load()
p1, p2 = o1.programs["rel_xdp"], o2.programs["rel_xdp"]
n = 0
while True:
    if n == 1:
        print("ready", flush=True)  # after one warm-up round: kills land in steady state
    n += 1
    xdp.attach(p1, {iface!r}, "skb", netns={ns!r})
    xdp.replace(p2, {iface!r}, p1, "skb", netns={ns!r})
    xdp.replace(p1, {iface!r}, p2, "skb", netns={ns!r})
    xdp.detach({iface!r}, netns={ns!r})
'''


def test_sigkill_during_netlink_attach_replace_detach(veth_pair: Any) -> None:
    """Netlink attachments belong to the interface: a killed process leaves
    either nothing or one of its two programs, working, which the next
    conditional detach removes."""
    vp = veth_pair
    rng = random.Random(SEED + 1)
    seen: dict[str, int] = {}
    for k in range(KILLS):
        child = _start(NETLINK_CHILD.format(iface=vp.if_b, ns=vp.b.name))
        _kill(child, rng.uniform(0.02, 0.4))
        where = f"(kill {k}, PYBPF_CRASH_SEED={SEED})"
        st = xdp.query(vp.if_b, netns=vp.b.name)
        if st.attached:
            assert st.via == "netlink" and st.mode == "skb", (where, st)
            with pybpf.Program.from_id(st.prog_id) as p:
                assert p.name == "rel_xdp", where
            _assert_program_runs(vp, st.prog_id)
            assert xdp.detach(vp.if_b, netns=vp.b.name, expected=st.prog_id) is True
            seen["left-attached"] = seen.get("left-attached", 0) + 1
        else:
            seen["clean"] = seen.get("clean", 0) + 1
        assert not xdp.query(vp.if_b, netns=vp.b.name).attached, where
    print(f"states after kills: {seen}")


PIN_CHILD = '''
import os, pybpf
from rel_util import compiled
o = pybpf.Object.open(compiled("rel_hyg")); o.load()
d = {d!r}
print("ready", flush=True)
while True:
    o.pin_maps(d)
    o.programs["rel_xdp"].pin(os.path.join(d, "prog"))
    for name in sorted(os.listdir(d)):
        os.unlink(os.path.join(d, name))
'''


def test_sigkill_during_pinning_leaves_only_whole_pins(bpffs: str) -> None:
    """bpffs pins are created whole: after a kill each entry opens as the
    map or program it names; removing them frees the kernel objects."""
    rng = random.Random(SEED + 2)
    for k in range(KILLS):
        child = _start(PIN_CHILD.format(d=bpffs))
        _kill(child, rng.uniform(0.01, 0.2))
        where = f"(kill {k}, PYBPF_CRASH_SEED={SEED})"
        for name in os.listdir(bpffs):
            path = os.path.join(bpffs, name)
            if name == "prog":
                with pybpf.Program.from_pinned(path) as p:
                    assert p.name == "rel_xdp", where
            else:
                with pybpf.Map.from_pinned(path) as m:
                    assert m.name.replace(".", "_") == name, where
            os.unlink(path)
    assert os.listdir(bpffs) == []


SO_CHILD = '''
import time, pybpf
from rel_util import compiled
path = {obj!r}
n = 0
while True:
    if n == 1:
        print("ready", flush=True)  # after one warm-up round: kills land in steady state
    n += 1
    with pybpf.Object.open(path) as o:
        o.load()
        link = o.maps["rel_cc"].attach_struct_ops()
        time.sleep(0.1)                # registered for a while, as a real user would be
        link.close()
'''


def _registered(name: str = "relcc") -> bool:
    with open(AVAILABLE) as f:
        return name in f.read().split()


@pytest.mark.needs("struct_ops")
@pytest.mark.parametrize("flavour", [pytest.param("link", marks=pytest.mark.needs("struct_ops_link")), "plain"])
def test_sigkill_during_struct_ops_register_unregister(flavour: str) -> None:
    """``.struct_ops.link``: the kernel drops the registration with the
    killed process.  ``.struct_ops`` (registration by map update): the kill
    may leave an orphan; the next registration then fails with EEXIST and a
    message naming the map and how to remove it, and unregister() repairs."""
    from pybpf.features import struct_ops as so

    obj = compiled("rel_cc") if flavour == "link" else pybpf.compile(
        os.path.join(os.path.dirname(__file__), "progs", "rel_cc.bpf.c"), cflags=["-DREL_PLAIN"])
    rng = random.Random(SEED + 3)
    seen: dict[str, int] = {}
    try:
        for k in range(KILLS):
            child = _start(SO_CHILD.format(obj=str(obj)))
            _kill(child, rng.uniform(0.05, 0.6))
            where = f"(kill {k}, {flavour}, PYBPF_CRASH_SEED={SEED})"
            if flavour == "link":
                deadline = time.monotonic() + 5
                while _registered() and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert not _registered(), f"{where}: a link registration outlived its killed process"
            orphans = [i for i in so.find_registered("relcc")]
            with pybpf.Object.open(obj) as o:
                o.load()
                if orphans:
                    assert flavour == "plain", where
                    assert len(orphans) == 1, (where, [str(i) for i in orphans])
                    with pytest.raises(pybpf.BPFExistsError) as ei:
                        o.maps["rel_cc"].attach_struct_ops()
                    msg = str(ei.value)
                    assert f"map id {orphans[0].map_id}" in msg and "unregister" in msg, msg
                    so.unregister(orphans[0].map_id)             # the repair the message names
                    seen["orphan"] = seen.get("orphan", 0) + 1
                else:
                    seen["clean"] = seen.get("clean", 0) + 1
                with o.maps["rel_cc"].attach_struct_ops():
                    assert _registered()
            assert not _registered(), where
    finally:
        for i in so.find_registered("relcc"):
            so.unregister(i.map_id)
    print(f"states after kills: {seen}")


# -- trampolines: fentry/fexit and freplace links (guests only: the 6.18 host refuses these loads) ----

TRAMP_KILLS = guest_scaled(KILLS, factor=2, floor=4)
XDP_PASS = 2
PACKET = bytes(64)                # rel_tgt counts it in class 1 (5 while rel_ext replaces rel_classify)

TRACING_CHILD = '''
import os, sys, time, pybpf
from rel_util import compiled
xp = pybpf.Program.from_id({target})
n, t0 = 0, time.monotonic()
while True:
    if n == 1:   # after one warm-up round, say how long a round takes: kills land anywhere in one
        print("ready", time.monotonic() - t0, flush=True)
    n += 1
    # loaded every round: 6.12+ let a tracer of a BPF program attach only once
    t = pybpf.Object.open(compiled("rel_tramp"))
    t.programs["rel_fexit_main"].set_attach_target(xp, "rel_tgt_xdp")
    t.programs["rel_fentry_sub"].set_attach_target(xp, "rel_classify")
    t.programs["rel_fexit_sub"].set_attach_target(xp, "rel_classify")
    t.load()
    links = {{name: p.attach() for name, p in t.programs.items()}}
    links["rel_fexit_main"].pin({pin!r})   # the fexit on main outlives the process while pinned
    if {hold} and n == 2:
        print("pinned", flush=True)    # a kill at this exact point: four links, one of them pinned
        sys.stdin.readline()
    xp.test_run(bytes(64))
    for link in links.values():
        link.close()
    xp.test_run(bytes(64))
    again = pybpf.Link.from_pinned({pin!r})
    os.unlink({pin!r})
    again.close()
    t.close()
'''

FREPLACE_CHILD = '''
import os, sys, time, pybpf
from rel_util import compiled
xp = pybpf.Program.from_id({target})
e = pybpf.Object.open(compiled("rel_ext"))
new = e.programs["rel_new_classify"]
new.set_attach_target(xp, "rel_classify")
e.load()
n, t0 = 0, time.monotonic()
while True:
    if n == 1:
        print("ready", time.monotonic() - t0, flush=True)
    n += 1
    link = new.attach_freplace(xp.id, "rel_classify")   # re-attach: the first link took the load-time target
    xp.test_run(bytes(64))
    link.pin({pin!r})                   # held by the pin only from here
    link.close()
    if {hold} and n == 2:
        print("pinned", flush=True)
        sys.stdin.readline()
    xp.test_run(bytes(64))
    link = pybpf.Link.from_pinned({pin!r})
    os.unlink({pin!r})
    link.close()
'''


def _kill_trampoline_child(code: str, k: int, rng: random.Random) -> None:
    """Start a child (formatted with ``hold=k == 0``) that prints "ready
    SECONDS-PER-ROUND" and kill it: the first time exactly where it holds a
    pinned link (it says "pinned" and waits), later anywhere in one round."""
    child = popen_python(code, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    line = child.stdout.readline().split()
    if line and line[0] == "ready" and k == 0:
        line = child.stdout.readline().split()
    if not line or line[0] != ("pinned" if k == 0 else "ready"):
        child.kill()
        _, err = child.communicate(timeout=30)
        pytest.fail(f"child did not start: {line!r}\n{err[-3000:]}")
    _kill(child, 0 if k == 0 else rng.uniform(0.0, float(line[1])))


def _attachments(xp: pybpf.Program, want: int, where: str) -> list[Any]:
    """The target's trampoline attachments once the killed process's links
    are released (``want`` of them expected: those held by pins)."""
    from pybpf.features import ext

    deadline = time.monotonic() + 5
    while len(found := ext.attachments(xp)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(found) == want, f"{where}: attachments {[str(a) for a in found]}, pins hold {want}"
    return found


def _bss_of(prog_id: int) -> pybpf.Map:
    """The .bss map of program ``prog_id`` (opened by id: its object is gone)."""
    with pybpf.Program.from_id(prog_id) as p:
        for mid in p.info().map_ids:
            m = pybpf.Map.from_id(mid)
            if m.name.endswith(".bss"):
                return m
            m.close()
    raise AssertionError(f"program {prog_id} has no .bss map")


@pytest.mark.needs("trampoline")
def test_sigkill_during_fentry_fexit_attach_pin_detach(bpffs: str) -> None:
    """A killed tracer leaves at most what its pins hold: the pinned fexit
    still runs on every packet of the target, and unpinning it empties the
    target's trampoline so that the next tracer attaches to the same
    functions."""
    pin = os.path.join(bpffs, "fexit_main")
    rng = random.Random(SEED + 4)
    seen: dict[str, int] = {}
    with pybpf.Object.open(compiled("rel_tgt")) as tgt:
        tgt.load()
        xp = tgt.programs["rel_tgt_xdp"]
        for k in range(TRAMP_KILLS):
            _kill_trampoline_child(TRACING_CHILD.format(target=xp.id, pin=pin, hold=k == 0), k, rng)
            where = f"(kill {k}, PYBPF_CRASH_SEED={SEED})"
            if os.path.exists(pin):
                (a,) = _attachments(xp, 1, where)
                assert (a.kind, a.function, a.prog_name) == ("fexit", "rel_tgt_xdp", "rel_fexit_main"), where
                with pybpf.Link.from_pinned(pin) as left:
                    assert left.id == a.link_id, where
                    with _bss_of(left.info().prog_id) as m:
                        runs = m[0].rel_main_runs
                        assert xp.test_run(PACKET).retval == XDP_PASS
                        assert m[0].rel_main_runs == runs + 1, f"{where}: the pinned fexit does not run"
                os.unlink(pin)                                   # the repair: drop the pin
                seen["pinned"] = seen.get("pinned", 0) + 1
            else:
                assert k > 0, f"{where}: killed while holding a pinned link, but the pin is gone"
                seen["clean"] = seen.get("clean", 0) + 1
            _attachments(xp, 0, where)
            # the target runs unchanged, and the next tracer attaches to the same functions
            before = int(tgt.maps["rel_classes"][1])
            assert xp.test_run(PACKET).retval == XDP_PASS and int(tgt.maps["rel_classes"][1]) == before + 1
            with pybpf.Object.open(compiled("rel_tramp")) as t:
                for name in ("rel_fexit_main", "rel_fexit_sub", "rel_fentry_sub"):
                    t.programs[name].set_attach_target(xp, "rel_tgt_xdp" if name == "rel_fexit_main" else
                                                       "rel_classify")
                t.programs["rel_fexit_kfn"].set_autoload(False)
                t.load()
                with t.programs["rel_fexit_sub"].attach(), t.programs["rel_fexit_main"].attach():
                    xp.test_run(PACKET)
                    assert t.variables["rel_sub_ret"] == 1 and t.variables["rel_main_runs"] == 1, where
            _attachments(xp, 0, where)
    print(f"states after kills: {seen}")


@pytest.mark.needs("freplace")
def test_sigkill_during_freplace_attach_pin_detach(bpffs: str) -> None:
    """A killed process's extension stays only while pinned: the target then
    runs the replacement (class 5); after unpinning it runs its own function
    again (class 1), and a new extension of the same function attaches (an
    orphan would make it EBUSY)."""
    pin = os.path.join(bpffs, "freplace")
    rng = random.Random(SEED + 5)
    seen: dict[str, int] = {}
    with pybpf.Object.open(compiled("rel_tgt")) as tgt:
        tgt.load()
        xp = tgt.programs["rel_tgt_xdp"]

        def classes() -> list[int]:
            return [int(tgt.maps["rel_classes"][i]) for i in range(8)]

        for k in range(TRAMP_KILLS):
            _kill_trampoline_child(FREPLACE_CHILD.format(target=xp.id, pin=pin, hold=k == 0), k, rng)
            where = f"(kill {k}, PYBPF_CRASH_SEED={SEED})"
            before = classes()
            if os.path.exists(pin):
                (a,) = _attachments(xp, 1, where)
                assert (a.kind, a.function, a.prog_name) == ("freplace", "rel_classify", "rel_new_classify"), where
                assert xp.test_run(PACKET).retval == XDP_PASS
                assert classes()[5] == before[5] + 1 and classes()[1] == before[1], f"{where}: not replaced"
                os.unlink(pin)
                seen["pinned"] = seen.get("pinned", 0) + 1
            else:
                assert k > 0, f"{where}: killed while holding a pinned link, but the pin is gone"
                seen["clean"] = seen.get("clean", 0) + 1
            _attachments(xp, 0, where)
            before = classes()
            assert xp.test_run(PACKET).retval == XDP_PASS
            assert classes()[1] == before[1] + 1 and classes()[5] == before[5], f"{where}: the original is not back"
            with pybpf.Object.open(compiled("rel_ext")) as e:
                new = e.programs["rel_new_classify"]
                new.set_attach_target(xp, "rel_classify")
                e.load()
                with new.attach():
                    xp.test_run(PACKET)
                    assert classes()[5] == before[5] + 1, where
            _attachments(xp, 0, where)
    print(f"states after kills: {seen}")
