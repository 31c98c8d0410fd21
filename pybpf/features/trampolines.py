"""Trampoline-based attachment: fentry/fexit/fmod_ret, and program
extensions (freplace).

The kernel answers many mistakes here with a bare EINVAL/EBUSY/EPERM; the
``precheck_*`` and ``explain_*`` functions look at BTF and the targets first
so the error says what is wrong and what to do.  The checks mirror the
kernel's own rules (``bpf_check_attach_target()`` and
``btf_check_type_match()`` in the verifier, ``bpf_trampoline_link_prog()``):

* only global functions can be replaced (static ones are verified in the
  context of their caller, so a replacement could break the caller);
* a replacement's BTF signature must match the replaced function's: same
  number of arguments, scalars of the same size, pointers to the same
  context struct, same return type;
* one level only: an extension cannot be extended, and fentry/fexit
  programs cannot be extended;
* a function is either replaced or traced (fentry/fexit/fmod_ret): whichever
  attaches second gets EBUSY;
* the target needs BTF (a ``-g`` build) and must be JITed.

Whenever the kernel still refuses, its verifier log is kept in the raised
:class:`~pybpf.errors.VerifierError` and the explanation put in front.
"""
from __future__ import annotations

import difflib
import errno as _errno
import functools
import os
import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from pybpf._binding import lib
from pybpf.core.link import Link, libbpf_link
from pybpf.errors import (BPFBusyError, BPFError, BPFInvalidError, BPFNotFoundError, BPFPermissionError, StateError,
                          VerifierError, error_for, raise_errno)
from pybpf.raw import AttachType, ProgType

if TYPE_CHECKING:
    from pybpf.core.btf import Btf, BtfType
    from pybpf.core.program import Program, ProgramInfo

#: Where an extension or tracing program was pointed at by set_attach_target:
#: the target program's id and name, the function and its BTF id.
_TARGETS: "weakref.WeakKeyDictionary[Program, Target]" = weakref.WeakKeyDictionary()

_GUEST_HINT = ("this kernel refuses trampoline programs (fentry/fexit/fmod_ret/freplace/LSM) by policy; run them in a "
               "VM guest, e.g. python3 -m pybpf.vm run --kernel 6.12 -- python3 your_script.py "
               "(pybpf.probes.probe('trampoline') tells)")


@dataclass(frozen=True)
class Target:
    """A function of a loaded BPF program that a program attaches to."""

    prog_id: int
    prog_name: str
    func: str | None
    btf_id: int
    prog_type: int = -1

    def __str__(self) -> str:
        f = f"{self.func}() of " if self.func else ""
        return f"{f}program '{self.prog_name}' (id {self.prog_id})"


# -- helpers ---------------------------------------------------------------------------------------

def _type_name(t: int | ProgType) -> str:
    return t.name if isinstance(t, ProgType) else (ProgType(t).name if t in ProgType._value2member_map_ else str(t))


def _own_attach_type(prog: "Program") -> int | None:
    """The expected attach type of an Object's program (None when unknown)."""
    if prog._ptr is None:
        return None
    return int(lib.bpf_program__expected_attach_type(prog._ptr))


def _attach_type_of_loaded(info: "ProgramInfo", prog: Any = None) -> int | None:
    """The attach type of a loaded tracing program: from its Object when we
    have one, else from one of its links (the kernel does not report the
    expected attach type of a program)."""
    if prog is not None and getattr(prog, "_ptr", None) is not None:
        return int(lib.bpf_program__expected_attach_type(prog._ptr))
    from pybpf.features.ext import tracing_links

    for _, li in tracing_links():
        if li.prog_id == info.id:
            return li.details.get("attach_type")
    return None


def _global_funcs(btf: "Btf") -> list[str]:
    from pybpf.core.btf import Kind, Linkage

    return [t.name for t in btf if t.kind == Kind.FUNC and t.linkage == Linkage.GLOBAL]


def signature(btf: "Btf", func: "BtfType") -> str:
    """A C spelling of a BTF FUNC: ``int classify(struct xdp_md *ctx)``."""
    proto = func.type
    ret = btf[proto.type_id].describe() if proto.type_id else "void"
    def one(type_id: int, name: str) -> str:
        d = btf[type_id].describe() if type_id else "..."
        return d + name if d.endswith("*") else (f"{d} {name}" if name else d)

    args = ", ".join(one(p.type_id, p.name) for p in proto.params)
    return f"{ret} {func.name}({args or 'void'})"


def _resolved(btf: "Btf", type_id: int) -> "BtfType | None":
    if not type_id:
        return None
    return btf[type_id].resolved()


def _same_scalar(a: "BtfType | None", b: "BtfType | None") -> bool:
    from pybpf.core.btf import Kind

    if a is None or b is None:
        return a is None and b is None
    if a.kind != b.kind:
        return False
    if a.kind in (Kind.INT, Kind.ENUM, Kind.ENUM64, Kind.FLOAT, Kind.STRUCT, Kind.UNION):
        return a.size == b.size
    return True


def signature_mismatch(own_btf: "Btf", own: "BtfType", tgt_btf: "Btf", tgt: "BtfType") -> str | None:
    """Why the replacement ``own`` cannot replace ``tgt`` (None: they match),
    by the rules of the kernel's ``btf_check_func_type_match()``."""
    from pybpf.core.btf import Kind

    p1, p2 = own.type, tgt.type
    a1, a2 = p1.params, p2.params
    if len(a1) != len(a2):
        return f"{own.name}() takes {len(a1)} argument(s), {tgt.name}() takes {len(a2)}"
    r1, r2 = _resolved(own_btf, p1.type_id), _resolved(tgt_btf, p2.type_id)
    if not _same_scalar(r1, r2):
        return (f"{own.name}() returns {r1.describe() if r1 else 'void'}, {tgt.name}() returns "
                f"{r2.describe() if r2 else 'void'}")
    for i, (x, y) in enumerate(zip(a1, a2)):
        t1, t2 = _resolved(own_btf, x.type_id), _resolved(tgt_btf, y.type_id)
        if t1 is None or t2 is None or not _same_scalar(t1, t2):
            d1 = t1.describe() if t1 else "void"
            d2 = t2.describe() if t2 else "void"
            return f"argument {i} is {d1} in {own.name}() but {d2} in {tgt.name}()"
        if t1.kind == Kind.PTR:
            s1, s2 = _resolved(own_btf, t1.type_id), _resolved(tgt_btf, t2.type_id)
            if (s1 is not None and s2 is not None and s1.kind in (Kind.STRUCT, Kind.UNION)
                    and s2.kind in (Kind.STRUCT, Kind.UNION) and s1.name != s2.name):
                return (f"argument {i} points to {s1.describe()} in {own.name}() but to {s2.describe()} in "
                        f"{tgt.name}() (a replacement must take the same context)")
    return None


# -- set_attach_target -------------------------------------------------------------------------------

def precheck_target(prog: "Program", target: Any, target_fd: int, func: str | None) -> None:
    """Checks before set_attach_target on a BPF program target.

    Raises a typed error naming the target and the function when the kernel
    would refuse the combination; records the target for explaining EBUSY at
    attach time."""
    from pybpf.core.btf import Btf, Kind, Linkage
    from pybpf.core.program import ProgramInfo

    info = ProgramInfo.from_fd(target_fd)
    label = f"program '{info.name}' (id {info.id}, {_type_name(info.type)})"
    own_type = prog.type
    is_ext = own_type == ProgType.EXT
    what = f"set attach target of '{prog.name}' to {func + '() of ' if func else ''}{label}"

    # one level only
    if is_ext and info.type == ProgType.EXT:
        orig = _extension_target(info.id)
        where = f"; it replaces {orig}" if orig else ""
        raise BPFInvalidError(_errno.EINVAL, f"{what}: cannot extend an extension{where} (the kernel allows only "
                              "one level of replacement)",
                              hint=("attach the new extension to the original program's function instead"
                                    + (f": set_attach_target({orig.prog_id}, {orig.func!r})" if orig else "")))
    defer_signature = False
    if is_ext and info.type == ProgType.TRACING:
        at = _attach_type_of_loaded(info, target if hasattr(target, "_ptr") else None)
        if at in (AttachType.TRACE_FENTRY, AttachType.TRACE_FEXIT):
            kind = "fentry" if at == AttachType.TRACE_FENTRY else "fexit"
            raise BPFInvalidError(_errno.EINVAL, f"{what}: cannot extend an {kind} program (extensions of fentry/"
                                  "fexit programs could chain without bound)",
                                  hint="extend the program that the fentry/fexit program traces instead; fentry/"
                                  "fexit may in turn trace an extension")
        defer_signature = at is None      # let the kernel judge a tracing target of unknown kind
    if not info.btf_id:
        raise BPFInvalidError(_errno.EINVAL, f"{what}: the target has no BTF, so its functions cannot be found "
                              "by name nor checked",
                              hint="load the target from an object compiled with -g (pybpf.compile does); programs "
                              "loaded from raw instructions without BTF cannot be extended or traced by name")
    if info.xlated_len and not info.jited_len:
        raise BPFInvalidError(_errno.EINVAL, f"{what}: the target is not JIT-compiled; the kernel attaches "
                              "trampolines and extensions only to JITed programs",
                              hint="enable the JIT (sysctl net.core.bpf_jit_enable=1) and load the target again")
    if not func:
        _TARGETS[prog] = Target(info.id, info.name, None, 0, int(info.type))
        return
    btf = Btf.from_kernel_id(info.btf_id)
    try:
        t = btf.get(func, Kind.FUNC)
        if t is None:
            funcs = _global_funcs(btf)
            close = difflib.get_close_matches(func, funcs, n=3)
            raise BPFNotFoundError(_errno.ESRCH, f"{what}: the target has no function named '{func}' "
                                   f"(its global functions: {', '.join(funcs) or 'none'})",
                                   hint=(f"did you mean {' or '.join(repr(c) for c in close)}?" if close else
                                         "name a global function of the target (a subprogram or its main "
                                         "function); static and inlined functions have no BTF of their own"))
        if is_ext and t.linkage != Linkage.GLOBAL:
            raise BPFInvalidError(_errno.EINVAL, f"{what}: {func}() is a static function; only global functions "
                                  "can be replaced",
                                  hint=(f"make {func}() global in the target's source (drop 'static', keep "
                                        "__noinline) and load the target again: global functions are verified "
                                        "on their own, which is what makes them replaceable"))
        if is_ext and not defer_signature and prog._obj is not None:
            own_btf = prog._obj.btf
            own = own_btf.get(prog.name, Kind.FUNC) if own_btf is not None else None
            if own is not None and own_btf is not None:
                why = signature_mismatch(own_btf, own, btf, t)
                if why:
                    raise BPFInvalidError(_errno.EINVAL, f"{what}: the signatures do not match: {why}\n"
                                          f"    replacement: {signature(own_btf, own)}\n"
                                          f"    target:      {signature(btf, t)}",
                                          hint=f"declare {prog.name}() exactly like {func}() (argument count, "
                                          "scalar sizes, context struct, return type)")
        _TARGETS[prog] = Target(info.id, info.name, func, t.id, int(info.type))
    finally:
        btf.close()


def precheck_kernel_target(prog: "Program", func: str | None) -> None:
    """Checks before set_attach_target on a kernel function (target None)."""
    _TARGETS.pop(prog, None)
    if prog.type == ProgType.EXT:
        raise BPFInvalidError(_errno.EINVAL, f"set attach target of extension '{prog.name}' to {func!r}: an "
                              "extension replaces a global function of a loaded BPF program, not a kernel function",
                              hint="pass the target program (a Program, a program id or a pinned path): "
                              "set_attach_target(target_prog, 'function')")
    if func and prog.type == ProgType.TRACING and _own_attach_type(prog) in (
            AttachType.TRACE_FENTRY, AttachType.TRACE_FEXIT, AttachType.MODIFY_RETURN):
        # Look the name up here first: libbpf 1.1 searches the module BTFs when vmlinux lacks the
        # name, and an object that is then never loaded keeps their fds open until the process exits.
        if not _kernel_has_func(func):
            _no_kernel_func(prog, func, _errno.ESRCH)


def _kernel_has_func(name: str) -> bool:
    """Whether vmlinux or a loaded module has a BTF FUNC ``name``."""
    from pybpf import raw
    from pybpf.core.btf import Btf, Kind, _vmlinux_id

    if Btf.vmlinux().get(name, Kind.FUNC) is not None:
        return True
    vid = _vmlinux_id()
    for bid in raw.ids("btf"):
        if bid == vid:
            continue
        try:
            with raw.fd_by_id("btf", bid) as fd:
                if not raw.btf_info(fd.raw).kernel_btf:
                    continue
            mod = Btf.from_kernel_id(bid)
        except BPFError:
            continue
        try:
            if mod.get(name, Kind.FUNC) is not None:
                return True
        finally:
            mod.close()
    return False


def _extension_target(ext_id: int) -> Target | None:
    """What a loaded extension replaces (through one of its links)."""
    from pybpf.features.ext import _func_names, _prog_summary, tracing_links

    for _, li in tracing_links():
        if li.prog_id == ext_id:
            tid = li.details.get("target_obj_id", 0)
            bid = li.details.get("target_btf_id", 0)
            return Target(tid, _prog_summary(tid)[1], _func_names(tid).get(bid), bid)
    return None


@functools.lru_cache(maxsize=1)
def _vmlinux_func_names() -> tuple[str, ...]:
    """Names of the kernel's BTF functions (read straight from libbpf's
    records: this runs in error paths, also under slow emulation)."""
    from pybpf._binding import ffi
    from pybpf.core.btf import Btf, Kind

    p = Btf.vmlinux()._ptr()
    offs = []
    for i in range(1, int(lib.btf__type_cnt(p))):
        t = lib.btf__type_by_id(p, i)
        if (t.info >> 24) & 0x1F == Kind.FUNC:
            offs.append(t.name_off)
    return tuple(ffi.string(lib.btf__name_by_offset(p, o)).decode() for o in offs)


def _kernel_func_suggestions(func: str) -> list[str]:
    try:
        names = _vmlinux_func_names()
    except BPFError:
        return []
    # difflib over every kernel function is slow: compare with names of a similar length only
    near = [n for n in names if abs(len(n) - len(func)) <= 3]
    return difflib.get_close_matches(func, near, n=3, cutoff=0.75)


def _no_kernel_func(prog: "Program", func: str, err: int) -> NoReturn:
    close = _kernel_func_suggestions(func)
    raise BPFNotFoundError(err, f"attach target of '{prog.name}': the kernel has no function '{func}' in its BTF "
                           "(not a kernel function, inlined, or in a module without BTF)",
                           hint=(f"did you mean {' or '.join(repr(c) for c in close)}? " if close else "")
                           + "list candidates with: bpftool btf dump file /sys/kernel/btf/vmlinux | grep FUNC")


def explain_set_target_error(prog: "Program", target: Any, target_fd: int, func: str | None, err: int) -> None:
    """Raise a clear error for a failed bpf_program__set_attach_target."""
    if target is None and func and err in (_errno.ESRCH, _errno.ENOENT):
        _no_kernel_func(prog, func, err)
    if target is not None and err == _errno.ESRCH and func:
        raise BPFNotFoundError(err, f"set attach target of '{prog.name}': the target has no function '{func}'")
    raise_errno(err, f"set attach target of '{prog.name}' to {func!r}")


# -- load ----------------------------------------------------------------------------------------------

_LOG_EXPLANATIONS: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"Cannot replace static functions|is not a global function"),
     "only global functions can be replaced; the target function is static",
     "make the target function global (drop 'static', keep __noinline) and reload the target"),
    (re.compile(r"args while|doesn't match|arg\d+ in .* (is|has)|Return type .* of"),
     "the replacement's signature does not match the target function's",
     "declare the replacement exactly like the target function (arguments, sizes, context struct, return type)"),
    (re.compile(r"Cannot extend fentry/fexit"),
     "an fentry/fexit program cannot be extended",
     "extend the program that the fentry/fexit program traces instead"),
    (re.compile(r"Cannot recursively attach"),
     "a program of this type cannot attach to another program of the same type (an extension of an extension, "
     "or fentry/fexit on fentry/fexit on this kernel)",
     "attach to the original program instead"),
    (re.compile(r"is not modifiable"),
     "fmod_ret may modify only functions on the kernel's error-injection list (ALLOW_ERROR_INJECTION, which needs "
     "CONFIG_FUNCTION_ERROR_INJECTION=y), security_* LSM hooks, and kfuncs registered as modifiable",
     "use fexit to observe the return value instead, or a kernel built with CONFIG_FUNCTION_ERROR_INJECTION=y"),
    (re.compile(r"Can attach to only JITed progs|should be JITed"),
     "trampolines and extensions need JIT-compiled programs",
     "enable the JIT: sysctl net.core.bpf_jit_enable=1"),
    (re.compile(r"can't modify return codes of BPF programs"),
     "fmod_ret can only target kernel functions, not BPF programs",
     "use fexit to observe a BPF program's return value"),
]

_NO_KERNEL_BTF_ID = re.compile(r"failed to find kernel BTF type ID of '([^']+)'")
_NO_TARGET = re.compile(r"attach program FD is not set|no BTF-based attach target is specified")


def _kconfig_value(name: str) -> str | None:
    """A kernel config value from the config the kernel or the VM harness
    exposes (None when no config is readable)."""
    import gzip

    release = os.uname().release
    for path in (os.environ.get("PYBPF_KCONFIG"), f"/boot/config-{release}", "/proc/config.gz"):
        if not path or not os.path.exists(path):
            continue
        try:
            opener: Callable[..., Any] = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                text = f.read()
        except OSError:
            continue
        m = re.search(rf"^{name}=(.*)$", text, re.M)
        if m:
            return m.group(1)
        if re.search(rf"^# {name} is not set", text, re.M):
            return "n"
    return None


def explain_load_error(prog: "Program", err: int, log: str, libbpf_text: str) -> None:
    """Raise a clearer error for a failed load of a tracing/extension program
    (or return to let the generic error through)."""
    ptype = prog.type
    if ptype not in (ProgType.TRACING, ProgType.EXT, ProgType.LSM):
        return
    m = _NO_KERNEL_BTF_ID.search(libbpf_text)
    if m:
        _no_kernel_func(prog, m.group(1), _errno.ESRCH)
    if _NO_TARGET.search(libbpf_text):
        kind = "extension" if ptype == ProgType.EXT else "tracing program"
        raise StateError(f"load of {kind} '{prog.name}': no attach target was set",
                         hint="call set_attach_target(target, 'function') before load() (a Program, a program id "
                         "or a pinned path as target; None for a kernel function)")
    target = _TARGETS.get(prog)
    where = f" (target: {target})" if target else ""
    if (ptype == ProgType.EXT and target is not None and target.prog_type == ProgType.TRACING
            and re.search(r"Cannot replace static functions|Cannot extend fentry/fexit", log)):
        # 6.1 says "static" here: a tracing program's function takes a raw context that the
        # verifier cannot check on its own
        exc = VerifierError(err, prog.name, log, hint="extend the program that the tracing program traces "
                            "instead; fentry/fexit may in turn trace an extension")
        exc.strerror = (f"load of '{prog.name}'{where}: the target is a tracing program, and an fentry/fexit "
                        f"program cannot be extended\n{exc.strerror}")
        raise exc
    for pattern, why, hint in _LOG_EXPLANATIONS:
        if log and pattern.search(log):
            if "modifiable" in why:
                cfg = _kconfig_value("CONFIG_FUNCTION_ERROR_INJECTION")
                if cfg is not None and cfg != "y":
                    why += "; this kernel is built without CONFIG_FUNCTION_ERROR_INJECTION"
            exc = VerifierError(err, prog.name, log, hint=hint)
            exc.strerror = f"load of '{prog.name}'{where}: {why}\n{exc.strerror}"
            raise exc
    if err == _errno.EPERM and not log:
        from pybpf import probes

        r = probes.probe("trampoline")
        if not r and r.refused_by_policy:
            raise BPFPermissionError(err, f"load of {_type_name(ptype).lower()} program '{prog.name}'{where}: the "
                                     f"kernel refused it with EPERM and no verifier log ({r.reason})",
                                     op="load", hint=_GUEST_HINT)


# -- attach --------------------------------------------------------------------------------------------

def _explain_busy(prog: "Program", target: Target | None, err: BPFError) -> NoReturn:
    """Turn EBUSY from attaching a trampoline program into an error naming
    what already occupies the function."""
    from pybpf.features.ext import attachments

    own_kind = "freplace" if prog.type == ProgType.EXT else "fentry/fexit"
    if target is None or not target.func:
        raise err
    try:
        own_id = prog.info().id
    except BPFError:
        own_id = -1
    others = [a for a in attachments(target.prog_id, target.btf_id) if a.prog_id != own_id]
    if own_kind == "freplace":
        conflicts = others
        rule = ("a function can be replaced by one extension, and not while fentry/fexit programs trace it")
    else:
        conflicts = [a for a in others if a.kind == "freplace"]
        rule = "fentry/fexit cannot attach to a function that an extension replaces"
    if not conflicts:
        raise err
    names = "; ".join(f"{a.kind} program '{a.prog_name}' (id {a.prog_id}, link id {a.link_id})" for a in conflicts)
    exc = error_for(_errno.EBUSY, f"attach {own_kind} program '{prog.name}' to {target}: the function is busy: "
                    f"{names} is attached to it; {rule}", op="link_create", cls=BPFBusyError,
                    hint="detach the conflicting link first (Link.detach(), or pybpf.Link.from_id(ID).detach())")
    raise exc from None


#: Programs attached at least once through their load-time target.
_ATTACHED: "weakref.WeakKeyDictionary[Program, bool]" = weakref.WeakKeyDictionary()


def _attach(prog: "Program", make: Callable[[], Link], target: Target | None, *, explicit: bool = False) -> Link:
    try:
        link = make()
    except BPFBusyError as e:
        _explain_busy(prog, target, e)
    except BPFPermissionError as e:
        if prog.type in (ProgType.TRACING, ProgType.EXT, ProgType.LSM):
            e.hint = _GUEST_HINT
        raise
    except BPFInvalidError as e:
        if not explicit and _ATTACHED.get(prog) and target is not None:
            if prog.type == ProgType.EXT:
                raise BPFInvalidError(e.errno, f"attach extension '{prog.name}' again to {target}: after its "
                                      "first link is released, an extension no longer has a default target",
                                      hint=f"name the target: attach_freplace({target.prog_id}, "
                                      f"{target.func!r})") from None
            raise BPFInvalidError(e.errno, f"attach '{prog.name}' again to {target}: this kernel lets a tracing "
                                  "program loaded for a BPF program target attach once; after its link is "
                                  "released it cannot attach again", op="attach",
                                  hint="load the tracing program again (open/set_attach_target/load) for a new "
                                  "attachment, or keep the first link") from None
        raise
    if not explicit:
        _ATTACHED[prog] = True
    return link


def attach_auto(prog: "Program") -> Link:
    """Attach as the section says (and the target set at open time)."""
    if prog.type in (ProgType.TRACING, ProgType.EXT, ProgType.LSM):
        return _attach(prog, lambda: libbpf_link(lib.bpf_program__attach(prog._ptr),
                                                 f"attach '{prog.name}' ({prog.section})", prog), _TARGETS.get(prog))
    return libbpf_link(lib.bpf_program__attach(prog._ptr), f"attach '{prog.name}' ({prog.section})", prog)


def attach_trace(prog: "Program") -> Link:
    """Attach a tracing program (fentry/fexit/fmod_ret/tp_btf/iter) or an
    extension to the target chosen at open time."""
    prog._loaded_fd("attach")
    if prog._ptr is None:
        raise StateError("attach_trace() needs a program of an Object")
    return _attach(prog, lambda: libbpf_link(lib.bpf_program__attach_trace(prog._ptr),
                                             f"attach tracing program '{prog.name}'", prog), _TARGETS.get(prog))


def attach_freplace(prog: "Program", target: Any, func: str) -> Link:
    """Attach a loaded extension to ``func`` of ``target`` (a Program, program
    id or pinned path), which may differ from its load-time target."""
    from pybpf.core.program import ProgramInfo, target_fd

    prog._loaded_fd("attach")
    if prog._ptr is None:
        raise StateError("attach_freplace() needs a program of an Object")
    if prog.type != ProgType.EXT:
        raise BPFInvalidError(_errno.EINVAL, f"attach_freplace of '{prog.name}': only extensions (SEC(\"freplace\"), "
                              f"BPF_PROG_TYPE_EXT) replace functions; this is a {_type_name(prog.type)} program",
                              hint="for fentry/fexit on a BPF program use set_attach_target() then attach()")
    keep: list[Any] = []
    fd = target_fd(target, keep=keep)
    try:
        info = ProgramInfo.from_fd(fd)
        tgt = Target(info.id, info.name, func, 0, int(info.type))
        if info.btf_id:
            from pybpf.core.btf import Btf, Kind

            btf = Btf.from_kernel_id(info.btf_id)
            try:
                t = btf.get(func, Kind.FUNC)
                if t is None:
                    raise BPFNotFoundError(_errno.ESRCH, f"attach extension '{prog.name}' to {func}() of program "
                                           f"'{info.name}' (id {info.id}): it has no such function (its global "
                                           f"functions: {', '.join(_global_funcs(btf)) or 'none'})")
                if t.linkage != 1:
                    raise BPFInvalidError(_errno.EINVAL, f"attach extension '{prog.name}' to {func}() of program "
                                          f"'{info.name}' (id {info.id}): {func}() is a static function; only "
                                          "global functions can be replaced")
                tgt = Target(info.id, info.name, func, t.id, int(info.type))
            finally:
                btf.close()
        else:
            raise BPFInvalidError(_errno.EINVAL, f"attach extension '{prog.name}' to program '{info.name}' (id "
                                  f"{info.id}): the target has no BTF", hint="load the target with BTF (-g)")
        return _attach(prog, lambda: libbpf_link(lib.bpf_program__attach_freplace(prog._ptr, fd, func.encode()),
                                                 f"attach extension '{prog.name}' to {tgt}", (prog, target)), tgt,
                       explicit=True)
    finally:
        for k in keep:
            k.close()


def attach_target_of(prog: "Program") -> Target | None:
    """The BPF program function ``prog`` was pointed at with
    set_attach_target (None for kernel functions or when unset)."""
    return _TARGETS.get(prog)
