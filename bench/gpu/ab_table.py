#!/usr/bin/env python3
"""The A/B tables of bench/gpu/two_trees.sh's and ab_packs.sh's runs, from their JSON files in one
folder: decode (decode_{base,h200}_{ROUND or dHD}.json) as µs a call in a CUDA graph, round by
round, and the head's median over the base's, then the same rounds' whole prompts and bulk store;
prefill (prefill{,256}_{base,h200}.json) as ms in a graph, the head over the base, and each
against torch's row of its own process. Markdown, ready for
bench/results. Base and head must come from one machine: the device names are checked.
    python3 bench/gpu/ab_table.py OUT
"""
import json
import os
import re
import statistics
import sys

from bench_rows import cell, torch_key  # this script's folder is on sys.path

TREES = {"base": "base", "h200": "head"}  # two_trees.sh's build folders: the baseline, this tree


def load(path):
    with open(path) as f:
        d = json.load(f)
    return d.get("device", "?"), d["rows"]


def rounds(folder, devices):
    """{(tree, label): rows} of the folder's decode_{base,h200}_{ROUND or dHD}.json files, each
    file's device added to `devices`."""
    out = {}
    for name in sorted(os.listdir(folder)):
        m = re.fullmatch(r"decode_(base|h200)_(\w+)\.json", name)
        if m:
            dev, out[(m.group(1), m.group(2))] = load(os.path.join(folder, name))
            devices.add(dev)
    return out


def prompt_shape(r):
    """A prefill row's shape: "512 on 8K" (a chunk on a prefix) or "whole 4K"; None for other rows."""
    if "prefill_chunk" in r:
        return f"{r['prefill_chunk']} on {r['prefill_prefix'] // 1024}K"
    if "whole_prompt" in r:
        return f"whole {r['whole_prompt'] // 1024}K"
    return None


def round_table(title, first, runs, cols, keys, names):
    """A Markdown table: a row a key (its first two cells names(key); `first` heads the first), µs
    a round in `cols` (runs[col][key]), and the head's median over the base's."""
    out = [title, f"| {first} | kv | " + " | ".join(f"{TREES[t]} {lab}" for t, lab in cols) + " | head / base (medians) |",
           "|---|---|" + "---|" * len(cols) + "---|"]
    for k in keys:
        vals = [runs[c].get(k) for c in cols]
        base = [v for c, v in zip(cols, vals) if c[0] == "base" and v is not None]
        head = [v for c, v in zip(cols, vals) if c[0] == "h200" and v is not None]
        ratio = f"{statistics.median(head) / statistics.median(base):.3f}" if base and head else ""
        out.append(f"| {names(k)} | " + " | ".join("" if v is None else f"{v:.1f}" for v in vals) + f" | {ratio} |")
    return out


def decode_tables(rounds_rows):
    runs = {c: {(r["batch"], r["context"], r["head_dim"], r["kv"]): 1e3 * r["graph_ms"] for r in rows if r.get("graph_ms") and "batch" in r}
            for c, rows in rounds_rows.items()}  # (tree, label) -> {(batch, context, head_dim, kv): µs}
    out = []
    for hd in sorted({k[2] for v in runs.values() for k in v}):
        cols = [c for c in sorted(runs, key=lambda c: (c[0] != "base", c[1])) if any(k[2] == hd for k in runs[c])]
        keys = sorted({k for c in cols for k in runs[c] if k[2] == hd}, key=lambda k: (-k[0] * k[1], -k[0], k[3]))
        out += round_table(f"\nDecode, head dim {hd}: µs a call in a CUDA graph\n", "batch × context", runs, cols, keys,
                           lambda k: f"{k[0]} × {k[1] // 1024}K | {cell(k[3])}")
    return out


def prompt_tables(rounds_rows):
    """The same rounds' whole prompts and bulk store (bench_decode.py --whole, --dense and its bulk
    quantize_store row; ab_packs.sh with ARGS="--prefill-only --no-prefill --whole 4096 --dense"):
    µs a call, in a CUDA graph but for the bulk store's, round by round, and the head's median
    over the base's. A dense row's store_ms is its store alone ("SPEC store alone")."""
    runs = {}  # (tree, label) -> {(shape, kv): µs}
    for c, rows in rounds_rows.items():
        got = {}
        for r in rows:
            if "whole_prompt" in r:
                shape = prompt_shape(r)
                got[(shape, r["kv"])] = 1e3 * r["graph_ms"]
                if "store_ms" in r:
                    got[(shape, r["kv"].split(" dense")[0] + " store alone")] = 1e3 * r["store_ms"]
            elif "quantize_store_bulk_tokens" in r:
                got[(f"bulk store, {r['quantize_store_bulk_tokens']} tokens", r["kv"])] = 1e3 * r["ms"]
        if got:
            runs[c] = got
    if not runs:
        return []
    cols = sorted(runs, key=lambda c: (c[0] != "base", c[1]))
    keys = list(dict.fromkeys(k for c in cols for k in runs[c]))  # in the order the runs print them
    return round_table("\nWhole prompts and the bulk store: µs a call (in a CUDA graph but the bulk store's)\n", "shape", runs, cols,
                       keys, lambda k: f"{k[0]} | {cell(k[1])}")


def prefill_rows(rows):
    """{(shape, kv): ms in a graph}, torch's attention alone under kv 'torch' (bench_rows.torch_key)."""
    got = {}
    for r in rows:
        shape = prompt_shape(r)
        if shape is not None:  # (not the bulk quantize_store row)
            got[(shape, torch_key(r["kv"]))] = r["graph_ms"]
    return got


def prefill_tables(folder, devices):
    out = []
    for stem, hd in (("prefill", 128), ("prefill256", 256)):
        paths = {t: os.path.join(folder, f"{stem}_{t}.json") for t in TREES}
        if not all(os.path.exists(p) for p in paths.values()):
            continue
        got = {}
        for t, p in paths.items():
            dev, rows = load(p)
            devices.add(dev)
            got[t] = prefill_rows(rows)
        out.append(f"\nPrefill, head dim {hd}: ms in a CUDA graph (whole prompts in 2048-token chunks)\n")
        out.append("| shape | kv | base | head | head / base | vs torch: base → head |")
        out.append("|---|---|---|---|---|---|")
        for shape, kv in got["base"]:
            b, h = got["base"][(shape, kv)], got["h200"].get((shape, kv))
            if h is None:
                continue
            tb, th = got["base"].get((shape, "torch")), got["h200"].get((shape, "torch"))
            vs = f"{tb / b:.2f}× → {th / h:.2f}×" if kv != "torch" and tb and th else ""
            out.append(f"| {shape} | {kv} | {b:.3f} | {h:.3f} | {h / b:.3f} | {vs} |")
    return out


def main(folder):
    devices = set()
    runs = rounds(folder, devices)
    lines = decode_tables(runs) + prompt_tables(runs) + prefill_tables(folder, devices)
    if not lines:
        sys.exit(f"{folder}: no decode_*.json or prefill*.json of two_trees.sh or ab_packs.sh")
    if len(devices) > 1:
        sys.exit(f"{folder}: runs from different devices ({', '.join(sorted(devices))}): no A/B")
    print(f"Device: {devices.pop()}")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit(__doc__)
    main(sys.argv[1])
