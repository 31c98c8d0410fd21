"""BPF programs: open-time settings, load results, test runs, attachment."""
from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pybpf import netns as _netns
from pybpf import raw
from pybpf._binding import ffi, lib
from pybpf.core.link import Link, libbpf_link
from pybpf.errors import (BPFError, BPFInvalidError, ClosedError, StateError, check, raise_errno)
from pybpf.raw import FD, AttachType, ProgType

if TYPE_CHECKING:
    from pybpf.core.btf import Btf
    from pybpf.core.object import Object

# XDP attach flags (include/uapi/linux/if_link.h).
XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
XDP_FLAGS_HW_MODE = 8
XDP_FLAGS_REPLACE = 16
XDP_MODES = {None: 0, "skb": XDP_FLAGS_SKB_MODE, "generic": XDP_FLAGS_SKB_MODE, "drv": XDP_FLAGS_DRV_MODE,
             "native": XDP_FLAGS_DRV_MODE, "hw": XDP_FLAGS_HW_MODE, "offload": XDP_FLAGS_HW_MODE}


@dataclass(frozen=True)
class TestRunResult:
    """Result of BPF_PROG_TEST_RUN: the program's return value, the packet
    data after the run, the mean duration of one run (ns), and the context."""

    __test__ = False  # not a pytest class

    retval: int
    data: bytes
    duration_ns: int
    ctx: bytes | None = None


@dataclass(frozen=True)
class ProgramInfo:
    """What the kernel reports about a loaded program. ``run_cnt`` and
    ``run_time_ns`` count only while statistics are enabled
    (:func:`pybpf.enable_stats` or sysctl kernel.bpf_stats_enabled)."""

    id: int
    type: ProgType | int
    name: str
    tag: str
    btf_id: int
    map_ids: tuple[int, ...]
    run_cnt: int
    run_time_ns: int
    recursion_misses: int
    verified_insns: int
    jited_len: int
    xlated_len: int
    attach_btf_obj_id: int
    attach_btf_id: int
    gpl_compatible: bool
    load_time_ns: int
    created_by_uid: int

    @classmethod
    def from_fd(cls, fd: int) -> "ProgramInfo":
        i = raw.prog_info(fd)
        t = int(i.type)
        return cls(id=int(i.id), type=ProgType(t) if t in ProgType._value2member_map_ else t,
                   name=ffi.string(i.name).decode(), tag=bytes(ffi.buffer(i.tag, 8)).hex(), btf_id=int(i.btf_id),
                   map_ids=tuple(raw.prog_map_ids(fd)) if i.nr_map_ids else (), run_cnt=int(i.run_cnt),
                   run_time_ns=int(i.run_time_ns), recursion_misses=int(i.recursion_misses),
                   verified_insns=int(i.verified_insns), jited_len=int(i.jited_prog_len),
                   xlated_len=int(i.xlated_prog_len), attach_btf_obj_id=int(i.attach_btf_obj_id),
                   attach_btf_id=int(i.attach_btf_id), gpl_compatible=bool(i.gpl_compatible & 1),
                   load_time_ns=int(i.load_time), created_by_uid=int(i.created_by_uid))


def target_fd(target: Any, *, keep: list[FD] | None = None) -> int:
    """The fd of a target program named as a Program, a program id or a
    pinned path. Fds opened here are appended to ``keep`` (the caller owns them)."""
    if hasattr(target, "fd") and not isinstance(target, (int, str, os.PathLike)):
        return int(target.fd)
    if isinstance(target, int):
        fd = raw.fd_by_id("prog", target)
    else:
        fd = raw.obj_get(os.fspath(target), "pinned program")
    if keep is not None:
        keep.append(fd)
    return fd.raw


class Program:
    """A BPF program of an :class:`~pybpf.Object`, or a loaded program opened
    by id or pin (:meth:`from_id`, :meth:`from_pinned`)."""

    def __init__(self, *, obj: "Object | None" = None, ptr: Any = None, fd: FD | None = None):
        self._obj = obj
        self._ptr = ptr
        self._fd = fd
        self._keep: list[FD] = []        # target program fds held for load/attach
        self._attach_target: tuple[Any, str | None] | None = None

    @classmethod
    def from_fd(cls, fd: int | FD) -> "Program":
        """Adopt a program fd (owned by the Program from now on)."""
        return cls(fd=fd if isinstance(fd, FD) else FD(fd, "program"))

    @classmethod
    def from_id(cls, prog_id: int) -> "Program":
        return cls(fd=raw.fd_by_id("prog", prog_id))

    @classmethod
    def from_pinned(cls, path: str | os.PathLike[str]) -> "Program":
        fd = raw.obj_get(os.fspath(path), "pinned program", kind="prog")
        try:
            ProgramInfo.from_fd(fd.raw)
        except BPFError:
            fd.close()
            raise BPFInvalidError(_errno.EINVAL, f"{os.fspath(path)} is not a pinned program") from None
        return cls(fd=fd)

    # -- identity ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._obj is not None:
            self._obj._check_open()
        elif self._fd is None or self._fd.closed:
            raise ClosedError("program")

    @property
    def name(self) -> str:
        self._check_open()
        if self._ptr is not None:
            return ffi.string(lib.bpf_program__name(self._ptr)).decode()
        return self.info().name

    @property
    def section(self) -> str:
        """ELF section name (``xdp``, ``fentry/tcp_connect``...); '' if none."""
        self._check_open()
        if self._ptr is None:
            return ""
        return ffi.string(lib.bpf_program__section_name(self._ptr)).decode()

    @property
    def owner(self) -> "Object | None":
        """The Object this program belongs to (None for programs opened by id or pin)."""
        return self._obj

    @property
    def fd(self) -> int:
        """The program fd; -1 when not loaded."""
        self._check_open()
        if self._ptr is not None:
            return int(lib.bpf_program__fd(self._ptr))
        assert self._fd is not None
        return self._fd.raw

    def _loaded_fd(self, op: str) -> int:
        fd = self.fd
        if fd < 0:
            if self._obj is not None and self._obj.loaded:
                raise StateError(f"cannot {op} program '{self.name}': it was not loaded (autoload off)",
                                 hint="set_autoload(True) before Object.load()")
            raise StateError(f"cannot {op} program '{self.name}': its object is not loaded yet",
                             hint="call Object.load() first")
        return fd

    @property
    def type(self) -> ProgType | int:
        self._check_open()
        t = int(lib.bpf_program__type(self._ptr)) if self._ptr is not None else int(raw.prog_info(self.fd).type)
        return ProgType(t) if t in ProgType._value2member_map_ else t

    @property
    def expected_attach_type(self) -> AttachType | int:
        self._check_open()
        if self._ptr is None:
            raise StateError("the expected attach type of a loaded program is not reported by the kernel")
        t = int(lib.bpf_program__expected_attach_type(self._ptr))
        return AttachType(t) if t in AttachType._value2member_map_ else t

    def info(self) -> ProgramInfo:
        return ProgramInfo.from_fd(self._loaded_fd("query"))

    @property
    def id(self) -> int:
        return self.info().id

    @property
    def tag(self) -> str:
        return self.info().tag

    @property
    def autoload(self) -> bool:
        self._check_open()
        return bool(lib.bpf_program__autoload(self._ptr)) if self._ptr is not None else True

    @property
    def btf(self) -> "Btf | None":
        """BTF of the program: the object's, or the kernel's copy by id."""
        if self._obj is not None:
            return self._obj.btf
        from pybpf.core.btf import Btf
        bid = self.info().btf_id
        return Btf.from_kernel_id(bid) if bid else None

    def __repr__(self) -> str:
        try:
            return f"<Program '{self.name}' {getattr(self.type, 'name', self.type)} fd={self.fd}>"
        except BPFError:
            return "<Program (closed)>"

    # -- open-time settings ---------------------------------------------------------------------

    def _settable(self, what: str) -> Any:
        self._check_open()
        if self._ptr is None:
            raise StateError(f"cannot set {what} of an already loaded program")
        if self._obj is not None and self._obj.loaded:
            raise StateError(f"cannot set {what} of program '{self.name}' after its object was loaded",
                             hint="open-time settings go between Object.open() and load()")
        return self._ptr

    def set_autoload(self, autoload: bool) -> None:
        """Whether Object.load() loads this program."""
        check(lib.bpf_program__set_autoload(self._settable("autoload"), bool(autoload)), f"set autoload of '{self.name}'")

    def set_type(self, prog_type: ProgType | int | str) -> None:
        if isinstance(prog_type, str):
            prog_type = ProgType[prog_type.upper()]
        check(lib.bpf_program__set_type(self._settable("type"), int(prog_type)), f"set type of '{self.name}'")

    def set_expected_attach_type(self, attach_type: AttachType | int) -> None:
        check(lib.bpf_program__set_expected_attach_type(self._settable("attach type"), int(attach_type)),
              f"set expected attach type of '{self.name}'")

    def set_flags(self, flags: int) -> None:
        check(lib.bpf_program__set_flags(self._settable("flags"), flags), f"set flags of '{self.name}'")

    def set_ifindex(self, ifindex: int) -> None:
        lib.bpf_program__set_ifindex(self._settable("ifindex"), ifindex)

    def set_attach_target(self, target: Any, func: str | None) -> None:
        """What an extension (freplace) or tracing program attaches to.

        ``target`` is a loaded :class:`Program`, a program id, a pinned path,
        or None for a kernel function; ``func`` the function's name (a global
        function of the target, or a kernel function).
        """
        ptr = self._settable("attach target")
        from pybpf.features import trampolines

        if func is not None and (not isinstance(func, str) or not func.isascii() or "\0" in func):
            raise BPFInvalidError(_errno.EINVAL, f"{self.name}: attach target function {func!r} is not a C identifier",
                                  hint="give the function's name as BTF spells it (ASCII, no NUL)")
        fd = 0
        if target is not None:
            fd = target_fd(target, keep=self._keep)
            trampolines.precheck_target(self, target, fd, func)
        else:
            trampolines.precheck_kernel_target(self, func)
        ret = lib.bpf_program__set_attach_target(ptr, fd, func.encode() if func else ffi.NULL)
        if ret < 0:
            trampolines.explain_set_target_error(self, target, fd, func, -ret)
        self._attach_target = (target, func)

    # -- running ------------------------------------------------------------------------------------

    def test_run(self, data: bytes = b"", *, ctx: bytes | None = None, repeat: int = 1,
                 data_size_out: int | None = None, flags: int = 0, cpu: int = 0) -> TestRunResult:
        """Run the program in the kernel on ``data`` (BPF_PROG_TEST_RUN)."""
        fd = self._loaded_fd("test-run")
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif not isinstance(data, bytes):
            data = bytes(data)  # scapy packets and other bytes-convertibles
        try:
            retval, out, dur, cout = raw.prog_test_run(fd, data, ctx=ctx, repeat=repeat, data_size_out=data_size_out,
                                                     flags=flags, cpu=cpu)
        except BPFError as e:
            e.strerror = f"test run of program '{self.name}': {e.strerror}"
            if e.errno == _errno.EINVAL and not e.hint:
                e.hint = ("XDP and tc programs need at least an Ethernet header (14 bytes) of data; "
                          "some program types cannot be test-run at all")
            elif e.errno == _errno.ENOTSUPP if hasattr(_errno, "ENOTSUPP") else e.errno == 524:
                e.hint = f"program type {getattr(self.type, 'name', self.type)} does not support test runs"
            raise
        return TestRunResult(retval, out, dur, cout)

    # -- attaching ---------------------------------------------------------------------------------

    def attach(self) -> Link:
        """Attach as the section name says (``tp/...``, ``kprobe/...``,
        ``fentry/...``, ``freplace`` with a target...). Returns the Link."""
        self._loaded_fd("attach")
        if self._ptr is None:
            raise StateError("attach() needs the program's section; use a specific attach_* method")
        from pybpf.features import trampolines

        return trampolines.attach_auto(self)

    def attach_xdp(self, iface: str | int, mode: str | None = None, *, netns: str | os.PathLike[str] | None = None,
                   flags: int = 0, replace: "Program | None" = None) -> Link:
        """Attach to an interface's XDP hook through a BPF link.

        ``iface`` is a name or ifindex in ``netns`` (default: the current
        namespace); ``mode`` is ``"skb"``/``"generic"``, ``"drv"``/``"native"``,
        ``"hw"``/``"offload"`` or None (the kernel picks).  Closing the link
        detaches.  For netlink attachment see :mod:`pybpf.features.xdp`.
        """
        fd = self._loaded_fd("attach")
        if mode not in XDP_MODES:
            raise BPFInvalidError(None, f"unknown XDP mode {mode!r}", hint="one of: skb, drv, hw (or None)")
        flags |= XDP_MODES[mode]
        with _netns.enter(netns):
            idx = _netns.ifindex(iface)

            def explain(err: int) -> None:
                if err == _errno.EBUSY or err == _errno.EEXIST:
                    from pybpf.features.xdp import explain_busy
                    explain_busy(idx, iface, netns, err, self)
                if err == _errno.EOPNOTSUPP and mode in ("drv", "native", "hw", "offload"):
                    raise_errno(err, f"attach XDP program '{self.name}' to {iface} in {mode} mode",
                                hint="the driver does not support this mode; try mode='skb'")

            lfd = raw.link_create(fd, idx, AttachType.XDP, flags=flags, on_error=explain,
                                  what=f"attach XDP program '{self.name}' to {iface}")
        return Link(fd=lfd, owner=self, description=f"xdp:{iface}")

    def attach_tracepoint(self, category: str, name: str) -> Link:
        self._loaded_fd("attach")
        return libbpf_link(lib.bpf_program__attach_tracepoint(self._ptr, category.encode(), name.encode()),
                           f"attach '{self.name}' to tracepoint {category}:{name}", self)

    def attach_raw_tracepoint(self, name: str) -> Link:
        self._loaded_fd("attach")
        return libbpf_link(lib.bpf_program__attach_raw_tracepoint(self._ptr, name.encode()),
                           f"attach '{self.name}' to raw tracepoint {name}", self)

    def attach_kprobe(self, func: str, *, retprobe: bool = False) -> Link:
        self._loaded_fd("attach")
        return libbpf_link(lib.bpf_program__attach_kprobe(self._ptr, retprobe, func.encode()),
                           f"attach '{self.name}' to k{'ret' if retprobe else ''}probe {func}", self)

    def attach_trace(self) -> Link:
        """Attach a tracing program (fentry/fexit/fmod_ret/tp_btf/iter) to
        the target chosen at open time."""
        from pybpf.features import trampolines

        return trampolines.attach_trace(self)

    def attach_freplace(self, target: Any, func: str) -> Link:
        """Attach this loaded extension to ``func`` of ``target`` (a Program,
        id or pinned path), which need not be the load-time target."""
        from pybpf.features import trampolines

        return trampolines.attach_freplace(self, target, func)

    def attach_cgroup(self, cgroup: str | os.PathLike[str] | int) -> Link:
        self._loaded_fd("attach")
        fd = cgroup if isinstance(cgroup, int) else os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return libbpf_link(lib.bpf_program__attach_cgroup(self._ptr, fd), f"attach '{self.name}' to cgroup", self)
        finally:
            if not isinstance(cgroup, int):
                os.close(fd)

    # -- pins ----------------------------------------------------------------------------------------

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin the program in bpffs (it stays loaded while pinned)."""
        p = os.fspath(path)
        try:
            raw.obj_pin(self._loaded_fd("pin"), p)
        except BPFError as e:
            e.strerror = f"pin program at {p}: {e.strerror}"
            e.hint = ("the path must be inside a mounted bpffs (/sys/fs/bpf), must not exist yet, "
                      "and its name must not contain '.'")
            raise

    def unpin(self, path: str | os.PathLike[str]) -> None:
        os.unlink(path)

    def close(self) -> None:
        """Close a standalone program's fd (programs of an Object close with it)."""
        if self._fd is not None:
            self._fd.close()
        for fd in self._keep:
            fd.close()
        self._keep.clear()

    def __enter__(self) -> "Program":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
