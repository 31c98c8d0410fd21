"""Feature probes: what the running kernel can do, measured by trying.

Each :class:`Feature` names the kernel version that introduced it.  A probe
runs once per process (cached) and returns a :class:`ProbeResult` saying
whether the feature works and, if not, why (too old, or refused by policy).
The pytest plugin uses them for ``@pytest.mark.needs(...)``.
"""
from __future__ import annotations

import errno as _errno
import functools
import os
import re
import struct
from dataclasses import dataclass
from typing import Callable

from pybpf import raw
from pybpf.errors import BPFError, NotSupportedError
from pybpf.raw import AttachType, MapType, ProgType

# Two instructions: r0 = 0; exit.
RET0 = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


@dataclass(frozen=True)
class ProbeResult:
    supported: bool
    reason: str = ""
    #: True when the kernel is new enough but refuses by policy (EPERM with
    #: every capability held): lockdown, an LSM, a hardened build.
    refused_by_policy: bool = False

    def __bool__(self) -> bool:
        return self.supported


@dataclass(frozen=True)
class Feature:
    name: str
    description: str
    min_kernel: tuple[int, int]
    probe: Callable[[], ProbeResult]

    @property
    def min_kernel_str(self) -> str:
        return f"{self.min_kernel[0]}.{self.min_kernel[1]}"


def kernel_version() -> tuple[int, int, int]:
    """The running kernel's version (major, minor, patch)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", os.uname().release)
    assert m is not None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _try(fn: Callable[[], object], what: str) -> ProbeResult:
    try:
        fn()
        return ProbeResult(True)
    except BPFError as e:
        policy = e.errno == _errno.EPERM and os.geteuid() == 0
        why = f"{what}: {e.strerror}"
        if policy:
            why += " (EPERM as root: the kernel refuses it by policy)"
        return ProbeResult(False, why, refused_by_policy=policy)


def _vmlinux_func_id(name: str) -> int:
    from pybpf.core.btf import Btf, Kind
    return Btf.vmlinux().find(name, Kind.FUNC).id


def _probe_trampoline() -> ProbeResult:
    try:
        btf_id = _vmlinux_func_id("bpf_fentry_test1")
    except (KeyError, BPFError) as e:
        return ProbeResult(False, f"no kernel BTF for bpf_fentry_test1: {e}")
    return _try(lambda: raw.prog_load(ProgType.TRACING, RET0, expected_attach_type=AttachType.TRACE_FENTRY,
                                      attach_btf_id=btf_id, name="probe_fentry").close(),
                "load an fentry program")


def _probe_fmod_ret() -> ProbeResult:
    """fmod_ret on bpf_modify_return_test(): the kernel allows it only where
    the function is modifiable (error-injection list, which needs
    CONFIG_FUNCTION_ERROR_INJECTION, or a registered fmod_ret kfunc set)."""
    from pybpf.errors import VerifierError

    try:
        btf_id = _vmlinux_func_id("bpf_modify_return_test")
    except (KeyError, BPFError) as e:
        return ProbeResult(False, f"no kernel BTF for bpf_modify_return_test: {e}")
    try:
        raw.prog_load(ProgType.TRACING, RET0, expected_attach_type=AttachType.MODIFY_RETURN,
                      attach_btf_id=btf_id, name="probe_fmod_ret").close()
    except VerifierError as e:
        if "not modifiable" in e.log:
            # a build choice of this kernel, not a missing feature: treated like a policy refusal
            return ProbeResult(False, "bpf_modify_return_test() is not modifiable on this kernel (built without "
                               "CONFIG_FUNCTION_ERROR_INJECTION and no fmod_ret kfunc set)", refused_by_policy=True)
        return ProbeResult(False, f"load an fmod_ret program: {e.strerror}")
    except BPFError:
        pass
    else:
        return ProbeResult(True)
    return _try(lambda: raw.prog_load(ProgType.TRACING, RET0, expected_attach_type=AttachType.MODIFY_RETURN,
                                      attach_btf_id=btf_id, name="probe_fmod_ret").close(),
                "load an fmod_ret program")


def _probe_map(t: MapType, ks: int = 4, vs: int = 8, n: int = 1, flags: int = 0) -> Callable[[], ProbeResult]:
    return lambda: _try(lambda: raw.map_create(t, ks, vs, n, flags=flags, name="probe").close(),
                        f"create a {t.name} map")


def _probe_prog(t: ProgType, attach: int = 0) -> Callable[[], ProbeResult]:
    return lambda: _try(lambda: raw.prog_load(t, RET0, expected_attach_type=attach, name="probe").close(),
                        f"load a {t.name} program")


def minimal_btf() -> bytes:
    """Raw BTF holding one type, ``int``: enough for commands that need a BTF fd."""
    strings = b"\0int\0"
    types = struct.pack("<IIII", 1, 1 << 24, 4, (1 << 24) | 32)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def _probe_struct_ops() -> ProbeResult:
    from pybpf.core.btf import Btf, Kind
    try:
        vt = Btf.vmlinux().find("bpf_struct_ops_tcp_congestion_ops", Kind.STRUCT)
    except KeyError:
        return ProbeResult(False, "the kernel's BTF has no bpf_struct_ops_tcp_congestion_ops")

    def create() -> None:
        # The kernel wants a program BTF fd beside the vmlinux value type.
        with raw.btf_load(minimal_btf()) as btf_fd:
            raw.map_create(MapType.STRUCT_OPS, 4, vt.size, 1, name="probe", btf_fd=btf_fd.raw,
                           btf_vmlinux_value_type_id=vt.id).close()

    return _try(create, "create a STRUCT_OPS map")


def _probe_struct_ops_link() -> ProbeResult:
    if not _probe_struct_ops():
        return _probe_struct_ops()
    from pybpf.core.btf import Btf
    ok = Btf.vmlinux().get("bpf_struct_ops_link") is not None
    return ProbeResult(ok, "" if ok else "the kernel has no struct_ops links (bpf_struct_ops_link, 6.4)")


def kptr_probe_btf(tag: str, target: str = "task_struct") -> bytes:
    """Raw BTF of ``struct v { struct TARGET __attribute__((btf_type_tag(TAG))) *p; }``
    (type ids: 1 int, 2 TARGET, 3 the tag, 4 the pointer, 5 struct v)."""
    names = [b"int", target.encode(), tag.encode(), b"v", b"p"]
    strings = b"\0" + b"".join(n + b"\0" for n in names)
    off = [1]
    for n in names[:-1]:
        off.append(off[-1] + len(n) + 1)
    types = b"".join([
        struct.pack("<IIII", off[0], 1 << 24, 4, (1 << 24) | 32),    # [1] INT int (signed, 32 bits)
        struct.pack("<III", off[1], 4 << 24, 0),                    # [2] STRUCT target, empty
        struct.pack("<III", off[2], 18 << 24, 2),                   # [3] TYPE_TAG tag -> 2
        struct.pack("<III", 0, 2 << 24, 3),                         # [4] PTR -> 3
        struct.pack("<III", off[3], (4 << 24) | 1, 8),              # [5] STRUCT v, 1 member
        struct.pack("<III", off[4], 4, 0),                          #     p: type 4 at bit 0
    ])
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def _kptr_map(tag: str) -> None:
    """Create an array map whose value holds one ``tag``-tagged task pointer."""
    with raw.btf_load(kptr_probe_btf(tag)) as btf_fd:
        raw.map_create(MapType.ARRAY, 4, 8, 1, name="probe_kptr", btf_fd=btf_fd.raw, btf_key_type_id=1,
                       btf_value_type_id=5).close()


def _probe_kptr() -> ProbeResult:
    from pybpf.core.btf import Btf, Kind
    fid = Btf.vmlinux().get("bpf_func_id", Kind.ENUM)
    if fid is None or not any(e.name == "BPF_FUNC_kptr_xchg" for e in fid.enumerators):
        return ProbeResult(False, "the kernel has no bpf_kptr_xchg helper (5.19)")
    return _try(lambda: _kptr_map("kptr"), "create a map with a 'kptr' field")


def _probe_kptr_untrusted() -> ProbeResult:
    # 6.4 renamed the tags: "kptr_untrusted" is the unreferenced kptr and
    # "kptr" the referenced one (before: "kptr" and "kptr_ref").  Map
    # creation cannot tell them apart: 5.19-6.3 drop a field whose tag they
    # do not know and create the map anyway (measured on 6.1), so the
    # version decides, and a map with such a field must still be accepted.
    # tests/test_kptr.py checks the meaning against the verifier.
    r = _probe_kptr()
    if not r:
        return r
    if kernel_version()[:2] < (6, 4):
        return ProbeResult(False, "the 'kptr_untrusted' tag is known since Linux 6.4; here '__kptr' fields are "
                           "unreferenced kptrs and referenced ones are tagged 'kptr_ref'")
    return _try(lambda: _kptr_map("kptr_untrusted"), "create a map with a 'kptr_untrusted' field")


def _probe_kfunc_task_acquire() -> ProbeResult:
    from pybpf.core.btf import Btf, Kind
    ok = Btf.vmlinux().get("bpf_task_acquire", Kind.FUNC) is not None
    return ProbeResult(ok, "" if ok else "the kernel has no bpf_task_acquire kfunc (6.2)")


def _probe_tp_btf() -> ProbeResult:
    from pybpf.core.btf import Btf, Kind
    t = Btf.vmlinux().get("btf_trace_sys_enter", Kind.TYPEDEF)
    if t is None:
        return ProbeResult(False, "no btf_trace_sys_enter in the kernel's BTF")
    return _try(lambda: raw.prog_load(ProgType.TRACING, RET0, expected_attach_type=AttachType.TRACE_RAW_TP,
                                      attach_btf_id=t.id, name="probe_tp_btf").close(), "load a tp_btf program")


FEATURES: dict[str, Feature] = {f.name: f for f in [
    Feature("trampoline", "fentry/fexit/fmod_ret and freplace programs (BPF trampolines)", (5, 5),
            _probe_trampoline),
    Feature("freplace", "program extensions (BPF_PROG_TYPE_EXT)", (5, 6), _probe_trampoline),
    Feature("fmod_ret", "fmod_ret programs modifying bpf_modify_return_test()", (5, 7), _probe_fmod_ret),
    Feature("ringbuf", "BPF ring buffer maps", (5, 8), _probe_map(MapType.RINGBUF, 0, 0, 4096)),
    Feature("batch_ops", "batched map operations", (5, 6), _probe_map(MapType.HASH)),
    Feature("xdp", "XDP programs", (4, 8), _probe_prog(ProgType.XDP)),
    Feature("xdp_link", "XDP attachment through BPF links", (5, 9), _probe_prog(ProgType.XDP)),
    Feature("struct_ops", "struct_ops maps (tcp_congestion_ops)", (5, 6), _probe_struct_ops),
    Feature("struct_ops_link", "struct_ops registered through BPF links, updatable", (6, 4),
            _probe_struct_ops_link),
    Feature("kptr", "kptrs in map values (bpf_kptr_xchg)", (5, 19), _probe_kptr),
    Feature("kptr_untrusted", "the 'kptr_untrusted' tag: '__kptr' fields are referenced, '__kptr_untrusted' "
            "fields unreferenced (before: 'kptr' unreferenced, 'kptr_ref' referenced)", (6, 4),
            _probe_kptr_untrusted),
    Feature("task_kfuncs", "bpf_task_acquire/release kfuncs (referenced task kptrs)", (6, 2),
            _probe_kfunc_task_acquire),
    Feature("tp_btf", "BTF-enabled raw tracepoints", (5, 5), _probe_tp_btf),
]}


@functools.lru_cache(maxsize=None)
def probe(name: str) -> ProbeResult:
    """Whether the running kernel supports feature ``name`` (cached)."""
    try:
        feature = FEATURES[name]
    except KeyError:
        raise KeyError(f"unknown feature '{name}' (known: {', '.join(FEATURES)})") from None
    result = feature.probe()
    if not result.supported and kernel_version()[:2] < feature.min_kernel:
        return ProbeResult(False, f"{feature.description} needs Linux {feature.min_kernel_str}+; this is "
                           f"{os.uname().release}")
    return result


def require(name: str) -> None:
    """Raise :class:`NotSupportedError` naming the feature and the kernel
    version it needs, unless the running kernel has it."""
    r = probe(name)
    if not r:
        f = FEATURES[name]
        raise NotSupportedError(_errno.EOPNOTSUPP, f"{f.description} not available: {r.reason}",
                                hint=f"needs Linux {f.min_kernel_str} or newer, without policy restrictions")


def expected(name: str) -> bool:
    """Whether the running kernel is new enough that feature ``name`` must
    work (used to turn skips into failures)."""
    return kernel_version()[:2] >= FEATURES[name].min_kernel
