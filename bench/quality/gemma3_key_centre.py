#!/usr/bin/env python3
"""Issue 17 item 1's lead on Gemma-3-270M: TurboQuant keys with and without a per-(layer, head) key
centre. The numpy forward of tests/engine/ref_families.py on the first --tokens tokens of the text,
every position scored, against the same forward unquantized; keys (after k-norm and RoPE) through
the library's quantizer at --kbits (one per layer and head, seeded apart), values exact, no window:
  raw     Q(k)
  centre  mu + Q(k - mu), mu = the layer's mean key over the first 256 tokens of --calib (softmax
          ignores q.mu, so storing k - mu loses nothing but what Q does to it)

  .venv/bin/python bench/quality/gemma3_key_centre.py --tq build/release/apps/cli/tq -m models/gemma-3-270m-q4_k_m.gguf \\
      -f ../shared/data/text/northanger_abbey.txt --calib ../shared/data/text/emma.txt
"""
import argparse
import os
import sys

import numpy as np

import turboquant as tq
from llama_numpy import token_ids

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "engine"))
import ref_families  # noqa: E402


def logprobs(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tq", required=True)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-f", "--file", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--kbits", type=int, default=3)
    a = ap.parse_args()
    ids = token_ids(a.tq, a.model, a.file, a.tokens)
    cal = token_ids(a.tq, a.model, a.calib, 256)
    hp, W = ref_families.from_file(a.model)
    ckeys = {}
    ref_families.forward(hp, W, cal, keys=ckeys)
    mu = {l: k.mean(axis=0) for l, k in ckeys.items()}  # [kv_heads][head_dim]
    HD = hp["head_dim"]
    qz = {(l, h): tq.Quantizer(HD, a.kbits, seed=1000 * l + h) for l in range(hp["layers"]) for h in range(hp["kv_heads"])}

    def rt(l, h, x):  # x [n][HD] -> Q's round trip
        q = qz[(l, h)]
        return q.dequantize(q.quantize(np.ascontiguousarray(x, dtype=np.float32)), x.shape[0]).astype(np.float64)

    modes = {
        "raw": lambda l, k: np.stack([rt(l, h, k[:, h]) for h in range(k.shape[1])], axis=1),
        "centre": lambda l, k: np.stack([mu[l][h] + rt(l, h, k[:, h] - mu[l][h]) for h in range(k.shape[1])], axis=1),
    }
    tgt = ids[1:]
    ref = logprobs(ref_families.forward(hp, W, ids, all_logits=True)[:-1])
    ppl_ref = float(np.exp(-ref[np.arange(len(tgt)), tgt].mean()))
    print(f"{os.path.basename(a.model)}: {len(tgt)} positions, keys at {a.kbits} bits, values exact; reference ppl {ppl_ref:.3f}")
    print("| keys | ppl | vs exact % | KL (nats) | top-1 |")
    print("|---|---|---|---|---|")
    for name, fn in modes.items():
        lp = logprobs(ref_families.forward(hp, W, ids, key_fn=fn, all_logits=True)[:-1])
        ppl = float(np.exp(-lp[np.arange(len(tgt)), tgt].mean()))
        kl = float(np.mean(np.sum(np.exp(ref) * (ref - lp), axis=1)))
        top1 = float(np.mean(np.argmax(ref, axis=1) == np.argmax(lp, axis=1)))
        print(f"| {name} | {ppl:.3f} | {100 * (ppl / ppl_ref - 1):+.2f} | {kl:.4f} | {top1:.3f} |")


if __name__ == "__main__":
    main()
