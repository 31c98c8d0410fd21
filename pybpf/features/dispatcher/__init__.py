"""Multi-program dispatchers: several programs chained on one hook.

:class:`XdpDispatcher` implements libxdp's dispatcher protocol, version 2
(xdp-tools ``lib/libxdp/protocol.org``), natively: a dispatcher XDP program
with ten global stub functions (``prog0``..``prog9``) that the component
programs replace (freplace, ``BPF_PROG_TYPE_EXT``); a ``.rodata``
configuration (``struct xdp_dispatcher_config``: magic 236, version 2, the
number of slots in use, per-slot chain-call actions, run priorities and
program flags); components ordered as libxdp orders them (run priority, then
name, then loaded-before-new, size, tag, load time); the state pinned in
``/sys/fs/bpf/xdp/dispatch-IFINDEX-DISPATCHERID/progN-{prog,link}`` under an
``flock`` on ``/sys/fs/bpf/xdp``; every change builds a new dispatcher and
swaps it in over netlink with ``XDP_FLAGS_REPLACE`` (retrying when someone
else changed the interface meanwhile).  So ``xdp-loader status`` lists what
pybpf attached, and pybpf lists and removes what ``xdp-loader`` attached.

A component's priority and chain-call actions come from its object's
``.xdp_run_config`` BTF metadata (libxdp's ``XDP_RUN_CONFIG`` macro) unless
given by the caller; the defaults are priority 50 and ``XDP_PASS``.

Beyond libxdp:

* :class:`TcDispatcher`: the same mechanism for tc (``sched_cls``)
  programs, attached as a direct-action ``clsact`` filter;
* per-component statistics (:meth:`XdpDispatcher.stats`): how often each
  component ran and what it returned, counted by an ``fexit`` program per
  component (freplace'd programs bypass the kernel's own run statistics,
  which libxdp therefore credits to the dispatcher);
* a :class:`~pybpf.errors.NotSupportedError` naming the kernel requirement
  when freplace is unavailable (kernels before 5.10, or kernels that refuse
  extension programs by policy, like the 6.18 host of this project).
"""
from __future__ import annotations

import errno as _errno
import fcntl
import os
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from pybpf import netns as _netns
from pybpf import raw
from pybpf._binding import ffi, lib
from pybpf.core.btf import Btf, Kind
from pybpf.errors import (BPFBusyError, BPFError, BPFInvalidError, BPFNotFoundError, NotSupportedError,
                          StateError, error_for)
from pybpf.raw import ProgType

__all__ = ["XdpDispatcher", "TcDispatcher", "Component", "ComponentStats", "read_run_config", "RunConfig",
           "XDP_ACTIONS", "TC_ACTIONS", "SOURCE_DIR", "require_freplace"]

SOURCE_DIR = Path(__file__).resolve().parent

MAGIC = 236
VERSION = 2
SLOTS = 10
DEFAULT_PRIORITY = 50
BPF_F_XDP_HAS_FRAGS = 1 << 5
BPF_F_RDONLY_PROG = 1 << 7
MAX_RETRIES = 10

XDP_ACTIONS = {"XDP_ABORTED": 0, "XDP_DROP": 1, "XDP_PASS": 2, "XDP_TX": 3, "XDP_REDIRECT": 4}
TC_ACTIONS = {"TC_ACT_UNSPEC": -1, "TC_ACT_OK": 0, "TC_ACT_RECLASSIFY": 1, "TC_ACT_SHOT": 2, "TC_ACT_PIPE": 3,
              "TC_ACT_STOLEN": 4, "TC_ACT_QUEUED": 5, "TC_ACT_REPEAT": 6, "TC_ACT_REDIRECT": 7, "TC_ACT_TRAP": 8}

# struct xdp_dispatcher_config (v2): u8 magic, version, num_progs_enabled, is_xdp_frags;
# u32 chain_call_actions[10], run_prios[10], program_flags[10]
_CONFIG = struct.Struct("<4B10I10I10I")
# v1: u8 num_progs_enabled (padded to 4); u32 chain_call_actions[10], run_prios[10]
_CONFIG_V1 = struct.Struct("<B3x10I10I")


# -- feature check ---------------------------------------------------------------------------------

def require_freplace() -> None:
    """Raise :class:`NotSupportedError` unless the running kernel loads
    program extensions (freplace), which dispatchers are built on."""
    from pybpf.probes import kernel_version, probe
    r = probe("freplace")
    release = os.uname().release
    if not r:
        why = r.reason
        raise NotSupportedError(_errno.EOPNOTSUPP,
                                f"multi-program dispatchers need freplace (BPF_PROG_TYPE_EXT program extensions) and "
                                f"this kernel ({release}) does not load them: {why}",
                                hint="needs Linux 5.10+ (freplace re-attachment to a new dispatcher) with extension "
                                     "programs allowed (no lockdown/LSM refusing EXT loads); run in a VM guest "
                                     "(python3 -m pybpf.vm run --kernel 6.1 -- ...), or attach a single program "
                                     "with pybpf.features.xdp.attach()")
    if kernel_version()[:2] < (5, 10):
        raise NotSupportedError(_errno.EOPNOTSUPP, f"multi-program dispatchers need Linux 5.10+ to re-attach "
                                f"freplace programs to a new dispatcher; this is {release}",
                                hint="upgrade the kernel, or attach a single program")


# -- run config metadata (.xdp_run_config) -------------------------------------------------------

@dataclass(frozen=True)
class RunConfig:
    """A component's run priority and chain-call actions (action values)."""

    priority: int = DEFAULT_PRIORITY
    chain_call_actions: frozenset[int] = frozenset({XDP_ACTIONS["XDP_PASS"]})


def _nelems(btf: Btf, type_id: int) -> int | None:
    t = btf[type_id].resolved()
    if t.kind != Kind.PTR:
        return None
    a = t.type.resolved()
    if a.kind != Kind.ARRAY:
        return None
    return a.array[2]


def read_run_config(btf: Btf | None, prog_name: str, actions: dict[str, int] = XDP_ACTIONS,
                    default: RunConfig | None = None) -> RunConfig | None:
    """Parse libxdp's run-config metadata for ``prog_name``: the variable
    ``_<prog_name>`` of the ``.xdp_run_config`` DATASEC, a struct whose
    ``priority`` and ``XDP_*`` members are ``__uint(name, value)`` (a pointer
    to an array of ``value`` elements).  None when there is none."""
    if btf is None:
        return None
    sec = btf.get(".xdp_run_config", Kind.DATASEC)
    if sec is None:
        return None
    for si in sec.secinfo:
        var = btf[si.type_id]
        if var.kind != Kind.VAR or var.name != f"_{prog_name}":
            continue
        st = var.type.resolved()
        if st.kind != Kind.STRUCT:
            raise BPFInvalidError(None, f".xdp_run_config of '{prog_name}' is not a struct",
                                  hint="declare it with XDP_RUN_CONFIG(func) as libxdp's xdp_helpers.h does")
        base = default or RunConfig()
        prio = base.priority
        chain: set[int] = set()
        for m in st.members:
            n = _nelems(btf, m.type_id)
            if n is None:
                raise BPFInvalidError(None, f".xdp_run_config of '{prog_name}': member '{m.name}' is not "
                                      "__uint(name, value)")
            if m.name == "priority":
                prio = n
            elif m.name in actions:
                if n:
                    chain.add(actions[m.name])
            else:
                raise BPFInvalidError(None, f".xdp_run_config of '{prog_name}': unknown member '{m.name}'",
                                      hint=f"members are 'priority' and action names ({', '.join(actions)})")
        return RunConfig(prio, frozenset(chain))
    return None


# -- the two hooks --------------------------------------------------------------------------------

class _Hook:
    """What differs between an XDP and a tc dispatcher."""

    kind = ""
    main = ""
    source = ""
    prog_type = ProgType.XDP
    actions: dict[str, int] = {}
    retval_bit = 31
    state_subdir = ""

    def bit(self, action: int) -> int:
        return 1 << action

    def actions_of(self, bitmap: int) -> frozenset[int]:
        return frozenset(v for v in self.actions.values() if bitmap & self.bit(v))


class _XdpHook(_Hook):
    kind = "xdp"
    main = "xdp_dispatcher"
    source = "xdp_dispatcher.bpf.c"
    prog_type = ProgType.XDP
    actions = XDP_ACTIONS
    state_subdir = "xdp"


class _TcHook(_Hook):
    kind = "tc"
    main = "tc_dispatcher"
    source = "tc_dispatcher.bpf.c"
    prog_type = ProgType.SCHED_CLS
    actions = TC_ACTIONS
    state_subdir = "pybpf-tc"

    def bit(self, action: int) -> int:
        return 1 << (action + 1)       # TC_ACT_UNSPEC (-1) is bit 0


# -- components -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Component:
    """A program running in a dispatcher slot.

    ``name`` is the kernel's program name (15 characters at most),
    ``chain_call_actions`` the return values after which the next component
    runs, ``frags`` whether it was loaded for XDP frags.
    """

    slot: int
    name: str
    prog_id: int
    priority: int
    chain_call_actions: frozenset[int]
    link_id: int
    frags: bool = False
    action_names: dict[int, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def chain_call_names(self) -> list[str]:
        """The chain-call actions by name (``["XDP_PASS", ...]``)."""
        return [self.action_names.get(a, str(a)) for a in sorted(self.chain_call_actions)]


@dataclass(frozen=True)
class ComponentStats:
    """What :meth:`XdpDispatcher.stats` counted for one component: runs and
    returns per action value."""

    prog_id: int
    name: str
    runs: int
    returns: dict[int, int]


class _Entry:
    """A component while a dispatcher is being built: either new (a Program
    of an opened, not yet loaded Object) or already loaded (its fd)."""

    def __init__(self, *, prog: Any = None, fd: raw.FD | None = None, name: str, priority: int,
                 chain: frozenset[int], frags: bool, owned_obj: Any = None):
        self.prog = prog                  # pybpf Program (new component)
        self.fd = fd                      # loaded component's fd (owned here)
        self.name = name
        self.priority = priority
        self.chain = chain
        self.frags = frags
        self.owned_obj = owned_obj        # an Object we opened from a path (closed after pinning)
        self.tag = b""
        self.load_time = 0
        self.insns = 0
        if fd is not None:
            info = raw.prog_info(fd.raw)
            self.tag = bytes(ffi.buffer(info.tag, 8))
            self.load_time = int(info.load_time)
        elif prog is not None and prog._ptr is not None:
            self.insns = int(lib.bpf_program__insn_cnt(prog._ptr))

    @property
    def loaded(self) -> bool:
        return self.fd is not None

    def sort_key(self) -> tuple[Any, ...]:
        # libxdp's cmp_xdp_programs(): priority, name, loaded first, size (new ones), tag, load time
        return (self.priority, self.name.encode(), 0 if self.loaded else 1, self.insns, self.tag, self.load_time)

    def close(self) -> None:
        if self.fd is not None:
            self.fd.close()
        if self.owned_obj is not None:
            self.owned_obj.close()


# -- the dispatcher -------------------------------------------------------------------------------

@dataclass
class _Current:
    """The dispatcher attached now (read from the kernel and the pins)."""

    prog_fd: raw.FD
    prog_id: int
    version: int
    config: tuple[Any, ...]
    mode: str | None
    entries: list[_Entry]
    link_ids: list[int]
    pin_dir: str
    extra: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.prog_fd.close()
        for e in self.entries:
            e.close()


class _Dispatcher:
    _hook: _Hook

    def __init__(self, iface: str | int, *, netns: str | os.PathLike[str] | None = None,
                 bpffs: str | os.PathLike[str] = "/sys/fs/bpf"):
        self.iface = iface
        self.netns = netns
        self.bpffs = os.fspath(bpffs)
        self.ifindex = _netns.ifindex(iface, netns)

    # --- state directory and lock -----------------------------------------------------------

    @property
    def state_dir(self) -> str:
        return os.path.join(self.bpffs, self._hook.state_subdir)

    def _pin_dir(self, disp_id: int) -> str:
        return os.path.join(self.state_dir, self._dir_name(disp_id))

    def _dir_name(self, disp_id: int) -> str:
        return f"dispatch-{self.ifindex}-{disp_id}"

    def _lock(self) -> int:
        if not _is_bpffs(self.bpffs):
            raise NotSupportedError(_errno.ENOENT, f"no bpffs mounted at {self.bpffs}: dispatcher state is pinned "
                                    "there", hint="mount -t bpf bpf /sys/fs/bpf; note that 'ip netns exec' remounts "
                                    "/sys and hides bpffs: use nsenter --net=/run/netns/NAME instead")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        fd = os.open(self.state_dir, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _unlock(fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # --- hook specifics (overridden) ---------------------------------------------------------

    def _attached_prog(self) -> tuple[int, str | None]:
        raise NotImplementedError

    def _swap(self, new_fd: int | None, old_fd: int | None, mode: str | None) -> None:
        """Attach new_fd in place of old_fd (None: nothing attached before /
        detach). Raise _Raced when the hook changed meanwhile."""
        raise NotImplementedError

    # --- reading the current state ------------------------------------------------------------

    def _read_current(self) -> _Current | None:
        prog_id, mode = self._attached_prog()
        if not prog_id:
            return None
        try:
            fd = raw.fd_by_id("prog", prog_id)
        except BPFNotFoundError:
            raise _Raced() from None
        try:
            return self._parse(fd, prog_id, mode)
        except BaseException:
            fd.close()
            raise

    def _parse(self, fd: raw.FD, prog_id: int, mode: str | None) -> _Current:
        where = self._where()
        info = raw.prog_info(fd.raw)
        name = ffi.string(info.name).decode()
        maps = raw.prog_map_ids(fd.raw)
        version, config = 0, None
        if name == self._hook.main and len(maps) == 1:
            with raw.fd_by_id("map", maps[0]) as mfd:
                mi = raw.map_info(mfd.raw)
                if (mi.key_size == 4 and mi.value_size >= 2 and mi.max_entries == 1 and
                        mi.map_flags & BPF_F_RDONLY_PROG):
                    buf = ffi.new("char[]", int(mi.value_size))
                    key = ffi.new("uint32_t *", 0)
                    raw.map_lookup(mfd.raw, key, buf)
                    data = bytes(ffi.buffer(buf, int(mi.value_size)))
                    if data[0] == MAGIC:
                        version = data[1]
                        if version == VERSION and len(data) == _CONFIG.size:
                            config = _CONFIG.unpack(data)
                    elif len(data) == _CONFIG_V1.size:
                        version = 1
                        c1 = _CONFIG_V1.unpack(data)
                        config = (MAGIC, 1, c1[0], 0, *c1[1:21], *([0] * SLOTS))
        if config is None or version == 0:
            holder = f"program '{name}' (id {prog_id})"
            raise BPFBusyError(_errno.EBUSY, f"{where}: {holder} is attached and is not a {self._hook.kind} "
                               "dispatcher", hint=self._legacy_hint())
        if version > VERSION:
            raise BPFBusyError(_errno.EBUSY, f"{where}: the attached dispatcher (id {prog_id}) speaks protocol "
                               f"version {version}; pybpf knows version {VERSION}",
                               hint="manage it with the newer tool that attached it (xdp-loader)")
        num = int(config[2])
        pin_dir = self._pin_dir(prog_id)
        if not os.path.isdir(pin_dir):
            raise BPFBusyError(_errno.EBUSY, f"{where}: dispatcher id {prog_id} is attached but its state is not "
                               f"pinned at {pin_dir}",
                               hint="it was set up in another mount namespace or bpffs (ip netns exec remounts "
                                    "/sys); detach it with pybpf.features.xdp.detach() and add the programs again")
        entries: list[_Entry] = []
        link_ids: list[int] = []
        try:
            for i in range(num):
                pfd = raw.obj_get(os.path.join(pin_dir, f"prog{i}-prog"), "pinned component program")
                with raw.obj_get(os.path.join(pin_dir, f"prog{i}-link"), "pinned component link") as lfd:
                    link_ids.append(int(raw.link_info(lfd.raw).id))
                pname = ffi.string(raw.prog_info(pfd.raw).name).decode()
                chain_bits = int(config[4 + i]) & ~(1 << self._hook.retval_bit)
                entries.append(_Entry(fd=pfd, name=pname, priority=int(config[14 + i]),
                                      chain=self._hook.actions_of(chain_bits),
                                      frags=bool(int(config[24 + i]) & BPF_F_XDP_HAS_FRAGS)))
        except BaseException:
            for e in entries:
                e.close()
            raise
        return _Current(fd, prog_id, version, config, mode, entries, link_ids, pin_dir)

    def _legacy_hint(self) -> str:
        return "detach it first (pybpf.features.xdp.detach()), then add it and the others as components"

    def _where(self) -> str:
        return (f"{self._hook.kind} hook of {self.iface}" +
                (f" in network namespace {os.fspath(self.netns)}" if self.netns is not None else ""))

    # --- public reading ----------------------------------------------------------------------

    @property
    def dispatcher_id(self) -> int | None:
        """The program id of the attached dispatcher (None if none)."""
        lock = self._lock()
        try:
            cur = self._read_current()
            if cur is None:
                return None
            cur.close()
            return cur.prog_id
        finally:
            self._unlock(lock)

    def components(self) -> list[Component]:
        """The components in run order (empty if no dispatcher is attached)."""
        lock = self._lock()
        try:
            cur = self._read_current()
            if cur is None:
                return []
            try:
                return [Component(slot=i, name=e.name, prog_id=int(raw.prog_info(e.fd.raw).id),  # type: ignore
                                  priority=e.priority, chain_call_actions=e.chain, link_id=cur.link_ids[i],
                                  frags=e.frags, action_names={v: k for k, v in self._hook.actions.items()})
                        for i, e in enumerate(cur.entries)]
            finally:
                cur.close()
        finally:
            self._unlock(lock)

    def __iter__(self) -> Iterator[Component]:
        return iter(self.components())

    def __len__(self) -> int:
        return len(self.components())

    # --- changing ----------------------------------------------------------------------------

    def _new_entry(self, prog: Any, priority: int | None, chain_call_actions: Iterable[int | str] | None,
                   name: str | None) -> _Entry:
        from pybpf.core.object import Object
        from pybpf.core.program import Program

        owned = None
        if isinstance(prog, (str, os.PathLike)) and not _looks_pinned(prog):
            owned = Object.open(prog)
            progs = [p for p in owned.programs.values() if name is None or p.name == name]
            if not progs:
                owned.close()
                raise BPFInvalidError(None, f"{os.fspath(prog)} has no program named {name!r}")
            prog = progs[0]
        if isinstance(prog, Program):
            if prog._ptr is not None and (prog._obj is None or not prog._obj.loaded):
                return self._entry_from_open(prog, priority, chain_call_actions, owned)
            if owned is not None:
                owned.close()
            fd = prog.fd
            if fd < 0:
                raise StateError(f"program '{prog.name}' was not loaded with its object", hint="set_autoload(True)")
            dup = raw.FD(os.dup(fd), f"program '{prog.name}'")
        elif isinstance(prog, int):
            dup = raw.fd_by_id("prog", prog)
        elif isinstance(prog, (str, os.PathLike)):
            dup = raw.obj_get(os.fspath(prog), "pinned program")
        else:
            raise BPFInvalidError(None, f"cannot add {prog!r} to a dispatcher",
                                  hint="pass a Program of an opened (not yet loaded) Object, a path to a BPF "
                                       "object file, or a loaded extension program (id, pin)")
        try:
            info = raw.prog_info(dup.raw)
            if int(info.type) != ProgType.EXT:
                pname = ffi.string(info.name).decode()
                raise StateError(f"program '{pname}' (id {int(info.id)}) is already loaded as "
                                 f"{ProgType(int(info.type)).name}; a component must be loaded as an extension of "
                                 "the dispatcher", hint="add the Program before its Object is loaded (pybpf loads "
                                 "it as freplace), or pass the object file's path")
            pname = ffi.string(info.name).decode()
            rc = RunConfig(*(self._from_btf(int(info.btf_id), pname)))
            e = _Entry(fd=dup, name=pname, priority=rc.priority if priority is None else int(priority),
                       chain=rc.chain_call_actions if chain_call_actions is None else
                       self._chain(chain_call_actions), frags=False)
            return e
        except BaseException:
            dup.close()
            raise

    def _from_btf(self, btf_id: int, name: str) -> tuple[int, frozenset[int]]:
        default = self._default_config()
        if not btf_id:
            return default.priority, default.chain_call_actions
        with Btf.from_kernel_id(btf_id) as btf:
            rc = read_run_config(btf, name, self._hook.actions, default) or default
        return rc.priority, rc.chain_call_actions

    def _default_config(self) -> RunConfig:
        return RunConfig()

    def _chain(self, actions: Iterable[int | str]) -> frozenset[int]:
        out = set()
        if isinstance(actions, (str, int)):
            actions = [actions]
        for a in actions:
            if isinstance(a, str):
                key = a.upper()
                if key not in self._hook.actions:
                    raise BPFInvalidError(None, f"unknown {self._hook.kind} action {a!r}",
                                          hint=f"one of {', '.join(self._hook.actions)}")
                out.add(self._hook.actions[key])
            else:
                if int(a) not in self._hook.actions.values():
                    raise BPFInvalidError(None, f"unknown {self._hook.kind} action value {a!r}",
                                          hint=f"one of {self._hook.actions}")
                out.add(int(a))
        return frozenset(out)

    def _entry_from_open(self, prog: Any, priority: int | None, chain: Iterable[int | str] | None,
                         owned: Any) -> _Entry:
        rc = read_run_config(prog.owner.btf if prog.owner is not None else None, prog.name, self._hook.actions,
                             self._default_config()) or self._default_config()
        flags = int(lib.bpf_program__flags(prog._ptr))
        return _Entry(prog=prog, name=prog.name,
                      priority=rc.priority if priority is None else int(priority),
                      chain=rc.chain_call_actions if chain is None else self._chain(chain),
                      frags=bool(flags & BPF_F_XDP_HAS_FRAGS), owned_obj=owned)

    def add(self, prog: Any, *, priority: int | None = None,
            chain_call_actions: Iterable[int | str] | None = None, name: str | None = None) -> Component:
        """Add one component (see :meth:`add_many`) and return it."""
        return self.add_many([(prog, priority, chain_call_actions, name)])[0]

    def add_many(self, items: Sequence[Any]) -> list[Component]:
        """Add components in one atomic change.

        Each item is a program, or a tuple ``(program, priority,
        chain_call_actions[, name])`` (None for "from its metadata").  A
        program is a :class:`~pybpf.Program` of an opened, not yet loaded
        :class:`~pybpf.Object` (pybpf loads it as an extension of the new
        dispatcher; the Object stays yours), a path to a BPF object file
        (``name`` picks the program), or an already loaded extension program
        (id or pinned path).  Returns the added components.
        """
        require_freplace()
        if not items:
            raise BPFInvalidError(None, "add_many() needs at least one program")
        entries: list[_Entry] = []
        try:
            for it in items:
                if isinstance(it, tuple):
                    prog, prio, chain, *rest = (*it, None, None, None)[:4]  # type: ignore[misc]
                    nm = rest[0] if rest else None
                else:
                    prog, prio, chain, nm = it, None, None, None
                entries.append(self._new_entry(prog, prio, chain, nm))
            added = self._change(add=entries)
        finally:
            for e in entries:
                if e.fd is not None:
                    e.fd.close()
                if e.owned_obj is not None:
                    e.owned_obj.close()
        comps = self.components()
        return [c for c in comps if c.prog_id in added]

    def remove(self, *which: Any) -> None:
        """Remove components, named by :class:`Component`, program id, program
        name or :class:`~pybpf.Program`. Removing the last one detaches the
        dispatcher."""
        require_freplace()
        if not which:
            raise BPFInvalidError(None, "remove() needs the components to remove")
        self._change(remove=list(which))

    def remove_all(self) -> None:
        """Detach the dispatcher and every component (like ``xdp-loader unload --all``)."""
        lock = self._lock()
        try:
            for _ in range(MAX_RETRIES):
                try:
                    cur = self._read_current()
                except _Raced:
                    continue
                if cur is None:
                    return
                try:
                    self._swap(None, cur.prog_fd.raw, cur.mode)
                except _Raced:
                    cur.close()
                    continue
                self._unpin(cur.pin_dir, len(cur.entries))
                cur.close()
                self._after_change(set())
                return
            raise BPFBusyError(_errno.EBUSY, f"{self._where()}: changed concurrently {MAX_RETRIES} times")
        finally:
            self._unlock(lock)

    def _match(self, cur: _Current, which: Any) -> int:
        from pybpf.core.program import Program
        ids = [int(raw.prog_info(e.fd.raw).id) for e in cur.entries]  # type: ignore[union-attr]
        if isinstance(which, Component):
            key: Any = which.prog_id
        elif isinstance(which, Program):
            key = which.id
        else:
            key = which
        for i, (pid, e) in enumerate(zip(ids, cur.entries)):
            if key == pid or (isinstance(key, str) and key[:15] == e.name[:15]):
                return i
        raise BPFNotFoundError(_errno.ENOENT, f"{self._where()}: no component {which!r} in the dispatcher "
                               f"(it has: {', '.join(f'{e.name} (id {p})' for e, p in zip(cur.entries, ids))})")

    def _change(self, *, add: list[_Entry] | None = None, remove: list[Any] | None = None) -> set[int]:
        """Build a new dispatcher with the components of the current one plus
        ``add`` minus ``remove``, pin it, swap it in; retry on races."""
        lock = self._lock()
        try:
            delay = 0.001
            for attempt in range(MAX_RETRIES + 1):
                try:
                    return self._change_once(add or [], remove or [])
                except _Raced:
                    if attempt == MAX_RETRIES:
                        raise BPFBusyError(_errno.EBUSY, f"{self._where()}: the attached program changed while "
                                           f"pybpf built a new dispatcher, {MAX_RETRIES} times in a row",
                                           hint="another tool is changing this interface; retry later") from None
                    time.sleep(delay)
                    delay *= 2
            raise AssertionError("unreachable")
        finally:
            self._unlock(lock)

    def _clean_stale(self, current_id: int) -> None:
        """Remove pinned state of this interface's dispatchers that are not
        attached any more (a process killed between pinning a new dispatcher
        and swapping it in leaves one; libxdp_clean_references() does the
        same). A directory is kept if its dispatcher runs on an interface
        with this ifindex in any known network namespace (ifindexes repeat
        across namespaces)."""
        prefix = f"dispatch-{self.ifindex}-"
        try:
            names = [n for n in os.listdir(self.state_dir) if n.startswith(prefix)]
        except FileNotFoundError:
            return
        stale = []
        for n in names:
            try:
                did = int(n[len(prefix):])
            except ValueError:
                continue
            if did != current_id:
                stale.append((n, did))
        if not stale:
            return
        live = self._attached_elsewhere()
        for n, did in stale:
            if did not in live:
                self._unpin(os.path.join(self.state_dir, n), SLOTS)

    def _attached_elsewhere(self) -> set[int]:
        """Program ids on this hook's ifindex in every namespace we can see."""
        spaces: list[str | None] = ["/proc/1/ns/net"]
        try:
            spaces += [os.path.join(_netns.NETNS_RUN_DIR, n) for n in os.listdir(_netns.NETNS_RUN_DIR)]
        except FileNotFoundError:
            pass
        out: set[int] = set()
        saved = self.netns
        try:
            for ns in spaces:
                self.netns = ns
                try:
                    pid, _ = self._attached_prog()
                except (BPFError, OSError):
                    continue
                if pid:
                    out.add(pid)
        finally:
            self.netns = saved
        return out

    def _change_once(self, add: list[_Entry], remove: list[Any]) -> set[int]:
        cur = self._read_current()
        self._clean_stale(cur.prog_id if cur is not None else 0)
        try:
            old_entries = list(cur.entries) if cur is not None else []
            if remove:
                if cur is None:
                    raise BPFNotFoundError(_errno.ENOENT, f"{self._where()}: no dispatcher is attached")
                drop = {self._match(cur, w) for w in remove}
                old_entries = [e for i, e in enumerate(old_entries) if i not in drop]
            if cur is not None and cur.version < VERSION:
                raise BPFBusyError(_errno.EBUSY, f"{self._where()}: the attached dispatcher speaks protocol version "
                                   f"{cur.version}; pybpf will not replace it by version {VERSION}",
                                   hint="unload it first (xdp-loader unload --all)")
            entries = sorted(old_entries + add, key=_Entry.sort_key)
            if len(entries) > SLOTS:
                raise BPFInvalidError(_errno.E2BIG, f"{self._where()}: a dispatcher has {SLOTS} slots; "
                                      f"{len(entries)} components requested")
            mode = cur.mode if cur is not None else self._mode_request()
            if not entries:
                assert cur is not None
                self._swap(None, cur.prog_fd.raw, cur.mode)
                self._unpin(cur.pin_dir, len(cur.entries))
                self._after_change(set())
                return set()
            new = self._build(entries)
            try:
                pin_dir = self._pin(new, entries)
                try:
                    self._swap(new.disp.programs[self._hook.main].fd, cur.prog_fd.raw if cur else None, mode)
                except BaseException:
                    self._unpin(pin_dir, len(entries))
                    raise
                if cur is not None:
                    self._unpin(cur.pin_dir, len(cur.entries))
                ids = [int(raw.prog_info(fd.raw).id) for fd in new.prog_fds]
                self._after_change(set(ids))
                return {pid for e, pid in zip(entries, ids) if e in add}
            finally:
                new.close()
        finally:
            if cur is not None:
                cur.close()

    def _mode_request(self) -> str | None:
        return None

    def _after_change(self, kept: set[int]) -> None:
        """Drop statistics pins of components that left."""
        from pybpf.features.dispatcher import stats as _stats
        _stats.gc(self, kept)

    # --- building ----------------------------------------------------------------------------

    def _build(self, entries: list[_Entry]) -> "_Built":
        from pybpf.compiler import compile as bpf_compile
        from pybpf.core.object import Object

        obj_path = bpf_compile(SOURCE_DIR / self._hook.source)
        disp = Object.open(obj_path)
        built = _Built(disp)
        try:
            frags = self._hook.kind == "xdp" and all(e.frags for e in entries)
            rodata = next(m for m in disp.maps.values() if m.name.endswith(".rodata"))
            chain = [0] * SLOTS
            prios = [0] * SLOTS
            flags = [0] * SLOTS
            for i, e in enumerate(entries):
                bits = 0
                for a in e.chain:
                    bits |= self._hook.bit(a)
                chain[i] = bits | (1 << self._hook.retval_bit)
                prios[i] = e.priority & 0xFFFFFFFF
                flags[i] = BPF_F_XDP_HAS_FRAGS if e.frags else 0
            image = _CONFIG.pack(MAGIC, VERSION, len(entries), 1 if frags else 0, *chain, *prios, *flags)
            ret = lib.bpf_map__set_initial_value(rodata._ptr, ffi.from_buffer(image), len(image))
            if ret < 0:
                raise error_for(-ret, "set the dispatcher configuration")
            main = disp.programs[self._hook.main]
            if frags:
                main.set_flags(BPF_F_XDP_HAS_FRAGS)
            disp.load()
            dfd = main.fd
            dinfo = raw.prog_info(dfd)
            with Btf.from_kernel_id(int(dinfo.btf_id)) as kbtf:
                slot_ids = [kbtf.find(f"prog{i}", Kind.FUNC).id for i in range(len(entries))]
            for i, e in enumerate(entries):
                if e.fd is None:
                    prog = e.prog
                    prog.set_type(ProgType.EXT)
                    prog.set_expected_attach_type(0)
                    if e.frags:
                        prog.set_flags(int(lib.bpf_program__flags(prog._ptr)) & ~BPF_F_XDP_HAS_FRAGS)
                    prog.set_attach_target(main, f"prog{i}")
                    try:
                        prog.owner.load()
                    except BPFError as err:
                        raise self._explain_component_load(e, err) from err
                    # loaded now: a retry re-attaches it like any loaded component
                    e.fd = raw.FD(os.dup(prog.fd), f"component '{e.name}'")
                pfd = e.fd.dup()
                built.prog_fds.append(pfd)
                try:
                    lfd = raw.link_create(pfd.raw, dfd, 0, target_btf_id=slot_ids[i],
                                          what=f"attach component '{e.name}' to slot prog{i} of the new dispatcher")
                except BPFError as err:
                    if err.errno == _errno.EPERM:
                        raise NotSupportedError(err.errno, f"attach component '{e.name}' to the dispatcher: "
                                                f"{err.strerror}", hint="this kernel refuses freplace attachment "
                                                "(needs Linux 5.10+ without policy restrictions)") from err
                    raise
                built.link_fds.append(lfd)
        except BaseException:
            built.close()
            raise
        return built

    def _explain_component_load(self, e: _Entry, err: BPFError) -> BPFError:
        if err.errno == _errno.EPERM:
            return NotSupportedError(err.errno, f"load component '{e.name}' as an extension (freplace): "
                                     f"{err.strerror}", hint="this kernel refuses EXT programs; see require_freplace")
        err.strerror = f"load component '{e.name}' as an extension of the dispatcher: {err.strerror}"
        if not err.hint:
            err.hint = (f"a component must be a {self._hook.prog_type.name.lower()} program whose signature matches "
                        f"int prog(struct {'xdp_md' if self._hook.kind == 'xdp' else '__sk_buff'} *ctx)")
        return err

    # --- pins --------------------------------------------------------------------------------

    def _pin(self, built: "_Built", entries: list[_Entry]) -> str:
        dfd = built.disp.programs[self._hook.main].fd
        pin_dir = self._pin_dir(int(raw.prog_info(dfd).id))
        os.makedirs(pin_dir, mode=0o700, exist_ok=True)
        try:
            for i in range(len(entries)):
                raw.obj_pin(built.link_fds[i].raw, os.path.join(pin_dir, f"prog{i}-link"))
                raw.obj_pin(built.prog_fds[i].raw, os.path.join(pin_dir, f"prog{i}-prog"))
        except BaseException:
            self._unpin(pin_dir, len(entries))
            raise
        return pin_dir

    @staticmethod
    def _unpin(pin_dir: str, n: int) -> None:
        for i in range(max(n, SLOTS)):
            for suffix in ("link", "prog", "stats"):
                try:
                    os.unlink(os.path.join(pin_dir, f"prog{i}-{suffix}"))
                except FileNotFoundError:
                    pass
        try:
            os.rmdir(pin_dir)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(pin_dir, ignore_errors=True)

    # --- statistics --------------------------------------------------------------------------

    def stats(self) -> list[ComponentStats]:
        """Per-component run counts and return values, counted since
        :meth:`enable_stats` (each component's ``fexit`` counter)."""
        from pybpf.features.dispatcher import stats as _stats
        return _stats.read(self)

    def enable_stats(self) -> None:
        """Start counting runs and return values of every current component
        (an ``fexit`` program per component, pinned next to it). Components
        added later are counted if stats were enabled when they were added."""
        from pybpf.features.dispatcher import stats as _stats
        _stats.enable(self)

    def disable_stats(self) -> None:
        """Stop counting (removes the fexit programs)."""
        from pybpf.features.dispatcher import stats as _stats
        _stats.disable(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} on {self._where()}>"


class _Built:
    def __init__(self, disp: Any):
        self.disp = disp
        self.prog_fds: list[raw.FD] = []
        self.link_fds: list[raw.FD] = []

    def close(self) -> None:
        for fd in self.link_fds + self.prog_fds:
            fd.close()
        self.disp.close()


class _Raced(Exception):
    """The hook changed between reading it and swapping: start over."""


def _is_bpffs(path: str) -> bool:
    """Whether ``path`` is inside a mounted bpffs (the mount point or below)."""
    try:
        real = os.path.realpath(path)
        if not os.path.isdir(real):
            return False
        with open("/proc/self/mounts") as f:
            mounts = [ln.split()[1:3] for ln in f if len(ln.split()) > 2]
    except OSError:
        return False
    best, fstype = "", ""
    for mnt, typ in mounts:
        mnt = mnt.replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, typ
    return fstype == "bpf"


def _looks_pinned(p: Any) -> bool:
    s = os.fspath(p)
    return s.startswith("/sys/fs/bpf/") and not s.endswith(".o")


class XdpDispatcher(_Dispatcher):
    """The libxdp-compatible XDP dispatcher of one interface.

    The object holds no kernel state itself: every call reads the interface
    and the pins, like libxdp, so several processes (and ``xdp-loader``) can
    manage the same interface.  ``mode`` (``"skb"``, ``"drv"``, ``"hw"`` or
    None) applies when the first component attaches the dispatcher.
    """

    _hook = _XdpHook()

    def __init__(self, iface: str | int, *, netns: str | os.PathLike[str] | None = None, mode: str | None = None,
                 bpffs: str | os.PathLike[str] = "/sys/fs/bpf"):
        from pybpf.features import xdp
        xdp._mode_flag(mode)
        super().__init__(iface, netns=netns, bpffs=bpffs)
        self.mode = None if mode is None else {"generic": "skb", "native": "drv", "offload": "hw"}.get(mode, mode)

    def _mode_request(self) -> str | None:
        return self.mode

    def _attached_prog(self) -> tuple[int, str | None]:
        from pybpf.features import xdp
        st = xdp.query(self.ifindex, netns=self.netns)
        if st.link_id is not None:
            raise BPFBusyError(_errno.EBUSY, f"{self._where()}: program id {st.prog_id} is held by BPF link id "
                               f"{st.link_id}; a dispatcher attaches through netlink",
                               hint="close or detach that link first")
        return st.prog_id, st.mode if st.mode in ("skb", "drv", "hw") else None

    def _swap(self, new_fd: int | None, old_fd: int | None, mode: str | None) -> None:
        from pybpf.features import xdp
        flags = xdp.MODES[mode]
        if old_fd is None:
            flags |= xdp.XDP_FLAGS_UPDATE_IF_NOEXIST
        else:
            flags |= xdp.XDP_FLAGS_REPLACE
        ipr = xdp._iproute(self.netns)
        try:
            try:
                xdp._set_xdp(ipr, self.ifindex, -1 if new_fd is None else new_fd, flags, old_fd)
            except Exception as e:
                if not xdp._is_netlink_error(e):
                    raise
                code, text = xdp._netlink_error(e)
                if code in (_errno.EEXIST, _errno.EBUSY) and (old_fd is not None or code == _errno.EBUSY):
                    st = xdp._query_raw(ipr, self.ifindex, self.iface, self.netns)
                    if st.link_id is None:
                        raise _Raced() from None
                verb = "swap in the new dispatcher" if new_fd is not None else "detach the dispatcher"
                xdp._explain_netlink(ipr, code, text, f"{verb} on {self._where()}", self.ifindex, self.iface,
                                     self.netns, mode, old_fd)
        finally:
            ipr.close()


from pybpf.features.dispatcher.tc import TcDispatcher  # noqa: E402
