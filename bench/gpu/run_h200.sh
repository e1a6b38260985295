#!/usr/bin/env bash
# One call on a GPU machine: build, test (with compute-sanitizer: memcheck, racecheck, synccheck, initcheck),
# read the resource report and SASS, benchmark; prints a short summary table last. Logs go to $OUT
# (or ./gpu-out).
#   bash bench/gpu/run_h200.sh            (needs .devdeps/ with fmt headers and googletest sources
#                                          when the machine lacks the Debian packages: see below)
# .devdeps is made on the development machine by bench/gpu/make_devdeps.sh (fmt headers, googletest
# sources, cpp-httplib and the libraries it loads), and carried to the GPU machine with the work tree.
# BENCH_ARGS passes options to bench_decode.py (e.g. BENCH_ARGS="--shapes 16x32768 --no-bulk");
# The GPU suites run twice: as they are, and with TQ_CUDA_PORTABLE=1 (the launches and the mma.sync
# prefill of GPUs before sm_90, src/cuda/launch_common.h; the build carries that prefill for Hopper
# too: -DTQ_CUDA_PORTABLE_ON_HOPPER=ON).
# QUICK=1 skips the CPU tests and compute-sanitizer (for iterating on a kernel); NO_BENCH=1 the
# benchmark; NO_CPU_TESTS=1 the CPU suites alone (CI runs them); NO_SANITIZERS=1 compute-sanitizer;
# ONLY_SANITIZERS=1 everything but the build and compute-sanitizer; NO_SUITES=1 the GPU and CPU
# suites (a call for the benchmark and Nsight alone). The build makes only what the stages run.
# SUITES="test_cuda test_capi test_cuda_runner" and PORTABLE_SUITES="test_cuda test_cuda_runner"
# (their defaults) choose the suites of the native and of the portable runs. The GPU suites and
# the sanitizers together outlast a call's 600 s (a NO_BENCH=1 NO_CPU_TESTS=1 run was cut during
# the runner's portable runs on 2026-12-03), so run them in two calls (on an H100, 2026-12-06: the
# first 304 s; the second's parts, 71 s of sanitizers and ~160 s each portable runner run, ~400 s):
#   NO_BENCH=1 NO_CPU_TESTS=1 NO_SANITIZERS=1 PORTABLE_SUITES=test_cuda bash bench/gpu/run_h200.sh
#   NO_BENCH=1 NO_CPU_TESTS=1 SUITES= PORTABLE_SUITES=test_cuda_runner bash bench/gpu/run_h200.sh
# Each stage's summary line says when it ended, and the logs are packed as stages end, so a call
# cut short returns them.
# ENGINE_BENCH="args": also `tq bench args` (the engine benchmark; JSON to $OUT/engine_bench.json).
# SERVE_BENCH="args": also `tq bench-serve args` (the serving benchmark; JSON to $OUT/serve_bench.json).
# SPEC_BENCH="args": also bench/speculative/bench_spec.py --device cuda args (speculative decoding
# against plain decoding with `tq run`; its table to $OUT/spec_bench.md).
# NCU_STALLS=1: also bench/gpu/profile_stalls.sh (Nsight Compute: pipes and stall reasons) on the k3v2
# decode kernel at 16 x 32K and on Hopper's prefill kernel (512 tokens on 8K).
# PROFILE_STEP="tq bench options": also bench/gpu/profile_step.sh (Nsight Compute: a Llama-3.1-8B
# shape decode step at batch 1, kernel by kernel).
# SERVE_HTTP=MODEL: also bench/gpu/serve_http.sh (tq serve over HTTP with the openai client, which
# SERVE_SITE=DIR holds: pip install --target DIR of the carried wheels of tests/serve/requirements.txt,
# openai and prometheus-client).
# CHECK_MODEL=FILE CHECK_TEXT=FILE: also bench/gpu/check_model.sh (GPU runner against the CPU runner
# with the tq commands on a real model; scripts/stage_model.sh brings a model over 64 MiB).
# BENCH_HEAD_DIMS="64 256": the decode targets' shapes at those head dims too (bench_dNN.json), and
# targets.py's byte-limit table by head dim.
# BASE=DIR: a source tree of the baseline (e.g. main's `git archive`, carried in an ignored
# folder): its C API is built too and benchmarked in the same call, before ours.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
summary=()
SECONDS=0
# when each stage ended: a call has 600 s; summary.txt keeps the lines of a call cut short
note() { summary+=("$1 [at ${SECONDS} s]"); echo "== $1 [at ${SECONDS} s]"; echo "$1 [at ${SECONDS} s]" >>"$OUT/summary.txt"; }
# At most 8 files come back from the GPU machine: keep the main ones, pack the rest into logs.tar,
# after each stage (so that a call cut at its time limit still returns what had finished).
pack() {
  ( cd "$OUT" && keep="summary.txt bench.json bench.log test_cuda_runner.log engine_bench.json engine_bench.txt serve_bench.txt check_model.md serve_http.txt logs.tar" &&
    rest=$(ls | grep -vxF -f <(printf '%s\n' $keep)) && [ -n "$rest" ] && tar rf logs.tar $rest && rm -rf $rest ) || true
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
export PATH=/usr/local/cuda/bin:$PATH
deps=()
[ -d .devdeps ] && deps=(-DTQ_DEPS_DIR="$PWD/.devdeps")
# cuDNN for the dense prompt path: torch's (PyPI nvidia-cudnn-cu13), its headers for the build and
# its folder for the loader (libcudnn.so.9 dlopens its engine libraries beside it).
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null)
if [ -n "$cudnn" ] && [ -f "$cudnn/include/cudnn.h" ]; then
  deps+=(-DTQ_CUDNN_INCLUDE="$cudnn/include")
  export LD_LIBRARY_PATH="$cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
start=$(date +%s)
cmake -S . -B build/h200 -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQ_CUDA=ON -DTQ_CUDA_VERBOSE=ON -DTQ_CUDA_PORTABLE_ON_HOPPER=ON -DTQ_BUILD_BENCH=OFF "${deps[@]}" \
  >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
# only what the stages asked for are built: a bench-only call (NO_SUITES=1 NO_SANITIZERS=1) builds the libraries alone
targets=(tq_capi tq)
{ [ -z "${NO_SUITES:-}" ] || { [ -z "${QUICK:-}" ] && [ -z "${NO_SANITIZERS:-}" ]; }; } && targets+=(test_cuda test_capi test_cuda_runner)
[ -z "${QUICK:-}" ] && [ -z "${NO_CPU_TESTS:-}" ] && [ -z "${NO_SUITES:-}" ] && [ -z "${ONLY_SANITIZERS:-}" ] && targets+=(test_codec test_kv test_engine)
ninja -C build/h200 "${targets[@]}" >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
note "build: $(( $(date +%s) - start )) s; $(grep -o 'TQ_CUDNN: dense prompt attention [a-z]*' "$OUT/configure.log" | head -1)"
grep -A2 "decode_kernel\|quantize_store_kernel" "$OUT/build.log" | grep -E "registers|spill" | sort | uniq -c | sort -rn | head -8 > "$OUT/ptxas_summary.txt"
cat "$OUT/ptxas_summary.txt"
obj=$(find build/h200 -name 'attention_d128.cu.o' | head -1)
if command -v cuobjdump >/dev/null; then
  # The whole file's SASS stays in the build folder: in $OUT it made logs.tar larger than a returned file may be.
  cuobjdump -sass "$obj" > build/h200/attention_d128.sass 2>&1
  fn=$(grep -o 'Function : [^ ]*decode_kernelILi128ELNS1_4KindE0ELi3ELi2E[^ ]*' build/h200/attention_d128.sass | head -1 | cut -d' ' -f3)
  awk -v f="$fn" '$0 ~ "Function : "f {on=1} on && /Function : / && $0 !~ f {on=0} on' build/h200/attention_d128.sass > "$OUT/k3v2_d128.sass"
  note "SASS k3v2 d128: $(grep -c HMMA "$OUT/k3v2_d128.sass") HMMA, $(grep -c PRMT "$OUT/k3v2_d128.sass") PRMT, $(grep -cE 'LDG' "$OUT/k3v2_d128.sass") LDG, $(grep -cE 'LDL|STL' "$OUT/k3v2_d128.sass") LDL/STL"
  gemv_obj=$(find build/h200 -name 'gemv.cu.o' | head -1)
  cuobjdump -sass "$gemv_obj" | awk '/Function : .*gemv_kernel/ {on=1; next} /Function : / {on=0} on' > "$OUT/gemv1.sass" 2>&1
  note "SASS gemv: $(grep -c 'LDG.*128' "$OUT/gemv1.sass") 128-bit LDG, $(grep -cE 'LDL|STL' "$OUT/gemv1.sass") LDL/STL"
  rows_obj=$(find build/h200 -name 'gemm_rows.cu.o' | head -1)
  cuobjdump -sass "$rows_obj" | awk '/Function : .*gemm_rows_impl.*Li1EEEv/ {on=1; next} /Function : / {on=0} on' > "$OUT/gemm_rows1.sass" 2>&1
  note "SASS gemm_rows (one n-tile): $(grep -c HMMA "$OUT/gemm_rows1.sass") HMMA, $(grep -c 'LDG.*128' "$OUT/gemm_rows1.sass") 128-bit LDG, $(grep -cE 'LDL|STL' "$OUT/gemm_rows1.sass") LDL/STL"
fi

pack
# ONLY_SANITIZERS=1 (or NO_SUITES=1, which keeps what comes after them): none of the suites (a second call after a NO_SANITIZERS=1 one).
if [ -z "${ONLY_SANITIZERS:-}" ] && [ -z "${NO_SUITES:-}" ]; then
  if [ -z "${QUICK:-}" ] && [ -z "${NO_CPU_TESTS:-}" ]; then
    for t in codec/test_codec kv/test_kv engine/test_engine; do
      ./build/h200/tests/$t --gtest_brief=1 >"$OUT/$(basename $t).log" 2>&1
      note "$(basename $t): $(grep -E '^\[  PASSED|FAILED TEST' "$OUT/$(basename $t).log" | head -3 | tr '\n' ' ')"
    done
  fi
  # SUITES and PORTABLE_SUITES (the header): one call's 600 s hold the native runs and the portable
  # test_cuda, a second the portable runner's and the sanitizers.
  suites=" ${SUITES-test_cuda test_capi test_cuda_runner} "
  if [[ $suites == *" test_cuda "* ]]; then
  ./build/h200/tests/cuda/test_cuda --gtest_output=xml:"$OUT/test_cuda.xml" >"$OUT/test_cuda.log" 2>&1
  note "test_cuda: $(grep -E '^\[  PASSED|^\[  FAILED|tests ran' "$OUT/test_cuda.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED" "$OUT/test_cuda.log" | head -20
  grep -B3 -A8 "Failure" "$OUT/test_cuda.log" | head -60
  fi
  for t in test_capi test_cuda_runner; do
    [[ $suites == *" $t "* ]] || continue
    ./build/h200/tests/cuda/$t --gtest_output=xml:"$OUT/$t.xml" >"$OUT/$t.log" 2>&1
    note "$t: $(grep -E '^\[  PASSED|^\[  FAILED|tests ran' "$OUT/$t.log" | tr '\n' ' ')"
    grep -B3 -A8 "Failure" "$OUT/$t.log" | head -40
  done
  # The C API where Python users load it: beside torch (its libstdc++ and its own cuDNN loaded
  # first), a dense prompt's plan (cuDNN through cudnn-frontend, the library's C++ runtime calls).
  if [[ $suites == *" test_capi "* ]] && [ -f build/h200/bindings/c/libtq_capi.so ]; then
    timeout 120 python3 bench/gpu/dense_prompt_probe.py build/h200/bindings/c/libtq_capi.so torch >"$OUT/capi_torch.log" 2>&1
    rc=$?
    # its exports by CI's rule (ctest's capi_exports_only_tq, which this script does not run)
    exports=$(cmake -DLIB=build/h200/bindings/c/libtq_capi.so -DNM=nm -DPREFIX=tq_ -P tests/scripts/check_exports.cmake 2>&1 | grep -v '^$' | head -3 | tr '\n' ' ')
    note "C API beside torch (dense_prompt_probe.py ... torch): rc=$rc; exports: ${exports#-- }"
    [ $rc = 0 ] || tail -5 "$OUT/capi_torch.log"
  fi
  # The portable path (plain launches, as on GPUs before sm_90) on this GPU: launch_common.h. Then
  # what an sm_86/89/120 GPU runs: plain launches and 99 KB of shared memory a block (the compact
  # kernels, TQ_CUDA_SMEM_KB).
  for t in ${PORTABLE_SUITES-test_cuda test_cuda_runner}; do
    TQ_CUDA_PORTABLE=1 ./build/h200/tests/cuda/$t >"$OUT/${t}_portable.log" 2>&1
    note "$t, TQ_CUDA_PORTABLE=1: $(grep -E '^\[  PASSED|^\[  FAILED|tests ran' "$OUT/${t}_portable.log" | tr '\n' ' ')"
    grep -B3 -A8 "Failure" "$OUT/${t}_portable.log" | head -20
    TQ_CUDA_PORTABLE=1 TQ_CUDA_SMEM_KB=99 ./build/h200/tests/cuda/$t >"$OUT/${t}_99kb.log" 2>&1
    note "$t, TQ_CUDA_PORTABLE=1 TQ_CUDA_SMEM_KB=99: $(grep -E '^\[  PASSED|^\[  FAILED|tests ran' "$OUT/${t}_99kb.log" | tr '\n' ' ')"
    grep -B3 -A8 "Failure" "$OUT/${t}_99kb.log" | head -20
  done
  [ -f "$OUT/test_cuda_runner.xml" ] && note "CUDA runner vs CPU runner, KL per case (mean, max[, the quantization's own mean]): $(grep -o 'name="kl_mean" value="[^"]*"\|name="kl_max" value="[^"]*"\|name="quantization_kl_mean" value="[^"]*"' "$OUT/test_cuda_runner.xml" | cut -d'"' -f4 | paste -sd' ')"
  [ -f "$OUT/test_cuda.xml" ] && note "decode tests, worst relative error against the CPU reference: $(grep -o 'name="worst_rel_err" value="[^"]*"' "$OUT/test_cuda.xml" | cut -d'"' -f4 | sort -g | tail -1); largest error / bound (2x a same-precision computation's): $(python3 -c "import re,sys; x=open(sys.argv[1]).read(); r=[float(a)/float(b) for a,b in re.findall(r'name=.worst_rel_err. value=.([^\"]*).\s*/>\s*<property name=.bound. value=.([^\"]*).', x)]; print(round(max(r),3) if r else '-')" "$OUT/test_cuda.xml")"
fi
pack

small='All/Decode.*t4_L9_97_1000*:All/Decode.*t50_L1000_60_s5_prefill*:All/Decode.*page_7*:All/Decode.*k4v2_nc*:DecodeGraph.*:StoreAndDecode.*:All/QuantizeStore.*k3v2_d128:All/QuantizeStore.*fp8*:QuantizeStoreErrors.*'
small+=':All/DecodeSide.*k3v2_sink_4_window_16_d128_g4*:All/DecodeSide.*prefill*:DecodeSide.Steps*:DecodeRows.HeadDim64*'
if [ -z "${QUICK:-}" ] && [ -z "${NO_SANITIZERS:-}" ] && command -v compute-sanitizer >/dev/null; then
  # synccheck: barriers every thread of a block must meet at the same instruction (the side blocks
  # of the warp-specialized prefill once had idle warps wait at one of their own). initcheck: reads
  # of device memory nothing wrote (a workspace entry read before it is written would give bits
  # that depend on the allocation's history: a suspect of DecodeRows.HeadDim64*, which fails).
  for tool in memcheck racecheck synccheck initcheck; do
    timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 ./build/h200/tests/cuda/test_cuda --gtest_filter="$small" \
      >"$OUT/sanitizer_$tool.log" 2>&1
    rc=$?
    note "compute-sanitizer $tool: rc=$rc, $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.log" | tail -1)"
  done
  # The model runner's own kernels (sampling, q/k/v split + RoPE, SwiGLU, random fill) and a graph replay.
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 ./build/h200/tests/cuda/test_cuda_runner \
    --gtest_filter='Vocab/CudaSampling.*vocab1000:CudaRunnerSampling.*:CudaRunnerGraphs.*:All/CudaRunner.*d128_qwen2_k3v2*:All/CudaRunner.*window*:CudaSpeculation.*' \
    >"$OUT/sanitizer_runner.log" 2>&1
  note "compute-sanitizer memcheck, model runner: rc=$?, $(grep -E 'ERROR SUMMARY' "$OUT/sanitizer_runner.log" | tail -1)"
  # The sampling kernel's shared-memory histograms and scans.
  timeout 240 compute-sanitizer --tool racecheck --error-exitcode 9 ./build/h200/tests/cuda/test_cuda_runner \
    --gtest_filter='Vocab/CudaSampling.*vocab31:Vocab/CudaSampling.*vocab1000' >"$OUT/sanitizer_sample_race.log" 2>&1
  note "compute-sanitizer racecheck, sampling: rc=$?, $(grep -E 'RACECHECK SUMMARY' "$OUT/sanitizer_sample_race.log" | tail -1)"
fi

pack
if [ -n "${CHECK_MODEL:-}" ]; then
  mkdir -p "$OUT/check"
  bash bench/gpu/check_model.sh ./build/h200/apps/cli/tq "$CHECK_MODEL" "${CHECK_TEXT:?}" "$OUT/check" >"$OUT/check_model.md" 2>&1
  note "model check ($CHECK_MODEL): rc=$?"
fi
if [ -n "${ENGINE_BENCH:-}" ]; then
  ./build/h200/apps/cli/tq bench $ENGINE_BENCH --json "$OUT/engine_bench.json" >"$OUT/engine_bench.txt" 2>"$OUT/engine_bench.err"
  note "tq bench $ENGINE_BENCH: rc=$?"
fi
if [ -n "${SERVE_BENCH:-}" ]; then
  ./build/h200/apps/cli/tq bench-serve $SERVE_BENCH --json "$OUT/serve_bench.json" >"$OUT/serve_bench.txt" 2>"$OUT/serve_bench.err"
  note "tq bench-serve $SERVE_BENCH: rc=$?"
fi
if [ -n "${SPEC_BENCH:-}" ]; then
  python3 bench/speculative/bench_spec.py --tq ./build/h200/apps/cli/tq --device cuda $SPEC_BENCH >"$OUT/spec_bench.md" 2>"$OUT/spec_bench.err"
  note "bench_spec.py $SPEC_BENCH: rc=$?"
fi
if [ -n "${SERVE_HTTP:-}" ]; then  # SERVE_HTTP=MODEL.gguf; SERVE_SITE=DIR holds openai and prometheus_client (carried wheels)
  PYTHONPATH=${SERVE_SITE:-${PYTHONPATH:-}} bash bench/gpu/serve_http.sh ./build/h200/apps/cli/tq "$SERVE_HTTP" "$OUT/serve" >"$OUT/serve_http.txt" 2>&1
  note "tq serve over HTTP (bench/gpu/serve_http.sh): rc=$?"
fi
if [ -n "${PROFILE_STEP:-}" ] && command -v ncu >/dev/null; then  # e.g. PROFILE_STEP="--products gemv"
  timeout 300 bash bench/gpu/profile_step.sh --shape llama-3.1-8b --kv k3v2 --batch 1 --context 4096 $PROFILE_STEP >"$OUT/profile_step.txt" 2>&1
  note "profile of a decode step ($PROFILE_STEP): rc=$?, $(head -1 "$OUT/profile_step.txt")"
fi
if [ -n "${NCU_STALLS:-}" ] && command -v ncu >/dev/null; then  # issue 15's "what limits it": decode at 16 x 32K, prefill 512 on 8K
  timeout 150 bash bench/gpu/profile_stalls.sh k3v2 >"$OUT/ncu_decode.txt" 2>&1
  note "Nsight Compute, k3v2 decode 16 x 32K: rc=$?, $(grep -cE '__' "$OUT/ncu_decode.txt") metrics"
  mkdir -p "$OUT/prefill" && OUT="$OUT/prefill" KERNEL=prefill_ws_kernel PROFILE_ARGS="--prefill-only --no-bulk" \
    timeout 150 bash bench/gpu/profile_stalls.sh k3v2 >"$OUT/ncu_prefill.txt" 2>&1
  note "Nsight Compute, k3v2 Hopper prefill 512 on 8K: rc=$?, $(grep -cE '__' "$OUT/ncu_prefill.txt") metrics"
fi
if [ -n "${NO_BENCH:-}" ] || [ -n "${ONLY_SANITIZERS:-}" ]; then
  [ -f "$OUT/ncu_decode.txt" ] && { echo "== Nsight Compute, decode:"; cat "$OUT/ncu_decode.txt"; }
  [ -f "$OUT/ncu_prefill.txt" ] && { echo "== Nsight Compute, prefill:"; cat "$OUT/ncu_prefill.txt"; }
  [ -f "$OUT/profile_step.txt" ] && head -25 "$OUT/profile_step.txt"
  [ -f "$OUT/check_model.md" ] && cat "$OUT/check_model.md"
  [ -f "$OUT/engine_bench.txt" ] && { tail -5 "$OUT/engine_bench.err"; cat "$OUT/engine_bench.txt"; }
  [ -f "$OUT/serve_bench.txt" ] && { tail -5 "$OUT/serve_bench.err" | tr '\r' '\n' | tail -5; cat "$OUT/serve_bench.txt"; }
  [ -f "$OUT/spec_bench.md" ] && { tail -3 "$OUT/spec_bench.err"; cat "$OUT/spec_bench.md"; }
  [ -f "$OUT/serve_http.txt" ] && cat "$OUT/serve_http.txt"
  echo "================ summary ================"; printf '%s\n' "${summary[@]}"; pack; exit 0
fi
if [ -n "${BASE:-}" ] && [ -d "$BASE" ]; then
  cmake -S "$BASE" -B build/h200-base -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQ_CUDA=ON -DTQ_BUILD_TESTS=OFF -DTQ_BUILD_BENCH=OFF "${deps[@]}" \
    >"$OUT/configure_base.log" 2>&1 && ninja -C build/h200-base tq_capi >"$OUT/build_base.log" 2>&1 || { note "baseline build failed"; tail -20 "$OUT/build_base.log"; }
  base_lib=$(find build/h200-base -name libtq_capi.so | head -1)
  [ -n "$base_lib" ] && python3 bench/gpu/bench_decode.py --lib "$base_lib" --json "$OUT/bench_base.json" ${BENCH_ARGS:-} >"$OUT/bench_base.log" 2>&1
fi
python3 bench/gpu/bench_decode.py --lib build/h200/bindings/c/libtq_capi.so --json "$OUT/bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | grep -v '^|'
echo
echo "================ summary ================"
printf '%s\n' "${summary[@]}"
if [ -f "$OUT/bench_base.log" ]; then echo "baseline ($BASE):"; grep '^|' "$OUT/bench_base.log"; grep '^prefill' "$OUT/bench_base.log"; echo "this tree:"; fi
grep '^|' "$OUT/bench.log"
grep 'quantize_store k3v2' "$OUT/bench.log"
grep '^prefill' "$OUT/bench.log"
echo "quantize_store (k3v2, k3tv2t), what it adds to a captured quantize_store + decode step (two calls; one quantize_store_and_decode):"
grep -E ' k3v2 | k3tv2t ' "$OUT/bench.log" | grep -o 'B= *[0-9]* L= *[0-9]* *[a-z0-9]*\|added to a captured step [^)]*)\|with quantize_store_and_decode [^)]*)' | paste - - -
# BENCH_HEAD_DIMS="64 256": the same decode shapes at other head dims (k3v2 and torch), for the targets' byte-limit table
dims=()
for hd in ${BENCH_HEAD_DIMS:-}; do
  python3 bench/gpu/bench_decode.py --lib build/h200/bindings/c/libtq_capi.so --json "$OUT/bench_d$hd.json" --head-dim "$hd" --specs k3v2 \
    --shapes "$(python3 bench/gpu/targets.py --shapes)" --no-bulk --no-prefill >"$OUT/bench_d$hd.log" 2>&1 && dims+=("$OUT/bench_d$hd.json")
  note "bench_decode.py --head-dim $hd: $(grep -c '^| ' "$OUT/bench_d$hd.log") table lines"
done
[ -f "$OUT/bench.json" ] && python3 bench/gpu/targets.py "$OUT/bench.json" "${dims[@]}" | tee "$OUT/targets.md"  # issue 15's targets
pack
