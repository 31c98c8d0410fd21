"""Boot a kernel under QEMU and run one command inside it.

The guest sees the host's root filesystem read-only over virtio-9p and the
shared directories writable at the same paths; the command runs as root in
the same working directory with the same environment. Channels:

* ``ttyS0``: the kernel console (``quiet``); kept for failure reports and
  the init's progress marks, never mixed with the command's output;
* ``hvc0``/``hvc1``: the command's stdout/stderr, streamed to ours;
* ``hvc2``: control (``START``, ``EXIT <status>``).

QEMU runs in its own session with ``PR_SET_PDEATHSIG`` and is killed in a
``finally``, so no QEMU outlives the harness (also on Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import os
import platform
import re
import select
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from .initramfs import base_initramfs, run_archive
from .kernels import PreparedKernel, cache_dir

__all__ = [
    "EXIT_NO_STATUS",
    "EXIT_PANIC",
    "EXIT_TIMEOUT",
    "EXIT_START_FAILED",
    "RunResult",
    "detect_accel",
    "guest_environment",
    "run_in_vm",
    "run_on_host",
]

#: The guest stopped without reporting the command's status (init failed,
#: the machine reset, QEMU died).
EXIT_NO_STATUS = 122
#: The guest kernel panicked or oopsed.
EXIT_PANIC = 123
#: The guest (or host command) ran past ``--timeout``.
EXIT_TIMEOUT = 124
#: QEMU could not be started, or the kernel could not be prepared.
EXIT_START_FAILED = 125

_PANIC_RE = re.compile(
    rb"Kernel panic|\bOops\b|BUG: |general protection fault|Attempted to kill init|"
    rb"Kernel BUG|unable to handle (kernel|page)"
)

QEMU = os.environ.get("PYBPF_VM_QEMU", "qemu-system-x86_64")
QBOOT = "/usr/share/qemu/qboot.rom"


def _log(msg: str) -> None:
    print(f"pybpf.vm: {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class RunResult:
    """Outcome of one run."""

    status: int
    reason: str  # "exit", "panic", "timeout", "no-status", "start-failed", "signal"
    marks: dict[str, float]  # seconds since launch at which each stage was seen
    console: str  # the tail of the kernel console

    @property
    def ok(self) -> bool:
        return self.reason == "exit" and self.status == 0


# --------------------------------------------------------------------------
# process hygiene

_libc: ctypes.CDLL | None = None


def _child_setup() -> None:
    """Runs in the child before exec: die with the parent."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    # restore default dispositions the harness may have changed
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Terminated(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """Turn SIGTERM/SIGINT/SIGHUP into an exception while active (main thread only)."""

    def __enter__(self) -> "_Signals":
        self.old: dict[int, object] = {}
        if threading_main():
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.old[s] = signal.signal(s, self._raise)
        return self

    @staticmethod
    def _raise(signum: int, frame: object) -> None:
        raise _Terminated(signum)

    def __exit__(self, *exc: object) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)  # type: ignore[arg-type]


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _kill_group(p: "subprocess.Popen[bytes]") -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            p.kill()
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# --------------------------------------------------------------------------
# acceleration

_MB_MAGIC = 0x1BADB002
_MB_FLAGS = 0x00010000


def _tiny_multiboot() -> bytes:
    """A multiboot image that writes 0x31 to isa-debug-exit (QEMU exits 99)."""
    import struct

    base = 0x100000
    hdr = struct.pack(
        "<IIIIIIII",
        _MB_MAGIC, _MB_FLAGS, (-(_MB_MAGIC + _MB_FLAGS)) & 0xFFFFFFFF,
        base, base, 0, 0, base + 0x20,
    )
    code = bytes([0xB0, 0x31, 0xE6, 0xF4, 0xFA, 0xF4, 0xEB, 0xFD])  # mov al,0x31; out 0xf4,al; cli; hlt; jmp
    return hdr + code + b"\0" * (64 - len(hdr) - len(code))


def _probe(accel: str, image: Path, timeout: float = 5.0) -> bool:
    cpu = "host" if accel == "kvm" else "max"
    cmd = [
        QEMU, "-accel", accel, "-cpu", cpu, "-m", "64", "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
        "-kernel", str(image),
    ]
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_child_setup)
    except OSError:
        return False
    try:
        return p.wait(timeout=timeout) == 99
    except subprocess.TimeoutExpired:
        return False
    finally:
        _kill_group(p)


# A Linux guest under KVM writes its first console line within a second or
# two; one that wrote nothing in this long is stuck, not slow.
KVM_STALL = 90.0


def _accel_key() -> str | None:
    qemu = shutil.which(QEMU) or QEMU
    try:
        qst = os.stat(qemu)
    except OSError:
        return None
    return f"{platform.release()}|{qemu}|{qst.st_size}|{qst.st_mtime_ns}"


def _accel_file() -> Path:
    return cache_dir() / "accel.json"


def remember_accel(accel: str) -> None:
    """Record ``accel`` as what :func:`detect_accel` answers from now on."""
    key = _accel_key()
    if key is None:
        return
    cfile = _accel_file()
    try:
        cfile.parent.mkdir(parents=True, exist_ok=True)
        cfile.write_text(json.dumps({"key": key, "accel": accel}))
    except OSError:
        pass


def detect_accel() -> str:
    """``kvm`` if KVM really runs guest code here, else ``tcg`` (cached).

    ``PYBPF_VM_ACCEL=kvm|tcg`` overrides. The probe boots a 64-byte
    multiboot image with ``-accel kvm -cpu host`` and checks it reaches its
    exit port; broken KVMs (nested, PVM flavours) fail it.
    """
    env = os.environ.get("PYBPF_VM_ACCEL")
    if env in ("kvm", "tcg"):
        return env
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    key = _accel_key()
    if key is None:
        return "tcg"
    cfile = _accel_file()
    try:
        cached = json.loads(cfile.read_text())
        if cached.get("key") == key:
            return str(cached["accel"])
    except (OSError, ValueError, KeyError):
        pass
    with tempfile.TemporaryDirectory() as d:
        img = Path(d) / "probe.bin"
        img.write_bytes(_tiny_multiboot())
        accel = "kvm" if _probe("kvm", img) else "tcg"
    remember_accel(accel)
    return accel


# --------------------------------------------------------------------------
# environment

_ENV_DROP = {
    "PWD", "OLDPWD", "SHLVL", "_", "TMPDIR", "DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS", "SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_CONNECTION", "SSH_CLIENT",
    "SSH_TTY", "MAIL", "PS1", "PROMPT_COMMAND", "TERMCAP", "LS_COLORS", "INVOCATION_ID",
    "JOURNAL_STREAM", "NOTIFY_SOCKET",
}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def guest_environment(extra: dict[str, str] | None = None, tty: bool | None = None) -> dict[str, str]:
    """The environment the command gets in the guest: ours, minus session
    plumbing (DISPLAY, SSH agent, TMPDIR, ...), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP and _NAME_RE.match(k)}
    if tty is None:
        tty = sys.stdout.isatty()
    if not tty:
        env.setdefault("PY_COLORS", "0")
    else:
        try:
            cols, lines = os.get_terminal_size(sys.stdout.fileno())
            env.setdefault("COLUMNS", str(cols))
            env.setdefault("LINES", str(lines))
        except OSError:
            pass
    env.update(extra or {})
    return env


def _resolve_argv(argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """Skip pyenv's shim for ``python``: exec the interpreter running us.

    The shim is a bash script that starts pyenv (costly under TCG); it would
    resolve to the same interpreter.
    """
    argv = list(argv)
    if argv and re.fullmatch(r"python(3(\.\d+)?)?", argv[0]):
        found = shutil.which(argv[0], path=env.get("PATH"))
        if found and "/shims/" in found and sys.executable:
            argv[0] = sys.executable
    return argv


# --------------------------------------------------------------------------


def run_on_host(argv: Sequence[str], cwd: Path, timeout: float | None, env: dict[str, str] | None = None) -> RunResult:
    """Run the command directly on the host (``--kernel host``)."""
    t0 = time.monotonic()
    try:
        p = subprocess.Popen(list(argv), cwd=cwd, env=env, start_new_session=True, preexec_fn=_child_setup)
    except OSError as e:
        _log(f"cannot run {argv[0]}: {e}")
        return RunResult(127, "start-failed", {}, "")
    try:
        with _Signals():
            try:
                rc = p.wait(timeout=timeout or None)
            except subprocess.TimeoutExpired:
                _log(f"host: command still running after {timeout:g} s: killed")
                return RunResult(EXIT_TIMEOUT, "timeout", {}, "")
    except _Terminated as t:
        return RunResult(128 + t.signum, "signal", {}, "")
    finally:
        _kill_group(p)
    if rc < 0:
        rc = 128 - rc
    return RunResult(rc, "exit", {"end": time.monotonic() - t0}, "")


@dataclasses.dataclass
class VMConfig:
    memory: str = "1G"
    machine: str = os.environ.get("PYBPF_VM_MACHINE", "q35")
    #: firmware image; default: qboot when booting, QEMU's SeaBIOS when
    #: snapshotting (qboot does not load the ACPI tables vmgenid needs)
    bios: str | None = os.environ.get("PYBPF_VM_BIOS")
    accel: str | None = None
    cmdline_extra: str = os.environ.get("PYBPF_VM_APPEND", "")
    cpu: str = os.environ.get("PYBPF_VM_CPU", "max,la57=off")  # TCG CPU model (5-level paging is slow)
    fast_boot: bool = True  # kernel command line tuned for boot time (off: the benchmark's baseline)
    console: bool = False  # echo the kernel console to stderr live
    quiet: bool = False  # no progress messages
    timing: bool = False  # firmware debug port for the benchmark's "qemu start" mark
    #: start from (and create) a snapshot of the guest taken after the kernel's
    #: boot: skips the boot on every run after the first (``PYBPF_VM_SNAPSHOT=0``: off)
    snapshot: bool = os.environ.get("PYBPF_VM_SNAPSHOT", "1") != "0"


def _share_tags(shares: Sequence[Path]) -> list[tuple[str, Path]]:
    uniq: list[Path] = []
    for s in sorted({Path(os.path.realpath(s)) for s in shares}, key=lambda p: len(p.parts)):
        if s == Path("/"):
            raise ValueError("cannot share / writable")
        uniq.append(s)
    return [(f"w{i}", s) for i, s in enumerate(uniq)]


#: Part of every snapshot's key: bump when the guest/host protocol changes in
#: a way the QEMU command line and the initramfs's hash would not show.
_SNAPSHOT_FORMAT = "1"
#: Snapshots kept in the cache (the least recently used go first).
_SNAPSHOTS_KEPT = 8


def snapshot_dir() -> Path:
    """Where boot snapshots are kept (``<cache>/snapshots``)."""
    return cache_dir() / "snapshots"


def _boot_append(cfg: VMConfig) -> str:
    append = "console=ttyS0 quiet mitigations=off panic=-1 oops=panic rdinit=/init "
    if cfg.fast_boot:
        append += (
            "loglevel=1 reboot=t tsc=reliable no_timer_check 8250.nr_uarts=1 random.trust_cpu=on "
            "i8042.noaux i8042.nokbd "
            # skip the crypto self-tests and the jitter entropy source: both
            # cost a second or more of guest CPU under TCG
            "cryptomgr.notests initcall_blacklist=jent_mod_init "
        )
    return append + cfg.cmdline_extra


def _firmware(cfg: VMConfig) -> str:
    """The ``-bios`` image, or "" for QEMU's own SeaBIOS: qboot when
    booting, SeaBIOS when snapshotting (qboot does not load the ACPI tables
    vmgenid needs), unless ``cfg.bios`` says otherwise."""
    bios = cfg.bios if cfg.bios is not None else ("" if cfg.snapshot else QBOOT)
    return bios if bios and os.path.isfile(bios) else ""


def _qemu_argv(
    kernel: PreparedKernel,
    initrd: Path,
    cfg: VMConfig,
    accel: str,
    fds: dict[str, int],
    sockets: dict[str, str],
    tags: Sequence[tuple[str, Path]],
) -> list[str]:
    """The QEMU command line. ``fds`` are the pipe ends QEMU writes the
    console and the command's output to; ``sockets`` the unix sockets it
    connects to (control channel, and the monitor when a snapshot is made)."""
    qcmd = [
        QEMU, "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-machine", cfg.machine, "-accel", accel,
        "-cpu", "host" if accel == "kvm" else cfg.cpu,
        "-smp", "1", "-m", cfg.memory,
        "-kernel", str(kernel.image), "-initrd", str(initrd), "-append", _boot_append(cfg),
        "-chardev", f"file,id=con,path=/proc/self/fd/{fds['con']}", "-serial", "chardev:con",
        "-device", "virtio-serial-pci,max_ports=4",
    ]
    bios = _firmware(cfg)
    if bios:
        qcmd += ["-bios", bios]
    if cfg.snapshot:
        # A restored guest gets a new generation id: the kernel (>= 5.18)
        # then reseeds its random generator, so no two runs from one
        # snapshot share random numbers.
        qcmd += ["-device", "vmgenid,guid=auto"]
    for i, name in enumerate(("out", "err")):
        qcmd += [
            "-chardev", f"file,id={name},path=/proc/self/fd/{fds[name]}",
            "-device", f"virtconsole,chardev={name},nr={i + 1}",
        ]
    qcmd += [
        "-chardev", f"socket,id=ctl,path={sockets['ctl']}",
        "-device", "virtconsole,chardev=ctl,nr=3",
    ]
    if "qmp" in sockets:
        qcmd += ["-chardev", f"socket,id=qmp,path={sockets['qmp']}", "-mon", "chardev=qmp,mode=control"]
    if cfg.timing:
        qcmd += ["-chardev", f"file,id=dbg,path=/proc/self/fd/{fds['dbg']}",
                 "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
    qcmd += [
        "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=root,mount_tag=root",
    ]
    if kernel.modules:
        qcmd += [
            "-fsdev", f"local,id=modules,path={kernel.modules},security_model=none,readonly=on",
            "-device", "virtio-9p-pci,fsdev=modules,mount_tag=modules",
        ]
    for tag, path in tags:
        qcmd += [
            "-fsdev", f"local,id={tag},path={path},security_model=none,multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}",
        ]
    return qcmd


def _snapshot_path(kernel: PreparedKernel, initrd: Path, cfg: VMConfig, accel: str,
                   tags: Sequence[tuple[str, Path]]) -> Path:
    """The snapshot for this machine: keyed by everything that shapes the
    guest up to the point where it waits for its run (QEMU binary, firmware,
    kernel, initramfs, kernel command line, devices), not by the run."""
    import hashlib

    shape = _qemu_argv(kernel, initrd, cfg, accel, {n: -1 for n in ("con", "out", "err", "dbg")},
                       {"ctl": "CTL"}, [(tag, Path("/SHARE")) for tag, _ in tags])
    h = hashlib.sha256(_SNAPSHOT_FORMAT.encode())
    h.update("\0".join(shape).encode())
    for f in (shutil.which(QEMU) or QEMU, str(kernel.image), _firmware(cfg)):
        try:
            st = os.stat(f)
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f.encode())
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", kernel.name)[-40:]
    return snapshot_dir() / f"{safe}-{h.hexdigest()[:16]}.vmstate"


def _prune_snapshots(keep: Path) -> None:
    try:
        snaps = sorted(snapshot_dir().glob("*.vmstate"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in snaps[_SNAPSHOTS_KEPT:]:
        if old != keep:
            try:
                old.unlink()
            except OSError:
                pass


class _QMP:
    """The least QMP client that works: one command at a time, events skipped."""

    def __init__(self, sock: "socket.socket", timeout: float) -> None:
        self.sock = sock
        sock.settimeout(timeout)
        self.buf = b""
        self._read()  # the greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise OSError("QEMU closed its monitor")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name: str, args: dict[str, object] | None = None, fds: Sequence[int] = ()) -> object:
        msg: dict[str, object] = {"execute": name}
        if args:
            msg["arguments"] = args
        data = json.dumps(msg).encode() + b"\n"
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)
        while True:
            r = self._read()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise OSError(f"QMP {name}: {r['error'].get('desc', r['error'])}")


def _save_snapshot(qmp: "socket.socket", path: Path, label: str, say: Callable[[str], None]) -> None:
    """Migrate the running guest (waiting for its run, nothing mounted) into
    ``path`` and let it go on. Failures only cost the snapshot."""
    t = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        q = _QMP(qmp, 30)
        q.cmd("getfd", {"fdname": "snap"}, fds=[fd])
        q.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        q.cmd("migrate", {"uri": "fd:snap"})
        deadline = time.monotonic() + 120
        while True:
            info = q.cmd("query-migrate")
            st = info.get("status") if isinstance(info, dict) else None
            if st == "completed":
                break
            if st in ("failed", "cancelled") or time.monotonic() > deadline:
                err = info.get("error-desc", st) if isinstance(info, dict) else st
                raise OSError(f"migration {err}")
            time.sleep(0.02)
        q.cmd("cont")
        os.fsync(fd)
        os.replace(tmp, path)
        say(f"{label}: boot snapshot saved in {time.monotonic() - t:.1f} s "
            f"({path.stat().st_size >> 20} MiB, {path.name}); later runs start from it")
        _prune_snapshots(path)
    except (OSError, ValueError) as e:
        _log(f"{label}: could not save a boot snapshot ({e}); runs boot normally")
        try:
            tmp.unlink()
        except OSError:
            pass
    finally:
        os.close(fd)


def _accept(listener: "socket.socket", proc: "subprocess.Popen[bytes]", timeout: float) -> "socket.socket | None":
    """QEMU's connection to ``listener``, or None if QEMU died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([listener], [], [], 0.05)
        if r:
            conn, _ = listener.accept()
            return conn
        if proc.poll() is not None:
            return None
    return None


def run_in_vm(
    kernel: PreparedKernel,
    argv: Sequence[str],
    *,
    cwd: Path,
    shares: Sequence[Path],
    env: dict[str, str],
    timeout: float | None,
    config: VMConfig | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
    label: str | None = None,
) -> RunResult:
    """Boot ``kernel``, run ``argv`` in ``cwd`` inside it, return the result.

    With ``config.snapshot`` (the default) the first run of a machine shape
    saves the guest right after the kernel's boot, and later runs restore
    that snapshot instead of booting; a snapshot that cannot be restored
    is removed and the run boots normally.
    """
    # both attempts share t0, so the timeout (counted from t0) covers them together
    attempt = functools.partial(_run_once, kernel, argv, cwd=cwd, shares=shares, env=env, timeout=timeout,
                                cfg=config or VMConfig(), stdout=stdout, stderr=stderr,
                                label=label or kernel.name, t0=time.monotonic())
    result = _with_fresh_boot(attempt)
    if result.reason == "kvm-stall":
        _log(f"{label or kernel.name}: under KVM the guest wrote nothing in {KVM_STALL:g} s although KVM ran "
             f"the accelerator probe: this KVM does not run Linux guests here. Using TCG from now on "
             f"(remembered in {_accel_file()}; PYBPF_VM_ACCEL=kvm|tcg overrides).")
        remember_accel("tcg")
        tcg = dataclasses.replace(attempt.keywords["cfg"], accel="tcg")
        result = _with_fresh_boot(functools.partial(attempt, cfg=tcg))
    return result


def _with_fresh_boot(attempt: "Callable[..., RunResult]") -> RunResult:
    """Run ``attempt``, booting afresh if its boot snapshot cannot be restored."""
    result = attempt(allow_restore=True)
    if result.reason == "restore-failed":
        result = attempt(allow_restore=False)
    return result


def _run_once(
    kernel: PreparedKernel,
    argv: Sequence[str],
    *,
    cwd: Path,
    shares: Sequence[Path],
    env: dict[str, str],
    timeout: float | None,
    cfg: VMConfig,
    stdout: BinaryIO | None,
    stderr: BinaryIO | None,
    label: str,
    t0: float,
    allow_restore: bool,
) -> RunResult:
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    marks: dict[str, float] = {}
    accel = cfg.accel or detect_accel()
    say: Callable[[str], None] = (lambda m: None) if cfg.quiet else _log

    tags = _share_tags(shares)
    env = dict(env)
    env["PYBPF_VM"] = "1"
    env["PYBPF_VM_KERNEL"] = kernel.name
    if kernel.config:
        env["PYBPF_KCONFIG"] = "/run/pybpf/kconfig"
    argv = _resolve_argv(argv, env)
    env_sh = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    cmd_sh = (
        ". /run/pybpf/env.sh\n"
        f"cd {shlex.quote(str(cwd))} || exit 126\n"
        f"exec {shlex.join(argv)}\n"
    )
    shares_txt = "".join(f"{tag} {path}\n" for tag, path in tags)

    def run_data() -> bytes:
        params = {
            "PYBPF_MODULES": "1" if kernel.modules else "",
            "PYBPF_HOSTNAME": "pybpf-" + re.sub(r"[^a-z0-9-]", "-", kernel.name.lower())[-40:],
            "PYBPF_RELEASE": kernel.release,
            "PYBPF_EPOCH": str(int(time.time())),
        }
        params_sh = "".join(f"{k}={shlex.quote(v)}\n" for k, v in params.items())
        arc = run_archive({
            "pybpf/params.sh": params_sh.encode(),
            "pybpf/env.sh": env_sh.encode(),
            "pybpf/cmd.sh": cmd_sh.encode(),
            "pybpf/shares": shares_txt.encode(),
            "pybpf/seed": os.urandom(64),
        })
        return f"{len(arc)}\n".encode() + arc

    rundir = Path(tempfile.mkdtemp(prefix="pybpf-vm-"))
    fds_to_close: list[int] = []
    socks: list[socket.socket] = []
    proc: "subprocess.Popen[bytes] | None" = None
    console_tail: deque[bytes] = deque(maxlen=400)
    try:
        try:
            initrd = base_initramfs(kernel)
        except Exception as e:  # noqa: BLE001 - report any preparation failure
            _log(f"{label}: cannot build the initramfs: {e}")
            return RunResult(EXIT_START_FAILED, "start-failed", marks, "")

        snap: Path | None = None
        restore = False
        if cfg.snapshot:
            snap = _snapshot_path(kernel, initrd, cfg, accel, tags)
            restore = allow_restore and snap.is_file()

        chans = {}
        child_fds = []
        for name in ("con", "out", "err") + (("dbg",) if cfg.timing else ()):
            r, w = os.pipe()
            chans[name] = r
            child_fds.append(w)
            fds_to_close.append(r)
            fds_to_close.append(w)
        w_of = dict(zip(chans, child_fds))
        listeners: dict[str, socket.socket] = {}
        for name in ("ctl",) + (("qmp",) if snap is not None and not restore else ()):
            ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(ls)
            ls.bind(str(rundir / f"{name}.sock"))
            ls.listen(1)
            listeners[name] = ls
        qcmd = _qemu_argv(kernel, initrd, cfg, accel, w_of,
                          {n: str(rundir / f"{n}.sock") for n in listeners}, tags)
        snap_fd: int | None = None
        if restore:
            assert snap is not None
            try:
                snap_fd = os.open(snap, os.O_RDONLY)
            except OSError:
                restore = False
            else:
                fds_to_close.append(snap_fd)
                child_fds.append(snap_fd)
                qcmd += ["-incoming", f"fd:{snap_fd}"]
        (rundir / "qemu.cmd").write_text(shlex.join(qcmd) + "\n")
        how = "restoring its boot snapshot" if restore else "booting"
        say(f"{how} {label} ({kernel.release or kernel.image}, {accel}) ...")
        with _Signals():
            try:
                proc = subprocess.Popen(
                    qcmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    pass_fds=child_fds, start_new_session=True, preexec_fn=_child_setup,
                )
            except OSError as e:
                _log(f"{label}: cannot start QEMU ({QEMU}): {e}")
                return RunResult(EXIT_START_FAILED, "start-failed", marks, "")
            for w in child_fds:
                os.close(w)
                fds_to_close.remove(w)
            ctl = _accept(listeners["ctl"], proc, 30)
            if ctl is None:
                return _dead_at_start(proc, label, marks, restore, snap)
            socks.append(ctl)
            chans["ctl"] = ctl.fileno()

            def send_run() -> None:
                ctl.setblocking(True)
                try:
                    ctl.sendall(run_data())
                except OSError:
                    pass  # QEMU died: the supervision below reports it
                ctl.setblocking(False)

            def on_ready() -> None:
                if snap is not None and "qmp" in listeners:
                    qmp = _accept(listeners["qmp"], proc, 10)
                    if qmp is not None:
                        socks.append(qmp)
                        _save_snapshot(qmp, snap, label, say)
                        marks["snapshot"] = time.monotonic() - t0
                send_run()

            if restore:
                assert snap is not None
                try:
                    os.utime(snap)
                except OSError:
                    pass
                send_run()
            stall = KVM_STALL if accel == "kvm" and cfg.accel is None else None
            result = _supervise(proc, chans, out, err, cfg, t0, timeout, marks, console_tail, label, say,
                                on_ready, stall)
            if restore and "params" not in marks and result.reason in ("start-failed", "no-status"):
                return _restore_failed(label, snap, result)
            return result
    except _Terminated as t:
        _log(f"{label}: interrupted (signal {t.signum}): guest killed")
        return RunResult(128 + t.signum, "signal", marks, _tail(console_tail))
    finally:
        if proc is not None:
            _kill_group(proc)
        for s in socks:
            s.close()
        for fd in fds_to_close:
            try:
                os.close(fd)
            except OSError:
                pass
        if os.environ.get("PYBPF_VM_KEEP_RUNDIR"):
            _log(f"run directory kept: {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)


def _restore_failed(label: str, snap: Path | None, result: RunResult) -> RunResult:
    _log(f"{label}: the boot snapshot could not be restored ({result.reason}); it is removed and "
         f"the guest boots normally")
    if snap is not None:
        try:
            snap.unlink()
        except OSError:
            pass
    return RunResult(result.status, "restore-failed", result.marks, result.console)


def _dead_at_start(proc: "subprocess.Popen[bytes]", label: str, marks: dict[str, float],
                   restore: bool, snap: Path | None) -> RunResult:
    """QEMU exited (or hung) before connecting its control channel."""
    _kill_group(proc)
    msg = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    result = RunResult(EXIT_START_FAILED, "start-failed", marks, "")
    if restore:
        return _restore_failed(label, snap, result)
    _log(f"{label}: QEMU failed (status {proc.returncode}, exit {EXIT_START_FAILED}):\n{_indent(msg or '(no message)')}")
    return result


def _tail(lines: "deque[bytes]", n: int = 60) -> str:
    """The console's last ``n`` lines, or from just before the first crash
    report (panic, oops, BUG) when there is one."""
    items = list(lines)
    for i, line in enumerate(items):
        if _PANIC_RE.search(line):
            start = max(0, i - 5)
            return b"".join(items[start:start + 80]).decode(errors="replace")
    return b"".join(items[-n:]).decode(errors="replace")


def _supervise(
    proc: "subprocess.Popen[bytes]",
    chans: dict[str, int],
    out: BinaryIO,
    err: BinaryIO,
    cfg: VMConfig,
    t0: float,
    timeout: float | None,
    marks: dict[str, float],
    console: "deque[bytes]",
    label: str,
    say: Callable[[str], None],
    on_ready: Callable[[], None],
    stall: float | None = None,
) -> RunResult:
    """Relay the guest's channels until it reports its status.

    With ``stall``, a guest that has written nothing on any of its channels
    (console, output, control) ``stall`` seconds after t0 is stopped and reported as ``kvm-stall``:
    a KVM that runs the accelerator probe but not a Linux kernel.
    """
    sel = selectors.DefaultSelector()
    heard = False
    assert proc.stderr is not None
    qerr_fd = proc.stderr.fileno()
    names = {fd: name for name, fd in chans.items()}
    names[qerr_fd] = "qemu"
    for fd in names:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    partial = {"con": b"", "ctl": b""}
    qemu_err = bytearray()
    status: int | None = None
    deadline = t0 + timeout if timeout else None
    exit_seen_at: float | None = None
    timed_out = False

    def on_console_line(line: bytes) -> None:
        if line.startswith(b"@pybpf "):
            parts = line[7:].strip().split(b" ", 2)
            name = parts[0].decode(errors="replace")
            marks.setdefault(name, time.monotonic() - t0)
            if len(parts) > 1:
                try:
                    marks.setdefault("guest_uptime:" + name, float(parts[1]))
                except ValueError:
                    pass
            return
        console.append(line)
        if cfg.console:
            err.write(b"[console] " + line)
            err.flush()

    while names:
        now = time.monotonic()
        wait = 1.0
        if deadline is not None:
            if now >= deadline:
                timed_out = True
                break
            wait = min(wait, deadline - now)
        if exit_seen_at is not None and now - exit_seen_at > 10:
            break  # status known; the guest does not go away: stop it
        if stall is not None and not heard and now - t0 > stall:
            _kill_group(proc)
            return RunResult(EXIT_START_FAILED, "kvm-stall", marks, "")
        for key, _ in sel.select(wait):
            fd = key.fd
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:  # the control socket reset: QEMU is gone
                data = b""
            name = names[fd]
            if not data:
                sel.unregister(fd)
                del names[fd]
                continue
            if name != "qemu":
                heard = True
            if name == "dbg":
                marks.setdefault("firmware", time.monotonic() - t0)
            elif name == "out":
                if "output" not in marks:
                    marks["output"] = time.monotonic() - t0
                    marks["cpu:output"] = _cpu_seconds(proc.pid)
                out.write(data)
                out.flush()
            elif name == "err":
                marks.setdefault("output", time.monotonic() - t0)
                err.write(data)
                err.flush()
            elif name == "qemu":
                qemu_err += data
            else:
                buf = partial[name] + data
                *lines, partial[name] = buf.split(b"\n")
                for line in lines:
                    if name == "con":
                        on_console_line(line + b"\n")
                    else:
                        line = line.strip()
                        if line == b"READY":
                            marks.setdefault("ready", time.monotonic() - t0)
                            on_ready()
                        elif line == b"START":
                            marks["start"] = time.monotonic() - t0
                            marks["cpu:start"] = _cpu_seconds(proc.pid)
                            say(f"{label}: guest up in {marks['start']:.1f} s")
                        elif line.startswith(b"EXIT "):
                            status = int(line[5:])
                            marks["end"] = time.monotonic() - t0
                            exit_seen_at = time.monotonic()
        if not names or (proc.poll() is not None and set(names.values()) <= {"qemu"}):
            break
    if partial["con"]:
        on_console_line(partial["con"] + b"\n")
    tail = _tail(console)
    if status is not None and not timed_out:
        return RunResult(status, "exit", marks, tail)
    if timed_out:
        _kill_group(proc)
        where = "the command was still running" if "start" in marks else "the guest had not finished booting"
        _log(f"{label}: timed out after {timeout:g} s, {where} (exit {EXIT_TIMEOUT}); guest killed. "
             f"Console tail:\n{_indent(tail)}")
        return RunResult(EXIT_TIMEOUT, "timeout", marks, tail)
    try:
        rc = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        rc = None
    whole = b"".join(console)
    if _PANIC_RE.search(whole):
        _log(f"{label}: guest kernel crashed (exit {EXIT_PANIC}). Console tail:\n{_indent(tail)}")
        return RunResult(EXIT_PANIC, "panic", marks, tail)
    if not {"init", "params"} & marks.keys() and rc not in (0, None):
        msg = qemu_err.decode(errors="replace").strip()
        _log(f"{label}: QEMU failed (status {rc}, exit {EXIT_START_FAILED}):\n{_indent(msg or tail)}")
        return RunResult(EXIT_START_FAILED, "start-failed", marks, tail)
    qmsg = qemu_err.decode(errors="replace").strip()
    _log(
        f"{label}: guest stopped without reporting a status (exit {EXIT_NO_STATUS})."
        + (f" QEMU said:\n{_indent(qmsg)}\n" if qmsg else "")
        + f" Console tail:\n{_indent(tail)}"
    )
    return RunResult(EXIT_NO_STATUS, "no-status", marks, tail)


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) used so far by process ``pid``:
    a measure of the guest's boot work that host load does not inflate."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines()) or "    (nothing)"
