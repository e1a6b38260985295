#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz, the asan preset: clang, ASan + UBSan, fatal) and runs
# each target from its seed corpus, then prints executions and findings per target.
#
#   scripts/fuzz.sh [--time SECONDS | --runs N] [target...]
#
# Default: --runs 1000000 of every target (gguf llama2c tokenizer_llama2c tokenizer_gguf kv_spec
# packed_block serve_request). Inputs that add coverage are kept in build/asan/fuzz-corpus/<target>
# (so runs accumulate; tests/fuzz/corpus is only read); a crash, a sanitizer report, a leak, a
# timeout (30 s) or running out of memory (2 GB) stops that target and writes its input to
# build/asan/fuzz-artifacts/. Replay one with build/asan/tests/fuzz/fuzz_<target> FILE. Exit status
# 1 when anything was found. TQ_JOBS sets the build's parallelism (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."

limit=(-runs=1000000)
targets=()
while (($#)); do
  case "$1" in
    --time) limit=(-max_total_time="$2"); shift 2 ;;
    --runs) limit=(-runs="$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (--time SECONDS, --runs N)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=(gguf llama2c tokenizer_llama2c tokenizer_gguf kv_spec packed_block serve_request)
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [ -d "tests/fuzz/corpus/$t" ] || { echo "fuzz.sh: unknown target '$t' (targets: ${all[*]})" >&2; exit 2; }
done

bash scripts/clang_deps.sh
cmake --preset asan >/dev/null
cmake --build --preset asan --target "${targets[@]/#/fuzz_}" -j "${TQ_JOBS:-$(nproc)}"

export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
out=build/asan
mkdir -p "$out/fuzz-artifacts" "$out/fuzz-logs"
rows=()
found=0
for t in "${targets[@]}"; do
  mkdir -p "$out/fuzz-corpus/$t"
  log="$out/fuzz-logs/$t.log"
  echo "fuzz.sh: $t (${limit[*]}), log $log"
  rc=0
  "$out/tests/fuzz/fuzz_$t" "${limit[@]}" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$out/fuzz-artifacts/$t-" "$out/fuzz-corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  cov=$({ grep -o 'cov: [0-9]*' "$log" || true; } | tail -1 | cut -d' ' -f2)  # none where a seed crashed before INITED
  artifact=$(sed -n "s/.*Test unit written to \(.*\)/\1/p" "$log" | tail -1)
  if grep -q 'libFuzzer: run interrupted' "$log"; then
    finding="0 (interrupted)"  # Ctrl-C or kill -INT of the fuzzer: its stats are still printed
  elif [ "$rc" -ne 0 ] || [ -n "$artifact" ]; then
    found=1
    what=$(grep -m1 -oE 'ERROR: [A-Za-z]+Sanitizer: [a-z-]+|runtime error: .*|libFuzzer: [a-z -]+|what\(\): .*' "$log" || true)
    finding="1: ${what:-exit $rc} -> ${artifact:-no input written}"
    tail -40 "$log"
  else
    finding=0
  fi
  rows+=("$(printf '%-18s %12s %8s %7s  %s' "$t" "${execs:-?}" "${secs:-?}" "${cov:-?}" "$finding")")
done
echo
printf '%-18s %12s %8s %7s  %s\n' target executions seconds cov findings
for r in "${rows[@]}"; do echo "$r"; done
exit "$found"
