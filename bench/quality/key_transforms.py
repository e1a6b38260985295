#!/usr/bin/env python3
"""Issue 17, item 1: what a key transform applied before TurboQuant buys on SmolLM2's real keys.

softmax(q.k) is unchanged when every key of a (layer, KV head) is mapped k -> A (k - mu) and every
query q -> A^-T q (q.k changes by q.mu, the same for every key of a query). The cache would then
quantize A (k - mu): a smaller norm (the centre mu), and an error spread where queries look least
(A). Calibrated once per model on a text; no change to the page format or the kernels, only two
small maps around them. This script measures it, in a numpy fp64 forward pass of the GGUF model
(as tests/engine/ref_logits.py, whose dequantizer it uses), with the library's own quantizers:

  raw     no transform (what the cache does today)
  centre  mu = the calibration keys' mean, A = I
  diag    mu as centre, A = diag(s), s_c = (E[q_c^2] / E[(k_c - mu_c)^2])^PW (PW = 1/4 balances the
          expected |A^-T q|^2 |A (k - mu)|^2 channel by channel)
  full    mu as centre, A^T A = the matrix geometric mean of Sigma_k^-1 and Sigma_q

Perplexity, KL and top-1 against the unquantized forward on the first --tokens tokens of the
evaluation text; keys at --kbits, values exact or at --vbits. Results: bench/results/2026-11-30-key-transforms.md.

--vcentre also stores each value less its (layer, KV head)'s mean over the calibration tokens and
adds that mean to the attention output: exact, since a query's attention weights sum to 1.

  .venv/bin/python bench/quality/key_transforms.py --calib ../shared/data/text/emma.txt --modes raw,centre,diag,full
"""
import argparse
import os
import sys

import numpy as np

import turboquant as tq
from llama_numpy import Model, per_head, scores

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--text", default=os.path.join(ROOT, "..", "shared", "data", "text", "northanger_abbey.txt"))
    ap.add_argument("--calib", default=os.path.join(ROOT, "README.md"), help="calibration text (its first 256 tokens)")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--modes", default="raw,centre,diag,full")
    ap.add_argument("--kbits", type=int, default=3)
    ap.add_argument("--vbits", type=int, default=0, help="0: values exact")
    ap.add_argument("--pw", type=float, default=0.25, help="diag's exponent")
    ap.add_argument("--vcentre", action="store_true", help="values less their calibration mean (with --vbits)")
    a = ap.parse_args()

    llm = tq.LLM(a.model, kv_spec="fp32", device="cpu", threads=1)  # its tokenizer
    ids_eval = llm.tokenize(open(a.text).read()[:40000])[:a.tokens]
    ids_cal = llm.tokenize(open(a.calib).read()[:20000])[:256]
    m = Model(a.model)
    L, nkv, hd, g = m.L, m.nkv, m.hd, m.g
    # One quantizer per (layer, head), seeded apart, as the cache's pages are.
    qk = [[tq.Quantizer(hd, a.kbits, seed=1000 * l + h) for h in range(nkv)] for l in range(L)]
    qv = [[tq.Quantizer(hd, a.vbits, seed=5000 + 1000 * l + h) for h in range(nkv)] for l in range(L)] if a.vbits else None

    def round_trip(qz, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        return qz.dequantize(qz.quantize(x), x.shape[0]).astype(np.float64)

    def forward(ids, transform=None, stats=None):
        """Logits [n][vocab]; transform[l][h] = (mu, A, A^-T, value mean) quantizes keys (and values at
        --vbits); stats collects each layer's post-RoPE q, k and v (position 0, the sink, left out)."""
        def kv_fn(l, kvh, Q, K, V):
            mu, A, A_inv_t, muv = transform[l][kvh]
            K = round_trip(qk[l][kvh], (K - mu) @ A.T)
            Q = Q @ A_inv_t.T
            if qv:
                V = round_trip(qv[l][kvh], V - muv) + muv
            return Q, K, V
        rec = [] if stats is not None else None
        logits = m.forward(ids, rec=rec, attn_fn=per_head(kv_fn, g) if transform is not None else None)
        if stats is not None:
            stats.extend((q[1:], k[1:], v[1:]) for _, k, q, v in rec)
        return logits

    def sqrtm(M):
        w, U = np.linalg.eigh(M)
        return (U * np.sqrt(np.maximum(w, 1e-12))) @ U.T

    stats = []
    forward(ids_cal, stats=stats)

    def make(mode):
        out = []
        for l in range(L):
            q, k, v = stats[l]
            row = []
            for kvh in range(nkv):
                K, Q = k[:, kvh], q[:, kvh * g:kvh * g + g].reshape(-1, hd)
                mu = np.zeros(hd) if mode == "raw" else K.mean(0)
                A = np.eye(hd)
                if mode == "diag":
                    A = np.diag(((Q ** 2).mean(0) / ((K - mu) ** 2).mean(0)) ** a.pw)
                elif mode == "full":
                    Sk = np.cov((K - mu).T, bias=True) + 1e-6 * np.eye(hd)
                    Sq = Q.T @ Q / len(Q) + 1e-6 * np.eye(hd)
                    r_ = sqrtm(Sk)
                    ri = np.linalg.inv(r_)
                    A = sqrtm(ri @ sqrtm(r_ @ Sq @ r_) @ ri)
                elif mode not in ("raw", "centre"):
                    sys.exit(f"unknown mode '{mode}'")
                muv = v[:, kvh].mean(0) if a.vcentre else np.zeros(hd)
                row.append((mu, A, np.linalg.inv(A).T, muv))
            out.append(row)
        return out

    ref = forward(ids_eval)
    print(f"{len(ids_eval)} tokens of {os.path.basename(a.text)}, calibration {os.path.basename(a.calib)}, keys {a.kbits} bits, "
          f"values {a.vbits or 'exact'}; reference ppl {scores(ref, ref, ids_eval)[4]:.3f}\n")
    print("| transform | ppl | vs exact % | KL (nats) | top-1 |\n|---|---|---|---|---|")
    for mode in a.modes.split(","):
        ppl, pct, kl, top1, _ = scores(ref, forward(ids_eval, make(mode)), ids_eval)
        print(f"| {mode} | {ppl:.3f} | {pct:+.2f} | {kl:.4f} | {top1:.3f} |", flush=True)


if __name__ == "__main__":
    main()
