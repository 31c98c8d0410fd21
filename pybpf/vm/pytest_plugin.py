"""pytest plugin: run the same pytest invocation on several kernels.

``pytest --kernels 6.1,6.12,7.3 tests/ -m trampoline`` does not run the
tests on the host: it re-runs the same command line (minus ``--kernels`` and
the ``--vm-*`` options, plus ``--junitxml``) inside a QEMU guest of each
kernel through ``python -m pybpf.vm run``, streams the guests' output
(prefixed with ``[kernel]`` when several run at once) and ends with a table
of passed/failed/skipped/errors per kernel. The exit status is non-zero if
any kernel failed. ``host`` is accepted as a kernel name (runs on the host).

Options: ``--kernels``, ``--vm-jobs`` (kernels at once, default 1; guests
use one core each under TCG), ``--vm-timeout`` (seconds per kernel),
``--vm-console`` (show guest kernel consoles), ``--vm-results`` (directory
for the junit files; default ``<rootdir>/.pytest_cache/pybpf-vm``).
Independent of other plugins; needs no compiled part of pybpf.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import IO, Any

import pytest

from .runner import EXIT_NO_STATUS, EXIT_PANIC, EXIT_START_FAILED, EXIT_TIMEOUT, _child_setup

_OWN_OPTS = {"--kernels": True, "--vm-jobs": True, "--vm-timeout": True, "--vm-console": False, "--vm-results": True}
_INNER_ENV = "PYBPF_VM_INNER"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("pybpf-vm", "pybpf VM harness")
    g.addoption("--kernels", default=None, metavar="K1,K2",
                help="run this pytest invocation inside a QEMU guest of each kernel instead of on the host "
                     "(matrix names from vm/kernels.toml, 'host', or kernel image paths)")
    g.addoption("--vm-jobs", type=int, default=int(os.environ.get("PYBPF_VM_JOBS", "1")),
                help="kernels run at once with --kernels (default 1)")
    g.addoption("--vm-timeout", type=float, default=float(os.environ.get("PYBPF_VM_TIMEOUT", "1800")),
                help="seconds allowed per kernel, boot included (default 1800)")
    g.addoption("--vm-console", action="store_true", default=False, help="show the guests' kernel consoles")
    g.addoption("--vm-results", default=None, help="directory for junit-<kernel>.xml")


def _strip_own_args(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in _OWN_OPTS:
            if "=" not in a and _OWN_OPTS[name]:
                skip = True
            continue
        out.append(a)
    return out


@dataclasses.dataclass
class KernelOutcome:
    kernel: str
    status: int | None = None
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0
    have_junit: bool = False

    def verdict(self) -> str:
        s = self.status
        if s == 0:
            return "ok"
        if s == 5:
            return "no tests"
        if s == 1:
            return "FAILED"
        if s == EXIT_PANIC:
            return "KERNEL PANIC"
        if s == EXIT_TIMEOUT:
            return "TIMEOUT"
        if s == EXIT_START_FAILED:
            return "NOT STARTED"
        if s == EXIT_NO_STATUS:
            return "GUEST DIED"
        return f"ERROR (exit {s})"


def _read_junit(path: Path, o: KernelOutcome) -> None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for s in suites:
        tests = int(s.get("tests", 0))
        f, e, sk = int(s.get("failures", 0)), int(s.get("errors", 0)), int(s.get("skipped", 0))
        o.failed += f
        o.errors += e
        o.skipped += sk
        o.passed += tests - f - e - sk
    o.have_junit = True


def _pump(stream: IO[bytes], sink: IO[bytes], prefix: bytes, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        with lock:
            sink.write(prefix + line)
            sink.flush()


def _run_kernel(kernel: str, inner: list[str], config: pytest.Config, results: Path, prefix: bool,
                lock: threading.Lock) -> KernelOutcome:
    inv = config.invocation_params.dir
    root = Path(config.rootpath)
    junit = results / f"junit-{_safe(kernel)}.xml"
    try:
        junit.unlink()
    except FileNotFoundError:
        pass
    shares = [root]
    try:
        Path(inv).relative_to(root)
    except ValueError:
        shares.append(Path(inv))
    cmd = [sys.executable, "-m", "pybpf.vm", "run", "--kernel", kernel, "--cwd", str(inv),
           "--timeout", str(config.getoption("vm_timeout")), "--env", f"{_INNER_ENV}=1"]
    for s in shares:
        cmd += ["--share", str(s)]
    if config.getoption("vm_console"):
        cmd.append("--console")
    cmd += ["--", sys.executable, "-m", "pytest", *inner, f"--junitxml={junit}"]
    env = dict(os.environ)
    env[_INNER_ENV] = "1"
    o = KernelOutcome(kernel)
    t0 = time.monotonic()
    if not prefix:
        with lock:
            print(f"\n===== kernel {kernel} =====", flush=True)
        # _child_setup: PR_SET_PDEATHSIG, so a killed pytest takes its
        # harnesses (and so their guests) with it
        o.status = subprocess.call(cmd, env=env, cwd=inv, preexec_fn=_child_setup)
    else:
        p = subprocess.Popen(cmd, env=env, cwd=inv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=_child_setup)
        tag = f"[{kernel}] ".encode()
        assert p.stdout is not None and p.stderr is not None
        ts = [threading.Thread(target=_pump, args=(p.stdout, sys.stdout.buffer, tag, lock)),
              threading.Thread(target=_pump, args=(p.stderr, sys.stderr.buffer, tag, lock))]
        for t in ts:
            t.start()
        try:
            o.status = p.wait()
        finally:
            if p.poll() is None:
                p.terminate()  # the harness kills its guest on SIGTERM
                p.wait()
            for t in ts:
                t.join()
    o.seconds = time.monotonic() - t0
    _read_junit(junit, o)
    return o


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[-60:]


def _table(outcomes: list[KernelOutcome]) -> str:
    head = ("kernel", "passed", "failed", "skipped", "errors", "time", "result")
    rows: list[tuple[str, ...]] = [head]
    for o in outcomes:
        counts = [str(v) if o.have_junit else "-" for v in (o.passed, o.failed, o.skipped, o.errors)]
        rows.append((o.kernel, *counts, f"{o.seconds:.0f}s", o.verdict()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    return "\n".join(lines)


def _overall(outcomes: list[KernelOutcome]) -> int:
    codes = [o.status if o.status is not None else EXIT_NO_STATUS for o in outcomes]
    bad = [c for c in codes if c not in (0, 5)]
    if not bad:
        return 5 if all(c == 5 for c in codes) else 0
    return 1 if 1 in bad else bad[0]


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> Any:
    spec = config.getoption("kernels")
    if not spec:
        return None
    if os.environ.get(_INNER_ENV):
        return None  # already inside: never recurse
    kernels = [k.strip() for k in spec.split(",") if k.strip()]
    inner = _strip_own_args(list(config.invocation_params.args))
    results = Path(config.getoption("vm_results") or Path(config.rootpath) / ".pytest_cache" / "pybpf-vm").resolve()
    results.mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(config.getoption("vm_jobs") or 1, len(kernels)))
    prefix = jobs > 1
    lock = threading.Lock()
    outcomes: dict[str, KernelOutcome] = {}
    todo = list(kernels)

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                k = todo.pop(0)
            outcomes[k] = _run_kernel(k, inner, config, results, prefix, lock)

    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        # children got SIGINT too (same process group) and stop their guests
        for t in threads:
            t.join()
        return pytest.ExitCode.INTERRUPTED
    ordered = [outcomes[k] for k in kernels if k in outcomes]
    rc = _overall(ordered)
    print("\n===== pybpf.vm: results per kernel =====")
    print(_table(ordered))
    print(f"(junit files in {results})", flush=True)
    return rc
