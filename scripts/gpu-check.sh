#!/usr/bin/env bash
# Check the taskhost's per-task GPU statistics on a machine with an NVIDIA GPU and
# PyTorch: one task that holds ~4 GiB and keeps the SMs busy for 3 s, one that uses no
# GPU. Prints each attempt report.
#   scripts/gpu-check.sh [TASKHOST] [OUTDIR]
set -euo pipefail
taskhost=${1:-${CARGO_TARGET_DIR:-$HOME/.cache/batchplane/target}/release/taskhost}
out=${2:-$(mktemp -d)}
nvidia-smi --query-gpu=name,memory.used --format=csv
"$taskhost" exec --report "$out/gpu.json" -- python3 -c "
import torch, time
x = torch.empty(1024 * 1024 * 1024, dtype=torch.float32, device='cuda')  # 4 GiB
a = torch.randn(8192, 8192, device='cuda')
t = time.time()
while time.time() - t < 3:
    b = a @ a
torch.cuda.synchronize()
"
echo "GPU task:     $(cat "$out/gpu.json")"
"$taskhost" exec --report "$out/cpu.json" -- sh -c 'sleep 0.5'
echo "CPU-only task: $(cat "$out/cpu.json")"
