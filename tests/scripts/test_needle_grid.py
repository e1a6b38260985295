#!/usr/bin/env python3
"""bench/quality/needle_grid.py's plots from small inputs: the heatmaps of a made-up
tq passkey --by-depth run (two specs, 2 lengths x 3 depths) and the Pareto plot of the committed
llama.cpp comparison; each must write a PNG. Exit 77 (skipped) without matplotlib."""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def main():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("SKIPPED: matplotlib is not installed (bench/quality/requirements.txt; scripts/setup.sh)")
        return 77
    script = os.path.join(ROOT, "bench", "quality", "needle_grid.py")
    rows = [{"kv": kv, "asked": n, "length": n + 7 * i, "depth": d, "correct": c, "trials": 10}
            for kv, c in (("fp16", 10), ("k3v2:edge=2/k4v4:sink=4:window=64", 9))
            for n in (1024, 2048) for i, d in enumerate((0.0, 0.5, 1.0))]
    with tempfile.TemporaryDirectory() as tmp:
        res = os.path.join(tmp, "grid.json")
        with open(res, "w") as f:
            json.dump({"date": "2026-12-01", "rows": rows}, f)
        for args, png in ((["plot", res], "grid.png"),
                          (["pareto", os.path.join(ROOT, "bench", "results", "2026-11-30-kv-vs-llama-cpp.json")], "pareto.png")):
            out = os.path.join(tmp, png)
            p = subprocess.run([sys.executable, script] + args + ["--png", out], capture_output=True, text=True)
            if p.returncode != 0:
                print(f"needle_grid.py {args[0]} failed: {p.stderr}")
                return 1
            with open(out, "rb") as f:
                if f.read(8) != b"\x89PNG\r\n\x1a\n":
                    print(f"needle_grid.py {args[0]}: {out} is not a PNG")
                    return 1
    # A grid of one spec whose cells hold the asked lengths: columns by asked length, not by the
    # prompts' own lengths (which differ a little from depth to depth).
    sys.path.insert(0, os.path.dirname(script))
    import needle_grid
    g = needle_grid.grid(rows)
    lengths, depths, acc = g["fp16"]
    if lengths != [1024, 2048] or depths != [0.0, 0.5, 1.0] or acc[1][1] != 1.0:
        print(f"needle_grid.grid: {g['fp16']}")
        return 1
    print("needle_grid.py: plot and pareto wrote PNGs; the grid's columns are the asked lengths")
    return 0


if __name__ == "__main__":
    sys.exit(main())
