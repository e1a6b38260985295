#!/usr/bin/env bash
# Nsight Compute: where one engine decode step's time goes, kernel by kernel (the GPU time of
# each launch, summed per kernel name over a step), for the CUDA runner of `tq bench` on a random
# model of a named shape. Its sum against tq bench's ms/step is the time between kernels.
# Run on the GPU machine after run_h200.sh (which builds build/h200).
#   bash bench/gpu/profile_step.sh [tq bench options]
#   (default: --shape llama-3.1-8b --kv k3v2 --batch 1 --context 4096)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--shape llama-3.1-8b --kv k3v2 --batch 1 --context 4096)
# Two decode steps after no warm-up (the first captures the graph, both are timed by ncu).
ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
  ./build/h200/apps/cli/tq bench "${args[@]}" --prefill none --warmup 0 --steps 2 > "$OUT/ncu_step.csv" 2>&1
python3 - "$OUT/ncu_step.csv" <<'PY'
import csv, re, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]
ki, ui, vi = head.index("Kernel Name"), head.index("Metric Unit"), head.index("Metric Value")
scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}
d, n = {}, {}
for r in rows[1:]:
    name = re.sub(r"\(.*", "", r[ki])[:90]
    if "fill" in name:  # the random weights
        continue
    d[name] = d.get(name, 0.0) + float(r[vi].replace(",", "")) * scale.get(r[ui], float("nan"))
    n[name] = n.get(name, 0) + 1
steps = 2
total = sum(d.values()) / steps
print(f"GPU time per decode step, summed over its kernels: {total / 1e3:.3f} ms")
for name, us in sorted(d.items(), key=lambda kv: -kv[1]):
    print(f"{us / steps:9.1f} us/step {100 * us / steps / total:5.1f}%  {n[name] // steps:4d} launches  {name}")
PY
