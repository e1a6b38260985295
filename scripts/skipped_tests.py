#!/usr/bin/env python3
"""Says why each test of the last ctest run was skipped: ctest marks a test "Skipped" but does not
print its output, so a test that could not run would otherwise look the same as one that ran.

Usage: ctest ... | tee OUT; skipped_tests.py BUILD_DIR OUT
The skipped tests are those ctest's summary lists as "(Skipped)" in OUT; their output is read from
BUILD_DIR/Testing/Temporary/LastTest.log.

Prints one line per reason, with how many tests and which (the first few), e.g.
    skipped  12 tests: no CUDA device: GPU tests run on a machine with one (...)  [test_cuda.X, ...]
The reason is the GoogleTest skip message, or the line a script printed with "SKIPPED"/"skipped:".
Ends with ctest's counts as one plain line, skips apart: "ctest: 590 passed, 0 failed, 146 skipped"
(ctest counts a skipped test as passed). Exit status 0 always: this only reports.
"""
import os
import re
import sys
from collections import OrderedDict


def tests_of(log):
    """(name, output, block) for each test in LastTest.log."""
    blocks = re.split(r"^-{58}\n\n?(?=\d+/\d+ Testing: )", log, flags=re.M)
    for b in blocks:
        m = re.match(r"\d+/\d+ Testing: (.+)\n", b)
        if not m:
            continue
        out = re.search(r"^Output:\n-{58}\n(.*?)^<end of output>$", b, flags=re.M | re.S)
        yield m.group(1), out.group(1) if out else "", b


def reason(output):
    lines = output.splitlines()
    for i, line in enumerate(lines):  # GoogleTest: "file:line: Skipped" then the message
        if re.search(r":\d+: Skipped$", line) and i + 1 < len(lines) and lines[i + 1].strip():
            return lines[i + 1].strip()
    for line in lines:
        s = line.strip()
        if re.match(r"(?i)^(\[\s*SKIPPED\s*\].*\(\d+ ms\)$|\[\s*SKIPPED\s*\] \d+ tests?)", s):
            continue
        if "SKIPPED" in s or s.lower().startswith("skipped"):
            return re.sub(r"^(.*?SKIPPED:?|skipped:?)\s*", "", s, flags=re.I) or s
    return "(no reason printed)"


def main():
    build, ctest_out = sys.argv[1], sys.argv[2]
    try:
        log = open(os.path.join(build, "Testing", "Temporary", "LastTest.log"), encoding="utf-8", errors="replace").read()
        summary = open(ctest_out, encoding="utf-8", errors="replace").read()
    except OSError as e:
        print(f"skipped tests: cannot tell ({e})")
        return 0
    names = re.findall(r"^\s*\d+ - (.+?) \(Skipped\)$", summary, flags=re.M)
    outputs = {name: output for name, output, _ in tests_of(log)}
    by_reason = OrderedDict()
    for name in names:
        by_reason.setdefault(reason(outputs.get(name, "")), []).append(name)
    if not by_reason:
        print("skipped tests: none")
    else:
        print(f"skipped tests: {len(names)}, by reason:")
        for why, group in by_reason.items():
            shown = ", ".join(group[:3]) + (f", ... ({len(group) - 3} more)" if len(group) > 3 else "")
            print(f"  {len(group):4d} {'test' if len(group) == 1 else 'tests'}: {why}  [{shown}]")
    m = re.search(r"^\d+% tests passed, (\d+) tests? failed out of (\d+)$", summary, flags=re.M)
    if m:
        failed, total = int(m.group(1)), int(m.group(2))
        print(f"ctest: {total - failed - len(names)} passed, {failed} failed, {len(names)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
