"""The main demo: count packets per protocol with XDP on a real interface.

Compiles ``examples/xdp_count.bpf.c``, loads it into the running kernel,
attaches it (generic XDP) to one end of a veth pair joining two throwaway
network namespaces, sends real packets with scapy from the other end, prints
the per-protocol counters read back from the map, and cleans everything up.

    python -m pybpf.demo [--packets N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pybpf
from pybpf.testing import VethPair

CLASSES = ["other", "arp", "ipv4/icmp", "ipv4/tcp", "ipv4/udp", "ipv4/other", "ipv6"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pybpf.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=20, help="packets of each kind to send (default 20)")
    args = ap.parse_args(argv)

    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6, UDP as UDP6  # noqa: F811 - same class
    from scapy.layers.l2 import ARP, Ether

    src = Path(__file__).with_name("examples") / "xdp_count.bpf.c"
    t0 = time.perf_counter()
    obj_path = pybpf.compile(src)
    print(f"compiled {src.name} -> {obj_path} ({time.perf_counter() - t0:.2f} s)")

    with VethPair() as vp, pybpf.Object.open(obj_path) as obj:
        obj.load()
        prog, counts = obj.programs["xdp_count"], obj.maps["counts"]
        info = prog.info()
        print(f"loaded program '{prog.name}' id={info.id} tag={info.tag} ({info.verified_insns} insns verified)")
        with prog.attach_xdp(vp.if_b, mode="skb", netns=vp.b.name) as link:
            print(f"attached to {vp.if_b} in netns {vp.b.name} (generic XDP, link id {link.info().id})")
            n = args.packets
            pkts = (
                [Ether() / IP(src=vp.ip_a, dst=vp.ip_b) / UDP(sport=4000, dport=9) / b"pybpf"] * n
                + [Ether() / IP(src=vp.ip_a, dst=vp.ip_b) / TCP(sport=4001, dport=80, flags="S")] * n
                + [Ether() / IP(src=vp.ip_a, dst=vp.ip_b) / ICMP()] * n
                + [Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=vp.ip_a, pdst=vp.ip_b)] * n
                + [Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP6(dport=9)] * n
            )
            sent = vp.send(pkts)
            time.sleep(0.2)
            print(f"sent {sent} packets from {vp.if_a} with scapy\n")
            print(f"{'class':<12} {'packets':>8} {'bytes':>8}")
            total = 0
            for key, value in counts.items():
                total += value.packets
                print(f"{CLASSES[key]:<12} {value.packets:>8} {value.bytes:>8}")
            print(f"{'total':<12} {total:>8}")
            runs = obj.variables["seen"]
            print(f"\nthe program ran {runs} times (global variable 'seen')")
        ok = all(counts[k].packets >= n for k in (1, 2, 3, 4, 6))
    print("cleaned up: link closed, program unloaded, namespaces deleted")
    if not ok:
        print("error: some packet class was not counted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
