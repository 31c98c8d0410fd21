"""pybpf: load, compose, attach and test eBPF programs from Python.

The layers, bottom up:

* ``pybpf._cdefs`` / ``build_ffi.py``: C declarations per area, the cffi build;
* :mod:`pybpf._binding`: the one module owning ``ffi``/``lib``;
* :mod:`pybpf.raw`: the bpf(2) syscall layer (one entry point, typed commands);
* :mod:`pybpf.core`: the object model (:class:`Object`, :class:`Program`,
  :class:`Map`, :class:`Link`, :class:`Btf`);
* :mod:`pybpf.features`: trampolines and extensions, struct_ops, XDP, linking;
* :mod:`pybpf.probes`, :mod:`pybpf.compiler`, :mod:`pybpf.netns`;
* :mod:`pybpf.testing` (pytest plugin), :mod:`pybpf.vm` (VM harness), the CLI.
"""
from __future__ import annotations

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names and the module each comes from.  Imported on first use, so that
# parts that need no compiled extension (pybpf.vm, pybpf.errors) work without
# it, and ``import pybpf`` stays cheap.
_EXPORTS: dict[str, str] = {
    "LIBBPF_VERSION": "pybpf._binding",
    "compile": "pybpf.compiler", "vmlinux_h": "pybpf.compiler",
    "Btf": "pybpf.core.btf", "BtfType": "pybpf.core.btf", "Kind": "pybpf.core.btf",
    "EnumInt": "pybpf.core.codec", "Special": "pybpf.core.codec", "Struct": "pybpf.core.codec",
    "kptr_meaning": "pybpf.core.codec", "check_type_tags": "pybpf.compiler",
    "Link": "pybpf.core.link", "LinkInfo": "pybpf.core.link",
    "ANY": "pybpf.core.map", "EXIST": "pybpf.core.map", "F_LOCK": "pybpf.core.map", "NOEXIST": "pybpf.core.map",
    "Map": "pybpf.core.map", "MapInfo": "pybpf.core.map",
    "Object": "pybpf.core.object",
    "Program": "pybpf.core.program", "ProgramInfo": "pybpf.core.program", "TestRunResult": "pybpf.core.program",
    "RingBuffer": "pybpf.core.ringbuf", "PerfBuffer": "pybpf.core.ringbuf", "RawBatch": "pybpf.core.ringbuf",
    "AttachType": "pybpf.raw.enums", "LinkType": "pybpf.raw.enums", "MapType": "pybpf.raw.enums",
    "ProgType": "pybpf.raw.enums",
    # features
    "link_objects": "pybpf.features.linker", "LinkError": "pybpf.features.linker",
    "XdpDispatcher": "pybpf.features.dispatcher", "TcDispatcher": "pybpf.features.dispatcher.tc",
    "list_struct_ops": "pybpf.features.struct_ops", "StructOpsLink": "pybpf.features.struct_ops",
    "StructOpsInfo": "pybpf.features.struct_ops",
}
_ERRORS = ["BPFBusyError", "BPFError", "BPFExistsError", "BPFInvalidError", "BPFKeyError", "BPFNotFoundError",
           "BPFPermissionError", "ClosedError", "CompileError", "ELFError", "NotSupportedError", "StateError",
           "VerifierError"]
_EXPORTS.update({name: "pybpf.errors" for name in _ERRORS})
_SUBMODULES = {"raw", "core", "features", "probes", "netns", "testing", "errors", "vm", "cli", "compiler"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"pybpf.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pybpf' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)


def enable_stats() -> Any:
    """Enable run-time statistics (run count and time of every program)
    while the returned FD is open: ``with pybpf.enable_stats(): ...``."""
    from pybpf import raw as _raw
    return _raw.enable_stats(0)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from pybpf import raw
    from pybpf._binding import LIBBPF_VERSION
    from pybpf.compiler import compile, vmlinux_h
    from pybpf.core.btf import Btf, BtfType, Kind
    from pybpf.core.codec import EnumInt, Special, Struct, kptr_meaning
    from pybpf.compiler import check_type_tags
    from pybpf.core.link import Link, LinkInfo
    from pybpf.core.map import ANY, EXIST, F_LOCK, NOEXIST, Map, MapInfo
    from pybpf.core.object import Object
    from pybpf.core.program import Program, ProgramInfo, TestRunResult
    from pybpf.core.ringbuf import PerfBuffer, RawBatch, RingBuffer
    from pybpf.errors import (BPFBusyError, BPFError, BPFExistsError, BPFInvalidError, BPFKeyError,
                              BPFNotFoundError, BPFPermissionError, ClosedError, CompileError, ELFError,
                              NotSupportedError, StateError, VerifierError)
    from pybpf.features.dispatcher import XdpDispatcher
    from pybpf.features.dispatcher.tc import TcDispatcher
    from pybpf.features.linker import LinkError, link_objects
    from pybpf.features.struct_ops import StructOpsInfo, StructOpsLink, list_struct_ops
    from pybpf.raw.enums import AttachType, LinkType, MapType, ProgType

__all__ = sorted([*_EXPORTS, "enable_stats"])
