#!/usr/bin/env python3
"""What the keys of a GGUF model look like where the KV cache quantizes them (after the q/k norms
and RoPE), per layer: the share of the keys' energy in their mean over positions (a per-channel
offset, which a per-head key centre would remove at no cost: softmax ignores q.mu), and how
uneven the channels are (the largest channel RMS over the median one). Uses the numpy forward of
tests/engine/ref_families.py on the first --tokens tokens of a text (tokenized by tq run).

  python bench/quality/key_stats.py --tq build/release/apps/cli/tq -m models/gemma-3-270m-q4_k_m.gguf \\
      -f ../shared/data/text/northanger_abbey.txt --tokens 512
"""
import argparse
import os
import sys

import numpy as np

from llama_numpy import token_ids

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "engine"))
import ref_families  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tq", required=True)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-f", "--file", required=True)
    ap.add_argument("--tokens", type=int, default=512)
    a = ap.parse_args()
    ids = token_ids(a.tq, a.model, a.file, a.tokens)
    hp, W = ref_families.from_file(a.model)
    keys = {}
    ref_families.forward(hp, W, ids, keys=keys)
    print(f"{os.path.basename(a.model)}: {len(ids)} tokens; per layer, over KV heads: offset share = |mean_t k|^2 / mean_t |k|^2 "
          "(max over heads), channel spread = max / median channel RMS (max over heads)")
    print("| layer | kind | offset share | channel spread | top channel |")
    print("|---|---|---|---|---|")
    for l in sorted(keys):
        k = keys[l]  # [n][kv_heads][head_dim]
        share, spread, top = 0.0, 0.0, -1
        for h in range(k.shape[1]):
            kh = k[:, h]
            mu = kh.mean(axis=0)
            share = max(share, float(mu @ mu / np.mean(np.sum(kh * kh, axis=1))))
            rms = np.sqrt(np.mean(kh * kh, axis=0))
            if rms.max() / np.median(rms) > spread:
                spread, top = float(rms.max() / np.median(rms)), int(np.argmax(rms))
        kind = "local" if hp["arch"] == "gemma3" and hp["window"] and l % 6 != 5 else "global"
        print(f"| {l} | {kind} | {share:.3f} | {spread:.1f} | {top} |")


if __name__ == "__main__":
    main()
