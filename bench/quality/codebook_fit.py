#!/usr/bin/env python3
"""Issue 17, item 1's last lead: codebooks fitted to the measured distribution of the rotated key
coordinates instead of the ideal one (a coordinate of a random unit vector in R^d, for which
TurboQuant's Lloyd-Max codebooks are optimal).

After the random rotation (here: a Hadamard transform with random signs per layer and KV head, as
the format's), each coordinate of a unit key is close to the ideal distribution when the key's
energy is spread over many channels; a key dominated by a few outlier channels gives coordinates
bunched near a few values instead, which the ideal codebook serves badly. This script measures how
far SmolLM2's real keys are from the ideal (excess kurtosis of sqrt(d) * coordinate, by layer), and
what a codebook fitted to them (1-D Lloyd-Max on a calibration text's rotated coordinates, one for
the model or one a layer) buys in coordinate error and in perplexity and KL against the exact
forward pass (keys quantized, values exact; numpy fp64: bench/quality/llama_numpy.py).
Keys are centred first (the per-head key centre of the `centre` knob, from the calibration text).

  .venv/bin/python bench/quality/codebook_fit.py --tq build/release/apps/cli/tq --bits 3 --tokens 1024

Results: bench/results/2026-12-02-codebook-fit.md.
"""
import argparse
import os

import numpy as np

from llama_numpy import Model, add_model_args, per_head, scores, token_ids


def lloyd_max(x, w, levels, iters=300):
    """1-D Lloyd-Max codebook (sorted centroids) of the samples x with weights w."""
    order = np.argsort(x)
    x, w = x[order], w[order]
    cw = np.cumsum(w)
    c = np.interp((np.arange(levels) + 0.5) / levels * cw[-1], cw, x)  # start at the quantiles
    for _ in range(iters):
        b = (c[1:] + c[:-1]) / 2
        idx = np.searchsorted(b, x)
        sw = np.bincount(idx, w, levels)
        swx = np.bincount(idx, w * x, levels)
        c = np.where(sw > 0, swx / np.maximum(sw, 1e-300), c)
    return c


def ideal_codebook(d, levels):
    """Lloyd-Max for one coordinate of a uniform unit vector in R^d: density (1 - x^2)^((d - 3) / 2)."""
    x = np.linspace(-1, 1, 400001)[1:-1]
    return lloyd_max(x, (1 - x * x) ** ((d - 3) / 2), levels)


def hadamard(d):
    h = np.array([[1.0]])
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(d)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap, "the key centres and the fitted codebooks", calib_tokens=256)
    ap.add_argument("--bits", type=int, default=3)
    a = ap.parse_args()
    m = Model(a.model)
    L, nkv, d = m.L, m.nkv, m.hd
    levels = 1 << a.bits
    rng = np.random.default_rng(17)
    H = hadamard(d)
    signs = rng.choice([-1.0, 1.0], size=(L, nkv, d))
    ids_eval = list(token_ids(a.tq, a.model, a.text, a.tokens))
    ids_cal = list(token_ids(a.tq, a.model, a.calib, a.calib_tokens))

    def rotate(l, h, x):  # unit rows -> rotated unit rows
        return (x * signs[l, h]) @ H.T

    def keys(ids):  # post-RoPE keys [n - 1][kv heads][d] by layer, position 0 (the sink) left out
        rec = []
        m.forward(ids, rec=rec)
        return [k[1:] for _, k, _, _ in rec]

    cal_keys = keys(ids_cal)
    mu = [[cal_keys[l][:, h].mean(0) for h in range(nkv)] for l in range(L)]

    def rotated_units(k_all, l, h):
        x = k_all[:, h] - mu[l][h]
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return rotate(l, h, x / np.maximum(norm, 1e-30)), norm

    cal = [np.concatenate([rotated_units(cal_keys[l], l, h)[0].ravel() for h in range(nkv)]) for l in range(L)]
    books = {"ideal": [ideal_codebook(d, levels)] * L}
    glob = lloyd_max(np.concatenate(cal), np.ones(sum(c.size for c in cal)), levels)
    books["fitted, one for the model"] = [glob] * L
    books["fitted, one a layer"] = [lloyd_max(c, np.ones(c.size), levels) for c in cal]

    # The evaluation text's keys, by layer: how far from the ideal, and each codebook's coordinate error.
    ev = keys(ids_eval)
    print(f"{os.path.basename(a.model)}: {len(ids_eval)} tokens of {os.path.basename(a.text)}, keys at {a.bits} bits, centres and "
          f"fitted codebooks from {len(ids_cal)} tokens of {os.path.basename(a.calib)}\n")
    print("sqrt(d) x the codebooks' centroids:")
    for name, bk in books.items():
        print(f"  {name}: " + (" ".join(f"{v:+.3f}" for v in bk[0] * np.sqrt(d)) if name != "fitted, one a layer" else
                               "layer 0: " + " ".join(f"{v:+.3f}" for v in bk[0] * np.sqrt(d))))
    ideal_kurt = -6.0 / (d + 2)  # excess kurtosis of sqrt(d) x a coordinate of a random unit vector
    print(f"\n| layer | excess kurtosis (ideal {ideal_kurt:+.3f}) | " + " | ".join(f"MSE {n} / ideal" for n in books if n != "ideal") + " |")
    print("|---|---|" + "---|" * (len(books) - 1))
    mse = {n: [] for n in books}
    for l in range(L):
        u = np.concatenate([rotated_units(ev[l], l, h)[0].ravel() for h in range(nkv)]) * np.sqrt(d)
        kurt = np.mean(u ** 4) / np.mean(u ** 2) ** 2 - 3
        for n, bk in books.items():
            c = bk[l] * np.sqrt(d)
            q = c[np.searchsorted((c[1:] + c[:-1]) / 2, u)]
            mse[n].append(np.mean((u - q) ** 2))
        print(f"| {l} | {kurt:+.3f} | " + " | ".join(f"{mse[n][l] / mse['ideal'][l]:.3f}" for n in books if n != "ideal") + " |")
    print("| mean | | " + " | ".join(f"{np.mean(mse[n]) / np.mean(mse['ideal']):.3f}" for n in books if n != "ideal") + " |")

    # Perplexity and KL with the keys quantized by each codebook (values exact). "plain": the stored norm
    # times the reconstructed unit vector; "ip": the norm divided by <reconstruction, true unit vector>,
    # which makes every key's inner products unbiased (the format's `ip` knob).
    def kv_fn_for(bk, ip):
        def kv_fn(l, h, Q, K, V):
            x = K - mu[l][h]
            norm = np.linalg.norm(x, axis=1, keepdims=True)
            u = rotate(l, h, x / np.maximum(norm, 1e-30))
            c = bk[l]
            q = c[np.searchsorted((c[1:] + c[:-1]) / 2, u)]
            scale = norm / np.maximum(np.sum(q * u, axis=1, keepdims=True), 1e-30) if ip else norm
            return Q, mu[l][h] + scale * ((q @ H) * signs[l, h]), V  # H is symmetric: H^T q = H q
        return kv_fn

    ref = m.forward(ids_eval)
    print(f"\nreference ppl {scores(ref, ref, ids_eval)[4]:.3f}\n")
    print("| codebook | norm | ppl | vs exact % | KL (nats) | top-1 |\n|---|---|---|---|---|---|")
    for ip in (False, True):
        for n, bk in books.items():
            ppl, pct, kl, top1, _ = scores(ref, m.forward(ids_eval, attn_fn=per_head(kv_fn_for(bk, ip), m.g)), ids_eval)
            print(f"| {n} | {'ip' if ip else 'plain'} | {ppl:.3f} | {pct:+.2f} | {kl:.4f} | {top1:.3f} |", flush=True)


if __name__ == "__main__":
    main()
