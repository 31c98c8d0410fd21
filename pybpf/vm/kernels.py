"""Kernel matrix, Debian package fetch and the on-disk kernel cache.

Kernels come from Debian's packages. Each matrix entry (``vm/kernels.toml``)
names Debian suites; the package index of those suites is fetched through the
mirror already configured in apt, into a private apt state under the cache
directory (the system's apt configuration is never modified). The versioned
``linux-image``/``linux-binary``/``linux-modules``/``linux-base`` packages are
downloaded with ``apt-get download``, extracted with ``dpkg-deb -x``, the
module tree is indexed with ``depmod -b`` and the uncompressed ``vmlinux`` is
extracted from the bzImage (booting it directly saves seconds under TCG).

Layout of a prepared kernel (``<cache>/kernels/<name>/``)::

    kernel.json      metadata (release, packages, paths); written last
    vmlinuz          the bzImage as shipped
    vmlinux          the uncompressed ELF (PVH entry), if extraction worked
    config           the kernel's configuration (handed to guests)
    System.map
    modroot/lib/modules/<release>/   module tree, depmod'ed
    initramfs-<hash>.cpio   the harness's busybox initramfs (see initramfs.py)
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import zlib
from pathlib import Path
from typing import Any

__all__ = [
    "FetchError",
    "KernelSpec",
    "PreparedKernel",
    "cache_dir",
    "load_matrix",
    "prepare_kernel",
    "prepare_custom_kernel",
    "extract_vmlinux",
]

DEFAULT_PACKAGE = "linux-image-amd64"


class FetchError(RuntimeError):
    """A kernel could not be resolved, downloaded or unpacked."""


def _log(msg: str) -> None:
    print(f"pybpf.vm: {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """The harness's cache: ``$PYBPF_VM_CACHE``, else ``~/.cache/pybpf/vm``."""
    env = os.environ.get("PYBPF_VM_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "pybpf" / "vm"


def vm_data_dir() -> Path:
    """Directory holding ``kernels.toml`` and the guest scripts (``vm/``)."""
    env = os.environ.get("PYBPF_VM_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (here.parent.parent / "vm", here / "data"):
        if (cand / "kernels.toml").is_file():
            return cand
    raise FetchError(
        f"cannot find the harness's vm/ directory (kernels.toml, guest scripts) "
        f"next to {here}; set PYBPF_VM_DIR"
    )


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One entry of the kernel matrix."""

    name: str
    suites: tuple[str, ...]
    package: str = DEFAULT_PACKAGE
    uri: str | None = None


def load_matrix(path: Path | None = None) -> dict[str, KernelSpec]:
    """Read the kernel matrix, in file order (oldest first)."""
    path = path or vm_data_dir() / "kernels.toml"
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out: dict[str, KernelSpec] = {}
    for name, entry in data.get("kernels", {}).items():
        suites = entry.get("suites") or [entry["suite"]]
        out[name] = KernelSpec(
            name=name,
            suites=tuple(suites),
            package=entry.get("package", DEFAULT_PACKAGE),
            uri=entry.get("uri"),
        )
    return out


@dataclasses.dataclass
class PreparedKernel:
    """A kernel ready to boot."""

    name: str
    release: str
    dir: Path
    image: Path  # what QEMU boots: vmlinux if available, else vmlinuz
    config: Path | None
    modules: Path | None  # the directory that holds <release>/ (a lib/modules)
    meta: dict[str, Any]


# --------------------------------------------------------------------------
# apt sources: reuse the configured mirror with other suite names


def _configured_sources() -> list[tuple[str, list[str], str | None]]:
    """(uri, suites, signed_by) of every configured ``deb`` source."""
    out: list[tuple[str, list[str], str | None]] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        text = Path(path).read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                out.append((uri, fields.get("suites", "").split(), fields.get("signed-by")))
    lists = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for path in lists:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line.startswith("deb "):
                continue
            signed = None
            m = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)", line)
            if m:
                opts, rest = m.group(1), m.group(2)
                sm = re.search(r"signed-by=(\S+)", opts)
                signed = sm.group(1) if sm else None
            else:
                rest = line[4:]
            parts = rest.split()
            if len(parts) >= 2:
                out.append((parts[0], [parts[1]], signed))
    return out


def _pick_uri(suite: str, override: str | None) -> tuple[str, str | None]:
    srcs = _configured_sources()
    want_security = suite.endswith("-security")
    if override:
        return override, next((s for _, _, s in srcs if s), None)
    for uri, suites, signed in srcs:
        is_security = any(s.endswith("-security") for s in suites)
        if is_security == want_security and "debian" in uri:
            return uri, signed
    for uri, suites, signed in srcs:
        if any(s.endswith("-security") for s in suites) == want_security:
            return uri, signed
    if want_security:
        return "http://deb.debian.org/debian-security", None
    return "http://deb.debian.org/debian", None


class _Apt:
    """A private apt state (own sources list and package lists)."""

    def __init__(self, root: Path, spec: KernelSpec):
        self.root = root
        self.spec = spec
        (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (root / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        lines = []
        for suite in spec.suites:
            uri, signed = _pick_uri(suite, spec.uri)
            opt = f" [signed-by={signed}]" if signed else ""
            lines.append(f"deb{opt} {uri} {suite} main\n")
        self.sources = root / "sources.list"
        self.sources.write_text("".join(lines))

    def opts(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::Etc::SourceList={self.sources}",
            "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={r / 'lists'}",
            "-o", f"Dir::Cache={r}",
            "-o", f"Dir::Cache::Archives={r / 'archives'}",
            "-o", "Dir::Cache::pkgcache=",
            "-o", "Dir::Cache::srcpkgcache=",
            "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root",
            "-q",
        ]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        cmd = [tool, *self.opts(), *args]
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if p.returncode != 0:
            raise FetchError(f"{' '.join(cmd[:1] + list(args))} failed:\n{p.stderr.strip()[-2000:]}")
        return p.stdout

    def update(self) -> None:
        self.run("apt-get", "update")

    def show(self, pkg: str) -> dict[str, str]:
        out = self.run("apt-cache", "show", "--no-all-versions", pkg)
        fields: dict[str, str] = {}
        for line in out.splitlines():
            if not line:
                break
            if line[:1].isspace() or ":" not in line:
                continue
            k, v = line.split(":", 1)
            fields[k] = v.strip()
        return fields


_VERSIONED = re.compile(r"^linux-(image|binary|modules|base)-\d")


def _resolve(apt: _Apt, package: str) -> dict[str, dict[str, str]]:
    """The versioned kernel packages ``package`` pulls in, name -> record."""
    todo = [package]
    seen: dict[str, dict[str, str]] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        rec = apt.show(name)
        if not rec:
            raise FetchError(f"package {name} not found in {', '.join(apt.spec.suites)}")
        seen[name] = rec
        for alt in rec.get("Depends", "").split(","):
            dep = alt.split("|")[0].strip().split(" ")[0]
            if _VERSIONED.match(dep):
                todo.append(dep)
    return {n: r for n, r in seen.items() if _VERSIONED.match(n)}


def _download(apt: _Apt, pkgs: dict[str, dict[str, str]], dest: Path, label: str) -> list[Path]:
    total = sum(int(r.get("Size", "0")) for r in pkgs.values())
    stop = threading.Event()

    def progress() -> None:
        last = ""
        while not stop.wait(1.0):
            have = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
            pct = 100.0 * have / total if total else 0.0
            msg = f"downloading kernel {label}: {have / 1e6:.1f}/{total / 1e6:.1f} MB ({pct:.0f}%)"
            if msg != last:
                _log(msg)
                last = msg

    _log(f"downloading kernel {label}: {len(pkgs)} packages, {total / 1e6:.1f} MB")
    t = threading.Thread(target=progress, daemon=True)
    t.start()
    try:
        apt.run("apt-get", "download", *sorted(pkgs), cwd=dest)
    finally:
        stop.set()
        t.join()
    debs = sorted(dest.glob("*.deb"))
    if len(debs) < len(pkgs):
        raise FetchError(f"apt-get download produced {len(debs)} files for {len(pkgs)} packages")
    return debs


# --------------------------------------------------------------------------
# vmlinux extraction


def extract_vmlinux(bzimage: Path, out: Path) -> bool:
    """Write the uncompressed ELF kernel inside ``bzimage`` to ``out``.

    Uses the setup header's payload_offset/payload_length (boot protocol
    2.08+); the payload is gzip, xz or zstd (zstd needs the ``zstd`` tool).
    Returns False if the image is not a bzImage or the result is no ELF.
    """
    data = bzimage.read_bytes()
    if data[0x202:0x206] != b"HdrS":
        return False
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start:start + payload_length]
    raw: bytes | None = None
    if payload[:6] == b"\xfd7zXZ\x00":
        raw = lzma.LZMADecompressor().decompress(payload)
    elif payload[:4] == b"\x28\xb5\x2f\xfd":
        zstd = shutil.which("zstd")
        if not zstd:
            _log("zstd not installed: booting the compressed bzImage (slower)")
            return False
        p = subprocess.run([zstd, "-dc", "-q"], input=payload[:-4], capture_output=True)
        raw = p.stdout
    elif payload[:2] == b"\x1f\x8b":
        raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    if not raw or raw[:4] != b"\x7fELF":
        return False
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(raw)
    tmp.replace(out)
    return True


def _has_pvh_note(vmlinux: Path) -> bool:
    # XEN_ELFNOTE_PHYS32_ENTRY (18) in a "Xen" note: QEMU needs it to boot an ELF.
    data = vmlinux.read_bytes()
    return b"Xen\x00" in data and bool(re.search(rb"\x04\x00\x00\x00.\x00\x00\x00\x12\x00\x00\x00Xen\x00", data, re.S))


# --------------------------------------------------------------------------


class _Lock:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "w")

    def __enter__(self) -> "_Lock":
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def _load_prepared(kdir: Path) -> PreparedKernel | None:
    try:
        meta = json.loads((kdir / "kernel.json").read_text())
    except (OSError, ValueError):
        return None
    image = kdir / meta["image"]
    if not image.is_file():
        return None
    cfg = kdir / "config"
    mods = kdir / "modroot" / "lib" / "modules"
    return PreparedKernel(
        name=meta["name"],
        release=meta["release"],
        dir=kdir,
        image=image,
        config=cfg if cfg.is_file() else None,
        modules=mods if (mods / meta["release"]).is_dir() else None,
        meta=meta,
    )


def _finish(kdir: Path, name: str, release: str, extra: dict[str, Any]) -> PreparedKernel:
    image = "vmlinuz"
    if extract_vmlinux(kdir / "vmlinuz", kdir / "vmlinux") and _has_pvh_note(kdir / "vmlinux"):
        image = "vmlinux"
    moddir = kdir / "modroot" / "lib" / "modules" / release
    if moddir.is_dir():
        p = subprocess.run(["depmod", "-b", str(kdir / "modroot"), release], capture_output=True, text=True)
        if p.returncode != 0:
            raise FetchError(f"depmod failed: {p.stderr.strip()}")
    meta = {"name": name, "release": release, "image": image, "prepared": time.time(), **extra}
    (kdir / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
    k = _load_prepared(kdir)
    assert k is not None
    return k


def prepare_kernel(spec: KernelSpec, refresh: bool = False) -> PreparedKernel:
    """Return the cached kernel for ``spec``, fetching it on first use."""
    root = cache_dir()
    kdir = root / "kernels" / spec.name
    if not refresh:
        k = _load_prepared(kdir)
        if k is not None:
            return k
    with _Lock(root / "locks" / f"{spec.name}.lock"):
        if not refresh:
            k = _load_prepared(kdir)
            if k is not None:
                return k
        t0 = time.monotonic()
        _log(f"fetching kernel {spec.name} from Debian ({', '.join(spec.suites)}) into {kdir}")
        apt = _Apt(root / "apt" / spec.name, spec)
        apt.update()
        pkgs = _resolve(apt, spec.package)
        if not pkgs:
            raise FetchError(f"{spec.package} in {spec.suites} depends on no versioned kernel package")
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=_mk(root / "kernels")))
        try:
            debs_dir = staging / "debs"
            debs_dir.mkdir()
            debs = _download(apt, pkgs, debs_dir, spec.name)
            _log(f"unpacking kernel {spec.name} ...")
            x = staging / "x"
            for deb in debs:
                subprocess.run(["dpkg-deb", "-x", str(deb), str(x)], check=True)
            kdir_new = staging / "k"
            kdir_new.mkdir()
            release = _collect(x, kdir_new)
            shutil.rmtree(x)
            shutil.rmtree(debs_dir)
            versions = {n: r.get("Version", "") for n, r in pkgs.items()}
            k = _finish(kdir_new, spec.name, release, {"packages": versions, "suites": list(spec.suites)})
            if kdir.exists():
                old = staging / "old"
                kdir.rename(old)
            kdir_new.rename(kdir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _log(f"kernel {spec.name} ({release}) ready in {time.monotonic() - t0:.0f} s")
        k = _load_prepared(kdir)
        assert k is not None
        return k


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _collect(x: Path, kdir: Path) -> str:
    """Move image, config, System.map and modules from an unpacked tree."""
    images = sorted(x.glob("boot/vmlinuz-*")) + sorted(x.glob("usr/lib/modules/*/vmlinuz")) + sorted(
        x.glob("lib/modules/*/vmlinuz")
    )
    if not images:
        raise FetchError("no kernel image (boot/vmlinuz-* or lib/modules/*/vmlinuz) in the packages")
    img = images[0]
    if img.name == "vmlinuz":
        release = img.parent.name
    else:
        release = img.name[len("vmlinuz-"):]
    shutil.move(str(img), kdir / "vmlinuz")
    for src, dst in (("config", "config"), ("System.map", "System.map")):
        for cand in (x / "boot" / f"{src}-{release}", x / "usr/lib/modules" / release / src, x / "lib/modules" / release / src):
            if cand.is_file():
                shutil.move(str(cand), kdir / dst)
                break
    dest = kdir / "modroot" / "lib" / "modules"
    dest.mkdir(parents=True)
    for cand in (x / "usr/lib/modules" / release, x / "lib/modules" / release):
        if cand.is_dir():
            if (dest / release).exists():
                # merge (modules split over several packages/locations)
                for item in cand.iterdir():
                    shutil.move(str(item), dest / release / item.name)
            else:
                shutil.move(str(cand), dest / release)
    return release


def prepare_custom_kernel(image: Path, modules: Path | None = None) -> PreparedKernel:
    """A user-supplied kernel image (bzImage or vmlinux), optional module tree.

    ``modules`` may be a ``lib/modules`` directory (holding ``<release>/``) or
    the ``<release>`` directory itself. A bzImage is decompressed once into
    the cache (keyed on its path, size and mtime).
    """
    image = image.resolve()
    if not image.is_file():
        raise FetchError(f"kernel image {image} not found")
    st = image.stat()
    data = image.read_bytes()[:0x300]
    release = ""
    if data[0x202:0x206] == b"HdrS":
        # kernel_version string pointer (setup header 0x20e), relative to 0x200
        (kver,) = struct.unpack_from("<H", data, 0x20E)
        raw = image.read_bytes()[kver + 0x200: kver + 0x200 + 256]
        release = raw.split(b" ")[0].split(b"\0")[0].decode(errors="replace")
    boot = image
    kdir = cache_dir() / "custom" / re.sub(r"[^A-Za-z0-9_.-]", "_", f"{image}-{st.st_size}-{int(st.st_mtime)}")
    if data[0x202:0x206] == b"HdrS":
        kdir.mkdir(parents=True, exist_ok=True)
        vml = kdir / "vmlinux"
        with _Lock(kdir / ".lock"):
            if vml.is_file() or (extract_vmlinux(image, vml) and _has_pvh_note(vml)):
                boot = vml
    mods: Path | None = None
    if modules:
        modules = modules.resolve()
        if (modules / "modules.dep").is_file() or (modules / "modules.order").is_file():
            release = release or modules.name
            mods = modules.parent
        else:
            mods = modules
            if not release:
                subdirs = [p.name for p in modules.iterdir() if p.is_dir()]
                release = subdirs[0] if len(subdirs) == 1 else ""
    cfg = None
    for cand in ([mods / release / "config"] if mods and release else []) + [image.parent / f"config-{release}", image.parent / "config", image.parent / ".config"]:
        if cand.is_file():
            cfg = cand
            break
    kdir.mkdir(parents=True, exist_ok=True)
    return PreparedKernel(
        name=str(image), release=release, dir=kdir, image=boot, config=cfg, modules=mods,
        meta={"name": str(image), "release": release, "custom": True},
    )
