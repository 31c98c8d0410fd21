"""Maps: every common type, BTF-typed values, batches, errors, pins."""
from __future__ import annotations

import os

import pytest

import pybpf
from pybpf.errors import BPFInvalidError

pytestmark = pytest.mark.usefixtures("fd_leak_check")

NCPU = os.sysconf("SC_NPROCESSORS_CONF")


@pytest.fixture
def filled(load):
    obj = load("maps")
    obj.programs["fill"].test_run(bytes(64))
    obj.programs["fill"].test_run(bytes(70))
    return obj


def test_array_written_by_program_and_python(filled):
    arr = filled.maps["arr"]
    assert arr[1] == 2 and arr[0] == 0
    arr[3] = 123
    assert arr[3] == 123 and arr.lookup(3) == 123
    assert list(arr.keys()) == list(range(8))
    assert dict(arr.items())[3] == 123
    arr[3] = (5).to_bytes(8, "little")        # raw bytes always accepted
    assert arr[3] == 5


def test_hash_struct_value_decoded_through_btf(filled):
    flows = filled.maps["flows"]
    v = flows[7]
    assert v.addr == 0x0100007F and v["in"].port == 8080 and v["in"].flags == 3
    assert v.hist == [1, 0, 0, 4]
    assert v.color == 4 and v.color.name == "BLUE"
    assert v.label == "pybpf"
    assert v.u.as_u32 == 0x04030201 and v.u.as_bytes == [1, 2, 3, 4]
    assert (v.bits_lo, v.bits_hi, v.sbits) == (5, 17, -3)


def test_hash_struct_update_from_dict_roundtrips(filled):
    flows = filled.maps["flows"]
    flows[9] = {"addr": 1, "in": {"port": 53}, "color": "GREEN", "label": "dns", "bits_hi": 31, "sbits": -32}
    v = flows[9]
    assert (v.addr, v["in"].port, v.color.name, v.label, v.bits_hi, v.sbits) == (1, 53, "GREEN", "dns", 31, -32)
    assert v.hist == [0, 0, 0, 0]
    with pytest.raises(BPFInvalidError, match="has no member 'nope'"):
        flows[10] = {"nope": 1}
    with pytest.raises(BPFInvalidError, match="no enumerator 'PURPLE'"):
        flows[10] = {"color": "PURPLE"}
    with pytest.raises(BPFInvalidError, match="does not fit bitfield"):
        flows[10] = {"bits_lo": 8}
    with pytest.raises(BPFInvalidError, match="out of range"):
        flows[10] = {"addr": -1}
    assert 10 not in flows


def test_missing_key_is_keyerror(filled):
    flows = filled.maps["flows"]
    with pytest.raises(KeyError, match="not in map 'flows'"):
        flows[12345]
    with pytest.raises(pybpf.BPFKeyError):
        del flows[12345]
    assert flows.get(12345) is None and flows.lookup(12345, "dflt") == "dflt"


def test_update_flags(filled):
    flows = filled.maps["flows"]
    with pytest.raises(FileExistsError, match="already present"):
        flows.update(7, {}, pybpf.NOEXIST)
    with pytest.raises(KeyError, match="not present"):
        flows.update(99, {}, pybpf.EXIST)


def test_wrong_key_size_is_clear(filled):
    with pytest.raises(BPFInvalidError, match="key of map 'arr' is 4 bytes; got 3 bytes"):
        filled.maps["arr"][b"\x00\x00\x00"]
    with pytest.raises(BPFInvalidError, match="value of map 'arr' is 8 bytes; got 2 bytes"):
        filled.maps["arr"][0] = b"\x00\x00"
    with pytest.raises(BPFInvalidError, match="takes an int"):
        filled.maps["arr"]["zero"]


def test_lru_hash(filled):
    lru = filled.maps["lru"]
    assert lru[42] == 7
    for k in range(100):                      # more than max_entries: old keys get evicted
        lru[1000 + k] = k
    assert len(lru) <= 16 + 2 * NCPU
    assert lru[1099] == 99


def test_percpu_array_one_value_per_possible_cpu(filled):
    pc = filled.maps["pcpu_arr"]
    ncpus = pybpf.core.map._possible_cpus()
    v = pc[1]
    assert isinstance(v, list) and len(v) == ncpus and sum(v) == 2
    pc[2] = 7                                  # one value: every CPU
    assert pc[2] == [7] * ncpus
    pc[2] = list(range(ncpus))
    assert pc[2] == list(range(ncpus))
    with pytest.raises(BPFInvalidError, match="one per possible CPU"):
        pc[2] = [1] * (ncpus + 1)


def test_percpu_hash(filled):
    ph = filled.maps["pcpu_hash"]
    ph[5] = 9
    assert ph[5] == [9] * pybpf.core.map._possible_cpus()
    del ph[5]
    assert 5 not in ph


def test_batch_lookup_update_delete(filled):
    flows = filled.maps["flows"]
    n = flows.update_batch({k: {"addr": k, "label": f"f{k}"} for k in range(100, 400)})
    assert n == 300
    got = dict(flows.lookup_batch(chunk=64))
    assert len(got) == 301 and got[250].addr == 250 and got[250].label == "f250" and got[7].label == "pybpf"
    assert flows.delete_batch(range(100, 300)) == 200
    assert len(flows) == 101
    with pytest.raises(KeyError, match="stopped"):
        flows.delete_batch([300, 100])        # 100 is gone
    taken = dict(flows.lookup_batch(delete=True))
    assert len(taken) == 100 and len(flows) == 0


def test_ringbuf_records_read_back(load):
    obj = load("maps")
    prog, events = obj.programs["fill"], obj.maps["events"]
    with events.ringbuf() as rb:
        for size in (60, 61, 62):
            prog.test_run(bytes(size))
        recs = rb.consume_batch()
    assert [(int.from_bytes(r[:4], "little"), int.from_bytes(r[4:8], "little")) for r in recs] == \
        [(0, 60), (1, 61), (2, 62)]
    got: list[bytes] = []
    with events.ringbuf(got.append) as rb:
        prog.test_run(bytes(99))
        assert rb.poll(timeout_ms=100) == 1
    assert int.from_bytes(got[0][4:8], "little") == 99


def test_ringbuf_callback_exception_reaches_caller(load):
    obj = load("maps")

    def boom(rec: bytes) -> None:
        raise RuntimeError("callback failed")

    with obj.maps["events"].ringbuf(boom) as rb:
        obj.programs["fill"].test_run(bytes(64))
        with pytest.raises(RuntimeError, match="callback failed"):
            rb.consume()


def test_standalone_map_create_pin_from_pinned_from_id(bpffs):
    with pybpf.Map.create("hash", 4, 8, 16, name="standalone") as m:
        m[b"\x01\x00\x00\x00"] = (77).to_bytes(8, "little")
        assert m.lookup_bytes(b"\x01\x00\x00\x00") == (77).to_bytes(8, "little")
        m[2] = 5                                  # no BTF: ints accepted as little-endian
        assert m[2] == (5).to_bytes(8, "little")
        path = os.path.join(bpffs, "standalone")
        m.pin(path)
        with pybpf.Map.from_pinned(path) as again, pybpf.Map.from_id(m.id) as by_id:
            assert again.id == m.id == by_id.id and again.name == "standalone"
            assert again[2] == (5).to_bytes(8, "little")
        m.unpin(path)
    with pytest.raises(FileNotFoundError, match="No such file"):
        pybpf.Map.from_pinned(os.path.join(bpffs, "standalone"))


def test_object_map_pin_reopen_typed(filled, bpffs):
    path = os.path.join(bpffs, "flows")
    filled.maps["flows"].pin(path)
    with pybpf.Map.from_pinned(path) as m:
        assert m[7].label == "pybpf"            # BTF comes from the kernel by id
    filled.maps["flows"].unpin(path)


def test_map_create_errors():
    with pytest.raises(BPFInvalidError, match="unknown map type"):
        pybpf.Map.create("nonsense", 4, 4, 1)
    with pytest.raises(pybpf.BPFError):
        pybpf.Map.create("array", 3, 4, 1)    # array keys must be 4 bytes


def test_queue_map_push_pop():
    with pybpf.Map.create(pybpf.MapType.QUEUE, 0, 4, 8, name="q") as q:
        for i in range(3):
            q.push(i.to_bytes(4, "little"))
        assert [q.pop() for _ in range(3)] == [i.to_bytes(4, "little") for i in range(3)]
        with pytest.raises(KeyError, match="no element"):
            q.pop()
