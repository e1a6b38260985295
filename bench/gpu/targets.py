#!/usr/bin/env python3
"""Issue 15's targets, each measured or marked missing, from bench_decode.py's JSON (one file per
head dim; the 128 one with the default shapes and specs, whole prompts from --whole 4096,8192,32768):
    python3 bench/gpu/targets.py OUT/bench.json [OUT/bench_d64.json OUT/bench_d256.json]
    python3 bench/gpu/targets.py --shapes    the decode targets' shapes, as bench_decode.py's --shapes
Every ratio is of figures in CUDA graphs, torch's SDPA bf16 measured in the same process. Markdown
for bench/results; the device named in the files heads it (they must agree).
"""
import json
import sys

from bench_rows import cell, torch_key  # this script's folder is on sys.path

# (batch, context) of the decode targets at head dim 128
RATIO4 = [(16, 32768), (4, 131072)]  # k3v2 >= 4x torch (<= 120 us on an H200), >= 2x fp8
RATIO3 = [(8, 32768), (32, 8192), (64, 4096)]  # k3v2 >= 3x torch


def load(path):
    with open(path) as f:
        d = json.load(f)
    return d.get("device", "?"), d["rows"]


def decode_rows(rows):
    """{(batch, context, kv): row} of the decode rows ('torch' for torch's)."""
    out = {}
    for r in rows:
        if "batch" in r and "graph_ms" in r:
            out[(r["batch"], r["context"], "torch" if r["kv"].startswith("torch") else r["kv"])] = r
    return out


def shape(b, c):
    return f"{b} × {c // 1024}K"


def yes(ok):
    return "**met**" if ok else "not met"


def targets(rows):
    dec = decode_rows(rows)
    us = lambda b, c, kv: 1e3 * dec[(b, c, kv)]["graph_ms"] if (b, c, kv) in dec else None
    lines = ["| target | measured | |", "|---|---|---|"]

    def ratio_line(what, shapes, want, other):
        for b, c in shapes:
            k, o = us(b, c, "k3v2"), us(b, c, other)
            if k is None or o is None:
                lines.append(f"| {what} at {shape(b, c)} | missing (k3v2 or {other} not run) | |")
                continue
            lines.append(f"| {what} at {shape(b, c)} | {o / k:.2f}× ({other} {o:.1f} µs, k3v2 {k:.1f}) | {yes(o / k >= want)} |")

    ratio_line("k3v2 ≥ 4× torch", RATIO4, 4.0, "torch")
    for b, c in RATIO4:
        k = us(b, c, "k3v2")
        lines.append(f"| k3v2 ≤ 120 µs (an H200's figure) at {shape(b, c)} | " + ("missing | |" if k is None else f"{k:.1f} µs | {yes(k <= 120)} |"))
    ratio_line("k3v2 ≥ 2× fp8", RATIO4, 2.0, "fp8")
    ratio_line("k3v2 ≥ 3× torch", RATIO3, 3.0, "torch")
    ones = sorted(c for (b, c, kv) in dec if b == 1 and kv == "k3v2" and (1, c, "torch") in dec)
    if ones:
        worst = min(ones, key=lambda c: us(1, c, "torch") / us(1, c, "k3v2"))
        cells = ", ".join(f"{c // 1024}K {us(1, c, 'torch') / us(1, c, 'k3v2'):.2f}×" for c in ones)
        lines.append(f"| batch 1: k3v2 never slower than torch, 1K-128K | {cells} (worst {worst // 1024}K) | "
                     f"{yes(us(1, worst, 'torch') >= us(1, worst, 'k3v2'))}{'' if ones[0] <= 1024 and ones[-1] >= 131072 else ' (contexts missing)'} |")
        fused = [(c, dec[(1, c, "k3v2")].get("quantize_store_fused_ms")) for c in ones]
        cells = ", ".join(f"{c // 1024}K +{1e3 * f:.1f} µs" for c, f in fused if f is not None)
        if cells:
            lines.append(f"| batch 1: quantize_store a small part of a step | quantize_store_and_decode over decode alone, a layer: {cells} "
                         f"(against an engine step: tq bench) | |")
    else:
        lines.append("| batch 1: k3v2 never slower than torch, 1K-128K | missing | |")
    pre = {}
    for r in rows:
        if "prefill_chunk" in r:
            pre[(f"{r['prefill_chunk']} tokens on {r['prefill_prefix'] // 1024}K", torch_key(r["kv"]))] = r["graph_ms"]
        elif "whole_prompt" in r:
            pre[(f"whole {r['whole_prompt'] // 1024}K prompt", torch_key(r["kv"]))] = r["graph_ms"]
    shapes = sorted({s for s, _ in pre}, key=lambda s: (not s[0].isdigit(), len(s), s))
    for s in shapes:
        if (s, "k3v2") in pre and (s, "torch") in pre:
            v = pre[(s, "torch")] / pre[(s, "k3v2")]
            lines.append(f"| prefill {s}: k3v2 ≥ 0.9× torch | {v:.2f}× ({1e3 * pre[(s, 'k3v2')]:.1f} µs, torch {1e3 * pre[(s, 'torch')]:.1f}) | {yes(v >= 0.9)} |")
        # bench_decode.py's dense_prompt_rows: cuDNN on the prompt, then its store, or the two on two streams
        for kv in sorted(kv for t, kv in pre if t == s and kv.startswith("k3v2 dense") and (s, "torch") in pre):
            v = pre[(s, "torch")] / pre[(s, kv)]
            cache = f"; {pre[(s, 'torch + cache')] / pre[(s, kv)]:.2f}× torch with its bf16 cache written" if (s, "torch + cache") in pre else ""
            lines.append(f"| prefill {s}, {cell(kv.removeprefix('k3v2 '))}: k3v2 ≥ 0.9× torch | {v:.2f}× ({1e3 * pre[(s, kv)]:.1f} µs, "
                         f"torch {1e3 * pre[(s, 'torch')]:.1f}{cache}) | {yes(v >= 0.9)} |")
    if not shapes:
        lines.append("| prefill: k3v2 ≥ 0.9× torch | missing (run without --no-prefill, with --whole) | |")
    return lines


def limits(files):
    """The fraction of the byte limit each head dim reaches (k3v2 and torch, per shape)."""
    lines = ["| head dim | batch × context | k3v2 µs | of its byte limit | torch µs | of its byte limit |", "|---|---|---|---|---|---|"]
    for hd, rows in files:
        dec = decode_rows(rows)
        for b, c in RATIO4 + RATIO3:
            k, t = dec.get((b, c, "k3v2")), dec.get((b, c, "torch"))
            if k and t:
                lines.append(f"| {hd} | {shape(b, c)} | {1e3 * k['graph_ms']:.1f} | {k['of_limit']:.0%} | {1e3 * t['graph_ms']:.1f} | {t['of_limit']:.0%} |")
    return lines


def main(paths):
    devices, files = set(), []
    for p in paths:
        dev, rows = load(p)
        devices.add(dev)
        hds = {r["head_dim"] for r in rows if "head_dim" in r}
        files.append((hds.pop() if len(hds) == 1 else "?", rows))
    if len(devices) != 1:
        sys.exit(f"files from different devices ({', '.join(sorted(devices))}): one table needs one machine")
    main_rows = [rows for hd, rows in files if hd == 128]
    if not main_rows:
        sys.exit("no head-dim 128 file: the targets are at head dim 128")
    print(f"Device: {devices.pop()}\n")
    print("\n".join(targets(main_rows[0])))
    print("\nThe byte limit column of bench_decode.py (--hbm-tbps) by head dim:\n")
    print("\n".join(limits(files)))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if sys.argv[1:] == ["--shapes"]:  # the other head dims' runs (run_h200.sh, run_prebuilt.sh) take these
        print(",".join(f"{b}x{c}" for b, c in RATIO4 + RATIO3))
    else:
        main(sys.argv[1:])
