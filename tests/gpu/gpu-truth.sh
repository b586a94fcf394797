#!/usr/bin/env bash
# The GPU half of issue 11 ("GPU truth"), for a machine with an NVIDIA GPU and its driver:
# what NVML tells the sidecar (devices, MIG mode and slices, compute processes) against what
# nvidia-smi says, through the sidecar's own probe. Not run yet: no GPU machine was lent when it
# was written. Usage: tests/gpu/gpu-truth.sh   (from the repository root; about a minute once built)
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v nvidia-smi >/dev/null; then
  echo "NOTICE: skipping: no nvidia-smi (no NVIDIA driver on this machine)"; exit 0
fi
echo "== nvidia-smi"
nvidia-smi -L
nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,mig.mode.current --format=csv
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv || true
echo "== NVML through codex-sidecar's probe (gpu::tests::gpu_machine_reports_devices)"
cargo test -q -p codex-sidecar --lib gpu::tests::gpu_machine_reports_devices -- --ignored --nocapture
want=$(nvidia-smi -L | grep -c '^GPU ')
echo "== nvidia-smi lists $want GPU(s); the JSON above must list as many devices, with the same names and UUIDs"
