"""fentry/fexit/fmod_ret: on kernel functions (the TCP connect path,
bpf_modify_return_test) and on BPF programs (main function and a global
subprogram), with arguments, return values and run statistics.

Tests marked ``needs("trampoline")`` run in VM guests (the host refuses
every trampoline load with EPERM).
"""
from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator

import pytest
from conftest import compiled

import pybpf
from pybpf import probes, raw
from pybpf.features import ext

pytestmark = pytest.mark.usefixtures("fd_leak_check")

PACKET = b"\x00" * 64
XDP_PASS = 2
CLASS_SHORT, CLASS_DEFAULT = 0, 1

#: Whether fmod_ret may modify bpf_modify_return_test(), per guest kernel of
#: the matrix (measured; see docs/trampolines.md).  Debian builds these
#: kernels without CONFIG_FUNCTION_ERROR_INJECTION; 6.1 therefore refuses
#: ("is not modifiable"), later kernels register the function as a
#: modifiable test kfunc.
FMOD_RET_MODIFIABLE = {(6, 1): False, (6, 12): True, (7, 3): True}


@contextlib.contextmanager
def opened(name: str) -> Iterator[pybpf.Object]:
    with pybpf.Object.open(compiled(name)) as obj:
        yield obj


@pytest.mark.needs("trampoline")
def test_fentry_fexit_on_tcp_connect_path(netns):
    netns.run("ip", "link", "set", "lo", "up")
    with opened("tramp_kernel") as obj:
        obj.load()
        with netns.enter():
            srv = socket.socket()
        with srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            port = srv.getsockname()[1]
            obj.variables["target_port"] = port
            with obj.programs["on_tcp_connect"].attach() as l1, obj.programs["on_tcp_v4_connect_exit"].attach():
                info = l1.info()
                assert info.type == pybpf.LinkType.TRACING
                assert info.attach_type == pybpf.AttachType.TRACE_FENTRY
                assert info.details["target_btf_id"] == pybpf.Btf.vmlinux().find("tcp_connect", pybpf.Kind.FUNC).id
                assert obj.variables["connects"] == 0
                with netns.enter():
                    cli = socket.create_connection(("127.0.0.1", port), timeout=5)
                cli.close()
                srv.accept()[0].close()
                assert obj.variables["connects"] == 1
                assert obj.variables["connect_pid"] == os.getpid()
                assert obj.variables["v4_exits"] == 1 and obj.variables["v4_ret"] == 0
            # detached: a second connection is not seen
            with netns.enter():
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            srv.accept()[0].close()
            assert obj.variables["connects"] == 1


@pytest.mark.needs("trampoline")
def test_fexit_on_bpf_main_and_global_subprog_with_stats(load):
    tgt = load("ext_target")
    xp = tgt.programs["xdp_classify"]
    with opened("tramp_bpf") as t:
        progs = t.programs
        progs["fentry_main"].set_attach_target(xp, "xdp_classify")
        progs["fexit_main"].set_attach_target(xp, "xdp_classify")
        progs["fentry_sub"].set_attach_target(xp.id, "classify")
        progs["fexit_sub"].set_attach_target(xp, "classify")
        t.load()
        with contextlib.ExitStack() as stack:
            stats = stack.enter_context(pybpf.enable_stats())
            links = {n: stack.enter_context(progs[n].attach()) for n in progs}
            for name, func in (("fentry_main", "xdp_classify"), ("fexit_main", "xdp_classify"),
                               ("fentry_sub", "classify"), ("fexit_sub", "classify")):
                d = links[name].info().details
                assert d["target_obj_id"] == xp.id
                assert d["target_btf_id"] == xp.btf.find(func, pybpf.Kind.FUNC).id
            seen = {(a.function, a.kind, a.prog_name) for a in ext.attachments(xp)}
            assert seen == {("xdp_classify", "fentry", "fentry_main"), ("xdp_classify", "fexit", "fexit_main"),
                            ("classify", "fentry", "fentry_sub"),
                            ("classify", "fexit", "fexit_sub")}

            before = xp.info().run_cnt
            for _ in range(3):
                assert xp.test_run(PACKET).retval == XDP_PASS
            assert t.variables["sub_ret"] == CLASS_DEFAULT
            assert xp.test_run(PACKET[:20]).retval == XDP_PASS
            assert t.variables["sub_ret"] == CLASS_SHORT
            assert t.variables["main_entries"] == 4
            assert t.variables["main_runs"] == 4 and t.variables["main_ret"] == XDP_PASS
            assert t.variables["sub_entries"] == 4 and t.variables["sub_runs"] == 4
            assert tgt.maps["class_count"][CLASS_DEFAULT] == 3 and tgt.maps["class_count"][CLASS_SHORT] == 1

            fi = progs["fexit_main"].info()
            assert fi.run_cnt == 4 and fi.run_time_ns > 0
            assert progs["fexit_sub"].info().run_cnt == 4
            assert xp.info().run_cnt - before == 4
            assert stats.raw >= 0
        # all detached
        assert ext.attachments(xp) == []
        xp.test_run(PACKET)
        assert t.variables["main_runs"] == 4 and t.variables["main_entries"] == 4


def _fmod_test_run(prog: pybpf.Program) -> int:
    """BPF_PROG_TEST_RUN of an fmod_ret program: the kernel calls
    bpf_modify_return_test(1, &b) (and on newer kernels also
    bpf_modify_return_test2) and returns (side effects << 16) | sum of returns."""
    retval, _, _, _ = raw.prog_test_run(prog.fd, b"", repeat=0)
    return retval


@pytest.mark.needs("trampoline")
def test_fmod_ret_per_kernel():
    kv = probes.kernel_version()[:2]
    modifiable = probes.probe("fmod_ret").supported
    if kv in FMOD_RET_MODIFIABLE:
        assert modifiable == FMOD_RET_MODIFIABLE[kv], probes.probe("fmod_ret").reason
    with opened("tramp_fmod") as obj:
        if modifiable:
            _check_fmod_ret_modifies(obj)
        else:
            # 6.1: refused by the verifier; the error explains why and keeps the log
            with pytest.raises(pybpf.VerifierError) as ei:
                obj.load()
            assert "is not modifiable" in ei.value.log
            assert "error-injection list" in str(ei.value) and "CONFIG_FUNCTION_ERROR_INJECTION" in str(ei.value)


def _check_fmod_ret_modifies(obj: pybpf.Object) -> None:
    obj.load()
    fmod, fexit = obj.programs["fmod_test"], obj.programs["fexit_test"]
    with fmod.attach(), fexit.attach() as fl:
        assert fl.info().attach_type == pybpf.AttachType.TRACE_FEXIT
        obj.variables["override"] = 0            # 0: the function runs: *b += 1, returns a + *b (a = 1)
        natural = _fmod_test_run(fmod)
        natural_ret, natural_b = obj.variables["exit_ret"], obj.variables["exit_b"]
        # the initial *b differs between kernels (older test-run code starts at 1 and gets 3;
        # 6.12 and 7.3 start at 2 and get 4)
        assert natural_ret == 1 + natural_b
        obj.variables["override"] = 1000        # non-zero: the function is skipped, 1000 returned
        modified = _fmod_test_run(fmod)
        assert obj.variables["exit_ret"] == 1000
        assert obj.variables["exit_b"] == natural_b - 1                             # *b untouched
        assert obj.variables["fmod_calls"] == 2 and obj.variables["exit_calls"] == 2
    # the kernel counts "b != 2" as a side effect: the skipped increment changes that count by one
    # (up where *b starts at 1, down where it starts at 2: 0x20021 -> 0x10405 on 6.12 and 7.3),
    # and the sum of returns changes by exactly 1000 - natural_ret
    assert abs((modified >> 16) - (natural >> 16)) == 1
    assert (modified & 0xFFFF) - (natural & 0xFFFF) == 1000 - natural_ret
    print(f"fmod_ret on {probes.kernel_version()[:2]}: test-run {natural:#x} -> {modified:#x}, "
          f"bpf_modify_return_test returned {natural_ret}")


def test_unknown_kernel_function_explained():
    with opened("tramp_kernel") as obj:
        with pytest.raises(pybpf.BPFNotFoundError) as ei:
            obj.programs["on_tcp_connect"].set_attach_target(None, "tcp_connekt")
    assert "the kernel has no function 'tcp_connekt'" in str(ei.value)
    assert "'tcp_connect'" in (ei.value.hint or "")


def test_unknown_kernel_function_in_section_explained():
    with opened("tramp_badname") as obj:
        with pytest.raises(pybpf.BPFNotFoundError) as ei:
            obj.load()
    assert "the kernel has no function 'tcp_connekt'" in str(ei.value)


@pytest.mark.needs("trampoline")
def test_fexit_on_bpf_program_attach_again_explained(load):
    """A tracing program loaded for a BPF program target attaches once: the
    kernel keeps no way back to its target after the first link is gone
    (EINVAL on re-attach, explained)."""
    xp = load("ext_target").programs["xdp_classify"]
    with opened("tramp_bpf") as t:
        for name in ("fentry_main", "fentry_sub", "fexit_sub"):
            t.programs[name].set_autoload(False)
        fx = t.programs["fexit_main"]
        fx.set_attach_target(xp, "xdp_classify")
        t.load()
        with fx.attach():
            xp.test_run(PACKET)
        assert t.variables["main_runs"] == 1
        try:
            link = fx.attach()
        except pybpf.BPFInvalidError as e:
            assert "attach once" in str(e) and "load the tracing program again" in (e.hint or "")
            RESULTS_REATTACH[probes.kernel_version()[:2]] = False
        else:
            with link:
                xp.test_run(PACKET)
            assert t.variables["main_runs"] == 2
            RESULTS_REATTACH[probes.kernel_version()[:2]] = True
        kv = probes.kernel_version()[:2]
        print(f"re-attach of fexit on a BPF target on {kv}: {'allowed' if RESULTS_REATTACH[kv] else 'refused'}")
        if kv in REATTACH_ALLOWED:
            assert RESULTS_REATTACH[kv] == REATTACH_ALLOWED[kv]


#: Whether a tracing program on a BPF program target may attach again after
#: its first link is released, per guest kernel (measured).
REATTACH_ALLOWED: dict[tuple[int, int], bool] = {(6, 1): False, (6, 12): False, (7, 3): False}
RESULTS_REATTACH: dict[tuple[int, int], bool] = {}
