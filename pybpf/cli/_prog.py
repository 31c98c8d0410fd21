"""``pybpf prog list|show|load|loadall|run``."""
from __future__ import annotations

import os
import struct
import sys
import time
from typing import Any

from pybpf import raw
from pybpf.cli._common import Args, CLIError, Ctx, close_all, open_specs
from pybpf.cli._fmt import pinned_paths, prog_json

XDP_ACTIONS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
TC_ACTIONS = {-1: "TC_ACT_UNSPEC", 0: "TC_ACT_OK", 1: "TC_ACT_RECLASSIFY", 2: "TC_ACT_SHOT", 3: "TC_ACT_PIPE",
              4: "TC_ACT_STOLEN", 5: "TC_ACT_QUEUED", 6: "TC_ACT_REPEAT", 7: "TC_ACT_REDIRECT"}

HELP = """Usage: pybpf prog { show | list } [PROG]
       pybpf prog load OBJ PATH [type TYPE] [name NAME] [pinmaps MAP_DIR]
       pybpf prog loadall OBJ DIR [type TYPE] [pinmaps MAP_DIR]
       pybpf prog run PROG {data_in FILE | data_hex HEX | data_pcap FILE} [data_out FILE] [ctx_in FILE]
                           [repeat N]
       PROG := { id PROG_ID | pinned FILE | tag PROG_TAG | name PROG_NAME }"""


def _rows(progs: list[dict[str, Any]]) -> list[list[Any]]:
    return [[p["id"], p["type"], p.get("name", ""), p["tag"], p.get("bytes_xlated"), p.get("bytes_jited", "-"),
             ",".join(str(m) for m in p.get("map_ids", [])), p.get("btf_id", "")] for p in progs]


def _show_one(ctx: Ctx, p: dict[str, Any]) -> None:
    t = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(p["loaded_at"])) if "loaded_at" in p else "?"
    ctx.say(f"{p['id']}: {p['type']}  name {p.get('name', '')}  tag {p['tag']}" + ("  gpl" if p["gpl_compatible"]
                                                                                   else "")
            + (f"  run_time_ns {p['run_time_ns']} run_cnt {p['run_cnt']}" if "run_time_ns" in p else ""))
    ctx.say(f"\tloaded_at {t}  uid {p.get('uid', '?')}")
    line = f"\txlated {p['bytes_xlated']}B  " + (f"jited {p['bytes_jited']}B" if p["jited"] else "not jited")
    if "bytes_memlock" in p:
        line += f"  memlock {p['bytes_memlock']}B"
    if p.get("map_ids"):
        line += "  map_ids " + ",".join(str(m) for m in p["map_ids"])
    ctx.say(line)
    if "btf_id" in p:
        ctx.say(f"\tbtf_id {p['btf_id']}")
    for path in p.get("pinned", []):
        ctx.say(f"\tpinned {path}")


def cmd_show(ctx: Ctx, args: Args) -> int:
    pins = pinned_paths("prog") if ctx.bpffs else {}
    if args:
        fds = open_specs("prog", args)
        args.done()
        try:
            progs = [prog_json(fd.raw, pins.get(int(raw.prog_info(fd.raw).id))) for fd in fds]
        finally:
            close_all(fds)
        if ctx.json:
            ctx.emit(progs[0] if len(progs) == 1 else progs)
        else:
            for p in progs:
                _show_one(ctx, p)
        return 0
    progs = []
    for pid in raw.ids("prog"):
        try:
            fd = raw.fd_by_id("prog", pid)
        except Exception:  # noqa: BLE001 - unloaded meanwhile
            continue
        with fd:
            progs.append(prog_json(fd.raw, pins.get(pid)))
    if ctx.json:
        ctx.emit(progs)
    else:
        ctx.table(["ID", "TYPE", "NAME", "TAG", "XLATED", "JITED", "MAP_IDS", "BTF"], _rows(progs))
    return 0


def _pin_name(name: str) -> str:
    return name.replace(".", "_")


def cmd_load(ctx: Ctx, args: Args, *, all_progs: bool = False) -> int:
    import pybpf

    path = args.next("OBJ (a BPF ELF object, or a .bpf.c source)")
    pin = args.next("PATH (where to pin in bpffs)")
    prog_type = only = pinmaps = None
    while args:
        kw = args.next("keyword")
        if kw == "type":
            prog_type = args.next("a program type")
        elif kw == "name" and not all_progs:
            only = args.next("a program name")
        elif kw == "pinmaps":
            pinmaps = args.next("a bpffs directory")
        else:
            raise CLIError(f"unexpected argument '{kw}'; expected type, {'name, ' if not all_progs else ''}pinmaps", 2)
    if not os.path.exists(path):
        raise CLIError(f"{path} does not exist")
    if path.endswith(".c"):
        path = str(pybpf.compile(path))
    obj = pybpf.Object.open(path)
    try:
        if prog_type is not None:
            for p in obj.programs.values():
                try:
                    p.set_type(prog_type)
                except KeyError:
                    raise CLIError(f"unknown program type '{prog_type}' (known: "
                                   f"{', '.join(t.name.lower() for t in pybpf.ProgType)})", 2) from None
        names = list(obj.programs)
        if not names:
            raise CLIError(f"{path} has no programs")
        if only is not None and only not in names:
            raise CLIError(f"{path} has no program named '{only}' (it has: {', '.join(names)})")
        obj.load()
        loaded: list[dict[str, Any]] = []
        if all_progs:
            os.makedirs(pin, exist_ok=True)
            for n, p in obj.programs.items():
                target = os.path.join(pin, _pin_name(n))
                p.pin(target)
                loaded.append({"id": p.id, "name": n, "pinned": target})
        else:
            p = obj.programs[only or names[0]]
            p.pin(pin)
            loaded.append({"id": p.id, "name": only or names[0], "pinned": pin})
        if pinmaps is not None:
            os.makedirs(pinmaps, exist_ok=True)
            for m in obj.maps.values():
                m.pin(os.path.join(pinmaps, _pin_name(m.name)))
    finally:
        obj.close()
    if ctx.json:
        ctx.emit(loaded)
    else:
        for e in loaded:
            ctx.say(f"loaded {e['name']} (id {e['id']}), pinned at {e['pinned']}")
    return 0


def read_pcap(path: str) -> list[bytes]:
    """The packets of a classic pcap file (pcapng through scapy when installed)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise CLIError(f"{path} is not a pcap file (too short)")
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<",
              b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if endian is None:
        if magic == b"\x0a\x0d\x0d\x0a":
            try:
                from scapy.utils import rdpcap  # type: ignore[import-untyped]
            except ImportError:
                raise CLIError(f"{path} is pcapng: install scapy to read it, or save it as classic pcap") from None
            try:
                with open(path, "rb") as f:    # ours to close: scapy leaves its own file open when it fails
                    return [bytes(p) for p in rdpcap(f)]
            except Exception as e:  # noqa: BLE001 - scapy raises its own exception types
                raise CLIError(f"{path} is not a readable pcapng file ({e})") from None
        raise CLIError(f"{path} is not a pcap file (unknown magic {magic.hex()})")
    rec = struct.Struct(endian + "IIII")
    off, out = 24, []  # type: int, list[bytes]
    while off + 16 <= len(data):
        _, _, incl, _ = rec.unpack_from(data, off)
        off += 16
        if off + incl > len(data):
            raise CLIError(f"{path}: packet {len(out)} is truncated")
        out.append(data[off:off + incl])
        off += incl
    return out


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def _action(prog_type: int, retval: int) -> str | None:
    if prog_type == 6:       # XDP
        return XDP_ACTIONS.get(retval)
    if prog_type in (3, 4):  # SCHED_CLS, SCHED_ACT
        return TC_ACTIONS.get(retval if retval < 2**31 else retval - 2**32)
    return None


def cmd_run(ctx: Ctx, args: Args) -> int:
    fds = open_specs("prog", args, single=True)
    fd = fds[0]
    try:
        return _run_prog(ctx, args, fd)
    finally:
        fd.close()


def _run_prog(ctx: Ctx, args: Args, fd: raw.FD) -> int:
    import pybpf

    packets: list[bytes] | None = None
    data_out = ctx_in = None
    repeat = 1
    size_out: int | None = None
    while args:
        kw = args.next("keyword")
        if kw == "data_in":
            packets = [_read_input(args.next("a file (or - for stdin)"))]
        elif kw == "data_hex":
            text = args.next("hex bytes")
            try:
                packets = [bytes.fromhex(text.replace(":", "").replace(" ", ""))]
            except ValueError:
                raise CLIError(f"data_hex: '{text[:40]}' is not hex", 2) from None
        elif kw == "data_pcap":
            packets = read_pcap(args.next("a pcap file"))
        elif kw == "data_out":
            data_out = args.next("a file (or - for stdout)")
        elif kw == "data_size_out":
            size_out = args.int("data_size_out", 0, 0xFFFFFFFF)
        elif kw == "ctx_in":
            ctx_in = _read_input(args.next("a file"))
        elif kw == "repeat":
            repeat = args.int("repeat", 0, 0xFFFFFFFF)
        else:
            raise CLIError(f"unexpected argument '{kw}'; expected data_in, data_hex, data_pcap, data_out, "
                           "data_size_out, ctx_in, repeat", 2)
    if packets is None and ctx_in is None:
        raise CLIError("prog run needs input: data_in FILE, data_hex HEX or data_pcap FILE", 2)
    prog = pybpf.Program.from_fd(fd.dup())
    try:
        ptype = int(raw.prog_info(fd.raw).type)
        results = []
        for i, pkt in enumerate(packets if packets is not None else [b""]):
            r = prog.test_run(pkt, ctx=ctx_in, repeat=repeat, data_size_out=size_out)
            results.append((i, r))
    finally:
        prog.close()
    outs = []
    for i, r in results:
        d: dict[str, Any] = {"retval": r.retval, "duration": r.duration_ns}
        if data_out == "-":
            d["data_out"] = list(r.data)
        outs.append(d)
    if data_out not in (None, "-"):
        with open(data_out, "wb") as f:
            for _, r in results:
                f.write(r.data)
    if ctx.json:
        if len(outs) == 1:
            ctx.emit(outs[0])
        else:
            ctx.emit([dict(packet=i, **o) for i, o in enumerate(outs)])
        return 0
    for i, r in results:
        act = _action(ptype, r.retval)
        prefix = f"packet {i}: " if len(results) > 1 else ""
        ctx.say(f"{prefix}Return value: {r.retval}{f' ({act})' if act else ''}, duration{' (average)' if repeat > 1 else ''}"
                f": {r.duration_ns}ns")
        if data_out == "-":
            for off in range(0, len(r.data), 16):
                chunk = r.data[off:off + 16]
                ctx.say(f"{off:07x} " + " ".join(f"{b:02x}" for b in chunk))
    return 0


def main(ctx: Ctx, words: list[str]) -> int:
    from pybpf.cli._common import match

    if not words or words[0] in ("help", "-h"):
        ctx.say(HELP)
        return 0
    cmd = match(words[0], ["show", "list", "load", "loadall", "run", "help"], "prog command")
    args = Args(words[1:], HELP.splitlines()[0])
    if cmd in ("show", "list"):
        return cmd_show(ctx, args)
    if cmd == "load":
        return cmd_load(ctx, args)
    if cmd == "loadall":
        return cmd_load(ctx, args, all_progs=True)
    if cmd == "run":
        return cmd_run(ctx, args)
    ctx.say(HELP)
    return 0
