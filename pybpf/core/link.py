"""Links: the owners of attachments. Closing a link detaches, unless it is
pinned (then the pin keeps the attachment alive)."""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from pybpf import raw
from pybpf._binding import ffi, lib
from pybpf.errors import BPFError, ClosedError, NotSupportedError, check
from pybpf.raw import FD, AttachType, LinkType


@dataclass(frozen=True)
class LinkInfo:
    """The kernel's view of a link (BPF_OBJ_GET_INFO_BY_FD).

    ``details`` holds the type-specific part: ``attach_type``,
    ``target_obj_id`` (the target program for freplace) and
    ``target_btf_id`` for tracing links; ``ifindex`` for XDP; ``map_id`` for
    struct_ops; ...
    """

    id: int
    type: LinkType | int
    prog_id: int
    details: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_fd(cls, fd: int) -> "LinkInfo":
        i = raw.link_info(fd)
        t = int(i.type)
        u32 = i.u.u32
        d: dict[str, int] = {}
        if t == LinkType.TRACING:
            d = {"attach_type": int(u32[0]), "target_obj_id": int(u32[1]), "target_btf_id": int(u32[2])}
        elif t == LinkType.XDP:
            d = {"ifindex": int(u32[0])}
        elif t == LinkType.STRUCT_OPS:
            d = {"map_id": int(u32[0])}
        elif t == LinkType.NETNS:
            d = {"netns_ino": int(u32[0]), "attach_type": int(u32[1])}
        elif t == LinkType.CGROUP:
            d = {"cgroup_id": int(i.u.u64[0]), "attach_type": int(u32[2])}
        elif t == LinkType.TCX:
            d = {"ifindex": int(u32[0]), "attach_type": int(u32[1])}
        return cls(id=int(i.id), type=LinkType(t) if t in LinkType._value2member_map_ else t,
                   prog_id=int(i.prog_id), details=d)

    @property
    def attach_type(self) -> AttachType | int | None:
        at = self.details.get("attach_type")
        if at is None:
            return None
        return AttachType(at) if at in AttachType._value2member_map_ else at


class Link:
    """An attachment of a program (or a struct_ops map).

    Backed by libbpf's ``struct bpf_link`` when libbpf made it, or by a bare
    link fd (raw layer, pins, ids).  :meth:`close` releases it: the kernel
    detaches unless the link is pinned.  :meth:`detach` detaches now, even if
    other fds or pins refer to it.
    """

    def __init__(self, *, ptr: Any = None, fd: FD | None = None, owner: Any = None, description: str = "link",
                 on_close: Callable[[], None] | None = None):
        self._ptr = ptr
        self._fd = fd
        self._owner = owner   # keeps the Program/Object alive while attached
        self._desc = description
        self._on_close = on_close
        self._finalizer = weakref.finalize(self, Link._release, ptr, fd, on_close)

    @staticmethod
    def _release(ptr: Any, fd: FD | None, on_close: Callable[[], None] | None) -> None:
        try:
            if ptr is not None:
                lib.bpf_link__destroy(ptr)
            if fd is not None:
                fd.close()
        finally:
            if on_close is not None:
                try:
                    on_close()
                except Exception:  # noqa: BLE001 - finalizer
                    pass

    @classmethod
    def from_pinned(cls, path: str | os.PathLike[str]) -> "Link":
        """Open a pinned link. Closing the object leaves the pin in place."""
        return cls(fd=raw.obj_get(os.fspath(path), "pinned link", kind="link"),
                   description=f"link pinned at {os.fspath(path)}")

    @classmethod
    def from_id(cls, link_id: int) -> "Link":
        return cls(fd=raw.fd_by_id("link", link_id), description=f"link id {link_id}")

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def fd(self) -> int:
        if self.closed:
            raise ClosedError(self._desc)
        if self._ptr is not None:
            return int(lib.bpf_link__fd(self._ptr))
        assert self._fd is not None
        return self._fd.raw

    def info(self) -> LinkInfo:
        return LinkInfo.from_fd(self.fd)

    @property
    def id(self) -> int:
        return self.info().id

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin the link in bpffs: the attachment then outlives this object."""
        p = os.fspath(path)
        try:
            if self._ptr is not None:
                check(lib.bpf_link__pin(self._ptr, os.fsencode(p)), f"pin {self._desc} at {p}")
            else:
                raw.obj_pin(self.fd, p)
        except BPFError as e:
            e.hint = e.hint or ("the path must be inside a mounted bpffs, must not exist, "
                                "and its name must not contain '.'")
            raise

    def unpin(self, path: str | os.PathLike[str] | None = None) -> None:
        """Remove the pin. Without ``path``, the one :meth:`pin` made (libbpf links)."""
        if self._ptr is not None and path is None:
            check(lib.bpf_link__unpin(self._ptr), f"unpin {self._desc}")
        elif path is not None:
            os.unlink(path)
        else:
            raise ValueError("unpin needs the path for a link opened from a pin or id")

    def update(self, new: Any, *, old: Any = None) -> None:
        """Atomically replace the attached program (or struct_ops map) with
        ``new`` (a Program or Map), optionally only if ``old`` is attached."""
        new_fd = new.fd
        old_fd = old.fd if old is not None else 0
        flags = 4 if old is not None else 0  # BPF_F_REPLACE
        try:
            raw.link_update(self.fd, new_fd, old_fd=old_fd, flags=flags, what=f"update {self._desc}")
        except BPFError as e:
            if e.errno in (95, 524):
                raise NotSupportedError(e.errno, f"update {self._desc}: this kernel cannot update this kind of link "
                                        "in place", hint="detach and attach again") from None
            raise
        self._owner = new

    def detach(self) -> None:
        """Detach now (BPF_LINK_DETACH), even if pinned; then close."""
        if self.closed:
            return
        try:
            raw.link_detach(self.fd)
        except BPFError as e:
            if e.errno not in (95, 524, 22):  # kernels/link types without LINK_DETACH: close does it
                raise
        self.close()

    def disown(self) -> int:
        """Hand the link fd to the caller, who then owns it (the attachment
        lives as long as that fd, or a pin)."""
        fd = os.dup(self.fd)
        self.close()
        return fd

    def close(self) -> None:
        """Release the link: detaches unless pinned. Idempotent."""
        self._finalizer()
        self._owner = None

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<Link {self._desc} (closed)>"
        try:
            i = self.info()
            return f"<Link id={i.id} {getattr(i.type, 'name', i.type)} prog_id={i.prog_id} {self._desc}>"
        except BPFError:
            return f"<Link {self._desc}>"


def libbpf_link(ptr: Any, what: str, owner: Any) -> Link:
    """Wrap a ``struct bpf_link *`` returned by libbpf (NULL: raise)."""
    if ptr == ffi.NULL:
        from pybpf.errors import raise_errno

        raise_errno(ffi.errno or 22, what)
    return Link(ptr=ptr, owner=owner, description=what.replace("attach ", "", 1))
