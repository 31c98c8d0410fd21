"""XDP through netlink (pyroute2): attach in each mode, query, atomic
replace, detach, and the conflicts between netlink and BPF-link attachments,
with real packets through a veth pair."""
from __future__ import annotations

import errno
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

import pybpf
from pybpf.features import xdp

pytestmark = [pytest.mark.usefixtures("fd_leak_check"), pytest.mark.needs("xdp")]

UDP4 = 4


def _udp(vp, n):
    vp.send([Ether() / IP(src=vp.ip_a, dst=vp.ip_b) / UDP(dport=9) / b"x"] * n)
    time.sleep(0.1)


@pytest.fixture
def two(load):
    """Two loaded copies of xdp_count (distinct programs and maps)."""
    return load("xdp_count"), load("xdp_count")


@pytest.mark.parametrize("mode", ["skb", "native"])
def test_attach_query_detach_with_packets(two, veth_pair, mode):
    obj = two[0]
    prog, counts = obj.programs["xdp_count"], obj.maps["counts"]
    where = dict(netns=veth_pair.b.name)
    assert not xdp.query(veth_pair.if_b, **where).attached
    att = xdp.attach(prog, veth_pair.if_b, mode, **where)
    try:
        st = xdp.query(veth_pair.if_b, **where)
        assert st.prog_id == prog.id and st.via == "netlink" and st.link_id is None
        assert st.mode == {"skb": "skb", "native": "drv"}[mode] == att.mode
        assert st.ifindex == veth_pair.ifindex_b
        # also by ifindex, from inside the namespace
        with veth_pair.b.enter():
            assert xdp.query(veth_pair.ifindex_b).prog_id == prog.id
        _udp(veth_pair, 20)
        assert counts[UDP4].packets == 20
        assert att.attached
    finally:
        assert att.detach() is True
    assert not xdp.query(veth_pair.if_b, **where).attached
    assert att.detach() is False                       # already gone: nothing removed
    _udp(veth_pair, 5)
    assert counts[UDP4].packets == 20                  # detached: no longer counting


def test_attach_by_ifindex_inside_the_namespace(two, veth_pair):
    """An interface named by its index, in the caller's own namespace."""
    prog, counts = two[0].programs["xdp_count"], two[0].maps["counts"]
    with veth_pair.b.enter():
        att = xdp.attach(prog, veth_pair.ifindex_b, "skb")
    try:
        st = xdp.query(veth_pair.if_b, netns=veth_pair.b.name)
        assert st.prog_id == prog.id and st.mode == "skb" and st.ifindex == veth_pair.ifindex_b
        _udp(veth_pair, 7)
        assert counts[UDP4].packets == 7
    finally:
        assert att.detach() is True
    assert not xdp.query(veth_pair.if_b, netns=veth_pair.b.name).attached


@pytest.mark.parametrize("mode", ["offload", "hw"])
def test_offload_flag_reaches_the_driver_and_is_explained(two, veth_pair, mode):
    """XDP_FLAGS_HW_MODE is passed through to the driver: veth has no
    offload, the kernel refuses, the error says why, nothing is attached."""
    prog = two[0].programs["xdp_count"]
    where = dict(netns=veth_pair.b.name)
    with pytest.raises(pybpf.NotSupportedError, match=r"in hw \(offload\) mode: the device's driver refused") as ei:
        xdp.attach(prog, veth_pair.if_b, mode, **where)
    assert ei.value.errno in (errno.EINVAL, errno.EOPNOTSUPP), ei.value
    assert "set_ifindex" in ei.value.hint
    st = xdp.query(veth_pair.if_b, **where)
    assert not st.attached and st.hw_prog_id == 0


def test_noexist_then_atomic_replace(two, veth_pair):
    (o1, o2) = two
    p1, p2 = o1.programs["xdp_count"], o2.programs["xdp_count"]
    where = dict(netns=veth_pair.b.name)
    a1 = xdp.attach(p1, veth_pair.if_b, "skb", **where)
    try:
        with pytest.raises(pybpf.BPFBusyError, match=r"already attached: program 'xdp_count' \(id \d+, skb mode\) "
                                                     r"is attached through netlink") as ei:
            xdp.attach(p2, veth_pair.if_b, "skb", **where)
        assert "replace=" in ei.value.hint
        # a stale expectation is refused and changes nothing
        with pytest.raises(pybpf.BPFExistsError, match="not the one attached"):
            xdp.attach(p1, veth_pair.if_b, "skb", replace=p2, **where)
        assert xdp.query(veth_pair.if_b, **where).prog_id == p1.id
        _udp(veth_pair, 3)
        a2 = xdp.replace(p2, veth_pair.if_b, p1.id, "skb", **where)   # by program id
        assert xdp.query(veth_pair.if_b, **where).prog_id == p2.id
        assert not a1.attached and a2.attached
        _udp(veth_pair, 7)
        assert o1.maps["counts"][UDP4].packets == 3
        assert o2.maps["counts"][UDP4].packets == 7
        assert a1.detach() is False                    # never removes someone else's program
        assert xdp.query(veth_pair.if_b, **where).prog_id == p2.id
        a3 = xdp.attach(p1, veth_pair.if_b, "skb", replace=True, **where)
        assert xdp.query(veth_pair.if_b, **where).prog_id == p1.id
        assert a3.detach()
    finally:
        xdp.detach(veth_pair.if_b, **where)


def test_generic_and_native_conflict_explained(two, veth_pair):
    p1, p2 = two[0].programs["xdp_count"], two[1].programs["xdp_count"]
    where = dict(netns=veth_pair.b.name)
    with xdp.attach(p1, veth_pair.if_b, "skb", **where):
        with pytest.raises(pybpf.BPFBusyError, match="native and generic XDP cannot be active") as ei:
            xdp.attach(p2, veth_pair.if_b, "native", replace=True, **where)
        assert "skb" in ei.value.hint
    assert not xdp.query(veth_pair.if_b, **where).attached


def test_link_blocks_netlink_and_is_named(two, veth_pair):
    p1, p2 = two[0].programs["xdp_count"], two[1].programs["xdp_count"]
    where = dict(netns=veth_pair.b.name)
    with p1.attach_xdp(veth_pair.if_b, "skb", **where) as link:
        st = xdp.query(veth_pair.if_b, **where)
        assert st.via == "link" and st.link_id == link.id and st.prog_id == p1.id
        for attempt in (lambda: xdp.attach(p2, veth_pair.if_b, "skb", **where),
                        lambda: xdp.attach(p2, veth_pair.if_b, "skb", replace=True, **where),
                        lambda: xdp.detach(veth_pair.if_b, **where)):
            with pytest.raises(pybpf.BPFBusyError, match=f"held by BPF link id {link.id}") as ei:
                attempt()
            assert "Link.update" in ei.value.hint and "detach" in ei.value.hint
        assert xdp.query(veth_pair.if_b, **where).prog_id == p1.id
    assert not xdp.query(veth_pair.if_b, **where).attached


def test_netlink_blocks_link_and_is_named(two, veth_pair):
    p1, p2 = two[0].programs["xdp_count"], two[1].programs["xdp_count"]
    where = dict(netns=veth_pair.b.name)
    with xdp.attach(p1, veth_pair.if_b, "skb", **where):
        with pytest.raises(pybpf.BPFBusyError, match=f"through a BPF link.*id {p1.id}.*attached through netlink") as ei:
            p2.attach_xdp(veth_pair.if_b, "skb", **where)
        assert "cannot take over a netlink attachment" in ei.value.hint
        assert xdp.query(veth_pair.if_b, **where).prog_id == p1.id


def test_bad_input_is_typed(load, netns):
    prog = load("xdp_count").programs["xdp_count"]
    with pytest.raises(pybpf.BPFInvalidError, match="unknown XDP mode"):
        xdp.attach(prog, "lo", "turbo", netns=netns.name)
    with pytest.raises(pybpf.BPFInvalidError, match="no network interface named 'nope0'"):
        xdp.attach(prog, "nope0", netns=netns.name)
    with pytest.raises(pybpf.BPFInvalidError, match="no network interface with index 999"):
        xdp.query(999, netns=netns.name)
    with pytest.raises(FileNotFoundError, match="network namespace"):
        xdp.query("lo", netns="pybpf-no-such-ns")
    with pytest.raises(pybpf.BPFNotFoundError, match="the program to replace"):
        xdp.attach(prog, "lo", "skb", netns=netns.name, replace=2**31 - 7)   # no such program id
    assert xdp.detach("lo", netns=netns.name) is False                        # nothing attached
    with pybpf.Object.open(__import__("conftest").compiled("xdp_count")) as unloaded:
        with pytest.raises(pybpf.BPFInvalidError, match="not a loaded program"):
            xdp.attach(unloaded.programs["xdp_count"], "lo", netns=netns.name)
