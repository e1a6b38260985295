#!/usr/bin/env bash
# Nsight Compute on one decode launch at (16, 32K): pipe utilization and why warps stall.
# Run on the GPU machine after run_h200.sh has built build/h200 (clocks are left as found).
#   bash bench/gpu/profile_stalls.sh [spec]     (spec: k3v2 by default)
# KERNEL and PROFILE_ARGS pick another kernel and bench_decode.py call, e.g. Hopper's prefill kernel
# (prefill_kernel with TQ_CUDA_PORTABLE=1 or elsewhere):
#   KERNEL=prefill_ws_kernel PROFILE_ARGS="--prefill-only --no-bulk" bash bench/gpu/profile_stalls.sh
# LIB: another build's C API library, a path from the repository's root (e.g. run_prebuilt.sh's
# unpacked .stage/capi/libtq_capi.so, its libraries on LD_LIBRARY_PATH); NAME: the output's
# suffix (default the spec).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
spec=${1:-k3v2}
LIB=${LIB:-build/h200/bindings/c/libtq_capi.so}
name=${NAME:-$spec}
stall=""
for r in long_scoreboard short_scoreboard wait math_pipe_throttle mio_throttle lg_throttle barrier not_selected selected \
  dispatch_stall no_instruction branch_resolving sleeping drain membar misc tex_throttle; do
  stall+="smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio,"
done
pipes="sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,\
sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,\
sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,\
smsp__issue_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,\
l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,smsp__inst_executed.sum"
ncu --clock-control none --kernel-name regex:"${KERNEL:-decode_kernel}" --launch-skip 20 --launch-count 1 --metrics "${stall}${pipes}" \
  python3 bench/gpu/bench_decode.py --lib "$LIB" --specs "$spec" ${PROFILE_ARGS:---shapes 16x32768 --no-bulk} \
  > "$OUT/ncu_stalls_$name.txt" 2>&1
grep -E "^\s+(sm|smsp|dram|gpu|l1tex)__" "$OUT/ncu_stalls_$name.txt" | sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | awk '{printf "%-58s %s %s\n", $1, $2, $3}'
