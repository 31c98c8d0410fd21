"""Network namespaces: enter one for the current thread, resolve interfaces.

``ip netns add NAME`` namespaces live at /run/netns/NAME.  :func:`enter`
switches only the calling thread (setns(2)), and always switches back; bpffs
and other mounts are untouched (unlike ``ip netns exec``).
"""
from __future__ import annotations

import contextlib
import errno as _errno
import os
import socket
from typing import Iterator

from pybpf._binding import ffi, lib
from pybpf.errors import BPFInvalidError, BPFNotFoundError, raise_errno

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"


def path_of(netns: str | os.PathLike[str]) -> str:
    """/run/netns/NAME for a name; paths (/proc/PID/ns/net...) unchanged."""
    s = os.fspath(netns)
    return s if "/" in s else os.path.join(NETNS_RUN_DIR, s)


def _setns(fd: int, what: str) -> None:
    if lib.pybpf_setns(fd, CLONE_NEWNET) != 0:
        raise_errno(ffi.errno, f"enter network namespace {what}", op="setns")


@contextlib.contextmanager
def enter(netns: str | os.PathLike[str] | None) -> Iterator[None]:
    """Run the block in network namespace ``netns`` (None: stay where we are).
    Sockets created inside stay in that namespace after the block."""
    if netns is None:
        yield
        return
    target = path_of(netns)
    try:
        tfd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BPFNotFoundError(_errno.ENOENT, f"network namespace {os.fspath(netns)} does not exist ({target})",
                               hint="create it with 'ip netns add NAME' or pybpf.testing's netns fixtures") from None
    except PermissionError as e:
        raise_errno(e.errno or _errno.EACCES, f"open network namespace {target}", op="setns")
    ofd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(tfd, target)
        try:
            yield
        finally:
            _setns(ofd, "of origin")
    finally:
        os.close(tfd)
        os.close(ofd)


def current_ident() -> tuple[int, int]:
    """(device, inode) of the calling thread's network namespace: what
    tells two namespaces apart."""
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def find_path(ident: tuple[int, int]) -> str | None:
    """A path that opens the namespace ``ident`` (see :func:`current_ident`):
    a named one under /run/netns, else one a thread of this process is in;
    None if there is none."""
    candidates: list[str] = []
    with contextlib.suppress(OSError):
        candidates += [os.path.join(NETNS_RUN_DIR, n) for n in os.listdir(NETNS_RUN_DIR)]
    with contextlib.suppress(OSError):
        candidates += [f"/proc/self/task/{t}/ns/net" for t in os.listdir("/proc/self/task")]
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ident:
            return path
    return None


def ifindex(iface: str | int, netns: str | os.PathLike[str] | None = None) -> int:
    """The index of interface ``iface`` (a name or an index) in ``netns``."""
    if isinstance(iface, int):
        return iface
    with enter(netns):
        try:
            return socket.if_nametoindex(iface)
        except OSError:
            where = f" in network namespace {os.fspath(netns)}" if netns is not None else ""
            raise BPFInvalidError(_errno.ENODEV, f"no network interface named '{iface}'{where}",
                                  hint="check the name with 'ip link' (in the right namespace)") from None
