"""BTF through libbpf: kernel and object types, vmlinux.h generation."""
from __future__ import annotations

import pytest

import pybpf
from pybpf import Kind


def test_kernel_btf_struct_members_and_func_proto():
    v = pybpf.Btf.vmlinux()
    ops = v.find("tcp_congestion_ops", Kind.STRUCT)
    names = [m.name for m in ops.members]
    assert {"ssthresh", "cong_avoid", "name", "init"} <= set(names)
    name = next(m for m in ops.members if m.name == "name")
    assert v[name.type_id].resolved().kind == Kind.ARRAY
    proto = v.func_proto("tcp_v4_connect")
    assert [p.name for p in proto.params] == ["sk", "uaddr", "addr_len"]
    assert v[proto.params[0].type_id].describe() == "struct sock *"
    with pytest.raises(KeyError, match="no BTF FUNC type named"):
        v.find("no_such_function_anywhere", Kind.FUNC)


def test_object_btf_types(load):
    obj = load("maps")
    btf = obj.btf
    flow = btf.find("flow", Kind.STRUCT)
    assert [m.name for m in flow.members][:3] == ["addr", "in", "hist"]
    bits = {m.name: m.bitfield_size for m in flow.members}
    assert bits["bits_lo"] == 3 and bits["bits_hi"] == 5
    color = btf.find("color", Kind.ENUM)
    assert {(e.name, e.value) for e in color.enumerators} == {("RED", 1), ("GREEN", 2), ("BLUE", 4)}


def test_btf_from_bytes_rejects_garbage():
    with pytest.raises(pybpf.BPFError):
        pybpf.Btf.from_bytes(b"\x9f\xeb\x01\x00" + b"\xff" * 40)


def test_vmlinux_h_is_generated_and_cached():
    path = pybpf.vmlinux_h()
    text = path.read_text()
    assert "struct task_struct {" in text and "#define __VMLINUX_H__" in text
    assert pybpf.vmlinux_h() == path


def test_compile_error_shows_clang_output(tmp_path):
    src = tmp_path / "broken.bpf.c"
    src.write_text('#include "pybpf.bpf.h"\nSEC("xdp") int f(struct xdp_md *c) { return undefined_thing; }\n')
    with pytest.raises(pybpf.CompileError, match="undefined_thing"):
        pybpf.compile(src)
