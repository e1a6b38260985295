#!/usr/bin/env bash
# The CPU test suite built with clang's AddressSanitizer and UndefinedBehaviorSanitizer (the asan
# preset: -O1, every report fatal), then the fuzz harnesses: each seed corpus replayed and each
# target fuzzed for TQ_FUZZ_SECONDS (10) seconds. scripts/test.sh runs this after the release tests,
# so CI does; TQ_SANITIZED=0 skips it. A sanitizer report, a fuzz finding or a failed test fails it.
#
# Not run sanitized (they run in the release suite): the slow data-dependent tests, whose code the
# others already cover -- speculative decoding on stories260K, run to many tokens and thousands of
# samples (SpeculationSampling, ModelDrafter, SpeculationRollback, GreedySpeculation: 10 of the 16
# CPU-minutes the suite takes sanitized), and whole models run from Python (engine_ref_logits on
# SmolLM2-135M, engine_ref_gemma3 on Gemma-3-270M, serve_openai_client) -- and install_consumer,
# which builds a project against the installed package without the sanitizer runtimes. Of the
# prefix-tail scheduler tests' four spec instances (~30 s each sanitized), the page-8 one: the
# default and the two 4-token-page ones keep their code paths covered; of its eviction test
# (~17 s an instance), the two 4-token-page instances, whose other tests still run. The passkey
# grid with trials and a haystack (~29 s): the other passkey tests run the same code sanitized.
# The scheduler-against-alone tests with speculation and with a draft model in three of their
# eight cases (AllAtOnce, TwoAtATime, DefaultSpecItself: ~40 s), whose plain instances still run,
# and the speculative ones in the other five. The statistical codec tests at all but one width
# (MseDistortion's dense rotation at 1, 2 and 4 bits, ProdEstimator at 1, 3 and 4: ~33 s): the
# same code at another width, thousands of rows each; sanitized, one width of each runs.
#
# `test_sanitized.sh build` only builds, `test_sanitized.sh test` only runs what was built:
# scripts/test.sh builds while the release tests run (they leave one of CI's two cores idle).
set -euo pipefail
what=${1:-all}
case "$what" in all | build | test) ;; *) echo "usage: test_sanitized.sh [all|build|test]" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
if [ "${TQ_SANITIZED:-1}" = 0 ]; then
  echo "test_sanitized.sh: skipped (TQ_SANITIZED=0)"
  exit 0
fi
jobs=$(nproc 2>/dev/null || echo 2)
if [ "$what" != test ]; then
  bash scripts/clang_deps.sh
  # A unity build unless TQ_UNITY_BUILD=OFF (scripts/test.sh says why).
  cmake --preset asan -DTQ_FUZZ_SECONDS="${TQ_FUZZ_SECONDS:-10}" -DCMAKE_UNITY_BUILD="${TQ_UNITY_BUILD:-ON}" >/dev/null
  cmake --build --preset asan -j "$jobs"
fi
[ "$what" = build ] && exit 0
out=build/asan/Testing/ctest-output.txt
mkdir -p build/asan/Testing
rc=0
# The preset's test environment makes every ASan / UBSan report abort the test (halt_on_error).
slow='^(engine_ref_logits|engine_ref_gemma3|serve_openai_client|install_consumer)$|^(SpeculationSampling|ModelDrafter|SpeculationRollback)[.]|^Specs/GreedySpeculation[.]|^Stories260K/SchedulerPrefixTails[.].*/SinkWindowPage8( |$)|^Stories260K/SchedulerPrefixTails[.]EvictionOfTailsAndPagesUnderPressure/(WindowOnly|SinkOnly)Page4( |$)|^Passkey[.]GridByDepthWithTrialsAndHaystack( |$)'
# (Most parameterized tests' names end in "  # GetParam() = ..."; ctest's regular expressions take 9 groups at most.)
slow+='|^Stories260K/SchedulerMatchesAlone[.][DS][A-Za-z]*RequestsShareSteps/(AllAtOnce|TwoAtATime|DefaultSpecItself) '
slow+='|^All/MseDistortion[.].*/dense_b[124] |^Bits/ProdEstimator[.].*/[134]$'
ctest --preset asan -j "$jobs" -E "$slow" 2>&1 | tee "$out" || rc=$?
python3 scripts/skipped_tests.py build/asan "$out"
exit "$rc"
