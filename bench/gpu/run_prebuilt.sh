#!/usr/bin/env bash
# On a GPU machine: runs the suites bench/gpu/prebuild.sh packed into .stage/prebuilt/ (carried
# with the call), with no build, in the order that brings back the most if the call is cut:
# FOCUS (a gtest filter of test_cuda, if set) first with its whole output, each variant on
# VARIANT_FILTER, each suite as it is (SUITES="a b": only those of the pack's, "" none),
# compute-sanitizer (memcheck, racecheck, synccheck, initcheck; SAN_LIMIT s each, default 150)
# on SAN_FILTER of test_cuda, each suite with TQ_CUDA_PORTABLE=1. Every stage's timeout is cut
# to what is left of BUDGET seconds (default 570: a call's 600 less the unpacking).
# Logs to $OUT (or ./gpu-out), packed into logs.tgz after each stage; the summary last.
# With libtq_capi.so in the pack (prebuild.sh's SUITES="tq_capi"), BENCH_ARGS set runs the decode
# benchmark after FOCUS, as run_h200.sh does (bench_decode.py BENCH_ARGS beside torch; BENCH_HEAD_DIMS
# "64 256": the targets' shapes at those head dims; then targets.py), and with tq in it,
# ENGINE_BENCH="args" runs `tq bench args`.
#   bash bench/gpu/run_prebuilt.sh
#   BENCH_ARGS="--specs k3v2,fp8,bf16" BENCH_HEAD_DIMS="64 256" NO_SANITIZERS=1 bash bench/gpu/run_prebuilt.sh
#   FOCUS='DecodeRows.*' SAN_FILTER='DecodeRows.*' NO_PORTABLE=1 bash bench/gpu/run_prebuilt.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
L=$OUT/logs
mkdir -p "$L"
SECONDS=0
note() { echo "== $1 [at ${SECONDS} s]" | tee -a "$OUT/summary.txt"; }
pack() { (cd "$OUT" && tar czf logs.tgz logs) || true; }
BUDGET=${BUDGET:-570}
for v in BUDGET SAN_LIMIT; do  # seconds, whole
  [[ ${!v:-1} =~ ^[0-9]+$ ]] || { echo "run_prebuilt.sh: $v is a whole number of seconds, not '${!v}'"; exit 1; }
done
P=${PREBUILT:-.stage/prebuilt}  # the pack prebuild.sh made (PREBUILT: its other place)
[ -d "$P" ] || { echo "run_prebuilt.sh: no $P (bash bench/gpu/prebuild.sh on the development machine, then carry .stage)"; exit 1; }
export PATH=/usr/local/cuda/bin:$PATH
# cuDNN for the dense prompt tests: torch's (PyPI nvidia-cudnn-cu13), as bench/gpu/run_h200.sh finds it.
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null)
# cuBLAS (test_cuda_runner): the toolkit's own, which prebuild.sh leaves out of the pack.
export LD_LIBRARY_PATH=$PWD/$P/lib${cudnn:+:$cudnn/lib}:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv,noheader 2>&1 | tee -a "$OUT/summary.txt"
for f in "$P"/*.xz; do [ -e "$f" ] || continue; xz -d -f "$f" && chmod +x "${f%.xz}"; done  # (unpacked by an earlier run: none)
suites=$(cd "$P" && ls | grep -E '^test_[a-z_]+$' | grep -vE '^test_cuda_(.+)$' | tr '\n' ' ' || true)
[ -x "$P/test_cuda_runner" ] && suites="$suites test_cuda_runner"
if [ -n "${SUITES+set}" ]; then  # only these of the pack's suites ("": none, FOCUS or the benchmark alone)
  for s in $SUITES; do [[ " $suites " == *" $s "* ]] || { echo "run_prebuilt.sh: SUITES names '$s', not in $P ($suites)"; exit 1; }; done
  suites=$SUITES
fi
variants=$(cd "$P" && ls | grep -E '^test_cuda_' | grep -vx test_cuda_runner | sed 's/^test_cuda_//' || true)
missing=$(for s in $suites libtq_capi.so tq; do [ -f "$P/$s" ] && ldd "$P/$s" | grep "not found"; done | sort -u)
[ -z "$missing" ] || { echo "run_prebuilt.sh: libraries not found: $missing"; exit 1; }

# A suite's run: its summary line (gtest's PASSED / FAILED counts) and its failures.
left() { echo $((BUDGET - SECONDS)); }
run_suite() {  # run_suite NAME LOG LIMIT COMMAND ARGS...: within LIMIT seconds and what is left
  local name=$1 log=$2 limit=$3
  shift 3
  local t; t=$(left)
  [ "$limit" -lt "$t" ] && t=$limit
  [ "$t" -gt 10 ] || { note "$name: skipped, ${t} s left of ${BUDGET}"; return; }
  timeout "$t" "$@" >"$L/$log" 2>&1
  local rc=$?
  note "$name rc=$rc: $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]+ test|tests ran' "$L/$log" | tr '\n' ' ')"
  grep -E '^\[  FAILED  \] [A-Z]' "$L/$log" | grep -v listed | head -20
  pack
}
if [ -n "${FOCUS:-}" ]; then
  run_suite "test_cuda on '$FOCUS'" focus.log 120 "$P/test_cuda" --gtest_filter="$FOCUS"
  grep -vE "^\[ +(RUN|OK) " "$L/focus.log" | head -60
fi
if [ -n "${BENCH_ARGS+set}" ] && [ -f "$P/libtq_capi.so" ]; then
  run_suite "bench_decode.py ${BENCH_ARGS}" bench.log 400 python3 bench/gpu/bench_decode.py --lib "$P/libtq_capi.so" --json "$OUT/bench.json" $BENCH_ARGS
  grep -E '^\|' "$L/bench.log"
  dims=()
  for hd in ${BENCH_HEAD_DIMS:-}; do  # the targets' shapes at other head dims (k3v2 and torch), for the byte-limit table
    run_suite "bench_decode.py --head-dim $hd" "bench_d$hd.log" 200 python3 bench/gpu/bench_decode.py --lib "$P/libtq_capi.so" \
      --json "$OUT/bench_d$hd.json" --head-dim "$hd" --specs k3v2 --shapes "$(python3 bench/gpu/targets.py --shapes)" --no-bulk --no-prefill
    [ -f "$OUT/bench_d$hd.json" ] && dims+=("$OUT/bench_d$hd.json")
  done
  [ -f "$OUT/bench.json" ] && python3 bench/gpu/targets.py "$OUT/bench.json" "${dims[@]}" | tee "$OUT/targets.md"
fi
if [ -n "${ENGINE_BENCH:-}" ] && [ -f "$P/tq" ]; then
  run_suite "tq bench $ENGINE_BENCH" engine_bench.log 300 "$P/tq" bench $ENGINE_BENCH --json "$OUT/engine_bench.json"
  tail -15 "$L/engine_bench.log"
fi
for v in $variants; do
  run_suite "variant $v" "variant_$v.log" 120 "$P/test_cuda_$v" --gtest_filter="${VARIANT_FILTER:-DecodeRows.*}"
done
for s in $suites; do
  run_suite "$s" "$s.log" 400 "$P/$s" --gtest_brief=1
done
SAN_FILTER=${SAN_FILTER:-'DecodeRows.*:*QuantizeStore*:All/Decode.*d64*'}
for tool in memcheck racecheck synccheck initcheck; do
  { [ -n "${NO_SANITIZERS:-}" ] || [ ! -x "$P/test_cuda" ]; } && break
  run_suite "compute-sanitizer $tool on '$SAN_FILTER'" "san_$tool.log" "${SAN_LIMIT:-150}" \
    compute-sanitizer --tool "$tool" --error-exitcode 9 "$P/test_cuda" --gtest_brief=1 --gtest_filter="$SAN_FILTER"
  grep -E 'ERROR SUMMARY' "$L/san_$tool.log" | tail -1
done
if [ -z "${NO_PORTABLE:-}" ]; then
  for s in $suites; do
    [ "$s" = test_capi ] && continue  # the C API's launches are test_cuda's
    run_suite "$s (TQ_CUDA_PORTABLE=1)" "${s}_portable.log" 400 env TQ_CUDA_PORTABLE=1 "$P/$s" --gtest_brief=1
  done
fi
echo "---- summary"
cat "$OUT/summary.txt"
