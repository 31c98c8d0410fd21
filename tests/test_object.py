"""Object: open (path, bytes), open-time settings, load, errors, lifetime."""
from __future__ import annotations

import errno
import os

import pytest

import pybpf
from conftest import compiled

pytestmark = pytest.mark.usefixtures("fd_leak_check")


def test_open_path_and_bytes_list_programs_and_maps():
    path = compiled("maps")
    with pybpf.Object.open(path) as a, pybpf.Object.open(path.read_bytes(), name="from_mem") as b:
        for obj in (a, b):
            assert list(obj.programs) == ["fill"]
            assert {"arr", "flows", "lru", "pcpu_arr", "pcpu_hash", "events"} <= set(obj.maps)
            assert obj.programs["fill"].type == pybpf.ProgType.XDP
            assert obj.programs["fill"].section == "xdp"
        assert b.name == "from_mem"
        b.load()
        assert b.programs["fill"].test_run(bytes(64)).retval == 2  # XDP_PASS


def test_autoload_off_leaves_program_unloaded():
    with pybpf.Object.open(compiled("verifier_reject")) as obj:
        obj.programs["no_null_check"].set_autoload(False)   # the verifier would refuse it
        obj.load()
        assert obj.programs["fine"].fd >= 0
        assert obj.programs["fine"].test_run(bytes(64)).retval == 1  # XDP_DROP
        with pytest.raises(pybpf.StateError, match="autoload"):
            obj.programs["no_null_check"].test_run(bytes(64))


def test_open_time_settings_rejected_after_load(load):
    obj = load("maps")
    with pytest.raises(pybpf.StateError, match="after its object was loaded"):
        obj.programs["fill"].set_autoload(False)
    with pytest.raises(pybpf.StateError, match="after its object was loaded"):
        obj.maps["arr"].set_max_entries(4)
    with pytest.raises(pybpf.StateError, match="already loaded"):
        obj.load()


def test_set_max_entries_before_load_reaches_kernel():
    with pybpf.Object.open(compiled("maps")) as obj:
        obj.maps["lru"].set_max_entries(64)
        obj.load()
        assert obj.maps["lru"].info().max_entries == 64


def test_verifier_error_carries_the_verifiers_words():
    with pybpf.Object.open(compiled("verifier_reject")) as obj:
        with pytest.raises(pybpf.VerifierError) as ei:
            obj.load()
    e = ei.value
    assert e.program == "no_null_check"
    assert e.errno == errno.EACCES
    assert "invalid mem access 'map_value_or_null'" in e.log
    assert "invalid mem access 'map_value_or_null'" in str(e)   # shown in the message's tail
    assert "NULL" in (e.hint or "")


def test_malformed_elf_raises_typed_error():
    with pytest.raises(pybpf.BPFError) as ei:
        pybpf.Object.open(b"\x7fELF" + b"\x00" * 200)
    assert isinstance(ei.value, (pybpf.ELFError, pybpf.BPFInvalidError))
    with pytest.raises(pybpf.ELFError, match="open BPF object"):
        pybpf.Object.open(b"this is not an ELF file at all" * 4)


def test_truncated_elf_raises_no_crash():
    data = compiled("maps").read_bytes()
    for cut in (16, 64, len(data) // 3, len(data) // 2, len(data) - 8):
        with pytest.raises(pybpf.BPFError):
            obj = pybpf.Object.open(data[:cut])
            obj.load()  # if open survived, load must fail cleanly
            obj.close()


def test_missing_object_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pybpf.Object.open("/nonexistent/prog.bpf.o")


def test_unknown_program_or_map_name_lists_known_ones(load):
    obj = load("maps")
    with pytest.raises(KeyError, match="has no program named 'nope' .*fill"):
        obj.programs["nope"]
    with pytest.raises(KeyError, match="has no map named 'nope'"):
        obj.maps["nope"]


def test_use_after_close_raises_clear_error():
    obj = pybpf.Object.open(compiled("maps"))
    obj.load()
    prog, m = obj.programs["fill"], obj.maps["arr"]
    obj.close()
    obj.close()  # idempotent
    for action in (lambda: prog.test_run(bytes(64)), lambda: m[0], lambda: prog.fd, lambda: obj.programs,
                   lambda: obj.load(), lambda: m.update(0, 1)):
        with pytest.raises(pybpf.ClosedError, match="is closed"):
            action()


def test_global_variables_before_and_after_load():
    with pybpf.Object.open(compiled("xdp_count")) as obj:
        assert obj.variables["verdict"] == 2          # XDP_PASS from the source
        obj.variables["verdict"] = 1                  # XDP_DROP, into .rodata before load
        obj.load()
        prog = obj.programs["xdp_count"]
        assert prog.test_run(bytes(64)).retval == 1   # the kernel saw the new constant
        assert obj.variables["seen"] == 1
        obj.variables["seen"] = 41                    # .bss after load: written to the kernel map
        prog.test_run(bytes(64))
        assert obj.variables["seen"] == 42
        with pytest.raises(pybpf.StateError, match="read-only"):
            obj.variables["verdict"] = 2
        with pytest.raises(KeyError, match="no global variable"):
            obj.variables["nope"]


def test_global_variables_in_named_subsections():
    """.data.NAME, .bss.NAME and .rodata.NAME: each its own map, every variable
    reachable by name; the .rodata.NAME one settable before load only."""
    with pybpf.Object.open(compiled("subsections")) as obj:
        assert sorted(obj.variables) == ["hits", "last_len", "step"]
        assert (obj.variables["hits"], obj.variables["step"]) == (5, 7)
        obj.variables["step"] = 3
        obj.load()
        names = {m.name for m in obj.maps.values()}
        assert {n[n.index("."):] for n in names} == {".data.counters", ".bss.scratch", ".rodata.limits"}, names
        prog = obj.programs["subsec_count"]
        prog.test_run(bytes(60))
        prog.test_run(bytes(60))
        assert obj.variables["hits"] == 5 + 2 * 3 and obj.variables["last_len"] == 60
        obj.variables["hits"] = 100
        prog.test_run(bytes(70))
        assert obj.variables["hits"] == 103 and obj.variables["last_len"] == 70
        with pytest.raises(pybpf.StateError, match="read-only"):
            obj.variables["step"] = 1


def test_libbpf_log_goes_to_logging_not_stderr(caplog, capfd):
    """libbpf's messages reach the ``pybpf.libbpf`` logger; nothing is printed."""
    import logging

    with caplog.at_level(logging.DEBUG, logger="pybpf.libbpf"):
        with pybpf.Object.open(compiled("verifier_reject")) as obj:
            with pytest.raises(pybpf.VerifierError):
                obj.load()
    libbpf = [r for r in caplog.records if r.name == "pybpf.libbpf"]
    assert any("failed to load" in r.getMessage() or "load failed" in r.getMessage() for r in libbpf), \
        [r.getMessage() for r in libbpf][-5:]
    assert any(r.levelno == logging.WARNING for r in libbpf)
    out, err = capfd.readouterr()
    assert "libbpf" not in err and "libbpf" not in out, err


def test_kconfig_supplied_values(tmp_path):
    src = tmp_path / "kcfg.bpf.c"
    src.write_text('#include "pybpf.bpf.h"\nextern int CONFIG_PYBPF_TEST_VALUE __kconfig __weak;\n'
                   'SEC("xdp") int k(struct xdp_md *c) { return CONFIG_PYBPF_TEST_VALUE; }\n'
                   'char LICENSE[] SEC("license") = "GPL";\n')
    with pybpf.Object.open(pybpf.compile(src), kconfig={"CONFIG_PYBPF_TEST_VALUE": 3}) as obj:
        obj.load()
        assert obj.programs["k"].test_run(bytes(64)).retval == 3


def test_program_info_and_stats(load):
    obj = load("maps")
    prog = obj.programs["fill"]
    info = prog.info()
    assert info.id > 0 and info.name == "fill" and len(info.tag) == 16 and info.type == pybpf.ProgType.XDP
    assert set(info.map_ids) >= {obj.maps["arr"].id, obj.maps["flows"].id}
    assert prog.info().run_cnt == 0                  # stats off: nothing counted
    with pybpf.enable_stats():
        prog.test_run(bytes(64), repeat=5)
        info = prog.info()
        assert info.run_cnt == 5 and info.run_time_ns > 0
    prog.test_run(bytes(64), repeat=5)
    assert prog.info().run_cnt == 5                  # stats off again: no more counting


def test_program_from_id_and_pin(load, bpffs):
    obj = load("maps")
    prog = obj.programs["fill"]
    with pybpf.Program.from_id(prog.id) as same:
        assert same.name == "fill" and same.test_run(bytes(64)).retval == 2
    path = os.path.join(bpffs, "fill")
    prog.pin(path)
    with pybpf.Program.from_pinned(path) as pinned:
        assert pinned.id == prog.id
    with pytest.raises(pybpf.BPFExistsError):
        prog.pin(path)
    prog.unpin(path)
    with pytest.raises(FileNotFoundError):
        pybpf.Program.from_pinned(path)


def test_pin_of_another_kind_is_refused_with_its_kind_named(load, bpffs):
    """OBJ_GET opens any pin: from_pinned checks what the fd is (the kernel
    would fill a map's info into a program's buffer without complaint)."""
    obj = load("maps")
    prog_pin, map_pin = os.path.join(bpffs, "p"), os.path.join(bpffs, "m")
    obj.programs["fill"].pin(prog_pin)
    next(iter(obj.maps.values())).pin(map_pin)
    for opener, path, msg in ((pybpf.Program.from_pinned, map_pin, "is a pinned map, not a prog"),
                              (pybpf.Map.from_pinned, prog_pin, "is a pinned prog, not a map"),
                              (pybpf.Link.from_pinned, map_pin, "is a pinned map, not a link")):
        with pytest.raises(pybpf.BPFInvalidError, match=msg):
            opener(path)
    with pybpf.Map.from_pinned(map_pin) as m, pybpf.Program.from_pinned(prog_pin) as p:
        assert p.id == obj.programs["fill"].id and m.id == next(iter(obj.maps.values())).id
    os.unlink(prog_pin)
    os.unlink(map_pin)


def test_pin_name_with_dot_explained(load, bpffs):
    obj = load("maps")
    with pytest.raises(pybpf.BPFError) as ei:
        obj.programs["fill"].pin(os.path.join(bpffs, "has.dot"))
    assert "'.'" in (ei.value.hint or "")
