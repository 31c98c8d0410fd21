"""The ``pybpf`` command against the real kernel: its JSON compared with
bpftool's for the same objects, typed map edits observed through the maps,
test runs whose results the program's own maps confirm, clear errors."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from typing import Any

import pytest

import pybpf
from pybpf.cli import main

PROGS_DIR = os.path.join(os.path.dirname(__file__), "progs")

pytestmark = pytest.mark.usefixtures("fd_leak_check")

BPFTOOL = shutil.which("bpftool")
needs_bpftool = pytest.mark.skipif(BPFTOOL is None, reason="bpftool is not installed")


def cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """Run ``pybpf ARGV`` in this process: (status, stdout, stderr)."""
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def cli_json(capsys: Any, *argv: str) -> Any:
    rc, out, err = cli(capsys, "-j", *argv)
    assert rc == 0, err
    return json.loads(out)


def bpftool(*argv: str) -> Any:
    r = subprocess.run([BPFTOOL or "bpftool", "-j", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr or r.stdout
    return json.loads(r.stdout)


def same_prog(a: dict[str, Any], b: dict[str, Any]) -> None:
    """bpftool's and pybpf's program JSON: identical, load time to the second."""
    a, b = dict(a), dict(b)
    assert abs(a.pop("loaded_at") - b.pop("loaded_at")) <= 1
    a.pop("pids", None)
    assert a == b


@pytest.fixture
def demo(load):
    obj = load("cli_demo")
    obj.programs["cli_long_program_name"].test_run(bytes(64))
    obj.maps["nobtf"][1] = 2
    return obj


@needs_bpftool
def test_prog_show_json_matches_bpftool(demo, capsys):
    for name in ("cli_long_program_name", "short_prog"):
        pid = demo.programs[name].id
        ours = cli_json(capsys, "prog", "show", "id", str(pid))
        same_prog(bpftool("prog", "show", "id", str(pid)), ours)
        assert ours["name"] == name              # past the kernel's 15 characters, as bpftool does
    listed = {p["id"]: p for p in cli_json(capsys, "prog", "list")}
    theirs = {p["id"]: p for p in bpftool("prog", "show")}
    for pid in (demo.programs["cli_long_program_name"].id, demo.programs["short_prog"].id):
        same_prog(theirs[pid], listed[pid])


@needs_bpftool
def test_map_show_and_dump_json_match_bpftool(demo, capsys):
    for m in demo.maps.values():
        mid = str(m.id)
        assert cli_json(capsys, "map", "show", "id", mid) == bpftool("map", "show", "id", mid)
        assert cli_json(capsys, "map", "dump", "id", mid) == bpftool("map", "dump", "id", mid), m.name
    # Sanity: the values really are the BTF-typed ones the program wrote.
    flows = cli_json(capsys, "map", "dump", "id", str(demo.maps["flows"].id))
    f = flows[0]["formatted"]
    assert f["key"] == {"addr": 0x0100007F, "port": 80, "proto": 6, "pad": 0}
    assert (f["value"]["st"], f["value"]["tag"], f["value"]["neg"], f["value"]["arr"]) == ("BUSY", "edge", "0x1d",
                                                                                            [[0, 0], [7, 0]])


@needs_bpftool
def test_map_lookup_update_delete_typed(demo, capsys):
    counters = demo.maps["counters"]
    mid = str(counters.id)
    # typed value in, observed through the library
    assert cli(capsys, "map", "update", "id", mid, "key", "2", "value", "77")[0] == 0
    assert counters[2] == 77
    # bytes in (bpftool's form), lookup JSON identical to bpftool's
    assert cli(capsys, "map", "update", "id", mid, "key", "3", "0", "0", "0", "value", "hex",
               "10", "00", "00", "00", "00", "00", "00", "00")[0] == 0
    assert counters[3] == 16
    ours = cli_json(capsys, "map", "lookup", "id", mid, "key", "3", "0", "0", "0")
    assert ours == bpftool("map", "lookup", "id", mid, "key", "3", "0", "0", "0")
    assert ours["formatted"] == {"key": 3, "value": 16}
    # struct key and value from JSON, enumerator by name, partial struct
    flows = demo.maps["flows"]
    key = '{"addr": 1, "port": 2}'
    rc, _, err = cli(capsys, "map", "update", "id", str(flows.id), "key", key, "value",
                     '{"st": "GONE", "tag": "hi", "lo": 3, "delta": -9}', "noexist")
    assert rc == 0, err
    v = flows[{"addr": 1, "port": 2}]
    assert (v.st.name, v.tag, v.lo, v.delta, v.packets) == ("GONE", "hi", 3, -9, 0)
    rc, _, err = cli(capsys, "map", "update", "id", str(flows.id), "key", key, "value", "{}", "noexist")
    assert rc == 1 and "already present" in err and err.count("\n") == 1
    assert cli(capsys, "map", "delete", "id", str(flows.id), "key", key)[0] == 0
    assert {"addr": 1, "port": 2} not in flows
    rc, out, err = cli(capsys, "map", "delete", "id", str(flows.id), "key", key)
    assert rc == 1 and "not found in map 'flows'" in err and err.count("\n") == 1
    # per-CPU: one value for every CPU
    assert cli(capsys, "map", "update", "id", str(demo.maps["pcpu"].id), "key", "1", "value", "-4")[0] == 0
    assert demo.maps["pcpu"][1] == [-4] * len(demo.maps["pcpu"][1])


def test_map_bad_input_is_one_clear_line(demo, capsys):
    flows = demo.maps["flows"]
    rc, _, err = cli(capsys, "map", "update", "id", str(flows.id), "key", '{"nope": 1}', "value", "{}")
    assert rc == 1 and "has no member 'nope'" in err and err.count("\n") == 1
    rc, _, err = cli(capsys, "map", "lookup", "id", str(demo.maps["counters"].id), "key", "hex", "zz", "00", "00", "00")
    assert rc == 2 and "not a hex byte" in err
    rc, _, err = cli(capsys, "map", "dump", "id", "999999999")
    assert rc == 1 and "no map with id 999999999" in err
    rc, out, err = cli(capsys, "-j", "map", "dump", "id", "999999999")
    assert rc == 1 and "no map with id" in json.loads(out)["error"]


def test_prog_run_hex_file_and_pcap(demo, capsys, tmp_path):
    pid = str(demo.programs["cli_long_program_name"].id)
    before = demo.maps["counters"][0]
    assert cli_json(capsys, "prog", "run", "id", pid, "data_hex", "00" * 120)["retval"] == 1   # XDP_DROP: > 100 bytes
    (tmp_path / "pkt.bin").write_bytes(bytes(40))
    r = cli_json(capsys, "prog", "run", "id", pid, "data_in", str(tmp_path / "pkt.bin"), "repeat", "3",
                 "data_out", "-")
    assert r["retval"] == 2 and r["data_out"] == [0] * 40
    # a pcap with packets of three sizes (classic pcap, written by hand)
    pcap = tmp_path / "in.pcap"
    with open(pcap, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for n in (60, 150, 99):
            f.write(struct.pack("<IIII", 0, 0, n, n) + bytes(n))
    res = cli_json(capsys, "prog", "run", "id", pid, "data_pcap", str(pcap))
    assert [(x["packet"], x["retval"]) for x in res] == [(0, 2), (1, 1), (2, 2)]
    rc, out, _ = cli(capsys, "prog", "run", "id", pid, "data_pcap", str(pcap))
    assert rc == 0 and "packet 1: Return value: 1 (XDP_DROP)" in out
    # The program saw every packet (the pcap twice): its counter grew by all their lengths.
    assert demo.maps["counters"][0] - before == 120 + 40 * 3 + 2 * (60 + 150 + 99)


def test_prog_run_scapy_pcap(demo, capsys, tmp_path):
    scapy = pytest.importorskip("scapy.all")
    pkts = [scapy.Ether() / scapy.IP(dst="192.0.2.1") / scapy.UDP() / (b"x" * n) for n in (10, 100)]
    scapy.wrpcap(str(tmp_path / "s.pcap"), pkts)
    res = cli_json(capsys, "prog", "run", "id", str(demo.programs["cli_long_program_name"].id),
                   "data_pcap", str(tmp_path / "s.pcap"))
    assert [x["retval"] for x in res] == [2 if len(p) <= 100 else 1 for p in pkts]


def test_prog_load_pins_and_verifier_log(capsys, bpffs, progs):
    src = str(progs / "cli_demo.bpf.c")
    pin = os.path.join(bpffs, "demo")
    res = cli_json(capsys, "prog", "load", src, pin, "name", "short_prog", "pinmaps", os.path.join(bpffs, "maps"))
    assert res[0]["name"] == "short_prog" and res[0]["pinned"] == pin
    # The pinned program outlives the command and runs.
    with pybpf.Program.from_pinned(pin) as p:
        assert p.test_run(bytes(64)).retval == 3 and p.id == res[0]["id"]
    assert sorted(os.listdir(os.path.join(bpffs, "maps"))) == sorted(
        m.replace(".", "_") for m in ("counters", "flows", "pcpu", "nobtf", "cli_demo.bss", ".rodata.str1.1"))
    rc, out, _ = cli(capsys, "prog", "show", "pinned", pin)
    assert rc == 0 and out.startswith(f"{res[0]['id']}: xdp  name short_prog")
    loaded = cli_json(capsys, "prog", "loadall", src, os.path.join(bpffs, "all"))
    assert sorted(e["name"] for e in loaded) == ["cli_long_program_name", "short_prog"]
    # A refused program: one line, then the whole log with --verbose.
    bad = str(progs / "verifier_reject.bpf.c")
    rc, _, err = cli(capsys, "prog", "load", bad, os.path.join(bpffs, "bad"))
    assert rc == 1 and err.count("\n") == 1 and "refused by the verifier" in err and "map_value_or_null" in err
    rc, _, err = cli(capsys, "--verbose", "prog", "load", bad, os.path.join(bpffs, "bad"))
    assert rc == 1 and "verifier log of program 'no_null_check'" in err and "R0" in err and err.count("\n") > 3
    assert not os.path.exists(os.path.join(bpffs, "bad"))


@needs_bpftool
def test_link_show_and_detach(demo, capsys, netns):
    prog = demo.programs["short_prog"]
    with prog.attach_xdp("lo", mode="skb", netns=netns.name) as link:
        lid = str(link.id)
        ours = cli_json(capsys, "link", "show", "id", lid)
        theirs = bpftool("link", "show", "id", lid)
        # bpftool 7.1 prints no details for XDP links; newer bpftool adds "ifindex", as pybpf does.
        assert {k: v for k, v in ours.items() if k in theirs} == theirs and set(ours) - set(theirs) <= {"ifindex"}
        assert ours["type"] == "xdp" and ours["prog_id"] == prog.id and ours["ifindex"] == netns.ifindex("lo")
        assert int(lid) in {d["id"] for d in cli_json(capsys, "link", "list")}
        assert cli(capsys, "link", "detach", "id", lid)[0] == 0
        assert link.info().details["ifindex"] == 0          # the kernel detached it
        assert "prog/xdp" not in netns.run("ip", "link", "show", "lo").stdout


@needs_bpftool
def test_btf_dump_matches_bpftool(demo, capsys):
    bid = str(demo.programs["cli_long_program_name"].info().btf_id)
    assert cli_json(capsys, "btf", "dump", "id", bid) == bpftool("btf", "dump", "id", bid)
    rc, out, _ = cli(capsys, "btf", "dump", "map", "id", str(demo.maps["flows"].id), "format", "c")
    assert rc == 0 and "struct cli_stats {" in out and "enum cli_state {" in out
    shown = cli_json(capsys, "btf", "show", "id", bid)
    assert demo.maps["flows"].id in shown["map_ids"] and demo.programs["short_prog"].id in shown["prog_ids"]


def test_usage_errors(capsys):
    rc, _, err = cli(capsys, "nosuch")
    assert rc == 2 and "unknown object 'nosuch'" in err
    rc, _, err = cli(capsys, "prog", "frobnicate")
    assert rc == 2 and "unknown prog command 'frobnicate'" in err
    rc, _, err = cli(capsys, "prog", "show", "id", "4000000000")
    assert rc == 1 and err.startswith("Error: no prog with id 4000000000") and err.count("\n") == 1
    rc, out, _ = cli(capsys, "p", "help")       # prefixes work as in bpftool
    assert rc == 0 and "pybpf prog run" in out
    rc, out, _ = cli(capsys, "--version")
    assert rc == 0 and "libbpf v1." in out


def test_console_entry_points(demo):
    pid = str(demo.programs["short_prog"].id)
    r = subprocess.run([sys.executable, "-m", "pybpf", "-j", "prog", "show", "id", pid], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["name"] == "short_prog"
    r = subprocess.run([sys.executable, "-m", "pybpf", "map", "dump", "id", "4000000000"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no map with id" in r.stderr


# -- subcommands wrapping the feature modules ------------------------------------------------------------

@needs_bpftool
@pytest.mark.needs("struct_ops")
def test_struct_ops_register_list_dump_unregister(capsys, progs):
    from pybpf.features import struct_ops as so

    try:
        res = cli_json(capsys, "struct-ops", "register", str(progs / "cli_cc.bpf.c"))
        mid = res[0]["map_id"]
        assert res[0]["map"] == "cli_cc"
        shown = {d["id"]: d for d in cli_json(capsys, "struct-ops", "list")}
        theirs = {d["id"]: d for d in bpftool("struct_ops", "show")}
        assert {k: shown[mid][k] for k in theirs[mid]} == theirs[mid]
        assert shown[mid]["registered"] and shown[mid]["ops_name"] == "pybpf_cli_cc"
        # The kernel now offers it as a congestion control.
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            assert "pybpf_cli_cc" in f.read().split()
        ours = cli_json(capsys, "struct-ops", "dump", "id", str(mid))
        # (bpftool's `dump id` prints two JSON objects back to back; `dump name` the same as a list)
        assert ours == bpftool("struct_ops", "dump", "name", "cli_cc")
        value = ours[1]["bpf_struct_ops_tcp_congestion_ops"]
        assert value["data"]["name"] == "pybpf_cli_cc" and "cli_cc_ssthresh/prog_id:" in value["data"]["ssthresh"]
        assert cli(capsys, "struct-ops", "unregister", "id", str(mid))[0] == 0
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            assert "pybpf_cli_cc" not in f.read().split()
    finally:
        for i in so.list_struct_ops():
            if i.map_name == "cli_cc":
                so.unregister(i.map_id)


def test_xdp_attach_status_detach(demo, capsys, netns):
    pid = demo.programs["cli_long_program_name"].id
    netns.run("ip", "link", "set", "lo", "up")
    where = ("dev", "lo", "netns", netns.name)
    assert cli(capsys, "xdp", "attach", "id", str(pid), *where, "mode", "skb")[0] == 0
    try:
        st = cli_json(capsys, "xdp", "status", *where)
        assert (st["prog_id"], st["mode"], st["via"], st["components"]) == (pid, "skb", "netlink", [])
        rc, _, err = cli(capsys, "xdp", "attach", "id", str(pid), *where, "mode", "skb")
        assert rc == 1 and err.count("\n") == 1 and "already" in err.lower()
        # The program runs on real packets: large pings are dropped and counted, small ones pass.
        before = demo.maps["counters"][0]
        assert netns.run("ping", "-c", "2", "-W", "1", "-s", "200", "127.0.0.1", check=False).returncode != 0
        assert netns.run("ping", "-c", "1", "-W", "1", "-s", "10", "127.0.0.1", check=False).returncode == 0
        assert demo.maps["counters"][0] > before
    finally:
        assert cli(capsys, "xdp", "detach", *where)[0] == 0
    assert cli_json(capsys, "xdp", "status", *where)["prog_id"] == 0
    assert netns.run("ping", "-c", "1", "-W", "1", "-s", "200", "127.0.0.1", check=False).returncode == 0


@pytest.mark.needs("freplace")
def test_ext_attach_replaces_a_function(load, capsys, bpffs, progs):
    target = load("cli_ext_target").programs["cli_ext_entry"]
    assert target.test_run(bytes(64)).retval == 2                      # XDP_PASS from verdict()
    pin = os.path.join(bpffs, "ext")
    res = cli_json(capsys, "ext", "attach", str(progs / "cli_ext.bpf.c"), "target", "id", str(target.id),
                   "func", "verdict", "pin", pin)
    try:
        assert target.test_run(bytes(64)).retval == 1                  # XDP_DROP from the extension
        shown = cli_json(capsys, "ext", "show", "id", str(target.id))
        assert [(a["func"], a["kind"], a["link_id"]) for a in shown] == [("verdict", "freplace", res["link_id"])]
    finally:
        os.unlink(pin)                                                  # the pin held the only reference
    assert target.test_run(bytes(64)).retval == 2


@pytest.mark.needs("xdp", "freplace")
def test_xdp_status_lists_dispatcher_components(capsys, netns):
    """``pybpf xdp status`` on an interface with a libxdp-style dispatcher:
    the dispatcher and each component, in run order, with priorities."""
    from pybpf.features.dispatcher import XdpDispatcher

    netns.run("ip", "link", "set", "lo", "up")
    where = ("dev", "lo", "netns", netns.name)
    disp = XdpDispatcher("lo", netns=netns.name)
    with pybpf.Object.open(pybpf.compile(os.path.join(PROGS_DIR, "disp_b.bpf.c"))) as b, \
            pybpf.Object.open(pybpf.compile(os.path.join(PROGS_DIR, "disp_a.bpf.c"))) as a:
        try:
            disp.add_many([b.programs["disp_b"], a.programs["disp_a"]])
            st = cli_json(capsys, "xdp", "status", *where)
            assert st["prog_id"] == st["dispatcher_id"] == disp.dispatcher_id
            assert [(c["slot"], c["name"], c["priority"], c["chain_call_actions"]) for c in st["components"]] == [
                (0, "disp_a", 10, ["XDP_PASS"]), (1, "disp_b", 20, ["XDP_PASS"])]
            assert [c["prog_id"] for c in st["components"]] == [c.prog_id for c in disp.components()]
            rc, out, _ = cli(capsys, "xdp", "status", *where)
            assert rc == 0 and f"dispatcher id {disp.dispatcher_id}:" in out and "disp_a" in out
        finally:
            disp.remove_all()
    assert cli_json(capsys, "xdp", "status", *where)["components"] == []


def test_ext_attach_refused_is_one_line(load, capsys, bpffs, progs):
    from pybpf.probes import probe

    if probe("freplace"):
        pytest.skip("this kernel loads extensions (covered by test_ext_attach_replaces_a_function)")
    target = load("cli_ext_target").programs["cli_ext_entry"]
    rc, _, err = cli(capsys, "ext", "attach", str(progs / "cli_ext.bpf.c"), "target", "id", str(target.id),
                     "func", "verdict", "pin", os.path.join(bpffs, "ext"))
    assert rc == 1 and err.count("\n") == 1 and "EPERM" in err and "hint:" in err
    assert not os.path.exists(os.path.join(bpffs, "ext"))


def test_link_objects(capsys, tmp_path):
    a, b = pybpf.compile(os.path.join(PROGS_DIR, "cli_link_main.bpf.c")), pybpf.compile(os.path.join(PROGS_DIR, "cli_link_lib.bpf.c"))
    out = tmp_path / "linked.o"
    res = cli_json(capsys, "link-objects", str(out), str(a), str(b))
    assert res["output"] == str(out)
    with pybpf.Object.open(out) as obj:
        obj.load()
        prog = obj.programs["cli_link_entry"]
        assert (prog.test_run(bytes(64)).retval, prog.test_run(bytes(200)).retval) == (3, 1)
    # alone, cli_lib_answer stays an unresolved extern: legal in a linked object (a later link may
    # supply it), refused at load with the symbol named
    rc, _, err = cli(capsys, "link-objects", str(tmp_path / "x.o"), str(a))
    assert rc == 0, err
    with pytest.raises(pybpf.BPFError, match="cli_lib_answer"):
        with pybpf.Object.open(tmp_path / "x.o") as obj:
            obj.load()


def test_vm_passthrough(capsys):
    rc, out, _ = cli(capsys, "vm", "list")
    assert rc == 0 and "6.1" in out
    assert main(["vm", "run", "--kernel", "host", "--", sys.executable, "-c", "raise SystemExit(3)"]) == 3


def test_missing_feature_is_one_clear_line(capsys, monkeypatch):
    from pybpf.cli import _features

    real = _features.need

    def fake(module: str, *names: str) -> object:
        return real(module, "no_such_function")

    monkeypatch.setattr(_features, "need", fake)
    rc, _, err = cli(capsys, "struct-ops", "list")
    assert rc == 1 and err == "Error: pybpf.features.struct_ops.no_such_function is not available in this build\n"
