"""``pybpf link list|show|detach`` and ``pybpf btf list|show|dump``."""
from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from pybpf import raw
from pybpf.cli._common import Args, CLIError, Ctx, close_all, match, open_specs
from pybpf.cli._fmt import link_json, pinned_paths

LINK_HELP = """Usage: pybpf link { show | list } [LINK]
       pybpf link detach LINK
       LINK := { id LINK_ID | pinned FILE }"""

BTF_HELP = """Usage: pybpf btf { show | list } [id BTF_ID]
       pybpf btf dump BTF_SRC [format { raw | c }]
       BTF_SRC := { id BTF_ID | prog PROG | map MAP | file FILE }"""


def _link_text(ctx: Ctx, d: dict[str, Any]) -> None:
    extra = "  ".join(f"{k} {v}" for k, v in d.items() if k not in ("id", "type", "prog_id", "pinned"))
    ctx.say(f"{d['id']}: {d['type']}  prog {d['prog_id']}" + (f"\n\t{extra}" if extra else ""))
    for p in d.get("pinned", []):
        ctx.say(f"\tpinned {p}")


def link_show(ctx: Ctx, args: Args) -> int:
    pins = pinned_paths("link") if ctx.bpffs else {}
    if args:
        fds = open_specs("link", args)
        args.done()
        try:
            links = [link_json(fd.raw, pins.get(int(raw.link_info(fd.raw).id))) for fd in fds]
        finally:
            close_all(fds)
        if ctx.json:
            ctx.emit(links[0])
        else:
            for d in links:
                _link_text(ctx, d)
        return 0
    links = []
    for lid in raw.ids("link"):
        try:
            fd = raw.fd_by_id("link", lid)
        except Exception:  # noqa: BLE001 - gone meanwhile
            continue
        with fd:
            links.append(link_json(fd.raw, pins.get(lid)))
    if ctx.json:
        ctx.emit(links)
    else:
        ctx.table(["ID", "TYPE", "PROG_ID", "DETAILS"],
                  [[d["id"], d["type"], d["prog_id"],
                    " ".join(f"{k}={v}" for k, v in d.items() if k not in ("id", "type", "prog_id"))] for d in links])
    return 0


def link_detach(ctx: Ctx, args: Args) -> int:
    fds = open_specs("link", args, single=True)
    args.done()
    try:
        raw.link_detach(fds[0].raw)
    finally:
        close_all(fds)
    if ctx.json:
        ctx.emit(None)
    return 0


def link_main(ctx: Ctx, words: list[str]) -> int:
    if not words or words[0] in ("help", "-h"):
        ctx.say(LINK_HELP)
        return 0
    cmd = match(words[0], ["show", "list", "detach", "help"], "link command")
    args = Args(words[1:], LINK_HELP.splitlines()[0])
    if cmd in ("show", "list"):
        return link_show(ctx, args)
    if cmd == "detach":
        return link_detach(ctx, args)
    ctx.say(LINK_HELP)
    return 0


# -- btf -------------------------------------------------------------------------------------------------

def _btf_name(fd: int) -> tuple[str, bool]:
    from pybpf._binding import ffi

    name = ffi.new("char[]", 64)

    def prep(i: Any) -> None:
        i.name, i.name_len = int(ffi.cast("uintptr_t", name)), 64

    info = raw.obj_info(fd, "pybpf_btf_info", prep)
    return ffi.string(name).decode("utf-8", "replace"), bool(info.kernel_btf)


def btf_show(ctx: Ctx, args: Args) -> int:
    want: int | None = None
    if args:
        if args.next("id") != "id":
            raise CLIError("expected 'id BTF_ID'", 2)
        want = args.id("btf id")
        args.done()
    users: dict[int, dict[str, list[int]]] = {}
    for kind, getter in (("prog", raw.prog_info), ("map", raw.map_info)):
        for oid in raw.ids(kind):
            try:
                with raw.fd_by_id(kind, oid) as fd:
                    bid = int(getter(fd.raw).btf_id)
            except Exception:  # noqa: BLE001
                continue
            if bid:
                users.setdefault(bid, {"prog_ids": [], "map_ids": []})[f"{kind}_ids"].append(oid)
    out = []
    for bid in ([want] if want is not None else raw.ids("btf")):
        try:
            fd = raw.fd_by_id("btf", bid)
        except Exception:  # noqa: BLE001
            if want is not None:
                raise
            continue
        with fd:
            info = raw.btf_info(fd.raw)
            name, kernel = _btf_name(fd.raw)
        d: dict[str, Any] = {"id": bid, "size": int(info.btf_size)}
        u = users.get(bid, {"prog_ids": [], "map_ids": []})
        d["prog_ids"], d["map_ids"] = u["prog_ids"], u["map_ids"]
        if name:
            d["name"] = name
        if kernel:
            d["kernel"] = True
        out.append(d)
    if ctx.json:
        ctx.emit(out[0] if want is not None else out)
    else:
        ctx.table(["ID", "NAME", "SIZE", "KERNEL", "PROG_IDS", "MAP_IDS"],
                  [[d["id"], d.get("name", ""), d["size"], "yes" if d.get("kernel") else "",
                    ",".join(map(str, d["prog_ids"])), ",".join(map(str, d["map_ids"]))] for d in out])
    return 0


KIND_NAMES = ["UNKNOWN", "INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD", "TYPEDEF", "VOLATILE", "CONST",
              "RESTRICT", "FUNC", "FUNC_PROTO", "VAR", "DATASEC", "FLOAT", "DECL_TAG", "TYPE_TAG", "ENUM64"]


def btf_type_json(btf: Any, t: Any) -> dict[str, Any]:
    """One type as ``bpftool -j btf dump ... format raw`` prints it."""
    from pybpf.core.btf import INT_BOOL, INT_CHAR, INT_SIGNED, Kind

    k = t.kind

    def nm(s: str) -> str:
        return s or "(anon)"

    d: dict[str, Any] = {"id": t.id, "kind": KIND_NAMES[int(k)] if int(k) < len(KIND_NAMES) else "UNKNOWN",
                         "name": nm(t.name)}
    if k == Kind.INT:
        enc = t.int_encoding
        d.update(size=t.size, bits_offset=t.int_offset, nr_bits=t.int_bits,
                 encoding="SIGNED" if enc & INT_SIGNED else "CHAR" if enc & INT_CHAR else "BOOL" if enc & INT_BOOL
                 else "(none)")
    elif k in (Kind.PTR, Kind.CONST, Kind.VOLATILE, Kind.RESTRICT, Kind.TYPEDEF, Kind.TYPE_TAG):
        d["type_id"] = t.type_id
    elif k == Kind.ARRAY:
        e, idx, n = t.array
        d.update(type_id=e, index_type_id=idx, nr_elems=n)
    elif k in (Kind.STRUCT, Kind.UNION):
        members = []
        for m in t.members:
            md: dict[str, Any] = {"name": nm(m.name), "type_id": m.type_id, "bits_offset": m.bit_offset}
            if m.bitfield_size:
                md["bitfield_size"] = m.bitfield_size
            members.append(md)
        d.update(size=t.size, vlen=t.vlen, members=members)
    elif k in (Kind.ENUM, Kind.ENUM64):
        d.update(encoding="SIGNED" if t.kflag else "UNSIGNED", size=t.size, vlen=t.vlen,
                 values=[{"name": nm(e.name), "val": e.value} for e in t.enumerators])
    elif k == Kind.FWD:
        d["fwd_kind"] = "union" if t.kflag else "struct"
    elif k == Kind.FUNC:
        d.update(type_id=t.type_id, linkage=["static", "global", "extern"][t.vlen] if t.vlen < 3 else "(unknown)")
    elif k == Kind.FUNC_PROTO:
        d.update(ret_type_id=t.type_id, vlen=t.vlen,
                 params=[{"name": nm(p.name), "type_id": p.type_id} for p in t.params])
    elif k == Kind.VAR:
        lk = int(t.linkage)
        d.update(type_id=t.type_id, linkage=["static", "global", "extern"][lk] if lk < 3 else "(unknown)")
    elif k == Kind.DATASEC:
        d.update(size=t.size, vlen=t.vlen,
                 vars=[{"type_id": s.type_id, "offset": s.offset, "size": s.size} for s in t.secinfo])
    elif k == Kind.FLOAT:
        d["size"] = t.size
    elif k == Kind.DECL_TAG:
        d.update(type_id=t.type_id, component_idx=t.component_idx)
    return d


def btf_dump(ctx: Ctx, args: Args) -> int:
    from pybpf.core.btf import Btf

    src = match(args.next("BTF_SRC (id | prog | map | file)"), ["id", "prog", "map", "file"], "BTF source")
    if src == "id":
        btf = Btf.from_kernel_id(args.id("btf id"))
    elif src == "file":
        path = args.next("a file")
        if path == "/sys/kernel/btf/vmlinux":
            btf = Btf.from_file(path)
        elif not os.path.exists(path):
            raise CLIError(f"{path} does not exist")
        else:
            btf = Btf.from_file(path)
    else:
        fds = open_specs(src, args, single=True)
        try:
            bid = int((raw.prog_info if src == "prog" else raw.map_info)(fds[0].raw).btf_id)
        finally:
            close_all(fds)
        if not bid:
            raise CLIError(f"that {src} has no BTF")
        btf = Btf.from_kernel_id(bid)
    fmt = "raw"
    if args:
        if args.next("format") != "format":
            raise CLIError("expected 'format { raw | c }'", 2)
        fmt = match(args.next("raw or c"), ["raw", "c"], "format")
    args.done()
    try:
        if fmt == "c":
            with tempfile.NamedTemporaryFile("r", suffix=".h") as f:
                btf.dump_c(f.name)
                text = f.read()
            if ctx.json:
                raise CLIError("format c has no JSON form; drop --json", 2)
            sys.stdout.flush()
            ctx.out.write(text)
            return 0
        types = [btf_type_json(btf, t) for t in btf]
    finally:
        btf.close()
    if ctx.json:
        ctx.emit({"types": types})
        return 0
    for d in types:
        rest = " ".join(f"{k}={v}" for k, v in d.items() if k not in ("id", "kind", "name", "members", "params",
                                                                      "values", "vars"))
        ctx.say(f"[{d['id']}] {d['kind']} '{d['name']}' {rest}".rstrip())
        for m in d.get("members", []):
            ctx.say(f"\t'{m['name']}' type_id={m['type_id']} bits_offset={m['bits_offset']}"
                    + (f" bitfield_size={m['bitfield_size']}" if "bitfield_size" in m else ""))
        for p in d.get("params", []):
            ctx.say(f"\t'{p['name']}' type_id={p['type_id']}")
        for v in d.get("values", []):
            ctx.say(f"\t'{v['name']}' val={v['val']}")
        for v in d.get("vars", []):
            ctx.say(f"\ttype_id={v['type_id']} offset={v['offset']} size={v['size']}")
    return 0


def btf_main(ctx: Ctx, words: list[str]) -> int:
    if not words or words[0] in ("help", "-h"):
        ctx.say(BTF_HELP)
        return 0
    cmd = match(words[0], ["show", "list", "dump", "help"], "btf command")
    args = Args(words[1:], BTF_HELP.splitlines()[0])
    if cmd in ("show", "list"):
        return btf_show(ctx, args)
    if cmd == "dump":
        return btf_dump(ctx, args)
    ctx.say(BTF_HELP)
    return 0
