"""struct_ops: registration, lifetime, introspection, link update, errors,
and TCP congestion controls in BPF proven on real loopback connections
(inside throwaway network namespaces)."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import pybpf
from pybpf.errors import (BPFExistsError, BPFInvalidError, NotSupportedError, StateError, VerifierError)
from pybpf.features import struct_ops as so
from conftest import EXAMPLES, PROGS, compiled

TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"
REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.needs("struct_ops"), pytest.mark.usefixtures("fd_leak_check", "no_leftover_registration")]


def available() -> list[str]:
    with open(AVAILABLE) as f:
        return f.read().split()


def ours() -> list[so.StructOpsInfo]:
    return [i for i in so.list_struct_ops() if i.registered and (i.ops_name or "").startswith("pybpf_")]


def wait_for(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


@pytest.fixture
def no_leftover_registration() -> Iterator[None]:
    """Every test must leave nothing registered; leftovers are removed and fail the test."""
    yield
    import gc
    gc.collect()
    left = ours()
    for i in left:
        try:
            so.unregister(i.map_id)
        except pybpf.BPFError:
            pass
    assert not left, f"test left struct_ops registered: {[str(i) for i in left]}"


def errors_obj(case: str) -> Path:
    return pybpf.compile(PROGS / "so_errors.bpf.c", cflags=[f"-DCASE_{case}"])


def cc_socket(cc: str) -> socket.socket:
    s = socket.socket()
    s.settimeout(60)
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, cc.encode())
    except BaseException:
        s.close()
        raise
    return s


def cc_of(s: socket.socket) -> str:
    return s.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).split(b"\0", 1)[0].decode()


class Sink:
    """A loopback TCP server (in the current thread's namespace) counting bytes."""

    def __init__(self, port: int):
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", port))
        self.srv.listen(4)
        self.srv.settimeout(60)
        self.port = port
        self.received = 0
        self._threads: list[threading.Thread] = []

    def accept_one(self) -> None:
        def run() -> None:
            c, _ = self.srv.accept()
            with c:
                c.settimeout(60)
                while True:
                    b = c.recv(1 << 16)
                    if not b:
                        return
                    self.received += len(b)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self._threads.append(t)

    def join(self) -> None:
        for t in self._threads:
            t.join(60)
        self._threads = []

    def close(self) -> None:
        self.srv.close()


def send(s: socket.socket, nbytes: int) -> None:
    chunk = b"\xa5" * (1 << 16)
    sent = 0
    while sent < nbytes:
        s.sendall(chunk)
        sent += len(chunk)


@pytest.fixture
def lossy_lo(netns: Any) -> Iterator[Any]:
    """The test namespace with an XDP program (generic mode) on lo dropping
    every 40th data segment to or from port 5001, so congestion controls see
    losses; yields (netns, drop object)."""
    obj = pybpf.Object.open(compiled("so_drop"))
    try:
        obj.load()
        obj.variables["drop_every"] = 40
        obj.variables["port"] = 5001
        with netns.enter():
            link = obj.programs["so_drop"].attach_xdp("lo", "skb")
        try:
            yield netns, obj
        finally:
            link.close()
    finally:
        obj.close()


# -- TCP congestion control in BPF on a real connection ------------------------------------------------

EXAMPLES_CC = {
    "tcp_dctcp_like": ("pybpf_dctcp", ("init", "cong_avoid", "ssthresh", "set_state", "in_ack_event", "cwnd_event")),
    "tcp_cubic_like": ("pybpf_cubic", ("init", "cong_avoid", "ssthresh", "set_state", "pkts_acked",
                                       "cubic_updates")),
}


@pytest.mark.parametrize("example", sorted(EXAMPLES_CC))
def test_example_congestion_control_runs_on_a_connection(example: str, lossy_lo: Any) -> None:
    ns, drop = lossy_lo
    name, counters = EXAMPLES_CC[example]
    assert (EXAMPLES / f"{example}.bpf.c").exists()
    with pybpf.Object.open(compiled(example)) as obj:
        obj.load()
        link = obj.maps[name].attach_struct_ops()
        with link:
            assert name in available()
            info = so.inspect(link)
            assert info.registered and info.ops_name == name and info.type_name == "tcp_congestion_ops"
            with ns.enter():
                sink = Sink(5001)
                try:
                    sink.accept_one()
                    with cc_socket(name) as c:
                        assert cc_of(c) == name
                        c.connect(("127.0.0.1", 5001))
                        assert cc_of(c) == name
                        send(c, 8 << 20)
                    sink.join()
                finally:
                    sink.close()
            assert sink.received == 8 << 20
            assert drop.variables["dropped"] > 0, "the XDP dropper never dropped: no losses were produced"
            stats = obj.variables["stats"]
            for field in counters:
                assert stats[field] > 0, f"{name}: callback counter '{field}' is 0 after 8 MB: {stats}"
            assert stats["max_cwnd"] > 10
        # unregistered: gone from the list, new sockets cannot select it
        assert name not in available()
        with pytest.raises(OSError) as ei:
            cc_socket(name).close()
        assert ei.value.errno == errno.ENOENT


def test_cubic_like_needs_no_kconfig() -> None:
    """The shipped examples load with an empty kernel config: they need no
    __kconfig values (7.3 ships no config; a CONFIG_HZ extern would fail)."""
    for example in EXAMPLES_CC:
        with pybpf.Object.open(compiled(example), kconfig="") as obj:
            assert not any(".kconfig" in m for m in obj.maps)
            obj.load()


# -- introspection ---------------------------------------------------------------------------------------

def bpftool_json(*args: str) -> list[Any]:
    """bpftool -j output: one or more concatenated JSON documents."""
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs, text, dec = [], out.stdout.strip(), json.JSONDecoder()
    while text:
        doc, end = dec.raw_decode(text)
        docs.append(doc)
        text = text[end:].strip().lstrip(",").strip()   # bpftool 7.1 joins them with commas
    return docs


def func_ptr_id(v: Any) -> int:
    """bpftool prints a function pointer as "u32 (struct sock *) 0", or with
    a program as "... e_ssthresh/prog_id:7747" (or a bare ID)."""
    return int(str(v).split()[-1].rsplit(":", 1)[-1])


def bpftool_show() -> dict[int, tuple[str, str]]:
    out = subprocess.run(["bpftool", "struct_ops", "show"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {}
    for ln in out.stdout.splitlines():
        if ":" in ln:
            mid, rest = ln.split(":", 1)
            parts = rest.split()
            rows[int(mid)] = (parts[0], parts[1])
    return rows


def test_introspection_by_map_update_registration() -> None:
    with pybpf.Object.open(errors_obj("NONE")) as obj:
        obj.load()
        m = obj.maps["so_err"]
        before = so.inspect(m)
        assert before.state == so.State.INIT and not before.registered and before.programs == {}
        link = m.attach_struct_ops()
        with link:
            assert not link.uses_link
            info = link.struct_ops_info()
            assert info.map_id == m.id == link.map_id
            assert info.state == so.State.INUSE and info.registered and info.refcnt >= 1
            assert info.type_name == "tcp_congestion_ops" and info.ops_name == "pybpf_so_ok"
            expected = {member: obj.programs[prog] for member, prog in
                        {"ssthresh": "e_ssthresh", "undo_cwnd": "e_undo_cwnd", "cong_avoid": "e_cong_avoid"}.items()}
            assert set(info.programs) == set(expected)
            for member, prog in expected.items():
                assert info.programs[member].prog_id == prog.id
                assert info.programs[member].prog_name == prog.name
            assert info.data is not None and info.data["cong_avoid"] == expected["cong_avoid"].id
            assert info.data["init"] == 0
            # the kernel's view, through bpftool
            assert bpftool_show()[info.map_id] == ("so_err", "tcp_congestion_ops")
            dump = bpftool_json("struct_ops", "dump", "id", str(info.map_id))
            value = next(d for d in dump if "bpf_struct_ops_tcp_congestion_ops" in d)
            data = value["bpf_struct_ops_tcp_congestion_ops"]["data"]
            for member, prog in expected.items():
                assert func_ptr_id(data[member]) == prog.id
            assert func_ptr_id(data["init"]) == 0
            assert any(i.map_id == info.map_id for i in so.list_struct_ops())
            assert [i.map_id for i in so.find_registered("pybpf_so_ok")] == [info.map_id]
            with pytest.raises(NotSupportedError, match="registered by map update"):
                link.info()
        after = so.inspect(m)
        assert after.state == so.State.TOBEFREE and not after.registered
        map_id = after.map_id
    # the object's last fd is gone: the map goes away
    assert wait_for(lambda: all(i.map_id != map_id for i in so.list_struct_ops())), \
        "the struct_ops map outlived its object and its registration"


@pytest.mark.kernel(min="6.4")
@pytest.mark.needs("struct_ops_link")
def test_introspection_of_link_registration() -> None:
    with pybpf.Object.open(compiled("so_swap")) as obj:
        obj.load()
        m = obj.maps["swap_a"]
        assert m.flags & so.BPF_F_LINK, ".struct_ops.link maps must get BPF_F_LINK"
        with m.attach_struct_ops() as link:
            assert link.uses_link
            li = link.info()
            assert li.type == pybpf.LinkType.STRUCT_OPS and li.details["map_id"] == m.id
            info = so.inspect(link)
            assert info.state == so.State.READY and info.link_ids == (li.id,) and info.registered
            assert info.programs["cong_avoid"].prog_name == "a_cong_avoid"
            assert "pybpf_swap" in available()
            link_id = li.id
        assert "pybpf_swap" not in available()
        info = so.inspect(m)
        assert not info.registered and info.link_ids == ()
        assert link_id not in pybpf.raw.ids("link")
        # a link map can be registered again
        with m.attach_struct_ops():
            assert "pybpf_swap" in available()
        assert "pybpf_swap" not in available()


def test_list_matches_bpftool_and_sees_other_tools(tmp_path: Path) -> None:
    """A struct_ops registered by bpftool (another process, libbpf 1.1's
    attach, which stays registered after it exits) is listed, decoded and
    can be unregistered by id."""
    out = subprocess.run(["bpftool", "struct_ops", "register", str(errors_obj("NONE"))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    try:
        mine = [i for i in so.list_struct_ops() if i.ops_name == "pybpf_so_ok"]
        assert len(mine) == 1
        other = mine[0]
        assert other.registered and other.state == so.State.INUSE
        assert set(other.programs) == {"ssthresh", "undo_cwnd", "cong_avoid"}
        assert other.programs["cong_avoid"].prog_name == "e_cong_avoid"
        shown = bpftool_show()
        for i in so.list_struct_ops():
            if i.map_id in shown:
                assert shown[i.map_id] == (i.map_name, i.type_name)
        assert set(shown) <= {i.map_id for i in so.list_struct_ops()}
        assert other.map_id in shown
        text = so.describe_holder(other)
        assert "held by no process" in text and f"map id {other.map_id}" in text
        so.unregister(other.map_id)
        assert "pybpf_so_ok" not in available()
    finally:
        for i in so.find_registered("pybpf_so_ok"):
            so.unregister(i.map_id)


# -- lifetime ------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, sys, signal
    sys.path.insert(0, {repo!r})
    import pybpf
    obj = pybpf.Object.open({obj!r})
    obj.load()
    mode = {mode!r}
    if mode == "libbpf":
        from pybpf._binding import lib
        assert lib.bpf_map__attach_struct_ops(obj.maps[{map!r}]._ptr) != pybpf._binding.ffi.NULL
        print("registered", flush=True)
        os._exit(0)           # like a libbpf 1.1 tool: the registration outlives the process
    link = obj.maps[{map!r}].attach_struct_ops()
    if mode == "pin":
        link.pin({pin!r})
    print("registered", flush=True)
    if mode == "kill":
        sys.stdin.read()      # wait to be killed
    # mode "exit": leave without closing anything
""")


def run_child(obj: Path, map_name: str, mode: str, pin: str = "") -> subprocess.Popen[str]:
    code = CHILD.format(repo=str(REPO), obj=str(obj), map=map_name, mode=mode, pin=pin)
    return subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("source", ["plain", "link"])
def test_process_exit_unregisters(source: str) -> None:
    obj, map_name, cc = ((errors_obj("NONE"), "so_err", "pybpf_so_ok") if source == "plain"
                         else (compiled("so_swap"), "swap_a", "pybpf_swap"))
    child = run_child(obj, map_name, "exit")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0 and "registered" in out, err
    assert cc not in available(), f"{cc} stayed registered after its process exited"


@pytest.mark.kernel(min="6.4")
@pytest.mark.needs("struct_ops_link")
def test_killed_process_releases_link_registration() -> None:
    child = run_child(compiled("so_swap"), "swap_a", "kill")
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "registered"
        assert "pybpf_swap" in available()
        holders = so.find_registered("pybpf_swap")
        assert len(holders) == 1 and f"pid {child.pid}" in so.describe_holder(holders[0])
    finally:
        child.kill()
        child.communicate(timeout=60)
    assert wait_for(lambda: "pybpf_swap" not in available())


def test_registration_left_by_an_exited_libbpf_tool_is_named_and_removable() -> None:
    """KERNELS.md: libbpf 1.1's non-link attach outlives its process; the next
    registration of the name fails with EEXIST. The error names the holder."""
    child = run_child(errors_obj("NONE"), "so_err", "libbpf")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0 and "registered" in out, err
    try:
        assert "pybpf_so_ok" in available()
        orphan = so.find_registered("pybpf_so_ok")
        assert len(orphan) == 1
        with pybpf.Object.open(errors_obj("NONE")) as obj:
            obj.load()
            with pytest.raises(BPFExistsError) as ei:
                obj.maps["so_err"].attach_struct_ops()
            msg = str(ei.value)
            assert ei.value.errno == errno.EEXIST
            assert f"map id {orphan[0].map_id}" in msg and "held by no process" in msg
            assert f"unregister({orphan[0].map_id})" in msg
        so.unregister(orphan[0].map_id)
        assert "pybpf_so_ok" not in available()
    finally:
        for i in so.find_registered("pybpf_so_ok"):
            so.unregister(i.map_id)


@pytest.mark.parametrize("source", ["plain", "link"])
def test_pinned_registration_survives_and_unregisters_by_pin(source: str, bpffs: str) -> None:
    obj_path, map_name, cc = ((errors_obj("NONE"), "so_err", "pybpf_so_ok") if source == "plain"
                              else (compiled("so_swap"), "swap_a", "pybpf_swap"))
    pin = os.path.join(bpffs, "registration")
    child = run_child(obj_path, map_name, "pin", pin)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0 and "registered" in out, err
    try:
        assert os.path.exists(pin)
        assert cc in available(), "a pinned registration must survive its process"
        info = so.inspect(pin)
        assert info.ops_name == cc and info.registered
        assert pin in so.describe_holder(info)
        so.unregister(pin)
        assert not os.path.exists(pin)
        assert wait_for(lambda: cc not in available())
    finally:
        if os.path.exists(pin):
            so.unregister(pin)


def test_pin_then_unpin_in_process(bpffs: str) -> None:
    with pybpf.Object.open(errors_obj("NONE")) as obj:
        obj.load()
        link = obj.maps["so_err"].attach_struct_ops()
        pin = os.path.join(bpffs, "reg")
        link.pin(pin)
        assert link.pinned == pin
        link.unpin()
        assert not os.path.exists(pin)
        link.close()
        assert "pybpf_so_ok" not in available()


def test_garbage_collected_link_unregisters() -> None:
    import gc
    with pybpf.Object.open(errors_obj("NONE")) as obj:
        obj.load()
        obj.maps["so_err"].attach_struct_ops()     # result dropped
        gc.collect()
        assert "pybpf_so_ok" not in available()


# -- link update ---------------------------------------------------------------------------------------

@pytest.mark.kernel(min="6.4")
@pytest.mark.needs("struct_ops_link")
def test_link_update_swaps_implementation_mid_connection(netns: Any) -> None:
    with pybpf.Object.open(compiled("so_swap")) as obj:
        obj.load()
        v = obj.variables
        a, b = obj.maps["swap_a"], obj.maps["swap_b"]
        with a.attach_struct_ops() as link, netns.enter():
            sink = Sink(5002)
            try:
                sink.accept_one()
                with cc_socket("pybpf_swap") as c:
                    c.connect(("127.0.0.1", 5002))
                    send(c, 2 << 20)
                    assert v["calls_a"] > 0 and v["init_a"] == 1 and v["calls_b"] == 0
                    link.update(b)
                    # the name never disappeared; the link now holds swap_b
                    assert "pybpf_swap" in available()
                    assert link.info().details["map_id"] == b.id and link.map_id == b.id
                    assert so.inspect(b).link_ids == (link.id,) and so.inspect(a).link_ids == ()
                    # the connection selects the name again: it now runs implementation b
                    c.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, b"pybpf_swap")
                    assert cc_of(c) == "pybpf_swap"
                    calls_a = v["calls_a"]
                    assert v["init_b"] == 1
                    send(c, 4 << 20)
                    assert v["calls_b"] > 0
                    assert v["calls_a"] == calls_a, "implementation a still ran after the swap"
                sink.join()
                # a new connection gets b directly
                sink.accept_one()
                with cc_socket("pybpf_swap") as c2:
                    c2.connect(("127.0.0.1", 5002))
                    send(c2, 1 << 20)
                sink.join()
                assert v["init_b"] == 2 and v["init_a"] == 1
            finally:
                sink.close()
        assert "pybpf_swap" not in available()


@pytest.mark.kernel(min="6.4")
@pytest.mark.needs("struct_ops_link")
def test_link_update_refusals() -> None:
    with pybpf.Object.open(compiled("so_swap")) as obj, \
            pybpf.Object.open(compiled("tcp_dctcp_like")) as other, \
            pybpf.Object.open(errors_obj("NONE")) as plain:
        obj.load()
        other.load()
        plain.load()
        with obj.maps["swap_a"].attach_struct_ops() as link:
            with pytest.raises(BPFInvalidError, match="named 'pybpf_dctcp' but the registered one is 'pybpf_swap'"):
                link.update(other.maps["pybpf_dctcp"])
            with pytest.raises(BPFInvalidError, match="not created with BPF_F_LINK"):
                link.update(plain.maps["so_err"])
            with pytest.raises(BPFInvalidError, match="not a struct_ops map"):
                link.update(obj.maps["so_swap.bss"])
            with pytest.raises(pybpf.BPFError):
                link.update(obj.maps["swap_b"], old=obj.maps["swap_b"])   # swap_a is the one registered
            assert link.map_id == obj.maps["swap_a"].id
            assert "pybpf_swap" in available()


def test_update_of_map_update_registration_is_refused_with_words() -> None:
    with pybpf.Object.open(errors_obj("NONE")) as obj:
        obj.load()
        with obj.maps["so_err"].attach_struct_ops() as link:
            with pytest.raises(NotSupportedError, match="registered by map update"):
                link.update(obj.maps["so_err"])


# -- errors with words ---------------------------------------------------------------------------------

ATTACH_ERRORS = {
    "NONZERO": (BPFInvalidError, ["member 'key'", "must be zero", "it is 5"]),
    "MISSING_OP": (BPFInvalidError, ["mandatory operation 'ssthresh'", "'undo_cwnd'"]),
    "BUILTIN_NAME": (BPFExistsError, ["'reno' is already registered", "built into the kernel"]),
}
LOAD_ERRORS = {
    "UNKNOWN_MEMBER": (NotSupportedError, ["pybpf_no_such_member", "kernel BTF"]),
    "LICENSE": (VerifierError, ["GPL"]),
    "HELPER": (VerifierError, ["bpf_redirect"]),
}


@pytest.mark.parametrize("case", sorted(ATTACH_ERRORS))
def test_refused_registration_says_why(case: str) -> None:
    exc, words = ATTACH_ERRORS[case]
    with pybpf.Object.open(errors_obj(case)) as obj:
        obj.load()
        with pytest.raises(exc) as ei:
            obj.maps["so_err"].attach_struct_ops()
        for w in words:
            assert w in str(ei.value), f"{w!r} not in: {ei.value}"
        assert ei.value.hint
        assert not so.inspect(obj.maps["so_err"]).registered
    assert "pybpf_so_err" not in available()
    assert not [i for i in so.list_struct_ops() if i.map_name == "so_err"]


@pytest.mark.parametrize("case", sorted(LOAD_ERRORS))
def test_refused_load_says_why(case: str) -> None:
    exc, words = LOAD_ERRORS[case]
    with pybpf.Object.open(errors_obj(case)) as obj:
        with pytest.raises(exc) as ei:
            obj.load()
        text = str(ei.value) + (getattr(ei.value, "log", "") or "")
        for w in words:
            assert w in text, f"{w!r} not in: {text}"
    assert "pybpf_so_err" not in available()
    assert not [i for i in so.list_struct_ops() if i.map_name == "so_err"]


def test_license_error_quotes_the_verifier() -> None:
    with pybpf.Object.open(errors_obj("LICENSE")) as obj:
        with pytest.raises(VerifierError) as ei:
            obj.load()
    assert "struct ops programs must have a GPL compatible license" in ei.value.log


def test_forbidden_helper_quotes_the_verifier() -> None:
    """A tcp_congestion_ops program calling bpf_redirect: refused at load,
    the program named, the verifier's own line about the helper kept."""
    with pybpf.Object.open(errors_obj("HELPER")) as obj:
        with pytest.raises(VerifierError) as ei:
            obj.load()
    e = ei.value
    assert e.program == "e_cong_avoid" and "e_cong_avoid" in str(e)
    # 6.18 words it "program of this type cannot use helper", older kernels "unknown func"
    assert ("cannot use helper bpf_redirect#23" in e.log or "unknown func bpf_redirect#23" in e.log), e.log[-2000:]
    assert "bpf_redirect#23" in str(e)          # the last lines shown are the verifier's own
    assert not [i for i in so.list_struct_ops() if i.map_name == "so_err"]


def test_name_taken_by_this_process_names_the_holder() -> None:
    with pybpf.Object.open(compiled("tcp_dctcp_like")) as a, pybpf.Object.open(compiled("tcp_dctcp_like")) as b:
        a.load()
        b.load()
        with a.maps["pybpf_dctcp"].attach_struct_ops() as first:
            with pytest.raises(BPFExistsError) as ei:
                b.maps["pybpf_dctcp"].attach_struct_ops()
            msg = str(ei.value)
            assert f"map id {first.map_id}" in msg and "this process" in msg
            assert ei.value.errno == errno.EEXIST
            assert not so.inspect(b.maps["pybpf_dctcp"]).registered
        assert "pybpf_dctcp" not in available()


def test_attach_misuse() -> None:
    with pybpf.Object.open(errors_obj("NONE")) as obj:
        with pytest.raises(StateError, match="not loaded"):
            obj.maps["so_err"].attach_struct_ops()
        obj.load()
        with pytest.raises(BPFInvalidError, match="not a struct_ops map"):
            obj.maps["so_error.bss"].attach_struct_ops()
        m = obj.maps["so_err"]
        with m.attach_struct_ops():
            with pytest.raises(pybpf.BPFError, match="already registered"):
                m.attach_struct_ops()
        # registered by map update once: the kernel refuses a second time
        with pytest.raises(pybpf.BPFError, match="registered only once"):
            m.attach_struct_ops()
    assert "pybpf_so_ok" not in available()


def test_unregister_unknown_targets() -> None:
    with pybpf.Object.open(errors_obj("NONE")) as obj:
        obj.load()
        with pytest.raises(pybpf.BPFNotFoundError, match="not registered"):
            so.unregister(obj.maps["so_err"])
        with pytest.raises(BPFInvalidError, match="not a struct_ops map"):
            so.inspect(obj.maps["so_error.bss"])


def test_nothing_of_ours_left_registered() -> None:
    """Run last in this file: bpftool sees no pybpf_* struct_ops."""
    names = []
    for mid in bpftool_show():
        names += [i.ops_name for i in so.list_struct_ops() if i.map_id == mid and i.registered]
    assert not [n for n in names if (n or "").startswith("pybpf_")]
