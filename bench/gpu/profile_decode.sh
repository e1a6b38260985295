#!/usr/bin/env bash
# Nsight Compute on one k3v2 decode launch at (16, 32K): where the issue slots go.
# Run on the GPU machine after run_h200.sh has built build/h200 (clocks are left as found).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
ncu --clock-control none --kernel-name regex:decode_kernel --launch-skip 20 --launch-count 1 \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
  --section ComputeWorkloadAnalysis --section InstructionStats --section MemoryWorkloadAnalysis \
  python3 bench/gpu/bench_decode.py --lib build/h200/bindings/c/libtq_capi.so --shapes 16x32768 --specs "${1:-k3v2}" --no-bulk \
  > "$OUT/ncu_${1:-k3v2}.txt" 2>&1
grep -E "Duration|Throughput|Issue Slots|Issued Ipc|Warp Cycles Per Issued|Achieved Occupancy|Stall|Eligible|No Eligible|Executed Ipc|Registers|Block Limit|L1/TEX Hit|Mem Busy|Max Bandwidth|Pipe" "$OUT/ncu_${1:-k3v2}.txt" | head -60
