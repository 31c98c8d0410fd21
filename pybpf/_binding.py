"""The one module that owns cffi's ``ffi`` and ``lib`` for pybpf.

Nothing else imports ``pybpf._native``.  At import it routes libbpf's log to
the ``pybpf.libbpf`` logger and records what the linked libbpf can do.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from pybpf._native import ffi, lib  # type: ignore[import-not-found]

__all__ = ["ffi", "lib", "LIBBPF_VERSION", "HAS", "capture_libbpf_log", "libbpf_logger", "ptr_errno"]

libbpf_logger = logging.getLogger("pybpf.libbpf")
logging.getLogger("pybpf").addHandler(logging.NullHandler())

_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_capture = threading.local()

LIBBPF_VERSION: tuple[int, int] = (int(lib.libbpf_major_version()), int(lib.libbpf_minor_version()))

#: What the linked libbpf provides, computed by the C preamble at build time.
HAS: dict[str, bool] = {
    "link_update_map": bool(lib.PYBPF_HAS_LINK_UPDATE_MAP),
    "prog_info_by_fd": bool(lib.PYBPF_HAS_PROG_INFO_BY_FD),
}


def ptr_errno(ptr: object, default: int) -> int:
    """0 if a pointer returned by a libbpf constructor is a real object, else
    the error: errno for NULL, or the code inside an error pointer.

    libbpf 1.x turns its internal ERR_PTR(-err) into NULL + errno only when
    err is in the kernel's errno range (<= 4095); libbpf 1.1 can return
    ERR_PTR(-65532) for a malformed ELF, a pointer no user-space address
    has (the top bit set), which must never be dereferenced."""
    if ptr == ffi.NULL:
        return int(ffi.errno) or default
    value = int(ffi.cast("uintptr_t", ptr))
    if value >= 1 << 63:
        return (1 << 64) - value
    return 0


@ffi.def_extern(error=None)  # type: ignore[misc]
def pybpf_log_cb(level: int, msg: object) -> None:
    # Called from C: must never raise.
    try:
        text = ffi.string(msg).decode("utf-8", "replace")
        sinks = getattr(_capture, "sinks", None)
        if sinks:
            for sink in sinks:
                sink(level, text)
        libbpf_logger.log(_LEVELS.get(level, logging.DEBUG), "%s", text.rstrip("\n"))
    except BaseException:  # noqa: BLE001 - nothing may cross into C
        pass


class capture_libbpf_log:
    """Context manager collecting libbpf's messages emitted by this thread."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, str]] = []

    def _sink(self, level: int, text: str) -> None:
        self.messages.append((level, text))

    def __enter__(self) -> "capture_libbpf_log":
        sinks: list[Callable[[int, str], None]] = getattr(_capture, "sinks", None) or []
        sinks.append(self._sink)
        _capture.sinks = sinks
        return self

    def __exit__(self, *exc: object) -> None:
        _capture.sinks.remove(self._sink)

    @property
    def text(self) -> str:
        return "".join(m for _, m in self.messages)


lib.pybpf_install_print()
