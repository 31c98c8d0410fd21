"""Shared pieces of the CLI: options, output, errors, object specs."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from pybpf import raw
from pybpf.errors import BPFError, BPFNotFoundError, VerifierError


class CLIError(Exception):
    """A usage or input error: printed as one line, exit status 1 (2 for usage)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class NotAvailable(CLIError):
    """A subcommand whose feature module is not part of this build."""


@dataclass
class Ctx:
    """Global options and output of one CLI run."""

    json: bool = False
    pretty: bool = False
    verbose: bool = False
    debug: bool = False
    bpffs: bool = False
    out: Any = field(default_factory=lambda: sys.stdout)
    err: Any = field(default_factory=lambda: sys.stderr)

    def emit(self, obj: Any) -> None:
        """Print ``obj`` as JSON (pretty with -p)."""
        if self.pretty:
            text = json.dumps(obj, indent=4, ensure_ascii=False)
        else:
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        print(text, file=self.out)

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """A plain aligned table (no borders)."""
        data = [[("" if c is None else str(c)) for c in r] for r in rows]
        widths = [len(h) for h in headers]
        for r in data:
            for i, c in enumerate(r):
                widths[i] = max(widths[i], len(c))
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        self.say(fmt.format(*headers).rstrip())
        for r in data:
            self.say(fmt.format(*r).rstrip())


def verifier_error_line(log: str) -> tuple[str, str]:
    """The verifier's error line (the last line of the instruction trace,
    before ``processed ...``; newer kernels follow it with a blank line and
    an explanation) and the explanation's suggestion, if any."""
    trace: list[str] = []
    lines = log.splitlines()
    for ln in lines:
        if not ln.strip():
            if trace:
                break
            continue
        if ln.startswith(("processed ", "verification time", "Verification failed")):
            break
        trace.append(ln.strip())
    suggestion = ""
    for i, ln in enumerate(lines):
        if ln.strip() == "Suggestion:" and i + 1 < len(lines):
            suggestion = lines[i + 1].strip()
            break
    return (trace[-1] if trace else ""), suggestion


def one_line(e: BaseException) -> str:
    """An exception as one readable line (hint included)."""
    if isinstance(e, VerifierError):
        err_line, suggestion = verifier_error_line(e.log)
        msg = f"program '{e.program}' refused by the verifier"
        if err_line:
            msg += f": {err_line}"
        if suggestion:
            msg += f" (the verifier suggests: {suggestion})"
        msg += " (--verbose shows the whole verifier log)"
        if e.hint:
            msg += f"; hint: {e.hint}"
        return msg
    if isinstance(e, BPFError):
        text = (e.strerror or str(e)).replace("\n", " | ").strip()
        if e.errno:
            import errno as _errno
            text += f" [{_errno.errorcode.get(e.errno, e.errno)}]"
        if e.hint:
            text += f"; hint: {e.hint}"
        return text
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename + ': ' if e.filename else ''}{e.strerror}"
    text = str(e).replace("\n", " | ").strip()
    return text or type(e).__name__


class Args:
    """bpftool-style argument words: ``next()``, ``keyword()``..."""

    def __init__(self, words: Sequence[str], usage: str = ""):
        self.w = list(words)
        self.usage = usage

    def __bool__(self) -> bool:
        return bool(self.w)

    def peek(self) -> str | None:
        return self.w[0] if self.w else None

    def next(self, what: str) -> str:
        if not self.w:
            raise CLIError(f"expected {what}" + (f"; usage: {self.usage}" if self.usage else ""), 2)
        return self.w.pop(0)

    def id(self, what: str) -> int:
        """The next word as a kernel object id (a u32)."""
        return number(self.next(what), what, 0, U32_MAX)

    def int(self, what: str, lo: int | None = None, hi: int | None = None) -> int:
        """The next word as a number (0x.. and 0o.. too), within [lo, hi]."""
        return number(self.next(what), what, lo, hi)

    def done(self) -> None:
        if self.w:
            raise CLIError(f"unexpected argument '{self.w[0]}'" + (f"; usage: {self.usage}" if self.usage else ""),
                           2)


U32_MAX = 0xFFFFFFFF


def number(v: str, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """``v`` as an int within [lo, hi], or a usage error that says why."""
    try:
        n = int(v, 0)
    except ValueError:
        raise CLIError(f"{what} must be a number; got '{v}'", 2) from None
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise CLIError(f"{what} must be between {lo if lo is not None else '-inf'} and "
                       f"{hi if hi is not None else 'inf'}; got {v}", 2)
    return n


def match(word: str, choices: Sequence[str], what: str) -> str:
    """``word`` or the one choice it is a prefix of (bpftool accepts prefixes)."""
    if word in choices:
        return word
    hits = [c for c in choices if c.startswith(word)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise CLIError(f"ambiguous {what} '{word}' (could be: {', '.join(hits)})", 2)
    raise CLIError(f"unknown {what} '{word}' (known: {', '.join(choices)})", 2)


# -- object specs: PROG, MAP, LINK -------------------------------------------------------------------

def _kind_of_info(kind: str) -> Callable[[int], Any]:
    return {"prog": raw.prog_info, "map": raw.map_info, "link": raw.link_info, "btf": raw.btf_info}[kind]


def _open_pinned(kind: str, path: str) -> raw.FD:
    if not os.path.exists(path):
        raise BPFNotFoundError(2, f"no pinned {kind} at {path}",
                               hint="pins live in a mounted bpffs, e.g. /sys/fs/bpf/NAME")
    fd = raw.obj_get(path, f"pinned {kind}")
    # OBJ_GET_INFO_BY_FD answers for any BPF fd (a map's info into a prog_info buffer): ask the fd what it is
    what = raw.fd_kind(fd.raw)
    if what != kind:
        fd.close()
        raise CLIError(f"{path} is not a pinned {kind}" + (f" (a {what})" if what else ""))
    return fd


def open_by_id(kind: str, obj_id: int) -> raw.FD:
    try:
        return raw.fd_by_id(kind, obj_id)
    except BPFNotFoundError:
        raise BPFNotFoundError(2, f"no {kind} with id {obj_id}",
                               hint=f"`pybpf {kind} list` shows the {kind}s loaded now") from None


def _by_name(kind: str, pred: Callable[[Any], bool], what: str) -> list[raw.FD]:
    out: list[raw.FD] = []
    for oid in raw.ids(kind):
        try:
            fd = raw.fd_by_id(kind, oid)
        except BPFError:
            continue  # went away meanwhile
        try:
            keep = pred(fd.raw)
        except BPFError:
            keep = False
        if keep:
            out.append(fd)
        else:
            fd.close()
    if not out:
        raise BPFNotFoundError(2, f"no {kind} {what}", hint=f"`pybpf {kind} list` shows the {kind}s loaded now")
    return out


def open_specs(kind: str, args: Args, *, single: bool = False) -> list[raw.FD]:
    """Parse ``id ID | pinned PATH | name NAME | tag TAG`` (or a bare id or
    path) and open the matching objects. ``single``: exactly one."""
    word = args.next(f"{kind.upper()} (id ID | pinned PATH" + (" | name NAME | tag TAG)" if kind in ("prog", "map")
                                                                  else ")"))
    fds: list[raw.FD]
    if word == "id":
        fds = [open_by_id(kind, args.id(f"{kind} id"))]
    elif word == "pinned":
        fds = [_open_pinned(kind, args.next("a pinned path"))]
    elif word == "name" and kind in ("prog", "map"):
        from pybpf._binding import ffi

        name = args.next("a name")
        info = _kind_of_info(kind)

        def same(fd: int) -> bool:
            got = ffi.string(info(fd).name).decode("utf-8", "replace")
            if got == name:
                return True
            if kind == "prog" and len(got) == 15 and name.startswith(got):
                from pybpf.cli._fmt import prog_json
                return bool(prog_json(fd).get("name") == name)
            return False

        fds = _by_name(kind, same, f"named '{name}'")
    elif word == "tag" and kind == "prog":
        from pybpf._binding import ffi

        tag = args.next("a tag").replace(":", "").lower()
        fds = _by_name(kind, lambda fd: bytes(ffi.buffer(raw.prog_info(fd).tag, 8)).hex() == tag,
                       f"with tag {tag}")
    elif word.isdecimal():
        fds = [open_by_id(kind, number(word, f"{kind} id", 0, U32_MAX))]
    elif word.startswith("/") or word.startswith("."):
        fds = [_open_pinned(kind, word)]
    else:
        raise CLIError(f"expected id ID, pinned PATH{', name NAME' if kind in ('prog', 'map') else ''}"
                       f" to name a {kind}; got '{word}'", 2)
    if single and len(fds) > 1:
        for fd in fds:
            fd.close()
        raise CLIError(f"more than one {kind} matches; name it by id", 2)
    return fds


def close_all(fds: Iterable[raw.FD]) -> None:
    for fd in fds:
        fd.close()
