#!/usr/bin/env bash
# Check the taskhost's per-task GPU statistics on a machine with an NVIDIA GPU and
# PyTorch: one task that holds ~4 GiB, keeps the SMs busy for 3 s and then idles for 3 s
# (long enough to keep a usage series), and one that uses no GPU. Prints each attempt
# report and checks the GPU task's series: GPU memory held throughout, utilisation high
# while busy and low once idle.
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
time.sleep(3)
"
echo "GPU task:     $(cat "$out/gpu.json")"
"$taskhost" exec --report "$out/cpu.json" -- sh -c 'sleep 0.5'
echo "CPU-only task: $(cat "$out/cpu.json")"
python3 - "$out/gpu.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["usage_series"]
mem, util, step = s["gpu_memory_mib"], s["gpu_percent"], s["step_ms"]
busy = util[1:int(2500 / step)]
idle = util[int(4000 / step):-1]
print(f"series: step {step} ms, gpu memory {mem}, gpu % {util}")
assert min(mem[1:-1]) >= 4096, "the 4 GiB tensor is held throughout"
assert max(busy) >= 50 and max(idle) <= 10, (busy, idle)
print("gpu series: ok")
PY
