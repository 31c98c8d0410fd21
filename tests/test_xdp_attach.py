"""test_run with scapy packets; XDP attached to a veth pair with real packets;
links pinned and reopened."""
from __future__ import annotations

import os
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

import pybpf

pytestmark = pytest.mark.usefixtures("fd_leak_check")

UDP4, TCP4, ICMP4 = 4, 3, 2


def test_test_run_classifies_scapy_packets(load):
    obj = load("xdp_count")
    prog, counts = obj.programs["xdp_count"], obj.maps["counts"]
    pkts = {UDP4: Ether() / IP(dst="192.0.2.1") / UDP(dport=53) / b"q",
            TCP4: Ether() / IP(dst="192.0.2.1") / TCP(dport=80),
            ICMP4: Ether() / IP(dst="192.0.2.1") / ICMP()}
    for cls, pkt in pkts.items():
        r = prog.test_run(pkt, repeat=10)
        assert r.retval == 2 and r.data == bytes(pkt)   # XDP_PASS, packet unchanged
        assert r.duration_ns >= 0
        assert counts[cls].packets == 10 and counts[cls].bytes == 10 * len(pkt)


def test_test_run_too_short_packet_explained(load):
    prog = load("xdp_count").programs["xdp_count"]
    with pytest.raises(pybpf.BPFInvalidError) as ei:
        prog.test_run(b"\x00" * 4)
    assert "Ethernet header" in (ei.value.hint or "")


def test_xdp_on_veth_counts_real_packets(load, veth_pair):
    obj = load("xdp_count")
    prog, counts = obj.programs["xdp_count"], obj.maps["counts"]
    with prog.attach_xdp(veth_pair.if_b, mode="skb", netns=veth_pair.b.name) as link:
        info = link.info()
        assert info.type == pybpf.LinkType.XDP and info.prog_id == prog.id
        assert info.details["ifindex"] == veth_pair.ifindex_b
        veth_pair.send([Ether() / IP(src=veth_pair.ip_a, dst=veth_pair.ip_b) / UDP(dport=9)] * 25)
        assert veth_pair.ping(3).returncode == 0          # XDP_PASS: traffic still flows
        time.sleep(0.1)
        assert counts[UDP4].packets == 25
        assert counts[ICMP4].packets >= 3
    # detached: nothing counts any more
    before = counts[UDP4].packets
    veth_pair.send([Ether() / IP(src=veth_pair.ip_a, dst=veth_pair.ip_b) / UDP(dport=9)] * 5)
    time.sleep(0.1)
    assert counts[UDP4].packets == before


def test_xdp_drop_verdict_blocks_ping(veth_pair):
    from conftest import compiled
    with pybpf.Object.open(compiled("xdp_count")) as obj:
        obj.variables["verdict"] = 1                       # XDP_DROP
        obj.load()
        assert veth_pair.ping(1).returncode == 0
        with obj.programs["xdp_count"].attach_xdp(veth_pair.if_b, mode="skb", netns=veth_pair.b.name):
            assert veth_pair.ping(2).returncode != 0
        assert veth_pair.ping(1).returncode == 0


def test_second_xdp_attach_is_busy_and_explained(load, veth_pair):
    prog = load("xdp_count").programs["xdp_count"]
    with prog.attach_xdp(veth_pair.if_b, mode="skb", netns=veth_pair.b.name):
        with pytest.raises(pybpf.BPFBusyError, match="already attached"):
            prog.attach_xdp(veth_pair.if_b, mode="skb", netns=veth_pair.b.name)


def test_link_pin_outlives_object_and_reopens(veth_pair, bpffs):
    from conftest import compiled
    path = os.path.join(bpffs, "xdp_link")
    with pybpf.Object.open(compiled("xdp_count")) as obj:
        obj.load()
        prog_id = obj.programs["xdp_count"].id
        link = obj.programs["xdp_count"].attach_xdp(veth_pair.if_b, mode="skb", netns=veth_pair.b.name)
        link.pin(path)
        link.close()
    # object and link closed: the pin keeps the program attached
    with pybpf.Link.from_pinned(path) as again:
        assert again.info().prog_id == prog_id
        with pybpf.Program.from_id(prog_id) as prog:
            assert prog.name == "xdp_count"
        again.detach()
    os.unlink(path)
    # Nothing refers to the program any more: the kernel frees it after an RCU
    # grace period (deferred work), so allow it a bounded moment.
    deadline = time.monotonic() + 10
    while True:
        try:
            pybpf.Program.from_id(prog_id).close()
        except pybpf.BPFNotFoundError:
            break
        assert time.monotonic() < deadline, f"program {prog_id} still loaded 10 s after its last reference went"
        time.sleep(0.05)


def test_attach_to_missing_interface(load, netns):
    prog = load("xdp_count").programs["xdp_count"]
    with pytest.raises(pybpf.BPFInvalidError, match="no network interface named 'nope0'"):
        prog.attach_xdp("nope0", netns=netns.name)
    with pytest.raises(FileNotFoundError, match="network namespace"):
        prog.attach_xdp("lo", netns="pybpf-does-not-exist")
    with pytest.raises(pybpf.BPFInvalidError, match="unknown XDP mode"):
        prog.attach_xdp("lo", mode="turbo", netns=netns.name)
