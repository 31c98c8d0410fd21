"""Privilege: without capabilities every operation fails with a
PermissionError (BPFPermissionError) whose hint names the capability the
operation needs and which ones this process lacks, and nothing is left
half-done.  Two identities, both with every capability gone and no way to
regain one on exec: uid 0 (securebits noroot + no_setuid_fixup, locked) and
user nobody (uid 65534).  They differ where files decide, not capabilities:
root's 0600 pin opens for uid 0, not for nobody.

The interpreter may sit under a directory nobody cannot enter (pyenv under
/root): the nobody child then runs in a private mount namespace where that
directory is a tmpfs holding bind mounts of only the interpreter's trees, so
the machine itself is never changed."""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

import pybpf
from rel_util import HERE, ROOT, Snapshot, compiled

pytestmark = [pytest.mark.usefixtures("fd_leak_check"),
              pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")]

# No capability in any set; as uid 0, securebits keep exec from handing root its capabilities back.
NO_CAPS = ["setpriv", "--securebits", "+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked",
           "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]
NO_NET_ADMIN = ["setpriv", "--inh-caps=-net_admin,-sys_admin", "--bounding-set=-net_admin,-sys_admin", "--"]
NOBODY_UID = 65534
NOBODY = ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_UID}", "--clear-groups", "--inh-caps=-all",
          "--ambient-caps=-all", "--bounding-set=-all", "--"]

PROBE = r'''
import json, os, sys, logging, gc
logging.disable(logging.CRITICAL)
import pybpf
from pybpf import raw
from pybpf.features import xdp
OBJ, NETNS, PIN, SO, DISP, TRAMP = sys.argv[1:7]
before = set(os.listdir("/proc/self/fd"))
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"op": "identity", "ok": True, "uid": os.getuid(), "euid": os.geteuid(),
                  **{k: int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}}))
def t(label, fn):
    try:
        fn()
        rec = {"op": label, "ok": True}
    except Exception as e:
        rec = {"op": label, "ok": False, "cls": type(e).__name__, "perm": isinstance(e, PermissionError),
               "bpf": isinstance(e, pybpf.BPFError), "msg": str(e)}
    print(json.dumps(rec), flush=True)
def load():
    with pybpf.Object.open(OBJ) as o:
        o.load()
t("map_create", lambda: pybpf.Map.create("hash", 4, 8, 4, name="rel_priv").close())
t("object_load", load)
t("list_ids", lambda: raw.ids("prog"))
t("prog_from_id", lambda: pybpf.Program.from_id(1))
t("map_from_id", lambda: pybpf.Map.from_id(1))
t("link_from_id", lambda: pybpf.Link.from_id(1))
t("enable_stats", lambda: pybpf.enable_stats().close())
t("enter_netns", lambda: xdp.query("lo", netns=NETNS))
t("open_pin", lambda: pybpf.Map.from_pinned(PIN).close())
def struct_ops():
    with pybpf.Object.open(SO) as o:
        o.load()
        o.maps["pybpf_dctcp"].attach_struct_ops().close()
def dispatcher():
    from pybpf.features.dispatcher import XdpDispatcher
    with pybpf.Object.open(DISP) as o:
        XdpDispatcher("lo", netns=NETNS).add(o.programs["disp_a"])
def trampoline():
    with pybpf.Object.open(TRAMP) as o:
        o.load()
        for p in o.programs.values():
            p.attach().close()
t("struct_ops_register", struct_ops)
t("dispatcher_add", dispatcher)
t("trampoline_attach", trampoline)
gc.collect()
print(json.dumps({"op": "leaked_fds", "ok": True, "fds": sorted(set(os.listdir("/proc/self/fd")) - before)}))
'''

# operation -> capabilities its hint must name (both identities)
NEEDS = {
    "map_create": ["CAP_BPF"],
    "object_load": ["CAP_BPF", "CAP_NET_ADMIN"],
    "list_ids": ["CAP_SYS_ADMIN"],
    "prog_from_id": ["CAP_SYS_ADMIN"],
    "map_from_id": ["CAP_SYS_ADMIN"],
    "link_from_id": ["CAP_SYS_ADMIN"],
    "enable_stats": ["CAP_SYS_ADMIN"],
    "enter_netns": ["CAP_SYS_ADMIN"],
    "struct_ops_register": ["CAP_BPF"],
    "dispatcher_add": ["CAP_SYS_ADMIN"],
    "trampoline_attach": ["CAP_BPF"],
}
# the objects PROBE's struct_ops, dispatcher and trampoline operations load (argv[4:7])
EXTRA = ("tcp_dctcp_like", "disp_a", "tramp_kernel")


def _child(prefix: list[str], code: str, *args: str, pass_fds: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    r = subprocess.run(prefix + [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                       env=env, pass_fds=pass_fds, cwd="/")
    assert r.returncode == 0, f"child failed ({r.returncode}): {r.stderr[-3000:]}"
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def _hidden_trees() -> list[tuple[str, str]]:
    """(closed directory, entry in it) for every tree the interpreter needs
    (prefix, stdlib, site-packages, the real executable) that lies under a
    directory other users cannot enter (mode without o+x)."""
    import cffi

    need = {os.path.realpath(p) for p in (sys.executable, sys.prefix, sys.base_prefix, sysconfig.get_paths()["stdlib"],
                                          sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                                          os.path.dirname(cffi.__file__))}
    out: set[tuple[str, str]] = set()
    for p in need:
        parts = Path(p).parts
        for i in range(1, len(parts) - 1):
            d = os.path.join(*parts[:i + 1])
            if not os.stat(d).st_mode & stat.S_IXOTH:
                out.add((d, parts[i + 1]))
                break
    return sorted(out)


@contextlib.contextmanager
def nobody_prefix() -> Iterator[tuple[list[str], str]]:
    """The command prefix that runs a child as user nobody without
    capabilities, and a directory that user can read (for the object file).
    Closed directories on the interpreter's path are replaced, inside a
    private mount namespace only, by a tmpfs exposing just the needed trees."""
    work = tempfile.mkdtemp(prefix="pybpf-nobody-")
    os.chmod(work, 0o755)
    try:
        lines = ["set -e"]
        for n, (closed, entry) in enumerate(_hidden_trees()):
            keep = os.path.join(work, f"keep{n}")
            os.mkdir(keep)
            q = {k: shlex.quote(v) for k, v in (("closed", closed), ("keep", keep), ("entry", entry))}
            lines += [f"mount --bind {q['closed']} {q['keep']}",
                      f"mount -t tmpfs -o mode=0755,size=64k pybpf-nobody {q['closed']}",
                      f"mkdir -p {q['closed']}/{q['entry']}",
                      f"mount --bind {q['keep']}/{q['entry']} {q['closed']}/{q['entry']}",
                      f"umount -l {q['keep']}"]
        lines.append('exec "$@"')
        prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines), "sh", *NOBODY]
        yield prefix, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_all_refused(recs: list[dict[str, Any]], needs: dict[str, list[str]]) -> None:
    by_op = {r["op"]: r for r in recs}
    for op, caps in needs.items():
        r = by_op[op]
        assert not r["ok"], f"{op} succeeded without privileges"
        assert r["cls"] == "BPFPermissionError" and r["perm"] and r["bpf"], f"{op}: {r}"
        for cap in caps:
            assert cap in r["msg"], f"{op}: the message does not name {cap}: {r['msg']}"
        assert "lacks" in r["msg"], f"{op}: the message does not say what is missing: {r['msg']}"
    assert by_op["leaked_fds"]["fds"] == [], f"failed operations leaked fds: {by_op['leaked_fds']}"


@pytest.mark.parametrize("who", ["root-without-capabilities", "nobody"])
def test_without_capabilities_every_operation_is_refused_with_the_capability_named(
        who: str, netns: Any, bpffs: str) -> None:
    """Every operation is refused with the capability named, for uid 0 and
    for user nobody alike; nothing is left behind. Opening root's pin (mode
    0600) is decided by the file: uid 0 owns it and may open it even without
    capabilities, nobody gets a BPFPermissionError that says so."""
    pin = os.path.join(bpffs, "rel_priv_pin")
    with pybpf.Map.create("array", 4, 4, 1, name="rel_priv_pin") as m:
        m.pin(pin)
    assert stat.S_IMODE(os.stat(pin).st_mode) == 0o600
    objs = [compiled(n) for n in ("rel_hyg", *EXTRA)]
    snap = Snapshot.take()
    if who == "nobody":
        with nobody_prefix() as (prefix, work):
            readable = []
            for o in objs:
                readable.append(Path(shutil.copy(o, os.path.join(work, o.name))))
                os.chmod(readable[-1], 0o644)
            recs = _child(prefix, PROBE, str(readable[0]), netns.path, pin, *map(str, readable[1:]))
        uid = NOBODY_UID
    else:
        recs = _child(NO_CAPS, PROBE, str(objs[0]), netns.path, pin, *map(str, objs[1:]))
        uid = 0
    ident = recs[0]
    assert ident["op"] == "identity" and ident["uid"] == ident["euid"] == uid, ident
    assert all(ident[k] == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")), ident
    _check_all_refused(recs, NEEDS)
    opened = {r["op"]: r for r in recs}["open_pin"]
    if uid == 0:
        assert opened["ok"], f"uid 0 could not open its own 0600 pin without capabilities: {opened}"
    else:
        assert not opened["ok"] and opened["cls"] == "BPFPermissionError", opened
        assert "owner and mode" in opened["msg"], opened["msg"]
    assert not snap.leftovers(["rel_"]), "a refused operation left kernel objects behind"


def test_without_net_admin_the_xdp_load_names_it_and_leaves_no_maps(netns: Any, bpffs: str) -> None:
    """CAP_BPF alone creates maps but cannot load XDP: libbpf creates the
    object's maps first; the refused program load must take them back."""
    snap = Snapshot.take()
    recs = {r["op"]: r for r in _child(NO_NET_ADMIN, PROBE, str(compiled("rel_hyg")), netns.path,
                                       os.path.join(bpffs, "none"), *(str(compiled(n)) for n in EXTRA))}
    assert recs["map_create"]["ok"], recs["map_create"]
    r = recs["object_load"]
    assert not r["ok"] and r["cls"] == "BPFPermissionError", r
    assert "CAP_NET_ADMIN" in r["msg"] and "lacks CAP_NET_ADMIN" in r["msg"], r["msg"]
    assert "lacks CAP_BPF" not in r["msg"], r["msg"]
    assert recs["leaked_fds"]["fds"] == []
    assert not snap.leftovers(["rel_"]), "the refused load left the object's maps behind"


HANDED = r'''
import json, os, sys, logging
logging.disable(logging.CRITICAL)
import pybpf
from pybpf.features import xdp
def t(label, fn):
    try:
        v = fn()
        rec = {"op": label, "ok": True, "value": v}
    except Exception as e:
        rec = {"op": label, "ok": False, "cls": type(e).__name__, "perm": isinstance(e, PermissionError),
               "msg": str(e)}
    print(json.dumps(rec, default=repr), flush=True)
p = pybpf.Program.from_fd(int(sys.argv[1]))
m = pybpf.Map.from_fd(int(sys.argv[2]))
t("test_run", lambda: p.test_run(bytes(64)).retval)
t("map_lookup", lambda: m.lookup_bytes(bytes(4)).hex())
t("map_update", lambda: m.update(bytes(4), bytes(16)))
t("xdp_link_attach", lambda: p.attach_xdp("lo", mode="skb").close())
t("xdp_netlink_attach", lambda: xdp.attach(p, "lo", "skb").detach())
'''


def test_handed_fds_work_without_capabilities_netlink_does_not(netns: Any) -> None:
    """A file descriptor is the authority: a capability-less process handed
    a program and a map fd can test-run, read, write and link-attach; the
    netlink attach still needs CAP_NET_ADMIN and says so. (Map.from_fd used
    to fail here: it insisted on opening the map's BTF by id, which needs
    CAP_SYS_ADMIN; now the map works with raw bytes.)"""
    with pybpf.Object.open(compiled("rel_hyg")) as o:
        o.load()
        prog, counts = o.programs["rel_xdp"], o.maps["rel_counts"]
        recs = {r["op"]: r for r in _child(["nsenter", f"--net={netns.path}"] + NO_CAPS, HANDED,
                                          str(prog.fd), str(counts.fd), pass_fds=(prog.fd, counts.fd))}
        assert recs["test_run"] == {"op": "test_run", "ok": True, "value": 2}
        assert recs["map_lookup"]["ok"] and recs["map_update"]["ok"], recs
        assert counts[0].packets == 0 and counts[0].bytes == 0        # the child's update landed
        assert recs["xdp_link_attach"]["ok"], recs["xdp_link_attach"]
        r = recs["xdp_netlink_attach"]
        assert not r["ok"] and r["cls"] == "BPFPermissionError" and "lacks CAP_NET_ADMIN" in r["msg"], r
    from pybpf.features import xdp
    assert not xdp.query("lo", netns=netns.name).attached, "a refused attach left a program attached"
