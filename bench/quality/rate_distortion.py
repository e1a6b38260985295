#!/usr/bin/env python3
"""Issue 17's bare targets against the rate-distortion bound: how close could any quantizer of the
same bits per element come on SmolLM2's real keys and values?

TurboQuant's premise is that after a random rotation every coordinate of a unit row is (nearly)
Gaussian with variance 1/d, whatever the data. For that source, Shannon's rate-distortion function
says that no quantizer of B bits a coordinate, however long its blocks, reaches a mean squared error
below 2^(-2B) a unit row; Lloyd-Max scalar codebooks (TurboQuant's, d = 64) sit at 0.0092 for B = 4
against the bound's 0.0039, 0.0335 against 0.0156 for B = 3, 0.1148 against 0.0625 for B = 2. This script
replaces the cache's round trip by the bound's test channel and asks what perplexity that would
give, in a numpy fp64 forward pass of the GGUF model (bench/quality/llama_numpy.py):

  exact      the row as it is
  tq:B       TurboQuant MSE at B bits: a Hadamard rotation with random signs, the ideal Lloyd-Max
             codebook of a coordinate of a random unit vector in R^d (codebook_fit.py's; the
             format's centroids are those rounded to 1/32 z-units at 2 and 3 bits), the norm exact
  shannon:B  the bound for a data-oblivious quantizer (the rotation's premise): the Gaussian
             source's optimal test channel on the unit row, u^ = a u + sqrt(a D / d) z with
             D = 2^(-2B), a = 1 - D, z standard normal, the norm exact. An ideal code of infinite
             block length; no real quantizer of B bits a coordinate does better on such rows.
  klt:B      an estimate for a quantizer that knows the data: each (layer, KV head)'s rows as a
             Gaussian vector source with the calibration text's mean and covariance, reverse
             water-filling over its eigenvalues at B d + 16 bits a row (the same bits as the format's
             codes and fp16 norm). For keys, the error is weighted by the queries' second moment
             (what q.k feels: E[(q.e)^2] = tr(Sigma_q Sigma_e)); for values, plain squared error.
             What a Gaussian code achieves on a source of that covariance; not a bound (the
             Gaussian is the hardest source of a given covariance).
  split:N@HI+LO  the calibration's eigenbasis (query-weighted for keys, as klt), its N leading
             components at HI bits and the other d - N at LO bits, each part a TurboQuant row of its
             own (norm exact, random rotation, ideal Lloyd-Max codebook): the format's fractional
             widths (`kv-specs.md`) with a calibrated basis in place of outlier channels. Bits a row:
             N HI + (d - N) LO + 32 (two norms), e.g. split:16@6+3 at d = 64 is the 272 of k4
  tcq:B      tq with trellis-coded quantization in place of the scalar codebook (Marcellin and
             Fischer, "Trellis coded quantization of memoryless and Gauss-Markov sources", IEEE
             Trans. Commun. 1990): the ideal codebook of 2^(B+1) levels in four interleaved subsets,
             a 4-state trellis (B bits a coordinate: one picks the branch, B - 1 the level in its
             subset), the row's codes chosen by the Viterbi algorithm; decoding walks the trellis
             from state 0, so a coordinate's value depends on the codes before it
  int:B      the uniform per-token baseline (`ksim=int4` at B = 4): each row's min and max (fp16 in
             the format: 32 bits a row), 2^B levels between them, no rotation

Options on the quantized rows: --ip (tq, tcq, shannon and split: each norm rescaled so that <u^, u> = 1,
the format's `ip` knob), --centre (tq, tcq and shannon keys less their calibration mean first, the
format's `centre`; klt and split always centre, int never), --unweighted (klt and split keys in the
plain basis), --calib-sink (the calibration statistics include position 0, the attention sink). No window, sinks or edge layers: issue 17's "bare" setting. Perplexity, KL and top-1
against the unquantized forward on the first --tokens tokens of the evaluation text.

  .venv/bin/python bench/quality/rate_distortion.py --configs tq:4/tq:4,shannon:4/shannon:4,klt:4/klt:4 --ip --centre

A config is KEYS/VALUES. Results: bench/results/2026-12-04-rate-distortion.md.
"""
import argparse
import os
import sys

import numpy as np

from codebook_fit import hadamard, ideal_codebook
from llama_numpy import Model, add_model_args, per_head, scores, token_ids

NORM_BITS = 16  # the format's fp16 norm a row


def water_fill(lam, bits):
    """Reverse water-filling: per-component distortions D_i = min(theta, lam_i) whose rates
    sum(max(0, log2(lam_i / D_i) / 2)) equal bits (lam: the eigenvalues, > 0)."""
    lo, hi = 0.0, float(lam.max())
    for _ in range(200):  # bisection on the water level theta, in the log domain
        theta = np.sqrt(lo * hi) if lo > 0 else hi * 1e-12 if hi > 0 else 0.0
        rate = np.sum(np.maximum(0.0, 0.5 * np.log2(lam / theta)))
        lo, hi = (theta, hi) if rate > bits else (lo, theta)
        if hi - lo <= 1e-12 * hi:
            break
    return np.minimum(hi, lam)


def parse(spec, d):
    """(kind, bits, (N, HI, LO) for split) of a quantizer's text; exits naming what is wrong."""
    kind, _, b = spec.partition(":")
    kinds = "exact, tq:B, tcq:B, shannon:B, klt:B, split:N@HI+LO or int:B"
    if kind == "exact" and not b:
        return kind, 0, None
    if kind == "split":
        try:
            n, widths = b.split("@")
            n, (hi, lo) = int(n), (int(w) for w in widths.split("+"))
        except ValueError:
            sys.exit(f"'{spec}': split:N@HI+LO, e.g. split:16@6+3")
        if not 0 < n < d or not (1 <= hi <= 8 and 1 <= lo <= 8):
            sys.exit(f"'{spec}': N must be 1..{d - 1}, HI and LO 1..8")
        return kind, hi, (n, hi, lo)
    if kind not in ("tq", "tcq", "shannon", "klt", "int") or not b.isdigit() or not 1 <= int(b) <= 8:
        sys.exit(f"unknown quantizer '{spec}': {kinds}, B = 1..8")
    return kind, int(b), None


# Trellis-coded quantization on a shift-register trellis of `nu` memory bits: the state is the
# last nu branch bits (bit 0 the newest); from state s, branch b uses subset
# parity(s & low) + 2 (b xor parity(s & high)) of the union's four (level i in subset i mod 4) and
# leads to ((s << 1) | b) mod 2^nu. The default, nu = 2, low = 1, high = 2, is Marcellin and
# Fischer's 4-state trellis (states 0 and 2 draw on D0 and D2, 1 and 3 on D1 and D3).
def _parity(nu):
    return np.array([bin(v).count("1") & 1 for v in range(1 << nu)])


def tcq_encode(u, union, nu=2, low=1, high=2):
    """Rows u [n][d] along the trellis from state 0 (Viterbi, squared error) -> (branch bits
    [n][d], level index within the subset [n][d]); union: the 2^(B+1) sorted levels."""
    n, d = u.shape
    S, par = 1 << nu, _parity(nu)
    subsets = [union[j::4] for j in range(4)]
    cost = np.full((n, S), np.inf)
    cost[:, 0] = 0.0
    back = np.zeros((d, n, S), dtype=np.int16)   # the state each state was reached from
    branch = np.zeros((d, n, S), dtype=np.int8)  # and the branch bit taken
    index = np.zeros((d, n, S), dtype=np.int32)  # the level's index within its subset
    for i in range(d):
        x = u[:, i]
        near, err = [], []
        for c in subsets:  # each subset's nearest level
            k = np.searchsorted((c[1:] + c[:-1]) / 2, x)
            near.append(k)
            err.append((x - c[k]) ** 2)
        new = np.full((n, S), np.inf)
        for s_ in range(S):
            for b in range(2):
                t, j = ((s_ << 1) | b) & (S - 1), par[s_ & low] + 2 * (b ^ par[s_ & high])
                c = cost[:, s_] + err[j]
                better = c < new[:, t]
                new[:, t] = np.where(better, c, new[:, t])
                back[i, :, t] = np.where(better, s_, back[i, :, t])
                branch[i, :, t] = np.where(better, b, branch[i, :, t])
                index[i, :, t] = np.where(better, near[j], index[i, :, t])
        cost = new
    rows = np.arange(n)
    state = np.argmin(cost, axis=1)
    bits, idx = np.empty((n, d), dtype=np.int64), np.empty((n, d), dtype=np.int64)
    for i in range(d - 1, -1, -1):
        bits[:, i], idx[:, i] = branch[i, rows, state], index[i, rows, state]
        state = back[i, rows, state]
    return bits, idx


def tcq_decode(bits, idx, union, nu=2, low=1, high=2):
    """The levels of codes (bits, idx): coordinate i's state is its nu previous branch bits, so
    its level is union[4 idx[i] + subset] from a window of B + nu bits, decoded in parallel with no
    walk. With the 4-state default: subset b[i-1] + 2 (b[i-2] xor b[i])."""
    par = _parity(nu)
    state = np.zeros_like(bits)
    for j in range(1, nu + 1):  # bit j - 1 of the state: branch i - j (0 before the row)
        state |= np.concatenate([np.zeros_like(bits[:, :j]), bits[:, :-j]], axis=1) << (j - 1)
    return union[4 * idx + par[state & low] + 2 * (bits ^ par[state & high])]


def tcq(u, union):
    return tcq_decode(*tcq_encode(u, union), union)


class Channel:
    """One tensor's (keys' or values') round trip for every (layer, KV head)."""

    def __init__(self, spec, d, L, nkv, cal, cal_q, ip, centre, seed):
        self.kind, self.bits, split = parse(spec, d)
        self.d, self.ip = d, ip
        if self.kind == "split":
            self.n, hi, lo = split
            self.books2 = (ideal_codebook(self.n, 1 << hi), ideal_codebook(d - self.n, 1 << lo))
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.H = hadamard(d)
        self.signs = rng.choice([-1.0, 1.0], size=(L, nkv, d))
        self.book = ideal_codebook(d, 1 << self.bits) if self.kind == "tq" else None
        self.union = ideal_codebook(d, 2 << self.bits) if self.kind == "tcq" else None
        centred = centre or self.kind in ("klt", "split")
        self.mu = [[cal[l][:, h].mean(0) if centred else np.zeros(d) for h in range(nkv)] for l in range(L)]
        self.klt = None
        if self.kind == "split":  # (W, W^-1, eigenvectors, leading first), random rotations of the two parts
            self.basis = [[self._klt(cal[l][:, h] - self.mu[l][h], None if cal_q is None else cal_q[l][h])[:3] for h in range(nkv)]
                          for l in range(L)]
            self.rots = [[[np.linalg.qr(rng.standard_normal((m_, m_)))[0] for m_ in (self.n, d - self.n)] for h in range(nkv)]
                         for l in range(L)]
        if self.kind == "klt":  # per (layer, head): (W, W^-1, eigenvectors, per-component distortions)
            self.klt = [[self._klt(cal[l][:, h] - self.mu[l][h], None if cal_q is None else cal_q[l][h]) for h in range(nkv)]
                        for l in range(L)]

    def _klt(self, x, q):
        d = self.d
        if q is None:
            W = Wi = np.eye(d)
        else:  # z = W x with W = Sigma_q^(1/2): squared error in z is the query-weighted error in x
            w, U = np.linalg.eigh(q.T @ q / len(q) + 1e-9 * np.eye(d))
            W, Wi = (U * np.sqrt(w)) @ U.T, (U / np.sqrt(w)) @ U.T
        z = x @ W.T
        lam, E = np.linalg.eigh(z.T @ z / len(z) + 1e-12 * np.eye(d))
        lam = np.maximum(lam, 1e-12)
        return W, Wi, E, lam, water_fill(lam, self.bits * d + NORM_BITS)

    def __call__(self, l, h, X):
        if self.kind == "exact":
            return X
        if self.kind == "int":  # no centre: the row's own offset is the zero point
            lo, hi = X.min(1, keepdims=True), X.max(1, keepdims=True)
            step = np.maximum(hi - lo, 1e-30) / ((1 << self.bits) - 1)
            return lo + np.round((X - lo) / step) * step
        x = X - self.mu[l][h]
        if self.kind == "klt":
            W, Wi, E, lam, D = self.klt[l][h]
            y = (x @ W.T) @ E  # eigen-coordinates
            a = 1.0 - D / lam
            y_hat = a * y + np.sqrt(a * D) * self.rng.standard_normal(y.shape)
            return self.mu[l][h] + (y_hat @ E.T) @ Wi.T
        if self.kind == "split":
            W, Wi, E = self.basis[l][h]
            y = ((x @ W.T) @ E)[:, ::-1]  # eigen-coordinates, the leading (largest) first
            parts = []
            for y_p, R, c in ((y[:, :self.n], self.rots[l][h][0], self.books2[0]), (y[:, self.n:], self.rots[l][h][1], self.books2[1])):
                norm = np.linalg.norm(y_p, axis=1, keepdims=True)
                u = (y_p / np.maximum(norm, 1e-30)) @ R
                u_hat = c[np.searchsorted((c[1:] + c[:-1]) / 2, u)]
                scale = norm / np.maximum(np.sum(u_hat * u, axis=1, keepdims=True), 1e-30) if self.ip else norm
                parts.append((scale * u_hat) @ R.T)
            y_hat = np.concatenate(parts, axis=1)[:, ::-1]
            return self.mu[l][h] + (y_hat @ E.T) @ Wi.T
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        u = (x / np.maximum(norm, 1e-30) * self.signs[l, h]) @ self.H.T  # rotated unit rows
        if self.kind == "tq":
            c = self.book
            u_hat = c[np.searchsorted((c[1:] + c[:-1]) / 2, u)]
        elif self.kind == "tcq":
            u_hat = tcq(u, self.union)
        else:
            D = 2.0 ** (-2 * self.bits)
            a = 1.0 - D
            u_hat = a * u + np.sqrt(a * D / self.d) * self.rng.standard_normal(u.shape)
        scale = norm / np.maximum(np.sum(u_hat * u, axis=1, keepdims=True), 1e-30) if self.ip else norm
        return self.mu[l][h] + scale * ((u_hat @ self.H) * self.signs[l, h])  # H symmetric: H^T = H


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    add_model_args(ap, "centres, covariances", calib_tokens=512)
    ap.add_argument("--configs", default="tq:4/tq:4,shannon:4/shannon:4,klt:4/klt:4", help="KEYS/VALUES,... (see above)")
    ap.add_argument("--ip", action="store_true", help="tq, tcq, shannon and split rows: each norm rescaled so that <u^, u> = 1")
    ap.add_argument("--centre", action="store_true", help="tq, tcq and shannon keys: less their calibration mean (klt, split: always)")
    ap.add_argument("--unweighted", action="store_true", help="klt and split keys: plain squared error, not query-weighted")
    ap.add_argument("--calib-sink", action="store_true", help="the calibration statistics include position 0 (the attention sink)")
    ap.add_argument("--seeds", type=int, default=1, help="rotation and noise seeds a config (their spread is the noise)")
    ap.add_argument("--first-seed", type=int, default=0, help="the seeds are --first-seed .. --first-seed + --seeds - 1")
    a = ap.parse_args()
    for path in (a.tq, a.model, a.text, a.calib):
        if not os.path.exists(path):
            sys.exit(f"not found: {path}")
    if a.tokens < 2 or a.calib_tokens < 2 or a.seeds < 1 or a.first_seed < 0:
        sys.exit("--tokens and --calib-tokens must be at least 2, --seeds at least 1, --first-seed at least 0")
    m = Model(a.model)
    L, nkv, d, g = m.L, m.nkv, m.hd, m.g
    ids_eval = list(token_ids(a.tq, a.model, a.text, a.tokens))
    ids_cal = list(token_ids(a.tq, a.model, a.calib, a.calib_tokens))
    rec = []
    m.forward(ids_cal, rec=rec)  # post-RoPE keys and queries, values; position 0 (the sink) left out unless --calib-sink
    s0 = 0 if a.calib_sink else 1
    cal_k = [k[s0:] for _, k, _, _ in rec]
    cal_v = [v[s0:] for _, _, _, v in rec]
    cal_q = [[q[s0:, h * g:h * g + g].reshape(-1, d) for h in range(nkv)] for _, _, q, _ in rec]

    configs = a.configs.split(",")
    for cfg in configs:  # before the forward passes: a typo fails at once
        if cfg.count("/") != 1:
            sys.exit(f"config '{cfg}': KEYS/VALUES, e.g. tq:4/tq:4")
        for q in cfg.split("/"):
            parse(q, d)
    ref = m.forward(ids_eval)
    print(f"{os.path.basename(a.model)}: {len(ids_eval)} tokens of {os.path.basename(a.text)}; calibration {len(ids_cal)} tokens of "
          f"{os.path.basename(a.calib)}; ip {'on' if a.ip else 'off'}, centre {'on' if a.centre else 'off'}; reference ppl "
          f"{scores(ref, ref, ids_eval)[4]:.3f}\n", flush=True)
    print("| keys | values | seed | ppl | vs exact % | KL (nats) | top-1 |\n|---|---|---|---|---|---|---|", flush=True)
    for cfg in configs:
        ks, vs = cfg.split("/")
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            ck = Channel(ks, d, L, nkv, cal_k, None if a.unweighted else cal_q, a.ip, a.centre, 1000 + seed)
            cv = Channel(vs, d, L, nkv, cal_v, None, a.ip, False, 5000 + seed)
            fn = per_head(lambda l, h, Q, K, V: (Q, ck(l, h, K), cv(l, h, V)), g)
            ppl, pct, kl, top1, _ = scores(ref, m.forward(ids_eval, attn_fn=fn), ids_eval)
            print(f"| {ks} | {vs} | {seed} | {ppl:.3f} | {pct:+.2f} | {kl:.4f} | {top1:.3f} |", flush=True)


if __name__ == "__main__":
    main()
