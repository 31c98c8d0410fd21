"""Shared subprograms (seed 001): one ELF whose global subprogram account()
is called by an XDP program and a tc program sharing one map.

libbpf appends a copy of the subprogram to each program that calls it; the
map and the BTF are the object's, shared.  This is not trampoline-based and
runs on the host too; fexit on each copy of the subprogram needs a guest.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
from conftest import compiled

import pybpf
from pybpf.features import ext

pytestmark = pytest.mark.usefixtures("fd_leak_check")

KIND_XDP, KIND_TC = 0, 1


@contextlib.contextmanager
def opened(name: str) -> Iterator[pybpf.Object]:
    with pybpf.Object.open(compiled(name)) as obj:
        yield obj


def test_xdp_and_tc_share_a_subprogram_and_its_map(load):
    obj = load("shared_subprog")
    xdp, tc = obj.programs["shared_xdp"], obj.programs["shared_tc"]
    assert xdp.type == pybpf.ProgType.XDP and tc.type == pybpf.ProgType.SCHED_CLS
    stats = obj.maps["shared_stats"]
    assert stats[KIND_XDP].packets == 0 and stats[KIND_TC].packets == 0

    for _ in range(2):
        assert xdp.test_run(b"\x00" * 64).retval == 2          # XDP_PASS
    for _ in range(3):
        assert tc.test_run(b"\x00" * 100).retval == 0          # TC_ACT_OK
    assert (stats[KIND_XDP].packets, stats[KIND_XDP].bytes) == (2, 128)
    assert (stats[KIND_TC].packets, stats[KIND_TC].bytes) == (3, 300)

    # both loaded programs reference the same map and carry the subprogram in their BTF
    xi, ti = xdp.info(), tc.info()
    assert stats.info().id in xi.map_ids and stats.info().id in ti.map_ids
    for prog in (xdp, tc):
        btf = prog.btf
        assert btf is not None
        f = btf.find("account", pybpf.Kind.FUNC)
        assert f.linkage == 1                                     # global: verified on its own
        assert [p.name for p in f.type.params] == ["kind", "len"]


@pytest.mark.needs("trampoline")
def test_fexit_on_each_copy_of_the_shared_subprogram(load):
    obj = load("shared_subprog")
    xdp, tc = obj.programs["shared_xdp"], obj.programs["shared_tc"]
    with opened("tramp_account") as t:
        t.programs["fexit_account_for_xdp"].set_attach_target(xdp, "account")
        t.programs["fexit_account_for_tc"].set_attach_target(tc, "account")
        t.load()
        with t.programs["fexit_account_for_xdp"].attach(), t.programs["fexit_account_for_tc"].attach():
            assert [a.kind for a in ext.attachments(xdp, "account")] == ["fexit"]
            assert [a.prog_name for a in ext.attachments(tc, "account")] == ["fexit_account_for_tc"]
            xdp.test_run(b"\x00" * 64)
            tc.test_run(b"\x00" * 100)
            tc.test_run(b"\x00" * 90)
            # each copy returns its caller's kind and sees its caller's length
            assert t.variables["runs"] == [1, 2]
            assert t.variables["last_ret"] == [KIND_XDP, KIND_TC]
            assert t.variables["last_len"] == [64, 90]
