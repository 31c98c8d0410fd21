"""Subcommands that wrap pybpf's feature modules (imported lazily):

* ``struct-ops list|show|dump|register|unregister`` -> :mod:`pybpf.features.struct_ops`
* ``ext attach|show``                                -> :mod:`pybpf.features.trampolines`, :mod:`pybpf.features.ext`
* ``xdp attach|detach|status``                       -> :mod:`pybpf.features.xdp`, :mod:`pybpf.features.dispatcher`
* ``link-objects OUT IN...``                         -> :mod:`pybpf.features.linker`
* ``vm run --kernel K -- CMD``                       -> :mod:`pybpf.vm`

A module or function missing from this build makes the subcommand fail with
one line saying so (:class:`~pybpf.cli._common.NotAvailable`).
"""
from __future__ import annotations

import importlib
import os
import re
from typing import Any

from pybpf import raw
from pybpf.cli._common import U32_MAX, Args, CLIError, Ctx, NotAvailable, close_all, match, number, open_specs


def need(module: str, *names: str) -> Any:
    """Import ``module`` and check it has ``names``; NotAvailable otherwise."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise NotAvailable(f"{module} is not available in this build ({e})") from None
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        raise NotAvailable(f"{module}.{missing[0]} is not available in this build")
    return mod


# -- struct-ops ---------------------------------------------------------------------------------------

SO_HELP = """Usage: pybpf struct-ops { show | list } [STRUCT_OPS_MAP]
       pybpf struct-ops dump [STRUCT_OPS_MAP]
       pybpf struct-ops register OBJ [LINK_DIR]
       pybpf struct-ops unregister STRUCT_OPS_MAP
       STRUCT_OPS_MAP := { id MAP_ID | name MAP_NAME | pinned FILE }"""


def _so_select(so: Any, args: Args) -> list[Any]:
    """The struct_ops maps named by STRUCT_OPS_MAP (all when none given)."""
    infos = so.list_struct_ops()
    if not args:
        return list(infos)
    kw = args.next("id, name or pinned")
    if kw == "id" or kw.isdecimal():
        mid = args.id("map id") if kw == "id" else number(kw, "map id", 0, U32_MAX)
        sel = [i for i in infos if i.map_id == mid]
        what = f"id {mid}"
    elif kw == "name":
        name = args.next("a map name")
        sel = [i for i in infos if name in (i.map_name, i.ops_name)]
        what = f"named '{name}'"
    elif kw == "pinned" or kw.startswith("/"):
        path = args.next("a pinned path") if kw == "pinned" else kw
        sel = [so.inspect(path)]
        what = path
    else:
        raise CLIError(f"expected id ID, name NAME or pinned PATH; got '{kw}'", 2)
    args.done()
    if not sel:
        raise CLIError(f"no struct_ops map {what} (`pybpf struct-ops list` shows them)")
    return sel


def _so_show(ctx: Ctx, args: Args) -> int:
    so = need("pybpf.features.struct_ops", "list_struct_ops", "inspect")
    sel = _so_select(so, args)
    out = []
    for i in sel:
        st = getattr(i.state, "name", str(i.state)).lower()
        out.append({"id": i.map_id, "name": i.map_name, "kernel_struct_ops": i.type_name, "state": st,
                    "registered": i.registered, "link_ids": list(i.link_ids),
                    **({"ops_name": i.ops_name} if i.ops_name else {})})
    if ctx.json:
        ctx.emit(out)
    else:
        ctx.table(["ID", "NAME", "KERNEL_STRUCT_OPS", "OPS_NAME", "STATE", "LINKS"],
                  [[d["id"], d["name"], d["kernel_struct_ops"], d.get("ops_name", ""), d["state"],
                    ",".join(map(str, d["link_ids"]))] for d in out])
    return 0


def _func_sig(btf: Any, proto_id: int) -> str:
    """A function prototype as bpftool spells it: ``u32 (struct sock *)``."""
    from pybpf.core.btf import Kind

    def typ(tid: int) -> str:
        if not tid:
            return "void "
        t = btf[tid]
        k = t.kind
        if k in (Kind.INT, Kind.TYPEDEF, Kind.FLOAT):
            return f"{t.name} "
        if k in (Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64):
            word = {Kind.STRUCT: "struct", Kind.UNION: "union"}.get(k, "enum")
            return f"{word} {t.name} "
        if k == Kind.FWD:
            return f"{'union' if t.kflag else 'struct'} {t.name} "
        if k == Kind.ARRAY:
            e, _, n = t.array
            return f"{typ(e)}[{n}]"
        if k == Kind.PTR:
            return f"{typ(t.type_id)}* "
        if k in (Kind.VOLATILE, Kind.CONST, Kind.RESTRICT):
            return f"{k.name.lower()} {typ(t.type_id)}"
        if k == Kind.FUNC_PROTO:
            return proto(t)
        return ""

    def proto(p: Any) -> str:
        s = typ(p.type_id) + "("
        for i, prm in enumerate(p.params):
            if i:
                s += ", "
            if prm.type_id:
                s += typ(prm.type_id)
                if prm.name:
                    s += prm.name
                elif s.endswith(" "):
                    s = s[:-1]
            else:
                s += "..."
        return s + ")"

    return proto(btf[proto_id])


def _so_dump_json(so_info: Any, fd: int, vmlinux: Any) -> list[dict[str, Any]]:
    """``bpftool -j struct_ops dump`` for one map: its bpf_map_info and its
    kernel value, both through the kernel's BTF; function pointers as
    ``SIGNATURE NAME/prog_id:ID``."""
    from pybpf._binding import ffi
    from pybpf.core.btf import Kind
    from pybpf.core.dump import BtfJson

    info_t = vmlinux.find("bpf_map_info", Kind.STRUCT)
    buf = ffi.new("char[]", info_t.size)
    a = ffi.new("struct pybpf_attr_info *")
    a.bpf_fd, a.info_len, a.info = fd, info_t.size, int(ffi.cast("uintptr_t", buf))
    raw.sys_bpf(raw.Cmd.OBJ_GET_INFO_BY_FD, a, "get struct_ops map info")
    info_bytes = bytes(ffi.buffer(buf, info_t.size))
    info = raw.map_info(fd)
    vtype = vmlinux[int(info.btf_vmlinux_value_type_id)]
    value = ffi.new("char[]", int(info.value_size))
    raw.map_lookup(fd, ffi.from_buffer(b"\0\0\0\0"), value)

    class Fmt(BtfJson):
        def _do(self, type_id: int, bit_offset: int, data: bytes, off: int) -> Any:
            t = self.btf[type_id] if type_id else None
            if t is not None and t.kind == Kind.PTR:
                v = int.from_bytes(data[off:off + 8], "little")
                target = t.type.resolved() if t.type_id else None
                if target is not None and target.kind == Kind.FUNC_PROTO and v <= 0xFFFFFFFF:
                    sig = _func_sig(self.btf, target.id)
                    if not v:
                        return f"{sig} 0"
                    name = so_info.programs_by_id.get(v)
                    return f"{sig} {name}/prog_id:{v}" if name else f"{sig} <unknown_prog_name>/prog_id:{v}"
                return v
            return super()._do(type_id, bit_offset, data, off)

    fmt = Fmt(vmlinux)
    return [{"bpf_map_info": fmt.value(info_t.id, info_bytes)},
            {vtype.name: fmt.value(vtype.id, bytes(ffi.buffer(value, int(info.value_size))))}]


def _so_dump(ctx: Ctx, args: Args) -> int:
    so = need("pybpf.features.struct_ops", "list_struct_ops", "inspect")
    from pybpf.core.btf import Btf

    sel = _so_select(so, args)
    vmlinux = Btf.vmlinux()
    out: list[dict[str, Any]] = []
    for i in sel:
        try:
            fd = raw.fd_by_id("map", i.map_id)
        except Exception:  # noqa: BLE001 - gone meanwhile
            continue
        with fd:
            out.extend(_so_dump_json(_ProgNames(i), fd.raw, vmlinux))
    if ctx.json:
        ctx.emit(out)
    else:
        for i in sel:
            ctx.say(str(i))
    return 0


class _ProgNames:
    """A StructOpsInfo with a prog id -> name map (for function pointers)."""

    def __init__(self, info: Any):
        self.programs_by_id = {p.prog_id: p.prog_name for p in info.programs.values()}


def _so_register(ctx: Ctx, args: Args) -> int:
    so = need("pybpf.features.struct_ops", "attach_struct_ops")
    import pybpf

    path = args.next("OBJ (a BPF object with struct_ops maps)")
    link_dir = args.next("LINK_DIR") if args else None
    args.done()
    if path.endswith(".c"):
        path = str(pybpf.compile(path))
    obj = pybpf.Object.open(path)
    done: list[dict[str, Any]] = []
    try:
        obj.load()
        maps = [m for m in obj.maps.values() if m.type == pybpf.MapType.STRUCT_OPS]
        if not maps:
            raise CLIError(f"{path} has no struct_ops maps")
        for m in maps:
            link = so.attach_struct_ops(m)
            entry: dict[str, Any] = {"map": m.name, "map_id": m.id}
            if link_dir is not None:
                os.makedirs(link_dir, exist_ok=True)
                target = os.path.join(link_dir, m.name.replace(".", "_"))
                link.pin(target)
                entry["pinned"] = target
                link.close()
            elif getattr(link, "uses_link", False):
                link.close()
                raise CLIError(f"struct_ops map '{m.name}' registers through a BPF link, which ends with this "
                               "command: give a LINK_DIR in bpffs to pin it")
            else:
                os.close(link.disown())   # a map-update registration stays until unregistered
            done.append(entry)
    finally:
        obj.close()
    if ctx.json:
        ctx.emit(done)
    else:
        for e in done:
            ctx.say(f"registered {e['map']} (map id {e['map_id']})" + (f", link pinned at {e['pinned']}"
                                                                         if "pinned" in e else ""))
    return 0


def _so_unregister(ctx: Ctx, args: Args) -> int:
    so = need("pybpf.features.struct_ops", "unregister", "list_struct_ops", "inspect")
    if not args:
        raise CLIError("which struct_ops map? (id ID | name NAME | pinned PATH)", 2)
    if args.peek() == "pinned" or (args.peek() or "").startswith("/"):
        if args.peek() == "pinned":
            args.next("pinned")
        path = args.next("a pinned path (PATH in bpffs)")
        args.done()
        so.unregister(path)
    else:
        for i in _so_select(so, args):
            so.unregister(i.map_id)
    if ctx.json:
        ctx.emit(None)
    return 0


def struct_ops_main(ctx: Ctx, words: list[str]) -> int:
    if not words or words[0] in ("help", "-h"):
        ctx.say(SO_HELP)
        return 0
    cmd = match(words[0], ["show", "list", "dump", "register", "unregister", "help"], "struct-ops command")
    usage = next((line for line in SO_HELP.splitlines() if re.search(rf"\b{cmd}\b", line)),
                 SO_HELP.splitlines()[0]).strip().removeprefix("Usage:").strip()
    args = Args(words[1:], usage)
    fn = {"show": _so_show, "list": _so_show, "dump": _so_dump, "register": _so_register,
          "unregister": _so_unregister}.get(cmd)
    if fn is None:
        ctx.say(SO_HELP)
        return 0
    return fn(ctx, args)


# -- ext (freplace) -----------------------------------------------------------------------------------------

EXT_HELP = """Usage: pybpf ext attach OBJ [prog NAME] target PROG func FUNC pin PATH
       pybpf ext show PROG
       PROG := { id PROG_ID | pinned FILE | name PROG_NAME }"""


def _ext_attach(ctx: Ctx, args: Args) -> int:
    need("pybpf.features.trampolines", "attach_freplace")
    import pybpf

    path = args.next("OBJ (the extension's BPF object)")
    prog_name = func = pin = None
    target_fd: raw.FD | None = None
    try:
        while args:
            kw = args.next("keyword")
            if kw == "prog":
                prog_name = args.next("a program name")
            elif kw == "target":
                target_fd = open_specs("prog", args, single=True)[0]
            elif kw == "func":
                func = args.next("a function name")
                if not func.isidentifier() or not func.isascii():
                    raise CLIError(f"func: '{func}' is not a C function name", 2)
            elif kw == "pin":
                pin = args.next("a bpffs path")
            else:
                raise CLIError(f"unexpected argument '{kw}'; expected prog, target, func, pin", 2)
        if target_fd is None or func is None or pin is None:
            raise CLIError("ext attach needs target PROG, func FUNC and pin PATH (the attachment lives while "
                           "its link is pinned)", 2)
        if path.endswith(".c"):
            path = str(pybpf.compile(path))
        target = pybpf.Program.from_fd(target_fd.dup())
        obj = pybpf.Object.open(path)
        try:
            names = list(obj.programs)
            if prog_name is None:
                if len(names) != 1:
                    raise CLIError(f"{path} has {len(names)} programs ({', '.join(names)}): name one with prog NAME",
                                   2)
                prog_name = names[0]
            if prog_name not in names:
                raise CLIError(f"{path} has no program named '{prog_name}' (it has: {', '.join(names)})")
            prog = obj.programs[prog_name]
            prog.set_attach_target(target, func)
            obj.load()
            link = prog.attach_freplace(target, func)
            try:
                link.pin(pin)
                info = {"link_id": link.id, "prog_id": prog.id, "target_prog_id": target.id, "func": func,
                        "pinned": pin}
            finally:
                link.close()
        finally:
            obj.close()
            target.close()
    finally:
        if target_fd is not None:
            target_fd.close()
    if ctx.json:
        ctx.emit(info)
    else:
        ctx.say(f"attached {prog_name} (id {info['prog_id']}) in place of {func}() of program id "
                f"{info['target_prog_id']}; link id {info['link_id']} pinned at {pin}")
    return 0


def _ext_show(ctx: Ctx, args: Args) -> int:
    ext = need("pybpf.features.ext", "attachments")
    fds = open_specs("prog", args, single=True)
    args.done()
    try:
        pid = int(raw.prog_info(fds[0].raw).id)
    finally:
        close_all(fds)
    rows = ext.attachments(pid)
    out = [{"target_prog_id": a.target_prog_id, "func": a.function, "btf_id": a.btf_id, "kind": a.kind,
            "prog_id": a.prog_id, "prog_name": a.prog_name, "link_id": a.link_id} for a in rows]
    if ctx.json:
        ctx.emit(out)
    else:
        ctx.table(["FUNC", "KIND", "PROG_ID", "PROG_NAME", "LINK_ID"],
                  [[d["func"], d["kind"], d["prog_id"], d["prog_name"], d["link_id"]] for d in out])
    return 0


def ext_main(ctx: Ctx, words: list[str]) -> int:
    if not words or words[0] in ("help", "-h"):
        ctx.say(EXT_HELP)
        return 0
    cmd = match(words[0], ["attach", "show", "list", "help"], "ext command")
    args = Args(words[1:], EXT_HELP.splitlines()[0])
    if cmd == "attach":
        return _ext_attach(ctx, args)
    if cmd in ("show", "list"):
        return _ext_show(ctx, args)
    ctx.say(EXT_HELP)
    return 0


# -- xdp ----------------------------------------------------------------------------------------------

XDP_HELP = """Usage: pybpf xdp attach PROG dev IFACE [mode { skb | drv | hw }] [netns NAME] [replace]
                         [dispatcher [priority N]]
       pybpf xdp detach dev IFACE [prog PROG_ID] [mode MODE] [netns NAME]
       pybpf xdp status dev IFACE [netns NAME]
       PROG := { id PROG_ID | pinned FILE | name PROG_NAME }
  Attachments go through netlink and outlive the command; `dispatcher` adds
  the program as a component of the interface's libxdp-compatible dispatcher."""


def _xdp_opts(args: Args, allowed: set[str]) -> dict[str, Any]:
    o: dict[str, Any] = {}
    while args:
        kw = args.next("keyword")
        if kw not in allowed:
            raise CLIError(f"unexpected argument '{kw}'; expected one of: {', '.join(sorted(allowed))}", 2)
        if kw in ("replace", "dispatcher"):
            o[kw] = True
        elif kw in ("priority", "prog"):
            o[kw] = args.int(kw, 0, U32_MAX)
        else:
            o[kw] = args.next(kw)
    if "dev" not in o:
        raise CLIError("which interface? (dev IFACE)", 2)
    return o


def _xdp_attach(ctx: Ctx, args: Args) -> int:
    import pybpf

    fds = open_specs("prog", args, single=True)
    try:
        o = _xdp_opts(args, {"dev", "mode", "netns", "replace", "dispatcher", "priority"})
        prog = pybpf.Program.from_fd(fds[0].dup())
    finally:
        close_all(fds)
    with prog:
        if o.get("dispatcher"):
            d = need("pybpf.features.dispatcher", "XdpDispatcher")
            disp = d.XdpDispatcher(o["dev"], netns=o.get("netns"), mode=o.get("mode"))
            comp = disp.add(prog, priority=o.get("priority"))
            res = {"dev": o["dev"], "prog_id": comp.prog_id, "slot": comp.slot, "priority": comp.priority,
                   "dispatcher_id": disp.dispatcher_id}
        else:
            xdp = need("pybpf.features.xdp", "attach", "query")
            xdp.attach(prog, o["dev"], o.get("mode"), netns=o.get("netns"), replace=True if o.get("replace") else None)
            st = xdp.query(o["dev"], netns=o.get("netns"))
            res = {"dev": o["dev"], "prog_id": st.prog_id, "mode": st.mode}
    if ctx.json:
        ctx.emit(res)
    else:
        ctx.say(" ".join(f"{k} {v}" for k, v in res.items()))
    return 0


def _dispatcher(dev: str, netns: str | None) -> Any:
    """The interface's XDP dispatcher, or None (no dispatcher module, or
    what is attached is not a dispatcher)."""
    from pybpf.errors import BPFError

    try:
        d = need("pybpf.features.dispatcher", "XdpDispatcher")
    except NotAvailable:
        return None
    disp = d.XdpDispatcher(dev, netns=netns)
    try:
        return disp if disp.dispatcher_id is not None else None
    except BPFError:   # a single program (not a dispatcher) holds the hook
        return None


def _xdp_detach(ctx: Ctx, args: Args) -> int:
    o = _xdp_opts(args, {"dev", "mode", "netns", "prog"})
    xdp = need("pybpf.features.xdp", "detach", "query")
    removed: bool
    disp = _dispatcher(o["dev"], o.get("netns"))
    if disp is not None:
        if "prog" in o:
            disp.remove(o["prog"])
        else:
            disp.remove_all()
        removed = True
    else:
        if "prog" in o:
            st = xdp.query(o["dev"], netns=o.get("netns"))
            if st.prog_id != o["prog"]:
                raise CLIError(f"program id {o['prog']} is not attached to {o['dev']} (attached: "
                               f"{st.prog_id or 'nothing'})")
        removed = bool(xdp.detach(o["dev"], o.get("mode"), netns=o.get("netns")))
    if ctx.json:
        ctx.emit({"detached": removed})
    elif not removed:
        ctx.say(f"nothing was attached to {o['dev']}")
    return 0


def _xdp_status(ctx: Ctx, args: Args) -> int:
    o = _xdp_opts(args, {"dev", "netns"})
    xdp = need("pybpf.features.xdp", "query")
    st = xdp.query(o["dev"], netns=o.get("netns"))
    res: dict[str, Any] = {"dev": o["dev"], "ifindex": st.ifindex, "mode": st.mode, "prog_id": st.prog_id,
                           "via": st.via, "link_id": st.link_id, "components": []}
    disp = _dispatcher(o["dev"], o.get("netns")) if st.attached else None
    if disp is not None:
        res["dispatcher_id"] = disp.dispatcher_id
        res["components"] = [{"slot": c.slot, "name": c.name, "prog_id": c.prog_id, "priority": c.priority,
                              "chain_call_actions": c.chain_call_names, "link_id": c.link_id}
                             for c in disp.components()]
    if ctx.json:
        ctx.emit(res)
        return 0
    if not st.attached:
        ctx.say(f"{o['dev']}: no XDP program attached")
        return 0
    ctx.say(f"{o['dev']} (ifindex {st.ifindex}): prog id {st.prog_id}, mode {st.mode}, via {st.via}"
            + (f" (link id {st.link_id})" if st.link_id else ""))
    if res["components"]:
        ctx.say(f"dispatcher id {res['dispatcher_id']}:")
        ctx.table(["SLOT", "NAME", "PROG_ID", "PRIORITY", "CHAIN_CALL_ACTIONS"],
                  [[c["slot"], c["name"], c["prog_id"], c["priority"], ",".join(c["chain_call_actions"])]
                   for c in res["components"]])
    return 0


def xdp_main(ctx: Ctx, words: list[str]) -> int:
    if not words or words[0] in ("help", "-h"):
        ctx.say(XDP_HELP)
        return 0
    cmd = match(words[0], ["attach", "detach", "status", "help"], "xdp command")
    args = Args(words[1:], XDP_HELP.splitlines()[0])
    fn = {"attach": _xdp_attach, "detach": _xdp_detach, "status": _xdp_status}.get(cmd)
    if fn is None:
        ctx.say(XDP_HELP)
        return 0
    return fn(ctx, args)


# -- link-objects, vm ----------------------------------------------------------------------------------------

def link_objects_main(ctx: Ctx, words: list[str]) -> int:
    if not words or words[0] in ("help", "-h"):
        ctx.say("Usage: pybpf link-objects OUT IN [IN...]   (static linking of BPF objects, like bpftool gen object)")
        return 0
    linker = need("pybpf.features.linker", "link_objects")
    if len(words) < 2:
        raise CLIError("link-objects needs OUT and at least one IN object", 2)
    out = linker.link_objects(words[1:], words[0])
    if ctx.json:
        ctx.emit({"output": str(out), "inputs": words[1:]})
    else:
        ctx.say(f"linked {len(words) - 1} object(s) into {out}")
    return 0


def vm_main(ctx: Ctx, words: list[str]) -> int:
    """``pybpf vm ...`` is ``python -m pybpf.vm ...`` (run, fetch, list, accel)."""
    vm = need("pybpf.vm.__main__", "main")
    return int(vm.main(words or ["--help"]))
