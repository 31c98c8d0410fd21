"""The exceptions pybpf raises.

Every failure of a C call or a bpf(2) command goes through :func:`check` (or
:func:`raise_errno`), which maps errno to one typed exception.  All of them
derive from :class:`BPFError`, itself an :class:`OSError` keeping ``errno``;
the subclasses are also the matching builtin (``PermissionError``,
``KeyError``, ``FileNotFoundError``...) so callers may catch either.
"""
from __future__ import annotations

import errno as _errno
import os
from typing import NoReturn

# libbpf's own error codes (libbpf.h, enum libbpf_errno).
LIBBPF_ERRNO_BASE = 4000
_LIBBPF_ERRNO = {
    4000: "something wrong in libelf",
    4001: "BPF object format invalid",
    4002: "'version' section incorrect or lost",
    4003: "endian mismatch",
    4004: "internal error in libbpf",
    4005: "relocation failed",
    4006: "load program failed for unknown reason",
    4007: "kernel verifier blocks program loading",
    4008: "program too big",
    4009: "incorrect kernel version",
    4010: "kernel doesn't support this program type",
    4011: "wrong pid in netlink message",
    4012: "invalid netlink sequence",
    4013: "netlink attribute parse error",
}


def strerror(err: int) -> str:
    """Text of an errno, including libbpf's private 4000+ codes."""
    err = abs(err)
    if err in _LIBBPF_ERRNO:
        return _LIBBPF_ERRNO[err]
    return os.strerror(err)


class BPFError(OSError):
    """Base of every pybpf error. ``errno`` is the kernel's or libbpf's error
    code (or None), ``op`` the operation that failed, ``hint`` what to do."""

    def __init__(self, err: int | None, message: str, *, op: str | None = None, hint: str | None = None):
        super().__init__(err, message)
        self.op = op
        self.hint = hint

    def __str__(self) -> str:
        text = self.strerror or ""
        if self.errno:
            name = _errno.errorcode.get(self.errno, str(self.errno))
            text = f"{text} [{name}]"
        if self.hint:
            text = f"{text}\n  hint: {self.hint}"
        return text


class BPFPermissionError(BPFError, PermissionError):
    """EPERM/EACCES: a capability is missing or a policy refused."""


class BPFNotFoundError(BPFError, FileNotFoundError):
    """ENOENT on a path or an id: a pin, an object file, a program id."""


class BPFKeyError(BPFError, KeyError):
    """A map key that is not in the map."""

    def __str__(self) -> str:  # KeyError would print repr(args)
        return BPFError.__str__(self)


class BPFExistsError(BPFError, FileExistsError):
    """EEXIST: a pin path, a map key with NOEXIST, a struct_ops name taken."""


class BPFBusyError(BPFError):
    """EBUSY: something else is attached where this attachment wanted to go."""


class BPFInvalidError(BPFError, ValueError):
    """EINVAL and other argument errors: what was passed does not fit."""


class NotSupportedError(BPFError):
    """The running kernel or the linked libbpf lacks a feature."""


class ClosedError(BPFError, ValueError):
    """An object was used after close()."""

    def __init__(self, what: str):
        super().__init__(_errno.EBADF, f"{what} is closed", hint="open or load it again; "
                         "closed objects release their kernel resources and cannot be reused")


class StateError(BPFError, RuntimeError):
    """An operation that the object's current state does not allow
    (for example an open-time setting after load)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(None, message, hint=hint)


class ELFError(BPFError, ValueError):
    """The BPF ELF object could not be parsed."""


class CompileError(BPFError):
    """clang failed to compile a BPF C source. ``output`` holds its stderr."""

    def __init__(self, message: str, output: str = "", hint: str | None = None):
        super().__init__(None, message + (f"\n{output.rstrip()}" if output else ""), hint=hint)
        self.output = output


class VerifierError(BPFError):
    """The kernel's verifier refused a program. ``log`` is the whole verifier
    log; the message shows its last lines."""

    TAIL_LINES = 6

    def __init__(self, err: int, program: str, log: str, *, op: str = "load", hint: str | None = None):
        self.program = program
        self.log = log
        lines = [ln for ln in log.rstrip().splitlines() if ln.strip()]
        tail = lines[-self.TAIL_LINES:]
        # Newer kernels (7.x) append a "Verification failed: ..." explanation
        # after the error line: keep the error line in the message too.
        for i, ln in enumerate(lines):
            if ln.startswith("Verification failed:") and i > 0 and lines[i - 1] not in tail:
                tail = [lines[i - 1], *lines[i:i + self.TAIL_LINES]]
                break
        msg = f"{op} of program '{program}' refused by the verifier ({strerror(err)})"
        if tail:
            msg += ":\n    " + "\n    ".join(tail)
            if len(lines) > len(tail):
                msg += f"\n  ({len(lines) - len(tail)} earlier log lines in .log)"
        else:
            msg += "; the kernel gave no verifier log"
        super().__init__(err, msg, op=op, hint=hint)


_BY_ERRNO: dict[int, type[BPFError]] = {
    _errno.EPERM: BPFPermissionError,
    _errno.EACCES: BPFPermissionError,
    _errno.ENOENT: BPFNotFoundError,
    _errno.EEXIST: BPFExistsError,
    _errno.EBUSY: BPFBusyError,
    _errno.EINVAL: BPFInvalidError,
    _errno.E2BIG: BPFInvalidError,
    _errno.EOPNOTSUPP: NotSupportedError,
    _errno.ENOTSUPP if hasattr(_errno, "ENOTSUPP") else 524: NotSupportedError,
    4001: ELFError,
    4000: ELFError,
}

_PERM_HINT = ("run as root or grant CAP_BPF (plus CAP_NET_ADMIN for networking programs, "
              "CAP_PERFMON for tracing, CAP_SYS_ADMIN on older kernels)")

# Capability bit numbers (include/uapi/linux/capability.h).
CAPABILITIES = {"CAP_DAC_OVERRIDE": 1, "CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}

# What the kernel checks per bpf(2) command (kernel/bpf/syscall.c, Linux 5.8+ where CAP_BPF and
# CAP_PERFMON split from CAP_SYS_ADMIN), and for the other operations pybpf does.
_OP_CAPS: dict[str, tuple[str, ...]] = {
    "map_create": ("CAP_BPF",), "prog_load": ("CAP_BPF",), "load": ("CAP_BPF",), "btf_load": ("CAP_BPF",),
    "enable_stats": ("CAP_SYS_ADMIN",), "setns": ("CAP_SYS_ADMIN",), "netlink": ("CAP_NET_ADMIN",),
}
for _kind in ("prog", "map", "link", "btf"):
    _OP_CAPS[f"{_kind}_get_next_id"] = ("CAP_SYS_ADMIN",)
    _OP_CAPS[f"{_kind}_get_fd_by_id"] = ("CAP_SYS_ADMIN",)
# EPERM/EACCES that no capability explains.
_OP_HINTS = {
    "map_update_elem": "the map is frozen (Map.freeze) or was opened read-only; capabilities do not change that",
    "map_delete_elem": "the map is frozen (Map.freeze) or was opened read-only; capabilities do not change that",
    "obj_get": "a pin is a file: its owner and mode decide who may open it (or CAP_DAC_OVERRIDE)",
    "obj_pin": "a pin is a file: the directory's owner and mode decide who may create it (or CAP_DAC_OVERRIDE)",
}
# Program types that need CAP_NET_ADMIN / CAP_PERFMON on top of CAP_BPF (is_net_admin_prog_type,
# is_perfmon_prog_type in kernel/bpf/syscall.c).
_NET_ADMIN_TYPES = {"SCHED_CLS", "SCHED_ACT", "XDP", "LWT_IN", "LWT_OUT", "LWT_XMIT", "LWT_SEG6LOCAL", "SK_SKB",
                    "SK_MSG", "FLOW_DISSECTOR", "CGROUP_DEVICE", "CGROUP_SOCK", "CGROUP_SOCK_ADDR",
                    "CGROUP_SOCKOPT", "CGROUP_SYSCTL", "SOCK_OPS", "EXT", "NETFILTER"}
_PERFMON_TYPES = {"KPROBE", "TRACEPOINT", "PERF_EVENT", "RAW_TRACEPOINT", "RAW_TRACEPOINT_WRITABLE", "TRACING",
                  "LSM", "STRUCT_OPS", "EXT"}


def effective_capabilities() -> set[str] | None:
    """The capabilities (of :data:`CAPABILITIES`) this process has in effect;
    None when /proc does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    bits = int(line.split()[1], 16)
                    return {name for name, bit in CAPABILITIES.items() if bits >> bit & 1}
    except OSError:
        pass
    return None


def caps_for_program_types(types: "list[object]") -> tuple[str, ...]:
    """CAP_BPF plus what programs of these types (ProgType members or
    names) need: CAP_NET_ADMIN for networking types, CAP_PERFMON for tracing."""
    names = {getattr(t, "name", str(t)).upper() for t in types}
    out = ["CAP_BPF"]
    if names & _NET_ADMIN_TYPES:
        out.append("CAP_NET_ADMIN")
    if names & _PERFMON_TYPES:
        out.append("CAP_PERFMON")
    return tuple(out)


def permission_hint(op: str | None, needed: "tuple[str, ...] | None" = None) -> str:
    """A hint for EPERM/EACCES from ``op`` that names the capabilities the
    operation needs and which of them this process lacks."""
    if needed is None:
        if op in _OP_HINTS:
            return _OP_HINTS[op]
        needed = _OP_CAPS.get(op or "")
    if not needed:
        return _PERM_HINT
    have = effective_capabilities()
    if have is None:
        lacking = list(needed)
    else:
        # CAP_SYS_ADMIN still grants what CAP_BPF and CAP_PERFMON grant
        # (and CAP_NET_ADMIN for program loads)
        lacking = [c for c in needed if c not in have and not (
            (c in ("CAP_BPF", "CAP_PERFMON") or (c == "CAP_NET_ADMIN" and op in ("load", "prog_load")))
            and "CAP_SYS_ADMIN" in have)]
    alts = [c + (" (or CAP_SYS_ADMIN)" if c in ("CAP_BPF", "CAP_PERFMON") else "") for c in needed]
    if op in ("load", "prog_load"):
        alts = [a.replace("CAP_NET_ADMIN", "CAP_NET_ADMIN (or CAP_SYS_ADMIN)") for a in alts]
    text = f"{op or 'this operation'} needs {' + '.join(alts)}"
    if lacking:
        text += f"; this process lacks {', '.join(lacking)}: run as root or grant it (capsh --caps, setcap, " \
                "systemd AmbientCapabilities=)"
    else:
        text += ("; this process has them, so a policy refused it (kernel.unprivileged_bpf_disabled, an LSM, "
                 "lockdown) or this kernel forbids it (see pybpf.probes)")
    return text


def error_for(err: int, what: str, *, op: str | None = None, hint: str | None = None,
              cls: type[BPFError] | None = None) -> BPFError:
    """Build (without raising) the typed exception for errno ``err``."""
    err = abs(err)
    klass = cls or _BY_ERRNO.get(err, BPFError)
    if klass is BPFPermissionError and hint is None:
        hint = permission_hint(op)
    return klass(err, f"{what}: {strerror(err)}", op=op, hint=hint)


def raise_errno(err: int, what: str, *, op: str | None = None, hint: str | None = None,
                cls: type[BPFError] | None = None) -> NoReturn:
    """Raise the typed exception for errno ``err`` (sign ignored)."""
    raise error_for(err, what, op=op, hint=hint, cls=cls)


def check(ret: int, what: str, **kw: object) -> int:
    """Return ``ret`` if it is >= 0, else raise for ``-ret`` (libbpf style)."""
    if ret < 0:
        raise_errno(-ret, what, **kw)  # type: ignore[arg-type]
    return ret
