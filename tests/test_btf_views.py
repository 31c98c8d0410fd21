"""BTF-typed views of map values: named fields, nested structs and unions,
arrays, enums, bitfields, char arrays, kernel-managed fields; updates from
dicts and keyword arguments checked by a BPF program reading them; and the
JSON dump compared with ``bpftool map dump -j`` for the same maps."""
from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any, Iterator

import pytest

import pybpf
from pybpf.core.codec import EnumInt, Special, Struct
from pybpf.core.map import F_LOCK
from pybpf.errors import BPFInvalidError

from conftest import compiled

pytestmark = pytest.mark.usefixtures("fd_leak_check")


@pytest.fixture
def views() -> Iterator[pybpf.Object]:
    obj = pybpf.Object.open(compiled("views_types"))
    try:
        obj.load()
        yield obj
    finally:
        obj.close()


def fill(obj: pybpf.Object) -> None:
    assert obj.programs["fill"].test_run(repeat=0).retval == 0
    assert obj.programs["bump"].test_run(bytes(64)).retval == 0


def echo(obj: pybpf.Object) -> Struct:
    assert obj.programs["echo"].test_run(repeat=0).retval == 0
    e = obj.maps["echoes"][0]
    assert e.found == 1, "the echo program found no recs[42]"
    return e


def bpftool_dump(m: pybpf.Map) -> list[dict[str, Any]]:
    out = subprocess.run(["bpftool", "map", "dump", "id", str(m.id), "-j"], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def test_struct_written_by_bpf_decodes_field_by_field(views: pybpf.Object) -> None:
    fill(views)
    r = views.maps["recs"][7]
    assert isinstance(r, Struct) and repr(r).startswith("struct vt_rec(")
    assert r.id == 0x1122334455667788 and r.delta == -42 and r.small == 200 and r.ok is True
    assert r.name == "kernel"                      # char[12] with text: str
    assert r.raw == b"\x01\x02\x03\x04"            # char[4] of control bytes: bytes
    assert r.pts == [{"x": -1, "y": 2}, {"x": 300, "y": -300}]
    assert isinstance(r.lvl, EnumInt) and r.lvl == 5 and r.lvl.name == "LVL_MID"
    assert r.u.word == 0x01020304 and r.u.bytes == [4, 3, 2, 1]  # union: every member
    assert r.anon_named == {"a": 11, "b": 12}
    assert (r.lo, r.mid, r.neg) == (5, 300, -3)     # bitfields, one signed
    assert r.lvl_bits == 100 and r.lvl_bits.name == "LVL_HIGH"  # enum bitfield keeps its names
    assert r.ptr == 0xFFFF888000001000             # a plain pointer is an int
    other = views.maps["recs"][9]
    assert other.lvl == 3 and other.lvl.name is None   # no enumerator for 3
    assert other.name == "" and other.raw == "ok"
    # A struct key.
    assert views.maps["by_point"][{"x": -3, "y": 7}].name == "LVL_HIGH"
    assert list(views.maps["by_point"].keys()) == [{"x": -3, "y": 7}]


def test_update_from_dict_and_keywords_as_the_compiler_lays_it_out(views: pybpf.Object) -> None:
    recs = views.maps["recs"]
    recs[42] = {"id": 99, "delta": -7, "small": 255, "ok": True, "lvl": "LVL_HIGH", "lo": 7, "mid": 511, "neg": -16,
                "lvl_bits": "LVL_LOW", "pts": [{"x": 1, "y": 2}, {"x": 3, "y": -4}], "u": {"bytes": [9, 8, 7, 6]},
                "anon_named": {"a": 500}, "name": "abcdefghijk", "ptr": 0x1000}
    e = echo(views)
    assert (e.id, e.delta, e.small, e.ok, e.lvl) == (99, -7, 255, 1, 100)
    assert (e.lo, e.mid, e.neg, e.lvl_bits) == (7, 511, -16, 1)
    assert (e.pt1_y, e.byte2, e.a) == (-4, 7, 500)
    assert (e.name0, e.name_last) == (ord("a"), 0)
    assert e.ptr == 0x1000
    # Keyword arguments change only the named members.
    recs.update_fields(42, delta=12345, mid=3, lvl="LVL_MID")
    e = echo(views)
    assert (e.delta, e.mid, e.lvl) == (12345, 3, 5)
    assert (e.id, e.lo, e.neg, e.pt1_y) == (99, 7, -16, -4)
    # Attribute assignment on a decoded value, written back.
    v = recs[42]
    v.small = 1
    v.pts[0].y = 77
    recs[42] = v
    assert recs[42].small == 1 and recs[42].pts[0].y == 77 and echo(views).small == 1


@pytest.mark.parametrize("value, words", [
    ({"nope": 1}, "has no member 'nope'"),
    ({"lvl": "ULTRA"}, "has no enumerator 'ULTRA'"),
    ({"lvl_bits": "ULTRA"}, "has no enumerator 'ULTRA'"),
    ({"lo": 8}, "does not fit bitfield struct vt_rec.lo (3 bits)"),
    ({"neg": -17}, "does not fit bitfield"),
    ({"small": 256}, "out of range"),
    ({"name": "x" * 13}, "holds 12 bytes"),
    ({"pts": [{}, {}, {}]}, "holds 2 elements"),
    ({"delta": "12"}, "takes an int"),
    (42, "takes a dict of its members"),
])
def test_bad_values_are_refused_with_words(views: pybpf.Object, value: Any, words: str) -> None:
    recs = views.maps["recs"]
    with pytest.raises(BPFInvalidError) as ei:
        recs[1] = value
    assert words in str(ei.value)
    assert 1 not in recs  # nothing was written


def test_special_fields_are_typed_and_left_to_the_kernel(views: pybpf.Object) -> None:
    fill(views)
    locks = views.maps["locks"]
    v = locks[1]
    assert isinstance(v.lock, Special) and v.lock == "bpf_spin_lock" and v.lock.kind == "bpf_spin_lock"
    assert v.timer == "bpf_timer" and not v.timer.is_kptr
    assert v.lock.raw == bytes(4) and v.count == 5 and v.tag == "abc"
    assert set(locks.value_codec.special_fields) == {"lock", "timer"}
    # Userspace cannot write kernel-managed fields...
    with pytest.raises(BPFInvalidError, match="bpf_spin_lock is kernel-managed"):
        locks[1] = {"lock": 1, "count": 1}
    # ...but can write the rest, also under the map's spin lock (BPF_F_LOCK),
    # and the program's locked increment keeps working on top.
    locks.update(1, {"count": 100, "tag": "py", "lock": None}, F_LOCK)
    assert locks[1].count == 100
    locks[1] = v            # a decoded value, specials included, writes back
    assert locks[1].count == 5
    fill(views)
    assert locks[1].count == 10 and locks[1].tag == "abc"


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool is not installed")
def test_json_dump_matches_bpftool(views: pybpf.Object) -> None:
    fill(views)
    views.maps["recs"][42] = {"id": 1, "name": "from python", "lvl": "LVL_LOW", "lo": 1, "neg": -1}
    compared = []
    for name in views.maps:
        m = views.maps[name]
        tool = bpftool_dump(m)
        assert m.dump_json() == tool, f"map {name}: pybpf's JSON differs from bpftool's"
        compared.append(name)
    assert {"recs", "locks", "pcpu", "by_point"} <= set(compared)
    # The comparison is not vacuous: typed values are there, in bpftool's spelling.
    recs = {tuple(e["key"]): e for e in views.maps["recs"].dump_json()}
    r7 = recs[("0x07", "0x00", "0x00", "0x00")]["formatted"]
    assert r7["key"] == 7 and r7["value"]["name"] == "kernel" and r7["value"]["lvl"] == "LVL_MID"
    assert r7["value"]["lo"] == "0x5" and r7["value"]["neg"] == "0x1d"   # bitfields: hex strings
    assert r7["value"]["raw"] == [1, 2, 3, 4]                             # char, not text: numbers
    pcpu = views.maps["pcpu"].dump_json()
    assert "values" in pcpu[0] and pcpu[0]["formatted"]["values"][0]["cpu"] == 0
    assert json.loads(views.maps["locks"].to_json()) == bpftool_dump(views.maps["locks"])
