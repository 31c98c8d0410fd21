"""Typed kernel pointers (kptrs) in map values, on the running kernel.

* a referenced task kptr: acquired and moved into a map by one tp_btf
  program, read back by another that reports the task's pid; deleting or
  updating the element from Python releases the reference (the task's
  reference count drops back, the next read sees no object);
* an unreferenced (untrusted) kptr stored with a plain store and read back;
* the meaning of the "kptr" tag on this kernel (referenced since 6.4)
  matches what the verifier enforces;
* the verifier's refusals, with its words;
* pybpf.compile refuses objects whose kptr fields lost their type tag, or
  point to forward-declared structs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

import pytest

import pybpf
from pybpf.core.codec import Special, kptr_meaning
from pybpf.errors import CompileError, VerifierError
from pybpf.probes import kernel_version
from pybpf.raw import MapType

from conftest import PROGS, compiled

pytestmark = pytest.mark.usefixtures("fd_leak_check")


def compile_module() -> Any:
    """The module behind pybpf.compile (pybpf.compiler)."""
    import pybpf.compiler

    assert callable(pybpf.compile)   # importing the module never shadows the function
    return pybpf.compiler


def check_type_tags(obj: Any, src: Any) -> None:
    compile_module().check_type_tags(obj, src)

# x86_64 syscall numbers: getppid() stores the task, getpgid(0) reads it.
NR_GETPPID, NR_GETPGID = 110, 121
STATUS_OBJECT, STATUS_NULL, STATUS_NO_ELEMENT = 1, 2, 3


def in_thread(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn`` in a new thread: (its kernel thread id, fn's result)."""
    out: dict[str, Any] = {}

    def run() -> None:
        out["tid"] = threading.get_native_id()
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["tid"], out.get("result")


# When the kernel drops the reference a map element's kptr holds, after a
# delete or an update from userspace (measured with kptr_task.bpf.c):
#   6.12, 6.18: at once, for hash deletes/updates and array updates;
#   7.3: not within 30 s of a hash delete/update, only when the map is
#        freed; and an array update from userspace keeps the kptr.
# Kernels in between are not measured: only what holds everywhere is checked.
def release_timing() -> str:
    """'immediate', 'at_map_free' or 'unknown' for the running kernel."""
    kv = kernel_version()[:2]
    if kv <= (6, 18):
        return "immediate"
    if kv >= (7, 3):
        return "at_map_free"
    return "unknown"


class TaskKptrs:
    """kptr_task.bpf.c loaded and attached; syscalls of this process trigger it."""

    def __init__(self, map_type: MapType | None = None, store: bool = True):
        self.obj = pybpf.Object.open(compiled("kptr_task"))
        self.links: list[Any] = []
        try:
            if map_type is not None:
                self.obj.maps["tasks"].set_type(map_type)
            self.obj.variables["target_tgid"] = os.getpid()
            self.obj.variables["store_nr"] = NR_GETPPID if store else -1
            self.obj.variables["read_nr"] = NR_GETPGID
            self.obj.load()
            self.links = [self.obj.programs[n].attach() for n in ("store_task", "read_task")]
        except BaseException:
            self.close()
            raise
        self.tasks = self.obj.maps["tasks"]
        self.results = self.obj.maps["results"]

    def store(self) -> None:
        os.getppid()

    def read(self) -> Any:
        os.getpgid(0)
        return self.results[0]

    def close(self) -> None:
        for link in self.links:
            link.close()
        self.links = []
        self.obj.close()


def usage_now() -> int:
    """The calling thread's task reference count, read by a fresh copy of
    the programs (maps of their own, nothing stored)."""
    k = TaskKptrs(store=False)
    try:
        return int(k.read().usage)
    finally:
        k.close()


def x86_64_only() -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("the syscall numbers in this test are x86_64's")


@pytest.fixture
def kptrs() -> Iterator[TaskKptrs]:
    x86_64_only()
    k = TaskKptrs()
    try:
        yield k
    finally:
        k.close()


def wait_for(k: TaskKptrs, pred: Callable[[Any], bool], timeout: float = 3.0) -> Any:
    """Re-read until ``pred(result)`` (a release may wait for RCU); the last
    result either way."""
    deadline = time.monotonic() + timeout
    r = k.read()
    while not pred(r) and time.monotonic() < deadline:
        time.sleep(0.02)
        r = k.read()
    return r


@pytest.mark.needs("kptr", "task_kfuncs", "tp_btf")
def test_referenced_kptr_reports_the_pid_and_delete_releases_it(kptrs: TaskKptrs) -> None:
    timing = release_timing()

    def scenario() -> dict[str, Any]:
        s: dict[str, Any] = {"before": kptrs.read()}
        kptrs.store()
        s["stored"] = kptrs.read()
        s["view"] = kptrs.tasks[0]
        del kptrs.tasks[0]
        s["deleted"] = wait_for(kptrs, lambda r: r.usage == s["before"].usage,
                                timeout=3.0 if timing != "at_map_free" else 0.5)
        kptrs.close()
        s["after_free"] = usage_now()
        return s

    tid, s = in_thread(scenario)
    before, stored, deleted = s["before"], s["stored"], s["deleted"]
    assert before.status == STATUS_NO_ELEMENT and before.runs == 1
    # The second program read the object the first one stored: this thread.
    assert stored.status == STATUS_OBJECT
    assert stored.pid == tid and stored.tgid == os.getpid()
    # The map holds one more reference on the task while the kptr is stored.
    assert stored.usage == before.usage + 1
    # Python sees the field as a referenced task kptr, zeroed by the kernel.
    view = s["view"]
    assert isinstance(view.task, Special) and view.task == "kptr<task_struct>"
    assert view.task.referenced is True and view.task.target == "task_struct"
    assert view.task.raw == bytes(8) and view.cookie == 0xC0FFEE
    # After the delete from Python the next read sees no object...
    assert deleted.status == STATUS_NO_ELEMENT
    # ...and the reference is gone: at once, or when the map is freed.
    if timing == "immediate":
        assert deleted.usage == before.usage, "the delete did not release the map's task reference"
    elif timing == "at_map_free":
        assert deleted.usage == before.usage + 1, "7.3 released at delete: update release_timing()"
    assert s["after_free"] == before.usage, "the task reference leaked past the map's end"


@pytest.mark.needs("kptr", "task_kfuncs", "tp_btf")
def test_update_from_python_releases_the_reference(kptrs: TaskKptrs) -> None:
    timing = release_timing()

    def scenario() -> dict[str, Any]:
        s: dict[str, Any] = {"before": kptrs.read()}
        kptrs.store()
        s["stored"] = kptrs.read()
        kptrs.tasks[0] = {"cookie": 77, "tag": 3}
        s["updated"] = wait_for(kptrs, lambda r: r.usage == s["before"].usage,
                                timeout=3.0 if timing != "at_map_free" else 0.5)
        s["value"] = kptrs.tasks[0]
        kptrs.close()
        s["after_free"] = usage_now()
        return s

    tid, s = in_thread(scenario)
    assert s["stored"].status == STATUS_OBJECT and s["stored"].pid == tid
    assert s["stored"].usage == s["before"].usage + 1
    # The element is still there, with Python's fields and no object.
    assert s["updated"].status == STATUS_NULL and s["updated"].pid == -1
    assert s["value"].cookie == 77 and s["value"].tag == 3
    if timing == "immediate":
        assert s["updated"].usage == s["before"].usage
    elif timing == "at_map_free":
        assert s["updated"].usage == s["before"].usage + 1
    assert s["after_free"] == s["before"].usage


@pytest.mark.needs("kptr", "task_kfuncs", "tp_btf")
def test_array_update_from_python() -> None:
    """In an array the element survives an update; whether the kptr does
    differs between kernels (see release_timing)."""
    x86_64_only()
    timing = release_timing()
    arr = TaskKptrs(MapType.ARRAY)

    def scenario() -> dict[str, Any]:
        s: dict[str, Any] = {"before": arr.read()}
        arr.store()
        s["stored"] = arr.read()
        arr.tasks[0] = {"cookie": 5}
        s["updated"] = wait_for(arr, lambda r: r.status == STATUS_NULL, timeout=0.5)
        arr.close()
        s["after_free"] = usage_now()
        return s

    try:
        tid, s = in_thread(scenario)
    finally:
        arr.close()
    assert s["before"].status == STATUS_NULL  # array elements always exist
    assert s["stored"].status == STATUS_OBJECT and s["stored"].pid == tid
    if timing == "immediate":
        assert s["updated"].status == STATUS_NULL and s["updated"].usage == s["before"].usage
    elif timing == "at_map_free":
        assert s["updated"].status == STATUS_OBJECT and s["updated"].pid == tid
    assert s["after_free"] == s["before"].usage


@pytest.mark.needs("kptr_untrusted", "task_kfuncs", "tp_btf")
def test_untrusted_kptr_is_stored_and_read_back(kptrs: TaskKptrs) -> None:
    def scenario() -> tuple[Any, Any]:
        kptrs.store()
        return kptrs.read(), kptrs.tasks[0]

    tid, (r, value) = in_thread(scenario)
    assert r.seen_pid == tid
    assert value.seen == "kptr_untrusted<task_struct>" and value.seen.referenced is False
    assert value.seen.tag == "kptr_untrusted"
    # Another thread overwrites the unreferenced pointer with its own task.
    tid2, (r2, _) = in_thread(scenario)
    assert tid2 != tid and r2.seen_pid == tid2 and r2.pid == tid2


@pytest.mark.needs("kptr", "task_kfuncs", "tp_btf")
def test_kptr_fields_are_not_writable_and_dump_like_bpftool(kptrs: TaskKptrs) -> None:
    in_thread(kptrs.store)
    with pytest.raises(pybpf.BPFError, match=r"kptr<task_struct> is kernel-managed"):
        kptrs.tasks[0] = {"cookie": 1, "task": 0xFFFF888000000000}
    # The refused update changed nothing: the object is still there.
    _, r = in_thread(kptrs.read)
    assert r.status == STATUS_OBJECT
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool is not installed")
    tool = json.loads(subprocess.run(["bpftool", "map", "dump", "id", str(kptrs.tasks.id), "-j"],
                                     capture_output=True, text=True, check=True).stdout)
    assert kptrs.tasks.dump_json() == tool
    assert tool[0]["formatted"]["value"]["task"] == 0  # userspace reads kptrs as zeros


@pytest.mark.needs("kptr", "tp_btf")
def test_kptr_tag_meaning_matches_the_verifier() -> None:
    """A plain store of an unreferenced task pointer into a "kptr" field is
    allowed where "kptr" means unreferenced (before 6.4), refused where it
    means referenced."""
    kind, referenced = kptr_meaning("kptr")
    obj = pybpf.Object.open(compiled("kptr_meaning"))
    try:
        assert obj.maps["slots"].value_codec.special_fields["task"].kind == kind
        if referenced:
            with pytest.raises(VerifierError) as ei:
                obj.load()
            assert "store to referenced kptr disallowed" in str(ei.value)
        else:
            obj.load()
            assert kind == "kptr_untrusted"
    finally:
        obj.close()


@pytest.mark.needs("kptr")
def test_kptr_tag_meanings() -> None:
    from pybpf.probes import probe
    assert bool(probe("kptr_untrusted")) == (kernel_version()[:2] >= (6, 4))
    assert kptr_meaning("kptr") == (("kptr", True) if kernel_version()[:2] >= (6, 4) else ("kptr_untrusted", False))
    assert kptr_meaning("kptr_ref") == ("kptr", True)
    assert kptr_meaning("kptr_untrusted") == ("kptr_untrusted", False)


# program: (words of the verifier's error line, in the log on every kernel;
#           words of which the error message must show at least one).
# 7.3 appends a structured diagnosis ("Verification failed: ... Reason: ...
# Suggestion: ...") after the error line, so the message's tail shows the
# suggestion ("Add a NULL check") rather than the line itself.
REJECTIONS: dict[str, tuple[list[str], list[str]]] = {
    "plain_store": (["store to referenced kptr disallowed"], ["store to referenced kptr disallowed"]),
    "no_null_check": (["invalid mem access", "_or_null"], ["invalid mem access", "NULL check"]),
    "wrong_type": (["invalid kptr access", "task_struct", "expected=ptr_cgroup"], ["invalid kptr access"]),
}


@pytest.mark.needs("kptr", "task_kfuncs", "tp_btf")
@pytest.mark.parametrize("prog", list(REJECTIONS))
def test_verifier_refusals_carry_the_verifier_line(prog: str) -> None:
    obj = pybpf.Object.open(compiled("kptr_reject"))
    try:
        for name in obj.programs:
            obj.programs[name].set_autoload(name == prog)
        with pytest.raises(VerifierError) as ei:
            obj.load()
        err = ei.value
        assert err.program == prog
        log_words, message_words = REJECTIONS[prog]
        for words in log_words:
            assert words in err.log, f"{words!r} not in the verifier log:\n{err.log}"
        assert any(w in str(err) for w in message_words), f"none of {message_words} in the message:\n{err}"
    finally:
        obj.close()


def test_compile_refuses_kptr_fields_without_the_tag() -> None:
    """What a compiler that drops btf_type_tag produces (clang < 16): the same
    source with the kptr annotations defined away."""
    src = PROGS / "kptr_task.bpf.c"
    check_type_tags(pybpf.compile(src), src)  # the real object passes
    with pytest.raises(CompileError) as ei:
        pybpf.compile(src, cflags=["-DKPTR_REF=", "-DKPTR_UNTRUSTED="])
    msg = str(ei.value)
    assert "kptr" in msg and "type tag" in msg and "dropped" in msg
    assert "clang 16" in msg  # the hint says what to do


def test_check_type_tags_names_the_field(tmp_path: Any) -> None:
    """One field keeps its tag, the other loses it: the error names it."""
    src = PROGS / "kptr_task.bpf.c"
    with pytest.raises(CompileError, match=r"field 'seen' \(struct task_struct \*\) of struct kt_slot"):
        pybpf.compile(src, cflags=["-DKPTR_UNTRUSTED="])
    # check_type_tags on an object built outside pybpf.compile, given the source.
    obj = tmp_path / "notag.o"
    pybpf.compile(PROGS / "kptr_meaning.bpf.c")  # warms the vmlinux.h cache
    cm = compile_module()
    clang, _ = cm.find_clang()
    subprocess.run([clang, "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", f"-I{cm.vmlinux_h().parent}",
                    f"-I{cm.INCLUDE_DIR}", "-DKPTR_REF=", "-DKPTR_UNTRUSTED=", "-c", str(src), "-o", str(obj)],
                   check=True, capture_output=True)
    with pytest.raises(CompileError, match="no 'kptr' type tag"):
        check_type_tags(obj, src)
    assert not list(tmp_path.glob(".*"))


def test_compile_refuses_kptr_to_forward_declared_struct() -> None:
    with pytest.raises(CompileError, match=r"struct cgroup, which the object's BTF only forward-declares"):
        pybpf.compile(PROGS / "kptr_fwd.bpf.c")


def _fake_clang(tmp_path: Any, major: int) -> str:
    """A 'clang' that only answers --version, as Debian's clang-14 does."""
    fake = tmp_path / f"clang-{major}"
    fake.write_text(f'#!/bin/sh\necho "Debian clang version {major}.0.6"\necho "Target: x86_64-pc-linux-gnu"\n')
    fake.chmod(0o755)
    return str(fake)


def test_compile_refuses_a_clang_that_drops_type_tags(tmp_path: Any, monkeypatch: Any) -> None:
    """A kptr source and a clang older than 16 (bookworm's default clang-14
    drops btf_type_tag): refused before compiling, with what to install,
    whether the clang is named by the caller or by PYBPF_CLANG."""
    src = PROGS / "kptr_task.bpf.c"
    old = _fake_clang(tmp_path, 14)
    with pytest.raises(CompileError) as ei:
        pybpf.compile(src, clang=old, output=tmp_path / "x.o")
    assert f"{old} is clang 14, which drops BTF type tags" in str(ei.value)
    assert "clang-16" in (ei.value.hint or "")
    monkeypatch.setenv("PYBPF_CLANG", old)
    with pytest.raises(CompileError) as ei:
        pybpf.compile(src, output=tmp_path / "y.o")
    assert f"{old} is clang 14; clang 16 or newer is needed" in str(ei.value)
    assert not (tmp_path / "x.o").exists() and not (tmp_path / "y.o").exists()
