"""``pybpf map list|show|dump|lookup|update|delete`` (BTF-typed)."""
from __future__ import annotations

import json
from typing import Any

from pybpf import raw
from pybpf.cli._common import Args, CLIError, Ctx, close_all, match, open_specs
from pybpf.cli._fmt import entry_json, map_json, pinned_paths

HELP = """Usage: pybpf map { show | list } [MAP]
       pybpf map dump MAP
       pybpf map lookup MAP key DATA
       pybpf map update MAP key DATA value VALUE [UPDATE_FLAGS]
       pybpf map delete MAP key DATA
       MAP := { id MAP_ID | pinned FILE | name MAP_NAME }
       DATA := { [hex] BYTES | json TEXT | TEXT }
           BYTES: exactly key/value-size bytes, e.g. `key 1 0 0 0` or `key hex 01 00 00 00`;
           TEXT: one typed value read through the map's BTF, e.g. `key 7`,
                 `value '{"packets": 5, "tag": "edge"}'`, an enumerator name, a string
       UPDATE_FLAGS := { any | exist | noexist }"""

NO_KEY_TYPES = {"ringbuf", "user_ringbuf", "queue", "stack", "bloom_filter"}


def _rows(maps: list[dict[str, Any]]) -> list[list[Any]]:
    return [[m["id"], m["type"], m.get("name", ""), m["bytes_key"], m["bytes_value"], m["max_entries"],
             hex(m["flags"]), m.get("bytes_memlock", ""), m.get("btf_id", "")] for m in maps]


def cmd_show(ctx: Ctx, args: Args) -> int:
    pins = pinned_paths("map") if ctx.bpffs else {}
    if args:
        fds = open_specs("map", args)
        args.done()
        try:
            maps = [map_json(fd.raw, pins.get(int(raw.map_info(fd.raw).id))) for fd in fds]
        finally:
            close_all(fds)
        if ctx.json:
            ctx.emit(maps[0] if len(maps) == 1 else maps)
        else:
            for m in maps:
                ctx.say(f"{m['id']}: {m['type']}  name {m.get('name', '')}  flags {hex(m['flags'])}")
                ctx.say(f"\tkey {m['bytes_key']}B  value {m['bytes_value']}B  max_entries {m['max_entries']}"
                        + (f"  memlock {m['bytes_memlock']}B" if "bytes_memlock" in m else ""))
                if "btf_id" in m:
                    ctx.say(f"\tbtf_id {m['btf_id']}")
                if m["frozen"]:
                    ctx.say("\tfrozen")
                for p in m.get("pinned", []):
                    ctx.say(f"\tpinned {p}")
        return 0
    maps = []
    for mid in raw.ids("map"):
        try:
            fd = raw.fd_by_id("map", mid)
        except Exception:  # noqa: BLE001 - gone meanwhile
            continue
        with fd:
            maps.append(map_json(fd.raw, pins.get(mid)))
    if ctx.json:
        ctx.emit(maps)
    else:
        ctx.table(["ID", "TYPE", "NAME", "KEY", "VALUE", "MAX_ENTRIES", "FLAGS", "MEMLOCK", "BTF"], _rows(maps))
    return 0


def _open_map(args: Args) -> Any:
    import pybpf

    fd = open_specs("map", args, single=True)[0]
    return pybpf.Map.from_fd(fd)


def _btf_for(m: Any, info: Any) -> Any:
    if int(info.btf_vmlinux_value_type_id):
        from pybpf.core.btf import Btf

        return Btf.vmlinux()
    return m.btf if info.btf_id else None


def _ncpus(info: Any) -> int:
    from pybpf._binding import lib

    return int(lib.libbpf_num_possible_cpus()) if int(info.type) in (5, 6, 10, 21) else 1


def _parse_byte(tok: str, hexmode: bool) -> int | None:
    try:
        v = int(tok, 16) if hexmode else int(tok, 0)
    except ValueError:
        return None
    return v if 0 <= v <= 255 else None


def parse_data(args: Args, size: int, encode: Any, what: str) -> bytes:
    """DATA: BYTES (size of them), ``hex`` BYTES, ``json`` TEXT, or one typed TEXT."""
    first = args.peek()
    if first is None:
        raise CLIError(f"expected the {what} after '{what}'", 2)
    if first == "hex":
        args.next("hex")
        toks = [args.next(f"{size} hex bytes for the {what}") for _ in range(size)]
        vals = [_parse_byte(t, True) for t in toks]
        if None in vals:
            raise CLIError(f"{what}: '{toks[vals.index(None)]}' is not a hex byte", 2)
        return bytes(vals)  # type: ignore[arg-type]
    if first == "json":
        args.next("json")
        text = args.next(f"JSON text for the {what}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise CLIError(f"{what}: not valid JSON ({e.msg} at {e.pos})", 2) from None
        return bytes(encode(value))
    toks = args.w[:size]
    if size > 1 and len(toks) == size and all(_parse_byte(t, False) is not None for t in toks):
        del args.w[:size]
        return bytes(_parse_byte(t, False) for t in toks)  # type: ignore[misc]
    text = args.next(what)
    typed: Any
    try:
        typed = json.loads(text)
    except json.JSONDecodeError:
        typed = text    # an enumerator name, a char array's text
    return bytes(encode(typed))


def cmd_dump(ctx: Ctx, args: Args) -> int:
    m = _open_map(args)
    args.done()
    with m:
        info = raw.map_info(m.fd)
        from pybpf.cli._fmt import map_type_str

        tname = map_type_str(int(info.type))
        if tname in NO_KEY_TYPES:
            raise CLIError(f"map '{m.name}' is a {tname} map: it has no keys to dump")
        from pybpf.core.dump import dump

        entries = dump(m)
    if ctx.json:
        ctx.emit(entries)
        return 0
    for e in entries:
        ctx.say(_entry_text(e))
    ctx.say(f"Found {len(entries)} element{'s' if len(entries) != 1 else ''}")
    return 0


def _entry_text(e: dict[str, Any]) -> str:
    f = e.get("formatted")

    def hx(lst: list[str]) -> str:
        return " ".join(x[2:] for x in lst)

    if f is not None:
        key = json.dumps(f["key"], ensure_ascii=False) if "key" in f else hx(e["key"])
        if "values" in f:
            vals = ", ".join(f"cpu{v['cpu']}: {json.dumps(v['value'], ensure_ascii=False)}" for v in f["values"])
            return f"key: {key}  values: {vals}"
        return f"key: {key}  value: {json.dumps(f['value'], ensure_ascii=False)}"
    if "values" in e:
        vals = ", ".join(f"cpu{v['cpu']}: {hx(v['value'])}" for v in e["values"])
        return f"key: {hx(e['key'])}  values: {vals}"
    return f"key: {hx(e['key'])}  value: {hx(e['value'])}"


def cmd_lookup(ctx: Ctx, args: Args) -> int:
    m = _open_map(args)
    with m:
        k = _key_arg(args, m, "expected 'key DATA'")
        args.done()
        info = raw.map_info(m.fd)
        v = m.lookup_bytes(k)
        if v is None:
            from pybpf.errors import BPFKeyError

            raise BPFKeyError(2, f"key {' '.join(f'{b:02x}' for b in k)} not found in map '{m.name}'")
        e = entry_json(info, _btf_for(m, info), k, v, _ncpus(info))
    if ctx.json:
        ctx.emit(e)
    else:
        ctx.say(_entry_text(e))
    return 0


def _key_arg(args: Args, m: Any, usage: str) -> bytes:
    """The ``key DATA`` words of lookup/update/delete, encoded for map ``m``."""
    if args.next("key") != "key":
        raise CLIError(usage, 2)
    return parse_data(args, m.key_size, m.encode_key, "key")


def cmd_update(ctx: Ctx, args: Args) -> int:
    import pybpf

    m = _open_map(args)
    with m:
        k = _key_arg(args, m, "expected 'key DATA value VALUE'")
        if args.next("value") != "value":
            raise CLIError("expected 'value VALUE' after the key", 2)
        # Per-CPU maps take one value, written to every CPU (as bpftool does).
        v = parse_data(args, m.value_size, m.encode_value if not m.is_percpu else m.value_codec.encode, "value")
        flags = pybpf.ANY
        if args:
            flags = {"any": pybpf.ANY, "exist": pybpf.EXIST, "noexist": pybpf.NOEXIST}[
                match(args.next("flags"), ["any", "exist", "noexist"], "update flag")]
        args.done()
        m.update(k, v, flags)
    if ctx.json:
        ctx.emit(None)
    return 0


def cmd_delete(ctx: Ctx, args: Args) -> int:
    m = _open_map(args)
    with m:
        k = _key_arg(args, m, "expected 'key DATA'")
        args.done()
        try:
            m.delete(k)
        except KeyError:
            from pybpf.errors import BPFKeyError

            raise BPFKeyError(2, f"key {' '.join(f'{b:02x}' for b in k)} not found in map '{m.name}'") from None
    if ctx.json:
        ctx.emit(None)
    return 0


def main(ctx: Ctx, words: list[str]) -> int:
    if not words or words[0] in ("help", "-h"):
        ctx.say(HELP)
        return 0
    cmd = match(words[0], ["show", "list", "dump", "lookup", "update", "delete", "help"], "map command")
    args = Args(words[1:], HELP.splitlines()[0])
    fn = {"show": cmd_show, "list": cmd_show, "dump": cmd_dump, "lookup": cmd_lookup, "update": cmd_update,
          "delete": cmd_delete}.get(cmd)
    if fn is None:
        ctx.say(HELP)
        return 0
    return fn(ctx, args)
