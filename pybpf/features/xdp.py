"""XDP on interfaces: attach through netlink (pyroute2) or BPF links, query,
replace, detach.

Two ways hold an interface's XDP hook, and they exclude each other:

* **netlink** (``IFLA_XDP``, what ``ip link set dev X xdp ...``, libxdp and
  :func:`attach` use): the attachment belongs to the interface and outlives
  the process; it is replaced atomically with ``XDP_FLAGS_REPLACE`` plus the
  expected program's fd, and removed by attaching "no program";
* **BPF link** (:meth:`pybpf.Program.attach_xdp`, kernel 5.9+): the
  attachment belongs to the link fd (or its pin); while it exists, netlink
  cannot replace or remove the program, and a link cannot take over a netlink
  attachment either.

pyroute2 does the netlink work; its ``NetlinkError`` never leaves this
module: failures become :class:`~pybpf.errors.BPFError` subclasses whose
message says who holds the hook and how to free it.
"""
from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass
from typing import Any, Iterator

from pybpf import netns as _netns
from pybpf import raw
from pybpf.errors import (BPFBusyError, BPFError, BPFExistsError, BPFInvalidError, BPFNotFoundError, NotSupportedError,
                          error_for)

__all__ = ["XdpStatus", "XdpAttachment", "attach", "detach", "query", "explain_busy", "MODES"]

# include/uapi/linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
XDP_FLAGS_HW_MODE = 8
XDP_FLAGS_REPLACE = 16
_MODE_MASK = XDP_FLAGS_SKB_MODE | XDP_FLAGS_DRV_MODE | XDP_FLAGS_HW_MODE

#: Mode names accepted everywhere, to the netlink flag.
MODES: dict[str | None, int] = {None: 0, "skb": XDP_FLAGS_SKB_MODE, "generic": XDP_FLAGS_SKB_MODE,
                                "drv": XDP_FLAGS_DRV_MODE, "native": XDP_FLAGS_DRV_MODE,
                                "hw": XDP_FLAGS_HW_MODE, "offload": XDP_FLAGS_HW_MODE}
_CANON = {XDP_FLAGS_SKB_MODE: "skb", XDP_FLAGS_DRV_MODE: "drv", XDP_FLAGS_HW_MODE: "hw"}
# IFLA_XDP_ATTACHED as pyroute2 decodes it
_ATTACHED = {None: None, "xdp": "drv", "xdpgeneric": "skb", "xdpdrv": "drv", "xdpoffload": "hw", "xdpmulti": "multi",
             0: None, 1: "drv", 2: "skb", 3: "hw", 4: "multi"}


@dataclass(frozen=True)
class XdpStatus:
    """What holds an interface's XDP hook (netlink's ``IFLA_XDP``).

    ``mode`` is ``"skb"``, ``"drv"``, ``"hw"``, ``"multi"`` (several modes at
    once) or None (nothing attached); ``prog_id`` the program running in the
    non-offload mode (0 if none); ``link_id`` the BPF link holding it (None
    when attached through netlink or when nothing is attached).
    """

    ifindex: int
    iface: str | int
    mode: str | None
    prog_id: int
    skb_prog_id: int = 0
    drv_prog_id: int = 0
    hw_prog_id: int = 0
    link_id: int | None = None

    @property
    def attached(self) -> bool:
        return self.mode is not None

    @property
    def via(self) -> str | None:
        """``"link"``, ``"netlink"`` or None (nothing attached)."""
        if not self.attached:
            return None
        return "link" if self.link_id is not None else "netlink"

    def mode_of(self, prog_id: int) -> str | None:
        """The mode ``prog_id`` is attached in on this interface, or None."""
        for mode, pid in (("skb", self.skb_prog_id), ("drv", self.drv_prog_id), ("hw", self.hw_prog_id)):
            if pid and pid == prog_id:
                return mode
        return None


# -- pyroute2 behind a wall ------------------------------------------------------------------------

def _iproute(netns: str | os.PathLike[str] | None) -> Any:
    """An IPRoute socket bound to ``netns`` (created inside it)."""
    try:
        from pyroute2 import IPRoute
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise NotSupportedError(None, f"netlink XDP attachment needs pyroute2: {e}",
                                hint="pip install pyroute2") from None
    with _netns.enter(netns):
        return IPRoute(ext_ack=True)


def _netlink_error(e: Exception) -> tuple[int, str]:
    """(errno, kernel's extack text) of a pyroute2 NetlinkError."""
    code = int(getattr(e, "code", 0) or (e.args[0] if e.args and isinstance(e.args[0], int) else 0)) or _errno.EIO
    text = ""
    if len(e.args) > 1 and isinstance(e.args[1], str):
        text = e.args[1]
        if text == os.strerror(code):
            text = ""
    return abs(code), text


def _is_netlink_error(e: Exception) -> bool:
    try:
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, NetlinkError)


def _where(iface: str | int, netns: str | os.PathLike[str] | None) -> str:
    return f"{iface}" + (f" in network namespace {os.fspath(netns)}" if netns is not None else "")


def _mode_flag(mode: str | None) -> int:
    if mode not in MODES:
        raise BPFInvalidError(None, f"unknown XDP mode {mode!r}",
                              hint="one of: skb/generic, drv/native, hw/offload (or None: the kernel picks)")
    return MODES[mode]


def _query_raw(ipr: Any, idx: int, iface: str | int, netns: str | os.PathLike[str] | None) -> XdpStatus:
    try:
        msgs = ipr.link("get", index=idx)
    except Exception as e:
        if not _is_netlink_error(e):
            raise
        code, text = _netlink_error(e)
        if code == _errno.ENODEV:
            raise BPFInvalidError(code, f"no network interface with index {idx} ({_where(iface, netns)})",
                                  hint="check it with 'ip link' in the right namespace") from None
        raise error_for(code, f"query XDP of {_where(iface, netns)}" + (f": {text}" if text else "")) from None
    x = msgs[0].get_attr("IFLA_XDP") if msgs else None
    attrs: dict[str, Any] = dict(x["attrs"]) if x is not None else {}
    mode = _ATTACHED.get(attrs.get("IFLA_XDP_ATTACHED"), "multi")
    skb, drv, hw = (int(attrs.get(k) or 0) for k in ("IFLA_XDP_SKB_PROG_ID", "IFLA_XDP_DRV_PROG_ID",
                                                       "IFLA_XDP_HW_PROG_ID"))
    prog_id = int(attrs.get("IFLA_XDP_PROG_ID") or 0)
    if mode == "skb":
        skb = skb or prog_id
    elif mode == "drv":
        drv = drv or prog_id
    elif mode == "hw":
        hw = hw or prog_id
    main = drv or skb or (prog_id if mode != "hw" else 0)
    link_id = _find_xdp_link(idx, main) if main else None
    return XdpStatus(ifindex=idx, iface=iface, mode=mode, prog_id=main, skb_prog_id=skb, drv_prog_id=drv,
                     hw_prog_id=hw, link_id=link_id)


def _find_xdp_link(ifindex: int, prog_id: int) -> int | None:
    """The id of the XDP BPF link of ``prog_id`` on ``ifindex``, if any.
    (Links report only the ifindex; matching the program too keeps
    same-numbered interfaces of other namespaces out.)"""
    for lid in raw.ids("link"):
        try:
            with raw.fd_by_id("link", lid) as fd:
                info = raw.link_info(fd.raw)
        except BPFError:
            continue            # gone meanwhile
        if int(info.type) == raw.LinkType.XDP and int(info.prog_id) == prog_id and int(info.u.u32[0]) == ifindex:
            return lid
    return None


def query(iface: str | int, *, netns: str | os.PathLike[str] | None = None) -> XdpStatus:
    """What is attached to ``iface``'s XDP hook (program ids per mode, and
    the BPF link holding it if any)."""
    idx = _netns.ifindex(iface, netns)
    ipr = _iproute(netns)
    try:
        return _query_raw(ipr, idx, iface, netns)
    finally:
        ipr.close()


def _prog_name(prog_id: int) -> str:
    try:
        with raw.fd_by_id("prog", prog_id) as fd:
            from pybpf._binding import ffi
            return str(ffi.string(raw.prog_info(fd.raw).name).decode())
    except BPFError:
        return "?"


def _describe_holder(st: XdpStatus) -> str:
    if not st.attached:
        return "nothing is attached"
    pid = st.prog_id or st.hw_prog_id
    name = _prog_name(pid)
    what = f"program '{name}' (id {pid}, {st.mode} mode)"
    if name == "xdp_dispatcher":
        what += ", a multi-program dispatcher (libxdp/pybpf)"
    if st.link_id is not None:
        return f"{what} is held by BPF link id {st.link_id}"
    return f"{what} is attached through netlink"


def _busy_hint(st: XdpStatus, iface: str | int, via: str) -> str:
    disp = _prog_name(st.prog_id) == "xdp_dispatcher" if st.prog_id else False
    if disp:
        extra = ("; to run several programs add yours to the dispatcher "
                 "(pybpf.features.dispatcher.XdpDispatcher or xdp-loader load)")
    else:
        extra = ""
    if st.link_id is not None:
        return (f"a BPF link owns the hook: close or detach that link (pybpf.Link.from_id({st.link_id}).detach(), "
                f"or remove its pin), or swap its program with Link.update(new_program){extra}")
    if via == "link":
        return (f"a BPF link cannot take over a netlink attachment: detach it first "
                f"(pybpf.features.xdp.detach({iface!r}) or 'ip link set dev {iface} xdp off'), "
                f"or replace it atomically over netlink: xdp.attach(prog, {iface!r}, replace=<attached program>)"
                f"{extra}")
    return (f"pass replace=<attached program or its id> to swap it atomically, replace=True to swap whatever "
            f"is attached, or detach it first (pybpf.features.xdp.detach({iface!r})){extra}")


def explain_busy(ifindex: int, iface: Any, netns: str | os.PathLike[str] | None, err: int, prog: Any) -> None:
    """Raise a clear error when an XDP attach through a BPF link finds the
    hook taken: say what holds it (netlink or another link) and how to free it."""
    try:
        with _netns.enter(netns):
            st = query(ifindex)
    except BPFError:
        st = XdpStatus(ifindex, iface, None, 0)
    where = _where(iface, netns)
    holder = _describe_holder(st)
    cls = BPFExistsError if err == _errno.EEXIST else BPFBusyError
    raise cls(err, f"attach XDP program '{prog.name}' to {where} through a BPF link: another XDP program is "
              f"already attached: {holder}", op="link_create", hint=_busy_hint(st, iface, "link"))


# -- attach / replace / detach ---------------------------------------------------------------------

def _fd_of(p: Any, what: str, keep: list[raw.FD]) -> int:
    """The fd of a Program, program id or pinned path (fds opened are kept)."""
    from pybpf.core.program import target_fd
    try:
        return target_fd(p, keep=keep)
    except BPFError as e:
        e.strerror = f"{what}: {e.strerror}"
        raise


def _set_xdp(ipr: Any, idx: int, fd: int, flags: int, expected_fd: int | None) -> None:
    attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]
    if expected_fd is not None:
        attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
    ipr.link("set", index=idx, xdp={"attrs": attrs})


def attach(prog: Any, iface: str | int, mode: str | None = None, *, netns: str | os.PathLike[str] | None = None,
           replace: Any = None, flags: int = 0) -> "XdpAttachment":
    """Attach ``prog`` to ``iface``'s XDP hook through netlink.

    ``iface`` is a name or ifindex in ``netns`` (default: the current
    namespace); ``mode`` ``"skb"``/``"generic"``, ``"drv"``/``"native"``,
    ``"hw"``/``"offload"`` or None (the kernel picks: native when the driver
    has it).  By default the attach succeeds only if nothing is attached.
    ``replace`` swaps atomically: a Program, program id or pinned path that
    must be the one attached now (``XDP_FLAGS_REPLACE`` with its fd), or
    True to replace whatever is attached.  ``flags`` are extra
    ``XDP_FLAGS_*`` bits passed through.

    The attachment outlives the returned :class:`XdpAttachment`; call its
    :meth:`~XdpAttachment.detach` (or use it as a context manager) to remove it.
    """
    pfd = prog.fd if hasattr(prog, "fd") else None
    if pfd is None or pfd < 0:
        raise BPFInvalidError(None, f"attach XDP: {prog!r} is not a loaded program", hint="load its Object first")
    fl = flags | _mode_flag(mode)
    keep: list[raw.FD] = []
    expected: int | None = None
    try:
        if replace is None or replace is False:
            fl |= XDP_FLAGS_UPDATE_IF_NOEXIST
        elif replace is not True:
            expected = _fd_of(replace, "the program to replace", keep)
            fl |= XDP_FLAGS_REPLACE
        idx = _netns.ifindex(iface, netns)
        name = getattr(prog, "name", "?")
        ipr = _iproute(netns)
        try:
            try:
                _set_xdp(ipr, idx, pfd, fl, expected)
            except Exception as e:
                if not _is_netlink_error(e):
                    raise
                code, text = _netlink_error(e)
                _explain_netlink(ipr, code, text, f"attach XDP program '{name}' to {_where(iface, netns)}",
                                 idx, iface, netns, mode, replace)
            st = _query_raw(ipr, idx, iface, netns)
        finally:
            ipr.close()
    finally:
        for k in keep:
            k.close()
    pid = int(raw.prog_info(pfd).id)
    return XdpAttachment(prog, idx, iface, netns, st.mode_of(pid) or st.mode, pid,
                         ns_ident=_netns.current_ident() if netns is None else None)


def _explain_netlink(ipr: Any, code: int, text: str, what: str, idx: int, iface: str | int,
                     netns: str | os.PathLike[str] | None, mode: str | None, replace: Any) -> None:
    """Raise the typed error for a failed IFLA_XDP change."""
    detail = f" (kernel: {text})" if text else ""
    if code in (_errno.EBUSY, _errno.EEXIST):
        try:
            st = _query_raw(ipr, idx, iface, netns)
        except BPFError:
            st = XdpStatus(idx, iface, None, 0)
        holder = _describe_holder(st)
        if st.link_id is not None or "link" in text.lower():
            raise BPFBusyError(code, f"{what}: the XDP hook is owned by a BPF link: {holder}{detail}",
                               op="netlink", hint=_busy_hint(st, iface, "netlink"))
        if "at the same time" in text or (mode is not None and st.mode not in (None, "multi") and
                                          st.mode != _CANON.get(MODES[mode])):
            raise BPFBusyError(code, f"{what} in {mode or 'default'} mode: {holder}; native and generic XDP cannot "
                               f"be active at the same time{detail}", op="netlink",
                               hint=f"detach the {st.mode}-mode program first, or attach in {st.mode} mode")
        if replace not in (None, False, True) and code == _errno.EEXIST:
            raise BPFExistsError(code, f"{what}: the program to replace is not the one attached: {holder}{detail}",
                                 op="netlink", hint="someone changed the attachment meanwhile: query() again and "
                                                    "retry with the program attached now")
        raise BPFBusyError(code, f"{what}: another XDP program is already attached: {holder}{detail}",
                           op="netlink", hint=_busy_hint(st, iface, "netlink"))
    if mode is not None and MODES.get(mode) == XDP_FLAGS_HW_MODE and code in (_errno.EINVAL, _errno.EOPNOTSUPP):
        raise NotSupportedError(code, f"{what} in hw (offload) mode: the device's driver refused to run the program "
                                f"on the NIC{detail}", op="netlink",
                                hint="offload needs a driver with XDP offload (a SmartNIC such as nfp) and a program "
                                     "loaded for that device (Program.set_ifindex before load); use mode='drv' or 'skb'")
    if code == _errno.EOPNOTSUPP:
        raise NotSupportedError(code, f"{what} in {mode or 'default'} mode: the driver does not support it{detail}",
                                op="netlink", hint="try mode='skb' (generic XDP works on every interface)")
    if code == _errno.EINVAL and "expected" in text.lower():
        raise BPFInvalidError(code, f"{what}: {text}", op="netlink",
                              hint="the kernel may not know XDP_FLAGS_REPLACE (5.7+)")
    exc = error_for(code, what + detail, op="netlink")
    if code == _errno.EINVAL and not exc.hint:
        exc.hint = ("is the program of type XDP (not an extension or another type)? XDP_FLAGS_HW_MODE needs a "
                    "program loaded for that device (Program.set_ifindex)")
    raise exc


def detach(iface: str | int, mode: str | None = None, *, netns: str | os.PathLike[str] | None = None,
           expected: Any = None) -> bool:
    """Remove the netlink-attached XDP program of ``iface``.

    ``mode`` defaults to the mode the program is attached in; ``expected``
    (a Program, id or pinned path) makes the removal conditional on that
    program still being the one attached (atomic).  Returns False when
    nothing was attached.  A program held by a BPF link cannot be removed
    this way (:class:`~pybpf.errors.BPFBusyError` says which link).
    """
    idx = _netns.ifindex(iface, netns)
    keep: list[raw.FD] = []
    try:
        exp_fd = _fd_of(expected, "the expected program", keep) if expected is not None else None
        ipr = _iproute(netns)
        try:
            st = _query_raw(ipr, idx, iface, netns)
            if not st.attached:
                return False
            if mode is None:
                modes = [m for m, pid in (("skb", st.skb_prog_id), ("drv", st.drv_prog_id), ("hw", st.hw_prog_id))
                         if pid]
                if not modes and st.mode in ("skb", "drv", "hw"):
                    modes = [st.mode]
            else:
                modes = [_CANON[_mode_flag(mode)]] if _mode_flag(mode) else [st.mode or "drv"]
            fl_extra = XDP_FLAGS_REPLACE if exp_fd is not None else 0
            for m in modes:
                try:
                    _set_xdp(ipr, idx, -1, MODES[m] | fl_extra, exp_fd)
                except Exception as e:
                    if not _is_netlink_error(e):
                        raise
                    code, text = _netlink_error(e)
                    _explain_netlink(ipr, code, text, f"detach XDP from {_where(iface, netns)}", idx, iface, netns,
                                     m, expected)
            return True
        finally:
            ipr.close()
    finally:
        for k in keep:
            k.close()


def replace(prog: Any, iface: str | int, old: Any, mode: str | None = None, *,
            netns: str | os.PathLike[str] | None = None) -> "XdpAttachment":
    """Atomically swap ``old`` (Program, id or pin, must be attached now)
    for ``prog`` on ``iface``: shorthand for ``attach(..., replace=old)``."""
    return attach(prog, iface, mode, netns=netns, replace=old)


class XdpAttachment:
    """A netlink XDP attachment made by :func:`attach`.

    The kernel keeps it after this object is gone (netlink attachments belong
    to the interface).  :meth:`detach` removes it only if this program is
    still the one attached, so it never removes somebody else's program.
    """

    def __init__(self, prog: Any, ifindex: int, iface: str | int, netns: str | os.PathLike[str] | None,
                 mode: str | None, prog_id: int, ns_ident: tuple[int, int] | None = None):
        self.prog = prog
        self.ifindex = ifindex
        self.iface = iface
        self.netns = netns
        self.mode = mode
        self.prog_id = prog_id
        # made in the caller's own namespace (netns=None): which one it was, so that a later
        # detach from another namespace never reaches a different interface with the same index
        self._ns_ident = ns_ident

    def _namespace(self) -> str | os.PathLike[str] | None:
        if self.netns is not None or self._ns_ident is None or _netns.current_ident() == self._ns_ident:
            return self.netns
        path = _netns.find_path(self._ns_ident)
        if path is None:
            raise BPFNotFoundError(_errno.ENOENT, f"XDP attachment of program id {self.prog_id} on ifindex "
                                   f"{self.ifindex}: it was made in another network namespace, which this thread "
                                   "is not in and which has no name in /run/netns",
                                   hint="detach it from inside that namespace (pybpf.netns.enter), or attach with "
                                        "netns=NAME so the attachment remembers where it is")
        return path

    def status(self) -> XdpStatus:
        return query(self.ifindex, netns=self._namespace())

    @property
    def attached(self) -> bool:
        """Whether this program is still attached to the interface."""
        try:
            return self.status().mode_of(self.prog_id) is not None
        except BPFError:
            return False

    def detach(self) -> bool:
        """Detach, if this program is still the one attached (atomic).
        Returns False when it no longer was."""
        where = self._namespace()
        try:
            st = query(self.ifindex, netns=where)
            mode = st.mode_of(self.prog_id)
            if mode is None:
                return False
            return detach(self.ifindex, mode, netns=where, expected=self.prog_id)
        except BPFExistsError:
            return False
        except BPFError as e:
            if e.errno in (_errno.ENOENT, _errno.ENODEV):
                return False
            raise

    close = detach

    def __enter__(self) -> "XdpAttachment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        return f"<XdpAttachment prog_id={self.prog_id} {self.mode} on {_where(self.iface, self.netns)}>"


def iter_xdp_links() -> Iterator[tuple[int, int, int]]:
    """(link id, ifindex, program id) of every XDP BPF link in the kernel."""
    for lid in raw.ids("link"):
        try:
            with raw.fd_by_id("link", lid) as fd:
                info = raw.link_info(fd.raw)
        except BPFError:
            continue
        if int(info.type) == raw.LinkType.XDP:
            yield lid, int(info.u.u32[0]), int(info.prog_id)
