#!/usr/bin/env bash
# Builds and runs bench/gpu/gemm_rows_sweep.cu on the GPU machine (one nvcc command, ~1 min):
#   bash bench/gpu/gemm_rows_sweep.sh [arguments of gemm_rows_sweep]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/cuda/bin:$PATH
out=${BUILD:-build}/gemm_rows_sweep
mkdir -p "$(dirname "$out")"
nvcc -O3 -std=c++17 -arch=sm_90 --expt-relaxed-constexpr -I src/cuda -I src/backend/cuda -I include \
  bench/gpu/gemm_rows_sweep.cu src/backend/cuda/gemv.cu src/backend/cuda/layers.cu -lcublas -o "$out"
"$out" "$@"
