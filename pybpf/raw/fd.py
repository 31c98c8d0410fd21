"""File descriptors with exactly one owner."""
from __future__ import annotations

import os
import weakref

from pybpf.errors import ClosedError


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class FD:
    """Owns one kernel file descriptor (program, map, link, BTF...).

    ``close()`` is idempotent; a finalizer closes a forgotten fd at garbage
    collection; :meth:`disown` hands the number out to a caller who then owns
    it.  Using a closed FD raises :class:`~pybpf.errors.ClosedError`.
    """

    __slots__ = ("_fd", "_what", "_finalizer", "__weakref__")

    def __init__(self, fd: int, what: str = "file descriptor"):
        if fd < 0:
            raise ValueError(f"invalid fd {fd} for {what}")
        self._fd = fd
        self._what = what
        self._finalizer = weakref.finalize(self, _close_quietly, fd)

    @property
    def raw(self) -> int:
        """The number, for passing to the kernel. The FD keeps owning it."""
        if self._fd < 0:
            raise ClosedError(self._what)
        return self._fd

    def fileno(self) -> int:
        return self.raw

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            self._fd = -1
            self._finalizer()

    def disown(self) -> int:
        """Give up ownership and return the number; the caller must close it."""
        fd = self.raw
        self._finalizer.detach()
        self._fd = -1
        return fd

    def dup(self) -> "FD":
        """A new FD owning a duplicate (close-on-exec) of this one."""
        return FD(os.dup(self.raw), self._what)

    def __enter__(self) -> "FD":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __int__(self) -> int:
        return self.raw

    def __repr__(self) -> str:
        return f"<FD {self._fd if self._fd >= 0 else 'closed'} {self._what}>"
