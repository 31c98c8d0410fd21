#!/usr/bin/env bash
# The main job: set up (idempotent), then run the XDP demo on this host's kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m pybpf.demo "$@"
