#!/usr/bin/env bash
# Nsight Compute: the duration of each of our kernels in one short bench_decode.py call, to see
# where a small step's time goes (KERNELS: a regex of kernel names, ours by default; torch's
# launches would use up the launch count). Caches are left warm between launches, as in a
# stream of decode steps. Run on the GPU machine after run_h200.sh.
#   bash bench/gpu/profile_durations.sh [bench_decode.py options]
#   (default: --shapes 1x1024 --specs k3v2,bf16 --no-bulk --no-prefill; one shape per call, since
#   a kernel's launches at every shape would share one median)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--shapes 1x1024 --specs k3v2,bf16 --no-bulk --no-prefill)
ncu --clock-control none --cache-control none --kernel-name regex:"${KERNELS:-decode_kernel|merge_kernel|quantize_store|prepare_queries|prefill_kernel|prefill_ws_kernel}" \
  --launch-count 300 --metrics gpu__time_duration.sum --csv \
  python3 bench/gpu/bench_decode.py --lib build/h200/bindings/c/libtq_capi.so "${args[@]}" > "$OUT/ncu_durations.csv" 2>&1
# Median duration per kernel (name shortened), in launch order of first appearance.
python3 - "$OUT/ncu_durations.csv" <<'PY'
import csv, re, statistics, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]
ki, ui, vi = head.index("Kernel Name"), head.index("Metric Unit"), head.index("Metric Value")
scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}
d = {}
for r in rows[1:]:
    name = re.sub(r"\((const )?tq::cuda::DecodeParams.*|\(\w+[*&]?,.*|\(\)$", "", r[ki])[:110]
    d.setdefault(name, []).append(float(r[vi].replace(",", "")) * scale.get(r[ui], float("nan")))
for name, v in d.items():
    print(f"{statistics.median(v):8.2f} us  median of {len(v):3d}  {name}")
PY
