"""Crash consistency and concurrency of the dispatchers (freplace-based: run
in VM guests; the 6.18 host refuses freplace), both flavours:

* ``xdp``: the libxdp-protocol XdpDispatcher (netlink XDP, state pinned in
  /sys/fs/bpf/xdp/dispatch-IFINDEX-ID, readable by xdp-loader);
* ``tc``: the TcDispatcher (a direct-action cls_bpf filter of the clsact
  qdisc, swapped with a filter *replace*; state in /sys/fs/bpf/pybpf-tc/).

What is checked:

* a process SIGKILLed anywhere while adding or removing components leaves
  the hook with a working dispatcher (every component sees real packets
  across a veth pair) or with nothing, never a dispatcher without its pinned
  state; the next call reads that state, changes it, and leaves no stale
  pins or kernel objects once everything is removed;
* two processes adding components to one hook at once both succeed (or one
  gets a clear retryable error) and none is lost.

In a guest: python3 -m pybpf.vm run --kernel 6.1 -- python3 -m pytest tests/reliability/test_dispatcher_crash.py -q
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

import pybpf
from pybpf.features import xdp
from rel_util import Snapshot, compiled, counted, env_int, popen_python

# The dispatcher keeps its state in the real bpffs (/sys/fs/bpf/...), like libxdp.
pytestmark = [pytest.mark.usefixtures("fd_leak_check"), pytest.mark.needs("freplace")]

# Sized for TCG guests (these tests need freplace, so they run only there): a random kill costs
# about 30 s, a race about 35 s on 6.1.  PYBPF_CRASH_KILLS / PYBPF_RACES for longer runs.
KILLS = env_int("PYBPF_CRASH_KILLS", 3)
RACES = env_int("PYBPF_RACES", 2)
SEED = env_int("PYBPF_CRASH_SEED", 0) or random.randrange(1 << 30)

# per flavour: how to build the dispatcher (Python source, formatted with iface/ns), its component
# (object, program name), the dispatcher's program name and state directory under /sys/fs/bpf
HOOKS: dict[str, dict[str, str]] = {
    "xdp": {"make": "XdpDispatcher({iface!r}, netns={ns!r}, mode='skb')", "obj": "rel_hyg", "prog": "rel_xdp",
            "main": "xdp_dispatcher", "state": "xdp"},
    "tc": {"make": "TcDispatcher({iface!r}, 'ingress', netns={ns!r})", "obj": "rel_tc", "prog": "rel_tc",
           "main": "tc_dispatcher", "state": "pybpf-tc"},
}
FLAVOURS = [pytest.param("xdp", marks=pytest.mark.needs("xdp")), "tc"]


def _dispatcher(hook: str, vp: Any) -> Any:
    from pybpf.features.dispatcher import TcDispatcher, XdpDispatcher   # noqa: F401 - used by eval
    return eval(HOOKS[hook]["make"].format(iface=vp.if_b, ns=vp.b.name))


def _attached(hook: str, vp: Any) -> int:
    """The program id the kernel runs on the hook (0: none), observed without
    the dispatcher's code: netlink XDP query, or ``tc -j filter show``."""
    if hook == "xdp":
        st = xdp.query(vp.if_b, netns=vp.b.name)
        assert not st.attached or st.via == "netlink", st
        return st.prog_id if st.attached else 0
    out = vp.b.run("tc", "-j", "filter", "show", "dev", vp.if_b, "ingress", check=False)
    if out.returncode != 0:        # no clsact qdisc (yet)
        assert "Cannot find" in out.stderr or "Invalid" in out.stderr or not out.stderr, out.stderr
        return 0
    filters = [f for f in json.loads(out.stdout or "[]") if f.get("kind") == "bpf" and "options" in f]
    assert len(filters) <= 1, f"more than one bpf filter on the ingress hook: {filters}"
    if not filters:
        return 0
    f = filters[0]
    assert f["pref"] == 1 and int(f["options"]["handle"], 16) == 1 and f["options"].get("direct-action"), f
    return int(f["options"]["prog"]["id"])


def _state_dirs(hook: str, vp: Any) -> list[str]:
    d = os.path.join("/sys/fs/bpf", HOOKS[hook]["state"])
    try:
        return sorted(n for n in os.listdir(d) if n.startswith(f"dispatch-{vp.ifindex_b}-"))
    except FileNotFoundError:
        return []


def _assert_components_run(vp: Any, comps: list[Any]) -> None:
    before = {c.prog_id: counted(c.prog_id) for c in comps}
    vp.send([Ether() / IP(src=vp.ip_a, dst=vp.ip_b) / UDP(dport=9)] * 5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(counted(c.prog_id) < before[c.prog_id] + 5 for c in comps):
        time.sleep(0.05)
    for c in comps:   # every component passes (PASS / TC_ACT_OK chain on), so every one sees every packet
        assert counted(c.prog_id) >= before[c.prog_id] + 5, f"component {c} does not see packets"


def _xdp_loader_ids(vp: Any) -> set[int]:
    """Component program ids as xdp-loader (libxdp) reads the pinned state."""
    r = vp.b.run("xdp-loader", "status", vp.if_b, check=False)
    assert r.returncode == 0, r.stderr
    return {int(ln.split()[3]) for ln in r.stdout.splitlines() if ln.strip().startswith("=>")}


@pytest.fixture
def clean_after() -> Any:
    """A snapshot before the test; after it, none of this suite's programs,
    maps, links or dispatchers, and no bpffs entries, may remain."""
    for h in HOOKS.values():
        compiled(h["obj"])
        os.makedirs(os.path.join("/sys/fs/bpf", h["state"]), mode=0o700, exist_ok=True)  # as the dispatcher does
    snap = Snapshot.take()
    yield snap
    # components and their maps are rel_*, links count by their program; the dispatchers' own
    # programs and .rodata maps (libbpf names those after the first 8 characters of the object)
    left = snap.leftovers(["rel_", "xdp_disp", "tc_dispa"])
    assert not left, f"left behind: {left}"


CHILD = '''
import sys, time, pybpf
from pybpf.features.dispatcher import XdpDispatcher, TcDispatcher
from rel_util import compiled
path = str(compiled({obj!r}))
d = {make}
n, t0 = 0, time.monotonic()
while True:
    if n == 1:   # after one warm-up round, say how long a round takes: kills land anywhere in one
        print("ready", time.monotonic() - t0, flush=True)
    n += 1
    a = d.add(path, priority=10, name={prog!r})
    b = d.add(path, priority=20, name={prog!r})
    d.remove(a.prog_id)
    d.remove(b.prog_id)
'''


@pytest.mark.parametrize("hook", FLAVOURS)
def test_sigkill_while_adding_and_removing_components(hook: str, veth_pair: Any, clean_after: Any) -> None:
    vp = veth_pair
    h = HOOKS[hook]
    d = _dispatcher(hook, vp)
    rng = random.Random(SEED)
    seen: dict[str, int] = {}
    path = str(compiled(h["obj"]))
    code = CHILD.format(obj=h["obj"], prog=h["prog"], make=h["make"].format(iface=vp.if_b, ns=vp.b.name))
    try:
        for k in range(KILLS):
            child = popen_python(code, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert child.stdout is not None
            line = child.stdout.readline().split()
            if not line or line[0] != "ready":
                child.kill()
                pytest.fail(f"child did not start: {line!r} {child.communicate()[1][-3000:]}")
            time.sleep(rng.uniform(0.0, float(line[1])))   # anywhere in one add/add/remove/remove round
            assert child.poll() is None, child.communicate()[1][-3000:]
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=30)
            where = f"({hook}, kill {k}, PYBPF_CRASH_SEED={SEED})"
            # the kernel runs a dispatcher with its pinned state, or nothing
            running = _attached(hook, vp)
            dirs = _state_dirs(hook, vp)
            comps = d.components()                          # the next call reads a consistent state
            state = f"{len(comps)} components" + (", stale pins" if len(dirs) > (1 if running else 0) else "")
            seen[state] = seen.get(state, 0) + 1
            if comps:
                assert running and d.dispatcher_id == running, (where, running, d.dispatcher_id)
                with pybpf.Program.from_id(running) as dp:
                    assert dp.name == h["main"], where
                assert f"dispatch-{vp.ifindex_b}-{running}" in dirs, (where, dirs)
                assert {c.name for c in comps} == {h["prog"]} and len(comps) <= 2, (where, comps)
                _assert_components_run(vp, comps)
                if hook == "xdp" and shutil.which("xdp-loader"):
                    assert _xdp_loader_ids(vp) == {c.prog_id for c in comps}, where   # libxdp reads it too
            else:
                assert not running, f"{where}: a dispatcher without components runs: id {running}"
            # and can change it: add one more (which drops stale pins), then repair everything
            extra = d.add(path, priority=30, name=h["prog"])
            assert extra.prog_id in {c.prog_id for c in d.components()}, where
            assert _state_dirs(hook, vp) == [f"dispatch-{vp.ifindex_b}-{d.dispatcher_id}"], where
            _assert_components_run(vp, d.components())
            d.remove_all()
            assert d.components() == [] and not _attached(hook, vp), where
            assert _state_dirs(hook, vp) == [], where
    finally:
        d.remove_all()
    print(f"{hook}: states after kills: {seen}")


STEP_CHILD = '''
import os, signal, pybpf
from pybpf.features.dispatcher import XdpDispatcher, TcDispatcher
from rel_util import compiled
path = str(compiled({obj!r}))
d = {make}
armed = False
swap = type(d)._swap


def dying_swap(self, new_fd, old_fd, mode):
    if armed and {point!r} == "before_swap":
        os.kill(os.getpid(), signal.SIGKILL)
    swap(self, new_fd, old_fd, mode)
    if armed and {point!r} == "after_swap":
        os.kill(os.getpid(), signal.SIGKILL)


type(d)._swap = dying_swap
a = d.add(path, priority=10, name={prog!r})
armed = True
if {op!r} == "add":
    d.add(path, priority=20, name={prog!r})
else:
    d.remove(a.prog_id)
raise SystemExit("not killed")
'''

# (operation, where the process dies) -> (components running after the kill, pinned state directories)
STEPS = {("add", "before_swap"): (1, 2),       # the new dispatcher is pinned, the old one still runs
         ("add", "after_swap"): (2, 2),        # the new one runs, the old one's pins remain
         ("remove", "after_swap"): (0, 1)}     # the last component left, its dispatcher's pins remain


@pytest.mark.parametrize("hook", FLAVOURS)
def test_sigkill_at_each_step_of_a_change(hook: str, veth_pair: Any, clean_after: Any) -> None:
    """A process killed at a chosen step of a change (just before or just
    after the hook is swapped) leaves the dispatcher that was attached or the
    one that replaced it, running with its pinned state, plus the other one's
    stale pins; the next change removes those, and nothing remains after
    remove_all."""
    vp = veth_pair
    h = HOOKS[hook]
    d = _dispatcher(hook, vp)
    make = h["make"].format(iface=vp.if_b, ns=vp.b.name)
    try:
        for (op, point), (want_comps, want_dirs) in STEPS.items():
            where = f"({hook}: killed {point.replace('_', ' ')} of {op})"
            child = popen_python(STEP_CHILD.format(obj=h["obj"], prog=h["prog"], make=make, op=op, point=point),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _, err = child.communicate(timeout=600)
            assert child.returncode == -signal.SIGKILL, (where, err[-3000:])
            running = _attached(hook, vp)
            dirs = _state_dirs(hook, vp)
            comps = d.components()
            assert len(comps) == want_comps and len(dirs) == want_dirs, (where, comps, dirs)
            if comps:
                assert running == d.dispatcher_id and f"dispatch-{vp.ifindex_b}-{running}" in dirs, \
                    (where, running, dirs)
                _assert_components_run(vp, comps)
                if hook == "xdp" and shutil.which("xdp-loader"):
                    assert _xdp_loader_ids(vp) == {c.prog_id for c in comps}, where
            else:
                assert not running, where
            extra = d.add(str(compiled(h["obj"])), priority=30, name=h["prog"])
            assert _state_dirs(hook, vp) == [f"dispatch-{vp.ifindex_b}-{d.dispatcher_id}"], \
                f"{where}: stale pins survived the next change"
            assert [c.prog_id for c in d.components()][-1] == extra.prog_id, where
            _assert_components_run(vp, d.components())
            d.remove_all()
            assert not _attached(hook, vp) and _state_dirs(hook, vp) == [], where
    finally:
        d.remove_all()


ADDER = '''
import sys, time, pybpf
from pybpf.features.dispatcher import XdpDispatcher, TcDispatcher
from rel_util import compiled
d = {make}
path = str(compiled({obj!r}))
print("ready", flush=True)
go = float(sys.stdin.readline())
while time.time() < go:
    pass
try:
    c = d.add(path, priority={prio}, name={prog!r})
    print("added", c.prog_id, flush=True)
except pybpf.BPFError as e:
    print("error", type(e).__name__, str(e).replace(chr(10), " "), flush=True)
'''


@pytest.mark.parametrize("hook", FLAVOURS)
def test_two_processes_adding_components_at_once(hook: str, veth_pair: Any, clean_after: Any) -> None:
    vp = veth_pair
    h = HOOKS[hook]
    d = _dispatcher(hook, vp)
    make = h["make"].format(iface=vp.if_b, ns=vp.b.name)
    try:
        for r in range(RACES):
            kids = [popen_python(ADDER.format(make=make, obj=h["obj"], prog=h["prog"], prio=10 + i),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                    for i in range(2)]
            try:
                for kid in kids:
                    assert kid.stdout is not None and kid.stdout.readline().strip() == "ready"
                go = time.time() + 1.0
                outs = []
                for kid in kids:
                    out, err = kid.communicate(f"{go}\n", timeout=300)
                    assert kid.returncode == 0, err[-3000:]
                    outs.append(out.strip())
            finally:
                for kid in kids:
                    if kid.poll() is None:
                        kid.kill()
                        kid.communicate()
            added = [int(o.split()[1]) for o in outs if o.startswith("added")]
            errors = [o for o in outs if o.startswith("error")]
            for e in errors:   # allowed only as a clear, retryable refusal
                assert "BPFBusyError" in e or "retry" in e.lower(), e
            comps = d.components()
            assert {c.prog_id for c in comps} == set(added), f"race {r}: a component was lost: {outs} vs {comps}"
            assert len(added) >= 1, outs
            assert _attached(hook, vp) == d.dispatcher_id
            _assert_components_run(vp, comps)
            d.remove_all()
            assert not _attached(hook, vp) and _state_dirs(hook, vp) == []
    finally:
        d.remove_all()
