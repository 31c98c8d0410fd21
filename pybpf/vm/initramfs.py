"""The guest's initramfs: a static busybox, the modules needed to mount the
host's root over virtio-9p, and the harness's guest scripts.

A base archive is built once per kernel (and per version of the guest
scripts) and cached next to the kernel; every run appends a tiny second
archive holding that run's parameters and command (the kernel unpacks
concatenated cpio archives in order).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Iterable

from .kernels import FetchError, PreparedKernel, vm_data_dir

__all__ = ["CpioWriter", "base_initramfs", "run_archive", "GUEST_MODULES"]

#: Modules the initramfs loads (those built into a kernel are skipped):
#: virtio transport and console, 9p, and overlayfs (used when the host has no
#: /lib/modules to mount the kernel's module tree on).
GUEST_MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay")

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/sbin/busybox")


class CpioWriter:
    """Minimal writer of the ``newc`` cpio format the kernel unpacks."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1000
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08X}"
            for v in (
                self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0,
            )
        )
        out = self.buf
        out.write(hdr.encode() + nb)
        out.write(b"\0" * ((4 - (110 + len(nb)) % 4) % 4))
        out.write(data)
        out.write(b"\0" * ((4 - len(data) % 4) % 4))

    def mkdir(self, name: str) -> None:
        name = name.strip("/")
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755)

    def _parent(self, name: str) -> str:
        name = name.strip("/")
        if "/" in name:
            self.mkdir(name.rsplit("/", 1)[0])
        return name

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(self._parent(name), stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(self._parent(name), stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(self._parent(name), stat.S_IFCHR | mode, rdev=(major, minor))

    def getvalue(self) -> bytes:
        trailer = CpioWriter()
        trailer.ino = 0
        trailer._entry("TRAILER!!!", 0)
        data = self.buf.getvalue() + trailer.buf.getvalue()
        return data + b"\0" * ((-len(data)) % 512)


def _decompress_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        zstd = shutil.which("zstd")
        if not zstd:
            raise FetchError(f"{path.name}: zstd-compressed module and no zstd tool installed")
        return subprocess.run([zstd, "-dc", "-q", str(path)], capture_output=True, check=True).stdout
    return data


def _module_closure(moddir: Path, wanted: Iterable[str]) -> list[Path]:
    """Paths (in load order) of ``wanted`` modules and their dependencies."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod] = rest.split()
        base = mod.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_")
        by_name[base] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        # modules.dep lists the full closure, deepest last
        for d in reversed(deps.get(mod, [])):
            visit(d)
        order.append(mod)

    for name in wanted:
        found = by_name.get(name.replace("-", "_"))
        if found is not None:  # else: built in (or absent)
            visit(found)
    return [moddir / m for m in order]


def _guest_scripts() -> dict[str, bytes]:
    d = vm_data_dir()
    return {n: (d / n).read_bytes() for n in ("init", "guest.sh")}


def _busybox() -> Path:
    for c in BUSYBOX_CANDIDATES:
        if os.path.isfile(c):
            return Path(c)
    raise FetchError("no static busybox found (install the busybox-static package)")


def base_initramfs(kernel: PreparedKernel) -> Path:
    """The cached base initramfs for ``kernel`` (built on first use)."""
    scripts = _guest_scripts()
    bb = _busybox()
    h = hashlib.sha256()
    for n in sorted(scripts):
        h.update(n.encode() + scripts[n])
    h.update(str(bb.stat().st_size).encode() + str(bb.stat().st_mtime_ns).encode())
    h.update(repr(GUEST_MODULES).encode() + kernel.release.encode())
    if kernel.config:
        h.update(kernel.config.read_bytes())
    out = kernel.dir / f"initramfs-{h.hexdigest()[:12]}.cpio"
    if out.is_file():
        return out
    w = CpioWriter()
    for d in ("dev", "proc", "sys", "newroot", "tmp", "modules", "pybpf"):
        w.mkdir(d)
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    w.file("bin/busybox", bb.read_bytes(), 0o755)
    w.symlink("bin/sh", "busybox")
    w.file("init", scripts["init"], 0o755)
    w.file("pybpf/guest.sh", scripts["guest.sh"], 0o755)
    if kernel.config:
        w.file("pybpf/kconfig", kernel.config.read_bytes())
    names = []
    if kernel.modules and (kernel.modules / kernel.release / "modules.dep").is_file():
        for p in _module_closure(kernel.modules / kernel.release, GUEST_MODULES):
            base = p.name.split(".ko")[0]
            w.file(f"modules/{base}.ko", _decompress_module(p))
            names.append(base)
    w.file("modules/order", ("\n".join(names) + "\n").encode())
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(w.getvalue())
    tmp.replace(out)
    for old in kernel.dir.glob("initramfs-*.cpio"):
        if old != out:
            try:
                old.unlink()
            except OSError:
                pass
    return out


def run_archive(files: dict[str, bytes]) -> bytes:
    """A small cpio archive with per-run files (paths relative to /)."""
    w = CpioWriter()
    for name, data in files.items():
        w.file(name, data, 0o755 if name.endswith(".sh") else 0o644)
    return w.getvalue()
