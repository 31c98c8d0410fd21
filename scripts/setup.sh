#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian bookworm machine for pybpf: Debian
# packages (libbpf, clang, bpftool, QEMU for the VM harness, xdp-tools), the
# Python dependencies, and pybpf itself (editable, extension built in place).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  libbpf-dev libelf-dev zlib1g-dev pkg-config gcc   # the cffi extension
  clang-19 llvm-19                                  # BPF C (keeps kptr type tags; clang-14 drops them)
  bpftool iproute2 kmod iputils-ping util-linux     # introspection, netns + veth, ping, nsenter
  xdp-tools                                         # libxdp interop
  qemu-system-x86 busybox-static cpio zstd xz-utils # the VM harness
  iperf3                                            # TCP transfers for congestion-control tests
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true

PY=${PYTHON:-python3}
if ! "$PY" -c "import pybpf._native, pyroute2, scapy, pytest" 2>/dev/null || [ build_ffi.py -nt pybpf/_native.stamp ] \
   || [ -n "$(find pybpf/_cdefs -newer pybpf/_native.stamp 2>/dev/null)" ]; then
  echo "setup: installing Python dependencies and building pybpf" >&2
  "$PY" -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
  "$PY" build_ffi.py >/dev/null
  rm -f pybpf/_native.c pybpf/_native.o
  touch pybpf/_native.stamp
fi
"$PY" -c "import pybpf" >/dev/null
