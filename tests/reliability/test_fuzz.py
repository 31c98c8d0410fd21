"""Hostile inputs: fuzz targets (Hypothesis) run in worker processes, and
the corpus of inputs that once crashed or failed, replayed as regressions.

A worker that dies of a signal (a segfault in libbpf) is reported with the
input that killed it; copy that file into corpus/<target>/ once fixed.
``PYBPF_FUZZ_SECONDS`` sets the time per target (CI default in BUDGET, about
two minutes in all); ``PYBPF_FUZZ_SECONDS=600`` for a long run.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rel_util import HERE, ROOT, env_int, run_python

pytestmark = pytest.mark.usefixtures("fd_leak_check")

CORPUS = HERE / "corpus"
# CI-sized budget per target, in seconds (ELF loads are the slow ones).
BUDGET = {"elf": 35, "btf": 20, "mapops": 20, "packets": 10, "compile": 20, "cli": 15}
CORPUS_FILES = sorted(p for p in CORPUS.glob("*/*") if p.is_file() and p.parent.name in BUDGET)
# Targets that cannot crash libbpf replay their whole corpus in one worker (the setup is the slow part).
SHARED_WORKER = ("compile", "cli")


# A worker may not take the test run down with it: it is the first choice of
# the OOM killer, and where a memory cgroup can be made it runs in one of its
# own with this limit (a mutated object's maps are charged to it), so an input
# that asks the kernel for gigabytes kills the worker, not pytest.
WORKER_MEMORY = 2 << 30


def _memory_cage() -> Path | None:
    """A new child of this process's cgroup-v1 memory cgroup, limited to
    WORKER_MEMORY; None where there is none or it cannot be made."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                cage = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / f"pybpf-fuzz-{os.getpid()}-{time.monotonic_ns()}"
                cage.mkdir()
                try:
                    (cage / "memory.limit_in_bytes").write_text(str(WORKER_MEMORY))
                except OSError:
                    cage.rmdir()
                    return None
                return cage
    except OSError:
        pass
    return None


def _oom_kills(cage: Path | None) -> int:
    """How many processes the OOM killer ended inside ``cage``."""
    if cage is None:
        return 0
    try:
        text = (cage / "memory.oom_control").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def _worker(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]), PYTHONFAULTHANDLER="1", **(env or {}))
    cage = _memory_cage()

    def enter() -> None:          # in the child, before exec
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
        if cage is not None:
            with open(cage / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    try:
        r = subprocess.run([sys.executable, str(HERE / "fuzz_targets.py"), *args], capture_output=True, text=True,
                           timeout=timeout, env=full, cwd=str(HERE), stdin=subprocess.DEVNULL, preexec_fn=enter)
        if r.returncode == -signal.SIGKILL and _oom_kills(cage):
            r.stderr += (f"\nthe worker was killed by the OOM killer at its memory limit of {WORKER_MEMORY >> 20} MiB"
                         " (the input asked the kernel for too much memory: see MAP_BUDGET in fuzz_targets.py)")
        return r
    finally:
        if cage is not None:
            for _ in range(50):   # the cgroup can be removed once the worker's exit is complete
                try:
                    cage.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


@pytest.mark.parametrize("path", [p for p in CORPUS_FILES if p.parent.name not in SHARED_WORKER],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_input_gives_only_pybpf_errors(path: Path) -> None:
    """Every stored input runs through its target in a fresh process: no
    crash, no exception but BPFError, no fd leak."""
    _replay(path.parent.name, [path])


@pytest.mark.parametrize("target", SHARED_WORKER)
def test_corpus_inputs_of_target_give_only_clear_errors(target: str) -> None:
    """The compile and cli corpora, each input checked as its fuzz target
    checks it (one worker per target; a failure names the input)."""
    paths = [p for p in CORPUS_FILES if p.parent.name == target]
    assert paths, f"no corpus for {target}"
    _replay(target, paths)


def _replay(target: str, paths: list[Path]) -> None:
    # clang bounded to 3 s: an input whose header is a FIFO costs that, not the default 600 s
    r = _worker("replay", target, *map(str, paths), timeout=60 + 20 * len(paths), env={"PYBPF_CLANG_TIMEOUT": "3"})
    assert r.returncode == 0 and f"OK replay {len(paths)}" in r.stdout, (
        f"{target} (rc {r.returncode}{' = signal ' + signal.Signals(-r.returncode).name if r.returncode < 0 else ''})"
        f"\n{r.stdout[-6000:]}\n{r.stderr[-4000:]}")


def test_corpus_has_every_target() -> None:
    assert {p.parent.name for p in CORPUS_FILES} >= {"elf", "btf", "compile", "cli"}


CHECKS = r'''
import logging, sys
logging.disable(logging.CRITICAL)
import pybpf
from pybpf.core.codec import codec_for
def show(label, fn):
    try:
        fn()
        print(label, "ok")
    except pybpf.BPFError as e:
        print(label, type(e).__name__, str(e).splitlines()[0])
C = "corpus/"
def open_load(p):
    with pybpf.Object.open(p) as o:
        o.load()
def open_bytes_load(p):
    with pybpf.Object.open(open(p, "rb").read()) as o:
        o.load()
def walk(p):
    with pybpf.Btf.from_bytes(open(p, "rb").read()) as b:
        [(t.describe(), codec_for(b, t.id)) for t in b]
show("var-dangling", lambda: open_load(C + "elf/var-dangling-type.o"))
show("var-dangling-mem", lambda: open_bytes_load(C + "elf/var-dangling-type.o"))
show("struct-ops", lambda: open_load(C + "elf/ringbuf-map-retyped-struct-ops.o"))
show("extern-err-ptr", lambda: open_bytes_load(C + "elf/extern-kcfg-error-pointer.o"))
show("btf-dangling", lambda: walk(C + "btf/array-elem-dangling.btf"))
show("btf-cycle", lambda: walk(C + "btf/ptr-array-cycle.btf"))
show("btf-file-dangling", lambda: pybpf.Btf.from_file(C + "btf/array-elem-dangling.btf").close())
show("btf-file-elf", lambda: pybpf.Btf.from_file(C + "elf/var-dangling-type.o").close())
'''


def test_known_crashers_get_explained_errors() -> None:
    """The inputs that crashed libbpf 1.1 (or pybpf) now get a typed error
    that says what is wrong (checked in a child: a regression is a segfault)."""
    r = run_python(CHECKS, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    # A VAR whose type id does not exist: libbpf 1.1 dereferenced NULL in bpf_object__open.
    assert out["var-dangling"].startswith("ELFError") and "does not exist" in out["var-dangling"]
    assert out["var-dangling-mem"].startswith("ELFError")
    # A .maps map of type STRUCT_OPS: libbpf 1.1 dereferenced NULL in bpf_object__load.
    assert out["struct-ops"].startswith("BPFInvalidError") and "STRUCT_OPS" in out["struct-ops"]
    # An extern whose BTF was mutated: libbpf 1.1 returned ERR_PTR(-65532) from
    # bpf_object__open_mem, outside the errno range it turns into NULL.
    assert out["extern-err-ptr"].startswith("ELFError") and "extern" in out["extern-err-ptr"], out
    # Raw BTF: dangling references are refused up front; cycles no longer recurse forever.
    assert out["btf-dangling"].startswith("BPFInvalidError") and "does not exist" in out["btf-dangling"]
    assert out["btf-file-dangling"].startswith("BPFInvalidError") and "does not exist" in out["btf-file-dangling"]
    assert out["btf-file-elf"].startswith("ELFError") and "does not exist" in out["btf-file-elf"]
    assert out["btf-cycle"] in ("ok",) or out["btf-cycle"].startswith(("BPFInvalidError", "BPFError")), out


def test_retyping_a_map_to_struct_ops_is_refused(tmp_path: Path) -> None:
    """The same bug reached through the API (Map.set_type), not a mutated file."""
    r = run_python('''
        import pybpf
        from rel_util import compiled
        with pybpf.Object.open(compiled("maps")) as o:
            o.maps["arr"].set_type(pybpf.MapType.STRUCT_OPS)
            try:
                o.load()
            except pybpf.BPFInvalidError as e:
                print("refused:", e)
    ''')
    assert r.returncode == 0, f"rc {r.returncode}: {r.stderr[-2000:]}"
    assert "refused:" in r.stdout and "struct_ops" in r.stdout


COMPILE_CHECKS = r'''
import os, stat, pybpf
os.chdir(WORK)
def show(label, *a, **k):
    try:
        print(label, "ok", pybpf.compile(*a, **k))
    except pybpf.BPFError as e:
        print(label, type(e).__name__, str(e).replace("\n", " | "))
open("-o.c", "w").write("int fz_x = 1;\n")
os.mkfifo("fifo.h")
open("fifo_user.c", "w").write('#include "fifo.h"\n')
show("dash-source", "-o.c", vmlinux=False)
show("fifo-header", "fifo_user.c", vmlinux=False)
show("fifo-output", "-o.c", output="fifo.h", vmlinux=False)
show("devnull-output", "-o.c", output="/dev/null", vmlinux=False)
show("dir-output", "-o.c", output=".", vmlinux=False)
show("no-object", "-o.c", cflags=["-fsyntax-only"], vmlinux=False)
show("no-clang", "-o.c", clang="/nonexistent/clang", vmlinux=False)
show("nul", "-o.c", cflags=["-DA=\0"], vmlinux=False)
print("fifo still a fifo", stat.S_ISFIFO(os.stat("fifo.h").st_mode), "devnull", stat.S_ISCHR(os.stat("/dev/null").st_mode))
print("left", sorted(n for n in os.listdir(".") if n.startswith(".") or n.endswith(".tmp")))
'''


def test_compile_hostile_arguments_get_explained_errors(tmp_path: Path) -> None:
    """What the compile target found, with the words users get: a source
    named like an option compiles; a FIFO header stops clang at the timeout
    instead of hanging; an output that is a FIFO or /dev/null is refused, not
    replaced; flags that write no object, a missing clang and NUL bytes are
    CompileErrors; nothing temporary is left."""
    r = run_python(COMPILE_CHECKS.replace("WORK", repr(str(tmp_path))), timeout=120,
                   env={"PYBPF_CLANG_TIMEOUT": "2", "PYBPF_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert out["dash-source"].startswith("ok ") and out["dash-source"].endswith(".o"), out
    assert out["fifo-header"].startswith("CompileError") and "did not finish within 2 s" in out["fifo-header"]
    for k in ("fifo-output", "devnull-output", "dir-output"):
        assert out[k].startswith("CompileError") and "is not a regular file" in out[k], out[k]
    assert out["no-object"].startswith("CompileError") and "wrote no ELF object" in out["no-object"]
    assert out["no-clang"].startswith("CompileError") and "cannot run /nonexistent/clang" in out["no-clang"]
    assert out["nul"].startswith("CompileError") and "NUL byte" in out["nul"]
    assert out["fifo"] == "still a fifo True devnull True", out
    assert out["left"] == "[]", out


@pytest.mark.parametrize("argv, status, words", [
    ([b"-j", b"\xff"], 2, b"unknown object '\xff'"),
    ([b"map", b"show", b"id", b"-1"], 2, b"map id must be between 0 and 4294967295; got -1"),
    ([b"prog", b"show", "\u00b2".encode()], 2, b"expected id ID, pinned PATH"),
    ([b"prog\n", b"show"], 2, b"unknown object 'prog\\n'"),
    ([], 2, b"expected an OBJECT"),
    ([b"struct-ops", b"show", b"pinned", b"/sys/fs/bpf/\xff"], 1, b"/sys/fs/bpf/"),
], ids=["json-non-utf8", "negative-id", "superscript-digit", "newline", "no-object", "non-utf8-pin"])
def test_cli_hostile_words_get_one_line_errors(argv: list[bytes], status: int, words: bytes) -> None:
    """The real command (python3 -m pybpf) with argv bytes a shell can pass,
    under a strict UTF-8 stdout (what an en_US.UTF-8 locale gives): the
    status, one 'Error:' line naming the problem, no traceback. Found by the
    cli fuzz target (the first one died in a UnicodeEncodeError traceback)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8:strict")
    r = subprocess.run([sys.executable.encode(), b"-m", b"pybpf", *argv], capture_output=True, env=env, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    assert b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(b"Error: "), r.stderr
    assert words in lines[0] or words in r.stdout, (words, r.stderr, r.stdout)


def test_harness_reports_a_segfault_with_its_input(tmp_path: Path) -> None:
    """The worker of a target that segfaults dies of SIGSEGV and leaves the
    input that killed it (the harness can fail)."""
    crash = tmp_path / "segv.input"
    r = _worker("selftest_segv", "60", str(crash), timeout=120)
    assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stdout, r.stderr[-2000:])
    blob = crash.read_bytes()
    assert len(blob) >= 4 and blob[0] >= 0x80, blob
    assert "Fatal Python error: Segmentation fault" in r.stderr     # faulthandler names it


def test_worker_kernel_memory_is_bounded() -> None:
    """A worker asking the kernel for more than WORKER_MEMORY (a 3 GiB array
    map, as a mutated value type can) is refused or killed inside its memory
    cgroup; the test run goes on (the harness can fail)."""
    if _memory_cage_unavailable():
        pytest.skip("no cgroup-v1 memory controller here to bound the fuzz workers")
    r = _worker("selftest_bigmap", "3", timeout=120)
    assert "created" not in r.stdout, "a 3 GiB map was created inside a 2 GiB memory cgroup"
    refused = r.returncode == 0 and "refused" in r.stdout and "errno=12" in r.stdout
    assert refused or (r.returncode == -signal.SIGKILL and "OOM killer" in r.stderr), (r.returncode, r.stdout, r.stderr)


def _memory_cage_unavailable() -> bool:
    cage = _memory_cage()
    if cage is not None:
        cage.rmdir()
    return cage is None


@pytest.mark.slow
@pytest.mark.parametrize("target", list(BUDGET))
def test_fuzz(target: str, tmp_path: Path) -> None:
    """Run one fuzz target for its time budget in a worker process."""
    seconds = env_int("PYBPF_FUZZ_SECONDS", 0) or BUDGET[target]
    crash = tmp_path / f"{target}.input"
    t0 = time.monotonic()
    r = _worker(target, str(seconds), str(crash), timeout=seconds * 3 + 120)
    if r.returncode != 0:
        kept = ROOT / "results" / f"fuzz-{target}-{int(time.time())}.input"
        if crash.exists():
            kept.parent.mkdir(exist_ok=True)
            shutil.copy(crash, kept)
        how = f"signal {signal.Signals(-r.returncode).name}" if r.returncode < 0 else f"exit {r.returncode}"
        pytest.fail(f"fuzz target {target} failed ({how}) after {time.monotonic() - t0:.0f}s; input kept at {kept} "
                    f"(add it to tests/reliability/corpus/{target}/ once fixed)\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}")
    assert r.stdout.startswith(f"OK {target}"), r.stdout
    n = int(r.stdout.split()[2])
    assert n > 0, "the fuzz target ran no input"
    left = [d for d in os.listdir("/sys/fs/bpf") if d.startswith("pybpf-fuzz-")
            and not os.path.exists(f"/proc/{d.rsplit('-', 1)[1]}")]
    assert not left, f"fuzz workers left bpffs directories: {left}"
