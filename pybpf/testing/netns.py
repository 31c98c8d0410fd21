"""Throwaway network namespaces and veth pairs for tests.

Addresses come from 192.0.2.0/24 (TEST-NET-1, never routed) and live only
inside namespaces created here; nothing touches the host's own interfaces.
Every object removes what it created on ``close()`` (and on exit of its
``with`` block), also when the test failed.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import uuid
from typing import Any, Iterator, Sequence

from pybpf import netns as _netns

PREFIX = "pybpf-"
_counter = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


class NetNS:
    """A named network namespace (``ip netns add``) with loopback up."""

    def __init__(self, name: str | None = None):
        self.name = name or f"{PREFIX}{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:4]}"
        _ip("netns", "add", self.name)
        self._open = True
        try:
            self.run("ip", "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    @property
    def path(self) -> str:
        return _netns.path_of(self.name)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (nsenter: bpffs stays visible)."""
        proc = subprocess.run(["nsenter", f"--net={self.path}", *cmd], capture_output=True, text=True,
                              check=False, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} in netns {self.name} failed ({proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def popen(self, *cmd: str, **kw: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(["nsenter", f"--net={self.path}", *cmd], **kw)

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Run a block of this thread inside the namespace."""
        with _netns.enter(self.name):
            yield

    def ifindex(self, iface: str) -> int:
        return _netns.ifindex(iface, self.name)

    def close(self) -> None:
        if self._open:
            self._open = False
            _ip("netns", "del", self.name, check=False)

    def __enter__(self) -> "NetNS":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NetNS {self.name}>"


class VethPair:
    """Two namespaces joined by a veth pair: ``a`` (``if_a``, ``ip_a``) and
    ``b`` (``if_b``, ``ip_b``). Send from one side, watch the other."""

    def __init__(self, subnet: int = 0):
        n = next(_counter) % 250
        self.if_a, self.if_b = "veth-a", "veth-b"
        self.ip_a, self.ip_b = f"192.0.2.{(n % 60) * 4 + 1}", f"192.0.2.{(n % 60) * 4 + 2}"
        self.a = NetNS()
        try:
            self.b = NetNS()
        except Exception:
            self.a.close()
            raise
        try:
            tmp = f"pyb{os.getpid() % 100000}x{n}"
            _ip("link", "add", tmp, "netns", self.a.name, "type", "veth", "peer", "name", self.if_b,
                "netns", self.b.name)
            self.a.run("ip", "link", "set", tmp, "name", self.if_a)
            self.a.run("ip", "addr", "add", f"{self.ip_a}/30", "dev", self.if_a)
            self.b.run("ip", "addr", "add", f"{self.ip_b}/30", "dev", self.if_b)
            self.a.run("ip", "link", "set", self.if_a, "up")
            self.b.run("ip", "link", "set", self.if_b, "up")
            self.mac_a = self._mac(self.a, self.if_a)
            self.mac_b = self._mac(self.b, self.if_b)
        except Exception:
            self.close()
            raise

    @staticmethod
    def _mac(ns: NetNS, iface: str) -> str:
        # /sys/class/net shows the caller's namespace under nsenter: ask ip.
        return ns.run("ip", "-br", "link", "show", iface).stdout.split()[2]

    @property
    def ifindex_a(self) -> int:
        return self.a.ifindex(self.if_a)

    @property
    def ifindex_b(self) -> int:
        return self.b.ifindex(self.if_b)

    def send(self, packets: Sequence[Any] | Any, *, side: str = "a") -> int:
        """Send packets (scapy packets or raw frames) out of side ``side``'s
        interface through an AF_PACKET socket. A scapy Ether layer without
        addresses gets this side's MAC as source and the peer's as
        destination. Returns the number of frames sent."""
        import socket

        ns, iface = (self.a, self.if_a) if side == "a" else (self.b, self.if_b)
        src, dst = (self.mac_a, self.mac_b) if side == "a" else (self.mac_b, self.mac_a)
        if not isinstance(packets, (list, tuple)):
            packets = [packets]
        frames = [self._frame(p, src, dst) for p in packets]
        with ns.enter():
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
                sock.bind((iface, 0))
                for f in frames:
                    sock.send(f)
        return len(frames)

    @staticmethod
    def _frame(p: Any, src: str, dst: str) -> bytes:
        if isinstance(p, (bytes, bytearray, memoryview)):
            return bytes(p)
        try:
            from scapy.layers.l2 import Ether
        except ImportError:  # pragma: no cover
            return bytes(p)
        eth = p.getlayer(Ether)
        if eth is not None:
            if eth.fields.get("src") is None:
                eth.src = src
            if eth.fields.get("dst") is None:
                eth.dst = dst
        return bytes(p)

    def ping(self, count: int = 3, *, side: str = "a") -> subprocess.CompletedProcess[str]:
        ns, dst = (self.a, self.ip_b) if side == "a" else (self.b, self.ip_a)
        return ns.run("ping", "-c", str(count), "-i", "0.05", "-W", "1", dst, check=False)

    def close(self) -> None:
        for ns in (getattr(self, "a", None), getattr(self, "b", None)):
            if ns is not None:
                ns.close()

    def __enter__(self) -> "VethPair":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def bpffs_scratch(root: str = "/sys/fs/bpf") -> Iterator[str]:
    """A fresh directory in bpffs, removed with everything pinned in it."""
    if not os.path.ismount(root):
        subprocess.run(["mount", "-t", "bpf", "bpf", root], check=False)
    path = os.path.join(root, f"{PREFIX}{os.getpid()}-{next(_counter)}")
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def leftover_namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout.split("\n")
    return [ln.split()[0] for ln in out if ln.startswith(f"{PREFIX}{os.getpid()}-")]
