#!/usr/bin/env bash
# On a GPU machine: runs the suites bench/gpu/prebuild.sh packed into .stage/prebuilt/ (carried
# with the call), with no build: each suite as it is and with TQ_CUDA_PORTABLE=1, compute-sanitizer
# (memcheck, racecheck, synccheck, initcheck) on SAN_FILTER of test_cuda, and each variant on
# VARIANT_FILTER. Logs to $OUT (or ./gpu-out), packed into logs.tgz after each stage; the summary last.
#   bash bench/gpu/run_prebuilt.sh
#   SAN_FILTER='DecodeRows.*' VARIANT_FILTER='DecodeRows.*' NO_PORTABLE=1 bash bench/gpu/run_prebuilt.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
L=$OUT/logs
mkdir -p "$L"
SECONDS=0
note() { echo "== $1 [at ${SECONDS} s]" | tee -a "$OUT/summary.txt"; }
pack() { (cd "$OUT" && tar czf logs.tgz logs) || true; }
P=.stage/prebuilt
[ -d "$P" ] || { echo "run_prebuilt.sh: no $P (bash bench/gpu/prebuild.sh on the development machine, then carry .stage)"; exit 1; }
export PATH=/usr/local/cuda/bin:$PATH
# cuDNN for the dense prompt tests: torch's (PyPI nvidia-cudnn-cu13), as bench/gpu/run_h200.sh finds it.
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null)
export LD_LIBRARY_PATH=$PWD/$P/lib${cudnn:+:$cudnn/lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv,noheader 2>&1 | tee -a "$OUT/summary.txt"
for f in "$P"/*.xz; do xz -d -f "$f" && chmod +x "${f%.xz}"; done
suites=$(cd "$P" && ls | grep -E '^test_[a-z_]+$' | grep -vE '^test_cuda_(.+)$' || true)
[ -x "$P/test_cuda_runner" ] && suites="$suites test_cuda_runner"
variants=$(cd "$P" && ls | grep -E '^test_cuda_' | grep -vx test_cuda_runner | sed 's/^test_cuda_//' || true)
missing=$(for s in $suites; do ldd "$P/$s" | grep "not found"; done | sort -u)
[ -z "$missing" ] || { echo "run_prebuilt.sh: libraries not found: $missing"; exit 1; }

# A suite's run: its summary line (gtest's PASSED / FAILED counts) and its failures.
run_suite() {  # run_suite NAME LOG COMMAND ARGS...
  local name=$1 log=$2
  shift 2
  "$@" >"$L/$log" 2>&1
  local rc=$?
  note "$name rc=$rc: $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]+ test|tests ran' "$L/$log" | tr '\n' ' ')"
  grep -E '^\[  FAILED  \] [A-Z]' "$L/$log" | grep -v listed | head -20
  pack
}
for s in $suites; do
  run_suite "$s" "$s.log" "$P/$s" --gtest_brief=1
done
SAN_FILTER=${SAN_FILTER:-'DecodeRows.*:*QuantizeStore*:All/Decode.*d64*'}
for tool in memcheck racecheck synccheck initcheck; do
  [ -n "${NO_SANITIZERS:-}" ] && break
  timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 9 "$P/test_cuda" --gtest_brief=1 --gtest_filter="$SAN_FILTER" >"$L/san_$tool.log" 2>&1
  note "compute-sanitizer $tool on '$SAN_FILTER' rc=$?: $(grep -E 'ERROR SUMMARY' "$L/san_$tool.log" | tail -1)"
  pack
done
for v in $variants; do
  run_suite "variant $v" "variant_$v.log" "$P/test_cuda_$v" --gtest_filter="${VARIANT_FILTER:-DecodeRows.*}"
done
if [ -z "${NO_PORTABLE:-}" ]; then
  for s in $suites; do
    [ "$s" = test_capi ] && continue  # the C API's launches are test_cuda's
    run_suite "$s (TQ_CUDA_PORTABLE=1)" "${s}_portable.log" env TQ_CUDA_PORTABLE=1 "$P/$s" --gtest_brief=1
  done
fi
echo "---- summary"
cat "$OUT/summary.txt"
