#!/usr/bin/env python3
"""Table of bench/gpu/decode_rows_ab.sh's runs: ms a decode step per (cache, batch, context, tokens
a sequence) for each TQ_DECODE_ROWS mode (auto: the kernel's choice; 8; 16), run by run, each
k-token step against the one-token step of the same run, and the first mode's median over the
second's.
    python3 bench/gpu/decode_rows_table.py OUT/rows16_1.json OUT/rows8_1.json ...
"""
import json
import re
import sys
from collections import defaultdict


def main(paths):
    runs = defaultdict(list)  # mode -> [(round, {(kv, batch, context, queries): ms})]
    for path in sorted(paths):
        m = re.search(r"rows(auto|\d+)_(\d+)\.json$", path)
        if not m:
            sys.exit(f"{path}: not a rowsMODE_N.json file of decode_rows_ab.sh")
        rows = json.load(open(path))["decode"]
        runs[m.group(1)].append((int(m.group(2)), {(r["kv"], r["batch"], r["context"], r["queries"]): r["ms_per_step"] for r in rows}))
    keys = sorted({k for v in runs.values() for _, d in v for k in d})
    modes = sorted(runs, key=lambda m: (m != "auto", m))[:2]
    if len(modes) < 2:
        sys.exit("two modes are needed")
    print(f"| cache | batch | context | tokens | {modes[0]}, ms | vs 1 token | {modes[1]}, ms | vs 1 token | {modes[0]} / {modes[1]} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        kv, batch, context, q = k
        cells = []
        ratio = []
        for rows in modes:
            ms = [d[k] for _, d in sorted(runs[rows]) if k in d]
            one = [d.get((kv, batch, context, 1)) for _, d in sorted(runs[rows]) if k in d]
            cells.append(" / ".join(f"{x:.3f}" for x in ms))
            cells.append(" / ".join(f"{x / o:.3f}" if o else "-" for x, o in zip(ms, one)))
            ratio.append(sorted(ms)[len(ms) // 2] if ms else None)
        r = f"{ratio[0] / ratio[1]:.3f}" if ratio[0] and ratio[1] else "-"
        print(f"| {kv} | {batch} | {context} | {q} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {r} |")


if __name__ == "__main__":
    main(sys.argv[1:])
