"""Self-tests of the VM harness (python -m pybpf.vm, the --kernels plugin).

Every guest boot costs seconds under TCG, so checks share boots: one boot
per kernel checks the guest's whole environment; panic, timeout and signal
handling boot the first kernel only. Kernels: ``PYBPF_VM_KERNELS``
(comma-separated matrix names), default the oldest and the newest of
vm/kernels.toml.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pybpf.vm import EXIT_PANIC, EXIT_START_FAILED, EXIT_TIMEOUT, load_matrix, resolve_kernel
from pybpf.vm.runner import snapshot_dir

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed"),
]


def _kernels() -> list[str]:
    env = os.environ.get("PYBPF_VM_KERNELS")
    if env:
        return [k.strip() for k in env.split(",") if k.strip()]
    names = list(load_matrix())
    return [names[0], names[-1]] if len(names) > 1 else names


KERNELS = _kernels()
FIRST = KERNELS[0]
BOOT_TIMEOUT = 300  # generous: first use downloads the kernel


def harness(*args: str, timeout: float = BOOT_TIMEOUT, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pybpf.vm", "run", *args], capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd,
    )


def qemus_with(marker: str) -> list[int]:
    """PIDs of live processes whose command line contains ``marker``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            st = (d / "stat").read_text()
        except OSError:
            continue
        if marker.encode() in cmd and b"qemu" in cmd and ") Z " not in st:
            out.append(int(d.name))
    return out


GUEST_CHECKS = r"""
set -u
echo "uname=$(uname -r)"
echo "uid=$(id -u)"
echo "pwd=$(pwd)"
echo "var=${PYBPF_TEST_VAR:-unset}"
echo "kernel_env=${PYBPF_VM_KERNEL:-unset}"
echo hello-from-guest > written-in-guest.txt && echo "share=rw"
if touch /etc/pybpf-ro-probe 2>/dev/null; then echo "root=rw"; else echo "root=ro"; fi
test -r /etc/os-release && echo "hostroot=visible"
for m in /proc /sys /sys/fs/bpf /sys/kernel/debug /sys/kernel/tracing /tmp /run /dev; do
    echo "mount:$m=$(awk -v m="$m" '$2 == m {print $3}' /proc/mounts | tail -1)"
done
ip -o link show lo | grep -q 'UP' && echo "lo=up"
if modprobe veth && ip link add name pybpfv0 type veth peer name pybpfv1; then echo "veth=ok"; fi
if ip netns add pybpf-selftest && ip netns del pybpf-selftest; then echo "netns=ok"; fi
test -s "${PYBPF_KCONFIG:-/nonexistent}" && echo "kconfig=ok"
echo to-stderr >&2
exit 3
"""


@pytest.mark.parametrize("kernel", KERNELS)
def test_guest_environment(kernel: str, tmp_path: Path) -> None:
    (tmp_path / "check.sh").write_text(GUEST_CHECKS)
    t0 = time.monotonic()
    r = harness("--kernel", kernel, "--share", str(tmp_path), "-e", "PYBPF_TEST_VAR=a b'c",
                "--", "sh", "check.sh")
    took = time.monotonic() - t0
    assert r.returncode == 3, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    got = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    k = resolve_kernel(kernel)
    assert got["uname"] == k.release
    assert got["uid"] == "0"
    assert got["pwd"] == str(tmp_path)
    assert got["var"] == "a b'c"
    assert got["kernel_env"] == kernel
    assert got["share"] == "rw"
    assert (tmp_path / "written-in-guest.txt").read_text() == "hello-from-guest\n"
    assert got["root"] == "ro"
    assert got["hostroot"] == "visible"
    assert got["mount:/proc"] == "proc"
    assert got["mount:/sys/fs/bpf"] == "bpf"
    assert got["mount:/sys/kernel/debug"] == "debugfs"
    assert got["mount:/sys/kernel/tracing"] == "tracefs"
    assert got["mount:/tmp"] == "tmpfs"
    assert got["mount:/run"] == "tmpfs"
    assert got["mount:/dev"] == "devtmpfs"
    assert got.get("lo") == "up"
    assert got.get("veth") == "ok", r.stderr
    assert got.get("netns") == "ok", r.stderr
    assert got.get("kconfig") == "ok"
    # the command's stderr comes out on stderr, and no kernel noise on stdout
    assert "to-stderr" in r.stderr and "to-stderr" not in r.stdout
    assert "[    " not in r.stdout
    print(f"{kernel}: boot + checks in {took:.1f} s")


def test_panic_is_reported() -> None:
    r = harness("--kernel", FIRST, "--", "sh", "-c", "echo before-crash; echo c > /proc/sysrq-trigger; sleep 30")
    assert r.returncode == EXIT_PANIC, r.stderr
    assert "before-crash" in r.stdout
    assert "Kernel panic" in r.stderr
    assert "sysrq" in r.stderr


def test_timeout_kills_guest() -> None:
    marker = f"pybpf_selftest={uuid.uuid4().hex}"
    t0 = time.monotonic()
    # (--no-snapshot: a unique command line would save a snapshot nobody uses)
    r = harness("--kernel", FIRST, "--no-snapshot", "--timeout", "25", "--append", marker,
                "--", "sh", "-c", "echo sleeping; sleep 600")
    took = time.monotonic() - t0
    assert r.returncode == EXIT_TIMEOUT, r.stderr
    assert "timed out" in r.stderr
    assert took < 60
    assert qemus_with(marker) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT-ctrl-c"])
def test_signal_kills_guest(sig: signal.Signals) -> None:
    """SIGTERM, or the SIGINT of Ctrl-C, while the guest runs: the harness
    exits 128+signal and no QEMU process is left."""
    marker = f"pybpf_selftest={uuid.uuid4().hex}"
    p = subprocess.Popen(
        [sys.executable, "-m", "pybpf.vm", "run", "--kernel", FIRST, "--no-snapshot", "--append", marker,
         "--", "sleep", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not qemus_with(marker):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + sig, err
    assert qemus_with(marker) == []


def test_users_own_kernel_image_and_modules(tmp_path: Path) -> None:
    """--kernel PATH (a bzImage of the user's, here a copy of the first
    matrix kernel's) with --modules: the guest runs that kernel and loads
    its modules."""
    k = resolve_kernel(FIRST)
    image = tmp_path / "bzImage"
    shutil.copy(k.dir / "vmlinuz", image)
    assert k.modules is not None
    r = harness("--kernel", str(image), "--modules", str(k.modules), "--share", str(tmp_path), "--",
                "sh", "-c", "uname -r; modprobe veth && ip link add pv0 type veth peer name pv1 && echo veth-ok")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == [k.release, "veth-ok"], r.stdout


def test_accelerator_is_chosen_by_running_a_probe_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KVM is used only if a probe guest really runs under it: the 64-byte
    probe image reaches its exit port under TCG (so the probe can succeed),
    and the harness's choice (with an empty cache) is KVM exactly when the
    same probe succeeds with -accel kvm."""
    from pybpf.vm import runner

    img = tmp_path / "probe.bin"
    img.write_bytes(runner._tiny_multiboot())
    assert runner._probe("tcg", img, timeout=60) is True
    # the choice is compared with the very probe the harness ran: a second
    # probe could land on the other side of its timeout (the KVM probe takes
    # 5-6 s on some of our machines, against a 5 s timeout)
    probed: list[bool] = []
    real_probe = runner._probe

    def recording_probe(accel: str, image: Path, timeout: float = 5.0) -> bool:
        ok = real_probe(accel, image, timeout)
        probed.append(ok)
        return ok

    monkeypatch.setattr(runner, "_probe", recording_probe)
    monkeypatch.delenv("PYBPF_VM_ACCEL", raising=False)
    monkeypatch.setenv("PYBPF_VM_CACHE", str(tmp_path / "cache"))
    choice = runner.detect_accel()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert choice == "tcg" and probed == []
    else:
        assert len(probed) == 1 and choice == ("kvm" if probed[0] else "tcg")
    kvm_runs = choice == "kvm"
    r = subprocess.run([sys.executable, "-m", "pybpf.vm", "accel"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYBPF_VM_CACHE": str(tmp_path / "cache")})
    assert r.stdout.strip() == ("kvm" if kvm_runs else "tcg"), r


def test_host_kernel(tmp_path: Path) -> None:
    r = harness("--kernel", "host", "--share", str(tmp_path), "--", "sh", "-c", "uname -r; pwd; exit 4", timeout=60)
    assert r.returncode == 4
    assert r.stdout.split() == [platform.release(), str(tmp_path)]


def test_start_failures_have_own_exit_code(tmp_path: Path) -> None:
    r = harness("--kernel", "no-such-kernel", "--", "true", timeout=60)
    assert r.returncode == EXIT_START_FAILED
    assert "unknown kernel" in r.stderr
    r = harness("--kernel", FIRST, "--", "true", env={"PYBPF_VM_QEMU": str(tmp_path / "no-qemu")})
    assert r.returncode == EXIT_START_FAILED
    assert "cannot start QEMU" in r.stderr


def test_pytest_plugin(tmp_path: Path) -> None:
    """--kernels runs the invocation in each kernel and tabulates results."""
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import os, pytest
        def test_ok(): pass
        @pytest.mark.skip
        def test_skipped(): pass
        def test_fails_in_guest(): assert "PYBPF_VM_KERNEL" not in os.environ
    """))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "pybpf.vm.pytest_plugin", f"--kernels=host,{FIRST}",
         "--vm-jobs", "2", "-q", "-p", "no:cacheprovider", "test_sample.py"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=BOOT_TIMEOUT,
    )
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    table = out[out.index("results per kernel"):]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.strip() and not line.startswith("(")}
    assert rows["host"][1:5] == ["2", "0", "1", "0"] and rows["host"][-1] == "ok"
    assert rows[FIRST][1:5] == ["1", "1", "1", "0"] and rows[FIRST][-1] == "FAILED"
    junit = ET.parse(tmp_path / ".pytest_cache" / "pybpf-vm" / f"junit-{FIRST}.xml").getroot()
    assert "test_fails_in_guest" in ET.tostring(junit, encoding="unicode")


SNAPSHOT_PROBE = r"""
echo "uname=$(uname -r)"
echo "now=$(date +%s)"
echo "rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
exit 7
"""


def _saved_snapshot(stderr: str) -> Path:
    m = re.search(r"boot snapshot saved in .*?, (\S+\.vmstate)\)", stderr)
    assert m, stderr
    return snapshot_dir() / m.group(1)


def _values(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def test_boot_snapshot_restores_with_the_hosts_clock_and_fresh_randomness(tmp_path: Path) -> None:
    """The first run of a machine shape saves the guest after the kernel's
    boot; later runs restore it (no boot), take the host's time and reseed
    the guest's RNG (vmgenid); a damaged snapshot is dropped and the run
    boots; --no-snapshot boots and saves nothing."""
    # a kernel command line of its own: this test's machine has no snapshot yet
    marker = f"pybpf_selftest={uuid.uuid4().hex}"
    cmd = ("--kernel", FIRST, "--append", marker, "--share", str(tmp_path), "--", "sh", "-c", SNAPSHOT_PROBE)
    release = resolve_kernel(FIRST).release
    first = harness(*cmd)
    snap = _saved_snapshot(first.stderr)
    try:
        assert first.returncode == 7, first.stderr
        assert "booting" in first.stderr and snap.is_file()
        rands = []
        for _ in range(2):
            r = harness(*cmd)
            assert r.returncode == 7, r.stderr
            assert "restoring its boot snapshot" in r.stderr and "booting" not in r.stderr
            got = _values(r.stdout)
            assert got["uname"] == release
            assert abs(int(got["now"]) - time.time()) < 10, "the restored guest kept the snapshot's clock"
            rands.append(got["rand"])
        assert rands[0] != rands[1], "two restored guests produced the same random bytes"

        with open(snap, "r+b") as f:
            f.truncate(snap.stat().st_size // 2)
        r = harness(*cmd)
        assert r.returncode == 7, r.stderr
        assert "could not be restored" in r.stderr and "booting" in r.stderr
        assert _saved_snapshot(r.stderr) == snap  # saved again, whole
        assert _values(r.stdout)["uname"] == release

        before = sorted(snapshot_dir().glob("*.vmstate"))
        r = harness("--no-snapshot", *cmd)
        assert r.returncode == 7, r.stderr
        assert "restoring" not in r.stderr and "snapshot saved" not in r.stderr
        assert sorted(snapshot_dir().glob("*.vmstate")) == before
    finally:
        snap.unlink(missing_ok=True)


def test_objects_compiled_on_the_host_for_a_guest_kernel_are_found_there(tmp_path: Path) -> None:
    """`python -m pybpf.vm compile` builds against the guest kernel's BTF
    (from its vmlinux image) into the cache guests share: inside, pybpf.compile
    returns that object without running clang (the file is not rewritten)."""
    src = tmp_path / f"probe_{uuid.uuid4().hex[:8]}.bpf.c"
    src.write_text('#include "pybpf.bpf.h"\nSEC("xdp") int probe(struct xdp_md *ctx) { return XDP_PASS; }\n'
                   'char LICENSE[] SEC("license") = "GPL";\n')
    r = subprocess.run([sys.executable, "-m", "pybpf.vm", "compile", "--kernel", FIRST, str(src)],
                       capture_output=True, text=True, timeout=BOOT_TIMEOUT)
    assert r.returncode == 0, r.stderr
    name, _, obj = r.stdout.strip().split("\t")
    assert name == FIRST
    obj_path = Path(obj)
    before = obj_path.stat().st_mtime_ns
    try:
        g = harness("--kernel", FIRST, "--share", str(tmp_path), "--", "python3", "-c",
                    f"import pybpf; print('obj=' + str(pybpf.compile({str(src)!r})))")
        assert g.returncode == 0, g.stderr
        assert _values(g.stdout)["obj"] == obj
        assert obj_path.stat().st_mtime_ns == before, "the guest compiled the object again"
        # and it was built for that kernel, not the host's: the host's key differs
        import pybpf
        from pybpf.errors import CompileError

        host_obj = pybpf.compile(src)
        host_obj.unlink()
        assert str(host_obj) != obj
        with pytest.raises(CompileError, match="go together"):
            pybpf.compile(src, kernel_release=resolve_kernel(FIRST).release)
    finally:
        obj_path.unlink(missing_ok=True)
