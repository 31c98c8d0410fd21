"""Static linking (libbpf's bpf_linker): extern functions, maps and
variables resolved across objects, __weak overridden by strong definitions,
conflicts named; the linked object loads and computes what its code says."""
from __future__ import annotations

import os

import pytest

import pybpf
from pybpf.features.linker import LinkError, link_objects

from conftest import compiled

pytestmark = pytest.mark.usefixtures("fd_leak_check")

PKT = b"\0" * 64


def _run(path, a=6, b=7):
    with pybpf.Object.open(path) as obj:
        obj.variables["input_a"] = a
        obj.variables["input_b"] = b
        obj.load()
        r = obj.programs["link_entry"].test_run(PKT)
        return r.retval, obj.maps["shared"][0], obj.variables["lib_calls"], obj.variables["lib_scale"]


def expected(a, b, scale=3, strong_bonus=False):
    mix = a * 10 + b
    bonus = a * 100 if strong_bonus else a + 1
    return mix * scale + bonus


@pytest.mark.parametrize("a,b", [(6, 7), (1, 2), (40, -3)])
def test_externs_resolved_and_weak_default_used(tmp_path, a, b):
    out = link_objects([compiled("link_main"), compiled("link_lib")], tmp_path / "linked.o")
    assert out == tmp_path / "linked.o" and out.exists()
    retval, slot, calls, scale = _run(out, a, b)
    want = expected(a, b)
    assert retval == want & 0xFFFFFFFF           # test_run reports the u32 return value
    assert slot == want & 0xFFFFFFFFFFFFFFFF      # stored through the extern map
    assert calls == 1 and scale == 3              # the library's variables live in the linked object


def test_strong_definition_overrides_weak(tmp_path):
    out = link_objects([compiled("link_main"), compiled("link_lib"), compiled("link_strong")], tmp_path / "o.o")
    retval, slot, calls, _ = _run(out)
    assert retval == slot == expected(6, 7, strong_bonus=True) == 801
    # order of inputs does not matter for symbol resolution
    out2 = link_objects([compiled("link_strong"), compiled("link_lib"), compiled("link_main")], tmp_path / "o2.o")
    assert _run(out2)[0] == 801


def test_linked_object_has_one_map_per_definition(tmp_path):
    out = link_objects([compiled("link_main"), compiled("link_lib")], tmp_path / "o.o")
    with pybpf.Object.open(out) as obj:
        assert "shared" in obj.maps and list(obj.programs) == ["link_entry"]
        assert {"lib_scale", "lib_calls", "input_a", "input_b"} <= set(obj.variables)


def test_duplicate_strong_symbol_is_named(tmp_path):
    out = tmp_path / "dup.o"
    with pytest.raises(LinkError) as ei:
        link_objects([compiled("link_main"), compiled("link_lib"), compiled("link_dup")], out)
    e = ei.value
    assert e.symbol == "lib_mix" and "'lib_mix'" in str(e) and "non-weak" in str(e)
    assert "__weak" in e.hint and "link_dup" in str(e)
    assert isinstance(e, pybpf.BPFError) and e.errno
    assert not out.exists() and not [p for p in os.listdir(tmp_path)]    # nothing half-written left


def test_mismatched_extern_map_is_named(tmp_path):
    with pytest.raises(LinkError, match=r"symbol 'shared'.*map type mismatch") as ei:
        link_objects([compiled("link_lib"), compiled("link_badmap")], tmp_path / "bad.o")
    assert ei.value.symbol == "shared" and "same type" in ei.value.hint


def test_bad_inputs(tmp_path):
    with pytest.raises(pybpf.BPFNotFoundError, match="does not exist"):
        link_objects([tmp_path / "missing.o"], tmp_path / "o.o")
    text = tmp_path / "t.o"
    text.write_bytes(b"not an elf at all, certainly not BPF")
    with pytest.raises(pybpf.ELFError, match="not an ELF file"):
        link_objects([text], tmp_path / "o.o")
    with pytest.raises(pybpf.ELFError, match="not BPF"):
        link_objects(["/bin/true"], tmp_path / "o.o")
    with pytest.raises(LinkError, match="no input objects"):
        link_objects([], tmp_path / "o.o")
    with pytest.raises(LinkError, match="is a directory"):
        link_objects([compiled("link_lib")], tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["t.o"]
