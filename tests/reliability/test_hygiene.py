"""Resource hygiene: open/load/attach/pin/close many times, then the
process's fds, the kernel's program/map/link ids and bpffs are back to
where they started.

``PYBPF_HYGIENE_ROUNDS`` scales every loop (CI default: ROUNDS below, 2000 on the host;
``PYBPF_HYGIENE_ROUNDS=5000`` for the long run).  Kernel ids are global, so
leftovers are counted only among objects with this suite's names.
"""
from __future__ import annotations

import os

import pytest

import pybpf
from pybpf import raw
from rel_util import Snapshot, compiled, env_int, guest_scaled, links_on, open_fds

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fd_leak_check")]

# thousands on the host; inside a TCG guest 400 (what the guest-only loops below scale from, as before)
ROUNDS = env_int("PYBPF_HYGIENE_ROUNDS", guest_scaled(2000, factor=5, floor=400))
# Every program and map of this suite's objects starts with "rel_" (links count by their program's name).
NAMES = ["rel_", "link->rel_"]
AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"


@pytest.fixture
def clean() -> Snapshot:
    """A snapshot taken before the test; the test ends by checking it."""
    for name in ("rel_hyg", "rel_reject", "rel_cc", "rel_tgt", "rel_tramp", "rel_ext", "rel_tc"):
        compiled(name)                                                # compile outside the window
    pybpf.Btf.vmlinux()
    return Snapshot.take()


def assert_back_to(snap: Snapshot) -> None:
    left = snap.leftovers(NAMES)
    assert not left, f"left behind: {left}"


def _fd_count() -> int:
    return len(open_fds())


def test_object_open_load_run_close(clean: Snapshot) -> None:
    path = compiled("rel_hyg")
    fds = _fd_count()
    for i in range(ROUNDS):
        with pybpf.Object.open(path) as obj:
            obj.variables["rel_verdict"] = 1                 # XDP_DROP
            obj.load()
            r = obj.programs["rel_xdp"].test_run(bytes(64))
            assert r.retval == 1 and obj.maps["rel_counts"][0].packets == 1
            assert obj.variables["rel_seen"] == 1
        if i % 100 == 99:
            assert _fd_count() == fds, f"fds grew from {fds} to {_fd_count()} after {i + 1} rounds"
    assert_back_to(clean)


def test_objects_left_to_the_garbage_collector(clean: Snapshot) -> None:
    """Objects, maps and programs never closed explicitly are released by
    their finalizers."""
    path = compiled("rel_hyg")
    for _ in range(max(ROUNDS // 5, 20)):
        obj = pybpf.Object.open(path)
        obj.load()
        obj.maps["rel_hash"][1] = 5
        prog = obj.programs["rel_xdp"]
        m = obj.maps["rel_counts"]
        del obj, prog, m
    assert_back_to(clean)


def test_failed_operations_leave_nothing(clean: Snapshot, tmp_path: object) -> None:
    """Error paths release what they took: verifier refusals, malformed
    ELF, missing pins and ids, bad keys, too-short packets."""
    bad = compiled("rel_reject")
    good = compiled("rel_hyg").read_bytes()
    with pybpf.Object.open(compiled("rel_hyg")) as keep:
        keep.load()
        prog, counts = keep.programs["rel_xdp"], keep.maps["rel_counts"]
        for i in range(max(ROUNDS // 2, 50)):
            with pytest.raises(pybpf.VerifierError):
                with pybpf.Object.open(bad) as obj:
                    obj.load()
            with pytest.raises(pybpf.ELFError):
                pybpf.Object.open(good[: 100 + i % 3000])
            with pytest.raises(pybpf.BPFNotFoundError):
                pybpf.Map.from_pinned(f"/sys/fs/bpf/pybpf-nothing-{i}")
            with pytest.raises(pybpf.BPFNotFoundError):
                pybpf.Program.from_id(0x7FFFFFF0 - i)
            with pytest.raises(pybpf.BPFInvalidError):
                counts[b"\x00"] = b"\x00"
            with pytest.raises(pybpf.BPFInvalidError):
                prog.test_run(b"\x00" * 3)
    assert_back_to(clean)


def test_standalone_maps_create_reopen_close(clean: Snapshot) -> None:
    for i in range(ROUNDS):
        with pybpf.Map.create("hash", 4, 8, 16, name="rel_map") as m:
            m[i.to_bytes(4, "little")] = (i * 7).to_bytes(8, "little")
            with pybpf.Map.from_id(m.id) as again:
                assert again.lookup_bytes(i.to_bytes(4, "little")) == (i * 7).to_bytes(8, "little")
    assert_back_to(clean)


def test_pins_pin_reopen_unpin(bpffs: str, clean: Snapshot) -> None:
    with pybpf.Object.open(compiled("rel_hyg")) as obj:
        obj.load()
        prog, counts = obj.programs["rel_xdp"], obj.maps["rel_counts"]
        for i in range(ROUNDS // 2):
            mp, pp = os.path.join(bpffs, f"m{i % 7}"), os.path.join(bpffs, f"p{i % 7}")
            counts.pin(mp)
            prog.pin(pp)
            with pytest.raises(pybpf.BPFExistsError):
                prog.pin(pp)
            with pybpf.Map.from_pinned(mp) as m, pybpf.Program.from_pinned(pp) as p:
                assert m.id == counts.id and p.id == prog.id
            counts.unpin(mp)
            prog.unpin(pp)
        assert os.listdir(bpffs) == []
    assert_back_to(clean)


def _xdp_links(ifindex: int) -> list[int]:
    return [lid for lid, _ in links_on(pybpf.LinkType.XDP, ifindex)]


def test_xdp_attach_pin_replace_detach(veth_pair: object, bpffs: str, clean: Snapshot) -> None:
    vp = veth_pair
    ns, iface = vp.b.name, vp.if_b  # type: ignore[attr-defined]
    idx = vp.ifindex_b  # type: ignore[attr-defined]
    with pybpf.Object.open(compiled("rel_hyg")) as o1, pybpf.Object.open(compiled("rel_hyg")) as o2:
        o1.load()
        o2.load()
        p1, p2 = o1.programs["rel_xdp"], o2.programs["rel_xdp"]
        pin = os.path.join(bpffs, "xdp")
        for i in range(ROUNDS // 4):
            link = p1.attach_xdp(iface, mode="skb", netns=ns)
            try:
                if i % 2:
                    link.update(p2)                       # atomic replacement
                    assert link.info().prog_id == p2.id
                if i % 3 == 0:
                    link.pin(pin)
                    link.close()                          # the pin keeps it attached
                    assert len(_xdp_links(idx)) == 1
                    link = pybpf.Link.from_pinned(pin)
                    os.unlink(pin)
            finally:
                link.close()
            if i % 50 == 0:
                assert _xdp_links(idx) == [], "closing the last reference must detach"
        assert _xdp_links(idx) == []
        # the hook is free: a fresh attach works
        with p1.attach_xdp(iface, mode="skb", netns=ns):
            pass
    assert_back_to(clean)


@pytest.mark.needs("struct_ops")
def test_struct_ops_register_unregister(clean: Snapshot) -> None:
    from pybpf.features import struct_ops as so

    path = compiled("rel_cc")
    for i in range(max(ROUNDS // 20, 10)):
        with pybpf.Object.open(path) as obj:
            obj.load()
            with obj.maps["rel_cc"].attach_struct_ops():
                assert "relcc" in open(AVAILABLE).read().split()
        assert "relcc" not in open(AVAILABLE).read().split(), f"round {i}: still registered after close"
    assert not [x for x in so.list_struct_ops() if x.registered and x.ops_name == "relcc"]
    assert_back_to(clean)


# -- trampolines: fentry/fexit and freplace links (guests only: the 6.18 host refuses these loads) ----

XDP_PASS = 2
PACKET = bytes(64)                 # class 1 in rel_tgt (Ethernet + IPv4 fit)
TRAMP_ROUNDS = guest_scaled(max(ROUNDS // 4, 20), factor=10, floor=10)


def _classes(tgt: pybpf.Object) -> list[int]:
    return [int(tgt.maps["rel_classes"][i]) for i in range(8)]


@pytest.mark.needs("trampoline")
def test_fentry_fexit_links_load_attach_pin_close(bpffs: str, clean: Snapshot) -> None:
    """fentry/fexit on a BPF program's main function and global subprogram,
    and fexit on a kernel function: each round loads the tracers, attaches,
    sees them run, sometimes keeps one alive through a pin only, and closes.
    The target's trampolines end empty; nothing of either object remains."""
    from pybpf.features import ext

    with pybpf.Object.open(compiled("rel_tgt")) as tgt:
        tgt.load()
        xp = tgt.programs["rel_tgt_xdp"]
        fds = _fd_count()
        for i in range(TRAMP_ROUNDS):
            with pybpf.Object.open(compiled("rel_tramp")) as t:
                progs = t.programs
                progs["rel_fexit_main"].set_attach_target(xp, "rel_tgt_xdp")
                progs["rel_fentry_sub"].set_attach_target(xp.id, "rel_classify")
                progs["rel_fexit_sub"].set_attach_target(xp, "rel_classify")
                t.load()
                links = [p.attach() for p in progs.values()]
                try:
                    if i % 3 == 0:              # the pin alone keeps the fexit on main attached
                        pin = os.path.join(bpffs, "tramp_link")
                        links[0].pin(pin)
                        links[0].close()
                        links[0] = pybpf.Link.from_pinned(pin)
                        os.unlink(pin)
                    assert len(ext.attachments(xp)) == 3
                    before = _classes(tgt)
                    assert xp.test_run(PACKET).retval == XDP_PASS
                    assert t.variables["rel_main_runs"] == 1 and t.variables["rel_main_ret"] == XDP_PASS
                    assert t.variables["rel_sub_entries"] == 1 and t.variables["rel_sub_ret"] == 1
                    assert _classes(tgt)[1] == before[1] + 1
                    raw.prog_test_run(progs["rel_fexit_kfn"].fd, b"")   # the kernel calls bpf_fentry_test1(1)
                    assert t.variables["rel_kfunc_runs"] == 1 and t.variables["rel_kfunc_ret"] == 2
                finally:
                    for link in links:
                        link.close()
            assert ext.attachments(xp) == [], f"round {i}: trampoline attachments outlived their links"
            if i % 10 == 9:
                assert _fd_count() == fds, f"fds grew from {fds} to {_fd_count()} after {i + 1} rounds"
        # detached: the target runs without them, and a new tracer attaches again
        assert xp.test_run(PACKET).retval == XDP_PASS
    assert_back_to(clean)


@pytest.mark.needs("freplace")
def test_freplace_links_load_attach_pin_close(bpffs: str, clean: Snapshot) -> None:
    """An extension replacing a global subprogram, attached to two targets in
    turn, sometimes held only by a pin: while attached the target counts class
    5, after close class 1 again; nothing remains."""
    from pybpf.features import ext

    with pybpf.Object.open(compiled("rel_tgt")) as tgt, pybpf.Object.open(compiled("rel_tgt")) as tgt2:
        tgt.load()
        tgt2.load()
        xp, xp2 = tgt.programs["rel_tgt_xdp"], tgt2.programs["rel_tgt_xdp"]
        fds = _fd_count()
        for i in range(TRAMP_ROUNDS):
            with pybpf.Object.open(compiled("rel_ext")) as e:
                new = e.programs["rel_new_classify"]
                new.set_attach_target(xp, "rel_classify")
                e.load()
                link = new.attach()
                second = new.attach_freplace(xp2.id, "rel_classify") if i % 4 == 1 else None
                try:
                    if i % 3 == 0:
                        pin = os.path.join(bpffs, "ext_link")
                        link.pin(pin)
                        link.close()
                        link = pybpf.Link.from_pinned(pin)
                        os.unlink(pin)
                    assert set(ext.replacements(xp)) == {"rel_classify"}
                    before = _classes(tgt)
                    assert xp.test_run(PACKET).retval == XDP_PASS
                    assert _classes(tgt)[5] == before[5] + 1 and _classes(tgt)[1] == before[1]
                    if second is not None:
                        c5 = _classes(tgt2)[5]
                        assert xp2.test_run(PACKET).retval == XDP_PASS and _classes(tgt2)[5] == c5 + 1
                finally:
                    link.close()
                    if second is not None:
                        second.close()
            assert ext.attachments(xp) == [] and ext.attachments(xp2) == [], f"round {i}"
            before = _classes(tgt)
            xp.test_run(PACKET)
            assert _classes(tgt)[1] == before[1] + 1, f"round {i}: the original function is not back"
            if i % 10 == 9:
                assert _fd_count() == fds, f"fds grew from {fds} to {_fd_count()} after {i + 1} rounds"
    assert_back_to(clean)


@pytest.mark.needs("freplace")
@pytest.mark.parametrize("hook", [pytest.param("xdp", marks=pytest.mark.needs("xdp")), "tc"])
def test_dispatcher_add_remove(hook: str, veth_pair: object, clean: Snapshot) -> None:
    """Dispatcher components (freplace links pinned under /sys/fs/bpf) added
    and removed many times: no dispatcher, component, pin or fd remains."""
    from pybpf.features.dispatcher import TcDispatcher, XdpDispatcher

    vp = veth_pair
    ns, iface = vp.b.name, vp.if_b  # type: ignore[attr-defined]
    obj, name, state = (("rel_hyg", "rel_xdp", "xdp") if hook == "xdp" else ("rel_tc", "rel_tc", "pybpf-tc"))
    d = (XdpDispatcher(iface, netns=ns, mode="skb") if hook == "xdp" else TcDispatcher(iface, "ingress", netns=ns))
    os.makedirs(os.path.join("/sys/fs/bpf", state), mode=0o700, exist_ok=True)   # the dispatcher's state root
    path = str(compiled(obj))
    snap = Snapshot.take()
    fds = _fd_count()
    try:
        for i in range(guest_scaled(max(ROUNDS // 10, 10), factor=8, floor=4)):
            a = d.add(path, priority=10, name=name)
            b = d.add(path, priority=20, name=name)
            assert [c.prog_id for c in d.components()] == [a.prog_id, b.prog_id]
            d.remove(a.prog_id)
            if i % 2:
                d.remove(b.prog_id)
            else:
                d.remove_all()
            assert d.components() == [] and d.dispatcher_id is None
            assert not [n for n in os.listdir(d.state_dir) if n.startswith(f"dispatch-{d.ifindex}-")]
            assert _fd_count() == fds, f"round {i}: fds grew from {fds} to {_fd_count()}"
    finally:
        d.remove_all()
    left = snap.leftovers(NAMES + ["xdp_disp", "tc_dispa"])
    assert not left, f"left behind: {left}"
