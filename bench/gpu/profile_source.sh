#!/usr/bin/env bash
# Nsight Compute's source page (SASS) for one launch of a kernel: the warp-state samples of every
# instruction, which show where a latency-bound launch (batch 1) waits. Run on the GPU machine
# after run_h200.sh has built build/h200. Kernels are profiled one at a time (no overlap with
# their neighbours), with warm caches.
#   bash bench/gpu/profile_source.sh            (decode_kernel then merge_kernel, k3v2 at (1, 1K))
# KERNEL (a regex), SPEC and PROFILE_ARGS (bench_decode.py options) pick another launch; LIB another
# build's C API library (a pack's, its libraries on LD_LIBRARY_PATH), as profile_stalls.sh takes it.
# The bulk store's 64K-token launches (the 21st of its 52):
#   KERNEL=quantize_store_kernel_pairs TAG=bulk_ PROFILE_ARGS="--prefill-only --no-prefill" bash bench/gpu/profile_source.sh
# Writes $OUT/ncu_source_<TAG><kernel>.csv (one row per SASS instruction) and prints the top rows.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
for k in ${KERNEL:-decode_kernel merge_kernel}; do
  ncu --clock-control none --cache-control none --kernel-name regex:"$k" --launch-skip 20 --launch-count 1 \
    --section SourceCounters --section WarpStateStats --warp-sampling-interval 0 -f -o "$OUT/ncu_source_${TAG:-}$k" \
    python3 bench/gpu/bench_decode.py --lib "${LIB:-build/h200/bindings/c/libtq_capi.so}" --specs "${SPEC:-k3v2}" \
    ${PROFILE_ARGS:---shapes 1x1024 --no-bulk --no-prefill} > "$OUT/ncu_source_${TAG:-}$k.log" 2>&1
  ncu -i "$OUT/ncu_source_${TAG:-}$k.ncu-rep" --page source --print-source sass --csv > "$OUT/ncu_source_${TAG:-}$k.csv" 2>>"$OUT/ncu_source_${TAG:-}$k.log"
  echo "== $k: instructions with the most warp samples"
  python3 bench/gpu/source_top.py "$OUT/ncu_source_${TAG:-}$k.csv" 30 || tail -5 "$OUT/ncu_source_${TAG:-}$k.log"
done
