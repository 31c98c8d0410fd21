"""Program extensions (freplace): replacing a global function of a loaded
XDP program, restoring it, a second target, link info, and the errors that
explain themselves.

Tests marked ``needs("trampoline")`` run in VM guests (the host refuses
every extension load with EPERM); the prechecks run everywhere.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import pytest
from conftest import compiled

import pybpf
from pybpf import raw
from pybpf.features import ext
from pybpf.probes import RET0, probe

pytestmark = pytest.mark.usefixtures("fd_leak_check")

CLASS_SHORT, CLASS_DEFAULT, CLASS_REPLACED = 0, 1, 3
PACKET = b"\x00" * 64          # Ethernet + IPv4 sized: classify() says CLASS_DEFAULT


@contextlib.contextmanager
def opened(name: str) -> Iterator[pybpf.Object]:
    with pybpf.Object.open(compiled(name)) as obj:
        yield obj


def counts(obj: pybpf.Object) -> dict[int, int]:
    m = obj.maps["class_count"]
    return {k: m[k] for k in range(8) if m[k]}


def func_btf_id(prog: pybpf.Program, func: str) -> int:
    btf = prog.btf
    assert btf is not None
    return btf.find(func, pybpf.Kind.FUNC).id


@pytest.mark.needs("trampoline")
def test_freplace_changes_class_then_detach_restores(load):
    tgt = load("ext_target")
    xp = tgt.programs["xdp_classify"]
    assert xp.test_run(PACKET).retval == 2
    assert counts(tgt) == {CLASS_DEFAULT: 1}

    with opened("ext_replace") as e:
        new = e.programs["new_classify"]
        new.set_attach_target(xp, "classify")
        e.load()
        assert new.type == pybpf.ProgType.EXT
        with new.attach() as link:
            info = link.info()
            assert info.type == pybpf.LinkType.TRACING and info.prog_id == new.id
            assert info.details["target_obj_id"] == xp.id
            assert info.details["target_btf_id"] == func_btf_id(xp, "classify")
            repl = ext.replacements(xp)
            assert set(repl) == {"classify"}
            assert repl["classify"].prog_name == "new_classify" and repl["classify"].prog_id == new.id
            assert repl["classify"].link_id == info.id and repl["classify"].kind == "freplace"

            assert xp.test_run(PACKET).retval == 2
            assert xp.test_run(PACKET[:20]).retval == 2   # even a short packet: the extension decides
            assert counts(tgt) == {CLASS_DEFAULT: 1, CLASS_REPLACED: 2}
            assert e.variables["calls"] == 2
        # detached: the original classify() is back
        assert ext.replacements(xp) == {}
        xp.test_run(PACKET)
        xp.test_run(PACKET[:20])
        assert counts(tgt) == {CLASS_SHORT: 1, CLASS_DEFAULT: 2, CLASS_REPLACED: 2}
        assert e.variables["calls"] == 2


@pytest.mark.needs("trampoline")
def test_freplace_target_by_pin_and_second_target_by_id(load, bpffs):
    first, second = load("ext_target"), load("ext_target")
    xp1, xp2 = first.programs["xdp_classify"], second.programs["xdp_classify"]
    pin = os.path.join(bpffs, "ext_target")
    xp1.pin(pin)
    try:
        with opened("ext_replace") as e:
            new = e.programs["new_classify"]
            new.set_attach_target(pin, "classify")          # the target named by its pin
            e.load()
            with new.attach() as l1, new.attach_freplace(xp2.id, "classify") as l2:   # and by id
                assert l1.info().details["target_obj_id"] == xp1.id
                assert l2.info().details["target_obj_id"] == xp2.id
                xp1.test_run(PACKET)
                xp2.test_run(PACKET)
                xp2.test_run(PACKET)
                assert counts(first) == {CLASS_REPLACED: 1}
                assert counts(second) == {CLASS_REPLACED: 2}
                assert e.variables["calls"] == 3
                assert ext.replacements(xp2)["classify"].prog_id == new.id
            xp2.test_run(PACKET)
            assert counts(second) == {CLASS_REPLACED: 2, CLASS_DEFAULT: 1}
    finally:
        xp1.unpin(pin)


# -- errors explained by prechecks (no trampoline load needed: these run on the host too) ----------------

def test_replacing_static_function_explained(load):
    xp = load("ext_target").programs["xdp_classify"]
    with opened("ext_replace") as e:
        with pytest.raises(pybpf.BPFInvalidError) as ei:
            e.programs["new_classify"].set_attach_target(xp, "adjust")
    msg = str(ei.value)
    assert "adjust() is a static function" in msg and "only global functions can be replaced" in msg
    assert f"id {xp.id}" in msg and "drop 'static'" in (ei.value.hint or "")


@pytest.mark.parametrize("prog, why", [
    ("extra_arg", "extra_arg() takes 2 argument(s), classify() takes 1"),
    ("wrong_ctx", "points to struct __sk_buff in wrong_ctx() but to struct xdp_md in classify()"),
])
def test_signature_mismatch_explained(load, prog, why):
    xp = load("ext_target").programs["xdp_classify"]
    with opened("ext_badsig") as e:
        with pytest.raises(pybpf.BPFInvalidError) as ei:
            e.programs[prog].set_attach_target(xp.id, "classify")
    msg = str(ei.value)
    assert "signatures do not match" in msg and why in msg
    assert "target:      int classify(struct xdp_md *ctx)" in msg


def test_unknown_function_explained(load):
    xp = load("ext_target").programs["xdp_classify"]
    with opened("ext_replace") as e:
        with pytest.raises(pybpf.BPFNotFoundError) as ei:
            e.programs["new_classify"].set_attach_target(xp, "clasify")
    msg = str(ei.value)
    assert "has no function named 'clasify'" in msg and "classify, xdp_classify" in msg
    assert "'classify'" in (ei.value.hint or "")


def test_target_without_btf_explained():
    # an XDP program loaded from raw instructions, without BTF
    with pybpf.Program.from_fd(raw.prog_load(pybpf.ProgType.XDP, RET0, name="no_btf")) as bare:
        assert bare.info().btf_id == 0
        with opened("ext_replace") as e:
            with pytest.raises(pybpf.BPFInvalidError) as ei:
                e.programs["new_classify"].set_attach_target(bare, "classify")
    assert "the target has no BTF" in str(ei.value) and "-g" in (ei.value.hint or "")


def test_extension_without_target_explained():
    with opened("ext_replace") as e:
        with pytest.raises(pybpf.StateError) as ei:
            e.load()
    assert "no attach target was set" in str(ei.value) and "set_attach_target" in (ei.value.hint or "")


def test_extension_of_kernel_function_explained():
    with opened("ext_replace") as e:
        with pytest.raises(pybpf.BPFError) as ei:
            e.programs["new_classify"].set_attach_target(None, "tcp_connect")
    assert "not a kernel function" in str(ei.value) and "target program" in (ei.value.hint or "")


@pytest.mark.skipif(probe("trampoline").supported or not probe("trampoline").refused_by_policy,
                    reason="only where the kernel refuses trampolines by policy (the host)")
def test_policy_refusal_explained(load):
    xp = load("ext_target").programs["xdp_classify"]
    with opened("ext_replace") as e:
        e.programs["new_classify"].set_attach_target(xp, "classify")
        with pytest.raises(pybpf.BPFPermissionError) as ei:
            e.load()
    assert "refused it with EPERM" in str(ei.value) and "pybpf.vm run" in (ei.value.hint or "")


# -- errors that need a loaded extension or tracing program (guests) -----------------------------------

@pytest.mark.needs("trampoline")
def test_extending_an_extension_explained(load):
    xp = load("ext_target").programs["xdp_classify"]
    with opened("ext_replace") as e1, opened("ext_replace") as e2:
        first = e1.programs["new_classify"]
        first.set_attach_target(xp, "classify")
        e1.load()
        with first.attach():
            with pytest.raises(pybpf.BPFInvalidError) as ei:
                e2.programs["new_classify"].set_attach_target(first, "new_classify")
    msg = str(ei.value)
    assert "cannot extend an extension" in msg and "one level" in msg
    assert f"classify() of program 'xdp_classify' (id {xp.id})" in msg      # what the extension replaces
    assert f"set_attach_target({xp.id}, 'classify')" in (ei.value.hint or "")


@pytest.mark.needs("trampoline")
@pytest.mark.parametrize("kind", ["fexit", "fentry"])
def test_extending_tracing_program_explained(load, kind):
    xp = load("ext_target").programs["xdp_classify"]
    name = f"{kind}_main"
    with opened("tramp_bpf") as t:
        for other in t.programs:
            if other != name:
                t.programs[other].set_autoload(False)
        tp = t.programs[name]
        tp.set_attach_target(xp, "xdp_classify")
        t.load()
        # named as a Program of an Object: pybpf knows its kind and refuses before loading
        with opened("ext_replace") as e:
            with pytest.raises(pybpf.BPFInvalidError) as ei:
                e.programs["new_classify"].set_attach_target(tp, name)
        assert f"cannot extend an {kind} program" in str(ei.value)
        # named by id and not attached anywhere, its kind is unknown: the kernel's verdict is
        # explained, with the verifier log kept
        with opened("ext_replace") as e:
            e.programs["new_classify"].set_attach_target(tp.id, name)
            with pytest.raises(pybpf.VerifierError) as vi:
                e.load()
        # 6.1 words it "Cannot replace static functions" (the tracing program's function takes a raw
        # context), later kernels "Cannot extend fentry/fexit"
        assert "Cannot extend fentry/fexit" in vi.value.log or "Cannot replace static functions" in vi.value.log
        assert "an fentry/fexit program cannot be extended" in str(vi.value)


@pytest.mark.needs("trampoline")
def test_freplace_and_fexit_on_one_function_busy_explained(load):
    xp = load("ext_target").programs["xdp_classify"]
    with opened("tramp_bpf") as t, opened("ext_replace") as e:
        for name in ("fentry_main", "fentry_sub", "fexit_main"):
            t.programs[name].set_autoload(False)
        fx = t.programs["fexit_sub"]
        fx.set_attach_target(xp, "classify")
        t.load()
        new = e.programs["new_classify"]
        new.set_attach_target(xp, "classify")
        e.load()
        # the extension first, then fexit
        with new.attach() as el:
            with pytest.raises(pybpf.BPFBusyError) as ei:
                fx.attach()
            msg = str(ei.value)
            assert ei.value.errno == 16 and "busy" in msg
            assert f"freplace program 'new_classify' (id {new.id}, link id {el.id})" in msg
            assert f"classify() of program 'xdp_classify' (id {xp.id})" in msg
            assert "an extension replaces" in msg
        # and the other way round: fexit first, then the extension (named explicitly: its
        # load-time target was used up by its first link)
        with fx.attach() as fl:
            with pytest.raises(pybpf.BPFBusyError) as ei:
                new.attach_freplace(xp, "classify")
            msg = str(ei.value)
            assert ei.value.errno == 16
            assert f"fexit program 'fexit_sub' (id {fx.id}, link id {fl.id})" in msg
        # nothing busy any more
        with new.attach_freplace(xp, "classify"):
            assert ext.replacements(xp)["classify"].prog_id == new.id


@pytest.mark.needs("trampoline")
def test_extension_attach_again_without_target_explained(load):
    tgt = load("ext_target")
    xp = tgt.programs["xdp_classify"]
    with opened("ext_replace") as e:
        new = e.programs["new_classify"]
        new.set_attach_target(xp, "classify")
        e.load()
        new.attach().close()
        with pytest.raises(pybpf.BPFInvalidError) as ei:
            new.attach()
        assert "no longer has a default target" in str(ei.value)
        assert f"attach_freplace({xp.id}, 'classify')" in (ei.value.hint or "")
        with new.attach_freplace(xp, "classify"):
            xp.test_run(PACKET)
        assert counts(tgt) == {CLASS_REPLACED: 1}
