#!/usr/bin/env python3
"""scripts/skipped_tests.py on a made-up ctest run: a GoogleTest skip, a script's 'SKIPPED: ' line
and a skip exit code each give their reason; a passing test is not listed; the counts line is
ctest's, skips apart."""
import os
import subprocess
import sys
import tempfile

SEP = "-" * 58


def block(i, n, name, output, verdict):
    return (f"{i}/{n} Testing: {name}\n{i}/{n} Test: {name}\nCommand: x\nDirectory: /\n\"{name}\" start time: t\nOutput:\n{SEP}\n"
            f"{output}<end of output>\nTest time =   0.01 sec\n{SEP}\n{verdict}\n\"{name}\" end time: t\n"
            f"\"{name}\" time elapsed: 00:00:00\n{SEP}\n\n")


def main():
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "skipped_tests.py")
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "Testing", "Temporary"))
        log = "Start testing: t\n" + SEP + "\n"
        log += block(1, 4, "Gpu.Decode", "[ RUN      ] Gpu.Decode\n/src/t.cpp:28: Skipped\nno CUDA device: GPU tests run elsewhere\n\n"
                     "[  SKIPPED ] Gpu.Decode (0 ms)\n", "Test Pass Reason:\nSkip regular expression found in output. Regex=[\\[  SKIPPED \\]]")
        log += block(2, 4, "engine_smoke", "SKIPPED: /data/stories260K.bin is absent: put the shared data beside the clone\n",
                     "Test Pass Reason:\nSkip regular expression found in output. Regex=[SKIPPED: ]")
        log += block(3, 4, "engine_ref_logits", "SKIPPED: models/x.gguf is absent: bash scripts/get_model.sh fetches it\n", "Test Passed.")
        log += block(4, 4, "Codec.RoundTrip", "[ RUN      ] Codec.RoundTrip\n[       OK ] Codec.RoundTrip (1 ms)\n", "Test Passed.")
        open(os.path.join(d, "Testing", "Temporary", "LastTest.log"), "w").write(log + "End testing: t\n")
        out = os.path.join(d, "out.txt")
        open(out, "w").write("100% tests passed, 0 tests failed out of 4\n\nTotal Test time (real) =   1.00 sec\n\n"
                             "The following tests did not run:\n\t  1 - Gpu.Decode (Skipped)\n\t  2 - engine_smoke (Skipped)\n"
                             "\t  3 - engine_ref_logits (Skipped)\n")
        got = subprocess.run([sys.executable, script, d, out], capture_output=True, text=True, check=True).stdout
    want = ["skipped tests: 3, by reason:",
            "1 test: no CUDA device: GPU tests run elsewhere  [Gpu.Decode]",
            "1 test: /data/stories260K.bin is absent: put the shared data beside the clone  [engine_smoke]",
            "1 test: models/x.gguf is absent: bash scripts/get_model.sh fetches it  [engine_ref_logits]",
            "ctest: 1 passed, 0 failed, 3 skipped"]
    missing = [w for w in want if w not in got]
    if missing or "Codec.RoundTrip" in got:
        print(f"skipped_tests.py printed:\n{got}\nmissing: {missing}")
        return 1
    print(got, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
