#!/usr/bin/env bash
# A kernel change against its baseline on one GPU machine, in two device calls (each under 600 s;
# the machine stays warm between them, and its build folders with it):
#   CALL=1 bash bench/gpu/two_trees.sh   builds this tree and BASE's C API (BASE=.stage/base: main's
#                                        `git archive`, carried), runs test_cuda and test_cuda_runner,
#                                        then the decode benchmark of DECODE_SPECS for both trees,
#                                        alternating base and head for DECODE_ROUNDS rounds (each
#                                        its own process beside torch; DECODE_HEAD_DIMS adds other
#                                        head dims, one round each; test_cuda_runner runs without
#                                        its real-shape cases, 36-88 s each, which
#                                        bench/gpu/run_h200.sh runs; RUNNER_SECONDS=0 skips it,
#                                        DECODE_ROUNDS=0 the decode benchmark)
#   CALL=3 bash bench/gpu/two_trees.sh   the decode benchmark of both trees at DECODE_HEAD_DIMS only
#                                        (default "64 256"; CALL=1's builds, the machine still warm)
#   CALL=2 bash bench/gpu/two_trees.sh   the chunked and whole-prompt prefill benchmark of both trees,
#                                        each in its own process beside torch (PREFILL_SPECS; D 128,
#                                        and D 256 for k3v2 and bf16; PREFILL_ARGS adds bench_decode.py
#                                        options to the D 128 run, e.g. "--dense --bulk-specs k3v2,k4v4":
#                                        the dense path with its store, the bulk store), then
#                                        ENGINE_BENCH (tq bench args)
# Carry .devdeps and .stage/base. Results in $OUT (or ./gpu-out); each call ends with the A/B
# tables of what its $OUT holds (ab_table.md). A device call brings back a few files only: point
# OUT at a folder of its own and PACK at a file in the call's $OUT, which holds the results so far
# packed after every stage (a call cut at its time limit still brings back what had finished), e.g.
#   O=$OUT; OUT=/tmp/o PACK=$O/o.tgz CALL=1 bash bench/gpu/two_trees.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
BASE=${BASE:-.stage/base}
deps=()
[ -d .devdeps ] && deps=(-DTQ_DEPS_DIR="$PWD/.devdeps")
SECONDS=0
# said LINE: a stage's summary line, then (PACK set) the results so far packed into PACK
said() {
  echo "== $1"
  if [ -n "${PACK:-}" ]; then tar czf "$PACK" -C "$OUT" . 2>/dev/null || true; fi
}
if [ -n "${PACK:-}" ] && [ ! -d "$(dirname "$PACK")" ]; then  # else each stage's pack would fail unseen
  echo "two_trees.sh: PACK=$PACK: no folder $(dirname "$PACK") to write it in" >&2; exit 2
fi
for v in RUNNER_SECONDS DECODE_ROUNDS; do  # counts: a typo would skip a step with only a shell warning
  case "${!v:-0}" in '' | *[!0-9]*) echo "two_trees.sh: $v must be a whole number, got '${!v}'" >&2; exit 2 ;; esac
done
specs=${DECODE_SPECS:-k3v2,k3tv2t,k2tv2t} shapes=${DECODE_SHAPES:-16x32768,4x131072,1x4096}
# decode_ab TREE TAG SECONDS [bench_decode args]: one decode benchmark of build/TREE, beside torch
decode_ab() {
  local t=$1 tag=$2 limit=$3
  shift 3
  timeout "$limit" python3 bench/gpu/bench_decode.py --lib "build/$t/bindings/c/libtq_capi.so" --specs "$specs" --shapes "$shapes" \
    --no-prefill "$@" --json "$OUT/decode_${t}_$tag.json" >"$OUT/decode_${t}_$tag.txt" 2>&1
  said "decode $t $tag rc=$? at ${SECONDS} s"; grep -E '^\||store' "$OUT/decode_${t}_$tag.txt" | head -20
}
if [ "${CALL:-1}" = 1 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  cmake -S . -B build/h200 -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQ_CUDA=ON -DTQ_BUILD_BENCH=OFF "${deps[@]}" >"$OUT/configure.log" 2>&1 ||
    { tail -30 "$OUT/configure.log"; exit 1; }
  ninja -C build/h200 test_cuda test_cuda_runner tq_capi tq >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
  said "build ${SECONDS} s"
  ( cmake -S "$BASE" -B build/base -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQ_CUDA=ON -DTQ_BUILD_TESTS=OFF -DTQ_BUILD_BENCH=OFF "${deps[@]}" \
      >"$OUT/base.log" 2>&1 && ninja -C build/base tq_capi >>"$OUT/base.log" 2>&1; echo "base build rc=$? at ${SECONDS} s" >>"$OUT/base.log" ) &
  timeout 240 build/h200/tests/cuda/test_cuda >"$OUT/test_cuda.log" 2>&1
  said "test_cuda rc=$? at ${SECONDS} s: $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/test_cuda.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED|Failure" "$OUT/test_cuda.log" | head -20
  if [ "${RUNNER_SECONDS:-150}" -gt 0 ]; then
    timeout "${RUNNER_SECONDS:-150}" build/h200/tests/cuda/test_cuda_runner --gtest_filter='-Shapes/CudaRunnerRealShape.*' >"$OUT/runner.log" 2>&1
    said "test_cuda_runner rc=$? at ${SECONDS} s: $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/runner.log" | tr '\n' ' ')"
    grep -E "^\[  FAILED|Failure" "$OUT/runner.log" | head -10
  fi
  wait; tail -1 "$OUT/base.log"
  for round in $(seq 1 "${DECODE_ROUNDS:-2}"); do
    for t in base h200; do
      [ "$t" = base ] && [ ! -f build/base/bindings/c/libtq_capi.so ] && continue
      decode_ab "$t" "$round" 100
    done
  done
fi
if [ "${CALL:-1}" = 1 ] || [ "${CALL:-1}" = 3 ]; then
  dims=${DECODE_HEAD_DIMS:-}
  [ "${CALL:-1}" = 3 ] && dims=${DECODE_HEAD_DIMS:-64 256}
  for hd in $dims; do
    for t in base h200; do
      decode_ab "$t" "d$hd" 80 --head-dim "$hd"
    done
  done
else
  for t in base h200; do
    timeout 150 python3 bench/gpu/bench_decode.py --lib "build/$t/bindings/c/libtq_capi.so" --prefill-only --whole 4096,8192,32768 \
      --specs "${PREFILL_SPECS:-k3v2,k2v2,k3tv2t,k4v4,fp8,bf16}" ${PREFILL_ARGS:-} --json "$OUT/prefill_$t.json" >"$OUT/prefill_$t.txt" 2>&1
    said "prefill $t rc=$? at ${SECONDS} s"; grep -iE 'prefill|whole|quantize_store' "$OUT/prefill_$t.txt" | head -36
    timeout 80 python3 bench/gpu/bench_decode.py --lib "build/$t/bindings/c/libtq_capi.so" --prefill-only --whole 4096,32768 --head-dim 256 \
      --specs k3v2,bf16 --json "$OUT/prefill256_$t.json" >"$OUT/prefill256_$t.txt" 2>&1
    said "prefill d256 $t rc=$? at ${SECONDS} s"; grep -iE 'prefill|whole' "$OUT/prefill256_$t.txt" | head -12
  done
  if [ -n "${ENGINE_BENCH:-}" ]; then
    timeout $((575 - SECONDS)) ./build/h200/apps/cli/tq bench $ENGINE_BENCH --json "$OUT/engine_bench.json" >"$OUT/engine_bench.txt" 2>&1
    said "engine bench rc=$? at ${SECONDS} s"; tail -40 "$OUT/engine_bench.txt"
  fi
fi
said "end ${SECONDS} s"
# The call's A/B tables last (the device returns the output's tail): bench/gpu/ab_table.py.
if compgen -G "$OUT/decode_*.json" >/dev/null || compgen -G "$OUT/prefill*.json" >/dev/null; then
  python3 bench/gpu/ab_table.py "$OUT" | tee "$OUT/ab_table.md"
fi
if [ -n "${PACK:-}" ]; then tar czf "$PACK" -C "$OUT" . 2>/dev/null || true; fi
