"""The dispatcher mechanism for tc (``sched_cls``) programs (beyond libxdp).

A ``tc_dispatcher`` program (``tc_dispatcher.bpf.c``: the same slots and
configuration struct as the XDP dispatcher) runs as one direct-action
``bpf`` filter of the interface's ``clsact`` qdisc, on ingress or egress, at
a fixed priority and handle.  Components replace its ``prog0``..``prog9``
stubs (freplace); every change builds a new dispatcher and swaps it in with
a filter *replace* (cls_bpf swaps the program atomically: the filter is
never absent).  State is pinned like the XDP dispatcher's, under
``/sys/fs/bpf/pybpf-tc/dispatch-IFINDEX-DISPATCHERID/`` and locked with an
``flock`` on that directory.

tc verdicts start at ``TC_ACT_UNSPEC`` (-1).  A component's chain-call
actions default to ``TC_ACT_OK``, ``TC_ACT_PIPE`` and ``TC_ACT_UNSPEC``; its
metadata, if any, is the same ``.xdp_run_config`` struct with ``TC_ACT_*``
member names.  The dispatcher returns the verdict of the last component that
ran.
"""
from __future__ import annotations

import errno as _errno
import os
import struct
from typing import Any

from pybpf.errors import BPFBusyError, BPFInvalidError, error_for
from pybpf.features.dispatcher import TC_ACTIONS, RunConfig, _Dispatcher, _Raced, _TcHook

__all__ = ["TcDispatcher"]

_PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
TCA_BPF_ID = 11
TCA_BPF_NAME = 7
FILTER_NAME = "pybpf_tc_dispatcher"


def _bpf_options(opts: Any) -> dict[int, bytes]:
    """Raw TCA_OPTIONS attributes of a bpf filter (pyroute2 leaves
    TCA_BPF_ID undecoded): {type: payload}."""
    data = bytes(opts.data[opts.offset:opts.offset + opts.length])
    out: dict[int, bytes] = {}
    off = 4
    while off + 4 <= len(data):
        ln, typ = struct.unpack_from("<HH", data, off)
        if ln < 4:
            break
        out[typ & 0x3FFF] = data[off + 4:off + ln]
        off += (ln + 3) & ~3
    return out


class TcDispatcher(_Dispatcher):
    """Several tc programs chained on one interface direction.

    ``direction`` is ``"ingress"`` or ``"egress"``; ``priority`` and
    ``handle`` name the filter the dispatcher occupies in the ``clsact``
    qdisc (created when missing).  Components are added and removed like
    :class:`XdpDispatcher`'s.
    """

    _hook = _TcHook()

    def __init__(self, iface: str | int, direction: str = "ingress", *, netns: str | os.PathLike[str] | None = None,
                 priority: int = 1, handle: int = 1, bpffs: str | os.PathLike[str] = "/sys/fs/bpf"):
        if direction not in _PARENTS:
            raise BPFInvalidError(None, f"unknown tc direction {direction!r}", hint="'ingress' or 'egress'")
        super().__init__(iface, netns=netns, bpffs=bpffs)
        self.direction = direction
        self.priority = int(priority)
        self.handle = int(handle)

    def _where(self) -> str:
        return (f"tc {self.direction} hook of {self.iface}" +
                (f" in network namespace {os.fspath(self.netns)}" if self.netns is not None else ""))

    def _default_config(self) -> RunConfig:
        return RunConfig(50, frozenset({TC_ACTIONS["TC_ACT_OK"], TC_ACTIONS["TC_ACT_PIPE"],
                                        TC_ACTIONS["TC_ACT_UNSPEC"]}))

    def _legacy_hint(self) -> str:
        return (f"another program occupies filter priority {self.priority} handle {self.handle}: pick another "
                "priority/handle for the dispatcher, or delete that filter")

    def _ipr(self) -> Any:
        from pybpf.features import xdp
        return xdp._iproute(self.netns)

    def _find(self, ipr: Any) -> int:
        parent = _PARENTS[self.direction]
        try:
            filters = ipr.get_filters(index=self.ifindex, parent=parent)
        except Exception as e:
            from pybpf.features import xdp
            if not xdp._is_netlink_error(e):
                raise
            code, _ = xdp._netlink_error(e)
            if code in (_errno.EINVAL, _errno.ENOENT):     # no clsact qdisc yet
                return 0
            raise error_for(code, f"list tc filters of {self._where()}") from None
        for f in filters:
            if f.get_attr("TCA_KIND") != "bpf" or f["handle"] != self.handle:
                continue
            if (f["info"] >> 16) != self.priority:
                continue
            opts = f.get_attr("TCA_OPTIONS")
            if opts is None:
                continue
            attrs = _bpf_options(opts)
            if TCA_BPF_ID in attrs:
                return int(struct.unpack("<I", attrs[TCA_BPF_ID][:4])[0])
        return 0

    def _attached_elsewhere(self) -> set[int]:
        """Every bpf filter's program id on this ifindex, both directions, any
        priority/handle, in every namespace we can see (for stale-state cleanup)."""
        from pybpf import netns as _netns
        from pybpf.features import xdp

        spaces: list[str] = ["/proc/1/ns/net"]
        try:
            spaces += [os.path.join(_netns.NETNS_RUN_DIR, n) for n in os.listdir(_netns.NETNS_RUN_DIR)]
        except FileNotFoundError:
            pass
        out: set[int] = set()
        for ns in spaces:
            try:
                ipr = xdp._iproute(ns)
            except Exception:  # noqa: BLE001 - a namespace that went away
                continue
            try:
                for parent in _PARENTS.values():
                    try:
                        filters = ipr.get_filters(index=self.ifindex, parent=parent)
                    except Exception:  # noqa: BLE001 - no such interface/qdisc there
                        continue
                    for f in filters:
                        opts = f.get_attr("TCA_OPTIONS") if f.get_attr("TCA_KIND") == "bpf" else None
                        if opts is not None:
                            attrs = _bpf_options(opts)
                            if TCA_BPF_ID in attrs:
                                out.add(int(struct.unpack("<I", attrs[TCA_BPF_ID][:4])[0]))
            finally:
                ipr.close()
        return out

    def _attached_prog(self) -> tuple[int, str | None]:
        ipr = self._ipr()
        try:
            return self._find(ipr), None
        finally:
            ipr.close()

    def _swap(self, new_fd: int | None, old_fd: int | None, mode: str | None) -> None:
        from pybpf import raw
        from pybpf.features import xdp

        parent = _PARENTS[self.direction]
        ipr = self._ipr()
        try:
            cur = self._find(ipr)
            want = int(raw.prog_info(old_fd).id) if old_fd is not None else 0
            if cur != want:
                raise _Raced()                      # changed since we read it (under our lock: another tool)
            try:
                if new_fd is None:
                    ipr.tc("del-filter", "bpf", self.ifindex, handle=self.handle, parent=parent, prio=self.priority)
                    return
                if old_fd is None:
                    try:
                        ipr.tc("add", "clsact", self.ifindex)
                    except Exception as e:
                        if not xdp._is_netlink_error(e) or xdp._netlink_error(e)[0] != _errno.EEXIST:
                            raise
                verb = "replace-filter" if old_fd is not None else "add-filter"
                ipr.tc(verb, "bpf", self.ifindex, handle=self.handle, fd=new_fd, name=FILTER_NAME, parent=parent,
                       prio=self.priority, direct_action=True)
            except Exception as e:
                if not xdp._is_netlink_error(e):
                    raise
                code, text = xdp._netlink_error(e)
                if code == _errno.EEXIST and old_fd is None:
                    raise _Raced() from None
                what = ("attach the tc dispatcher" if old_fd is None else
                        "detach the tc dispatcher" if new_fd is None else "swap in the new tc dispatcher")
                exc = error_for(code, f"{what} on {self._where()}" + (f" (kernel: {text})" if text else ""),
                                op="netlink")
                if code == _errno.EBUSY:
                    raise BPFBusyError(code, str(exc.strerror), op="netlink") from None
                raise exc from None
        finally:
            ipr.close()
