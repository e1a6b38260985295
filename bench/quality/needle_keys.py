#!/usr/bin/env python3
"""Why the key centre (`:centre`) costs SmolLM2 needle-in-a-haystack hits: a numpy experiment.

Builds the prompts of `tq passkey --haystack FILE --lengths L --depths D --trials T --seed S` exactly
(the same std::mt19937_64 draws, the same Filler arithmetic of src/engine/eval.cpp; checked against
the keys `tq passkey -v` prints), appends the true answer (" " + 5 digits, teacher forced) and runs a
float64 numpy forward of the GGUF model (as bench/quality/key_transforms.py: llama, adjacent-pair
RoPE). Per layer and KV head it then measures

  a) |k| and |k - mu| of the needle's digit tokens against the haystack's median,
  b) the exact attention the answer queries (the 6 positions that predict " " and the 5 digits) put
     on the needle's " " + digit tokens (both copies of the key): which heads retrieve,
  c) TurboQuant's effect on that (the library's quantizer, turboquant.Quantizer, many seeds), keys
     stored raw or as k - mu: the needle's attention mass, the score error q.(k^ - k)/sqrt(d) on
     needle and haystack tokens (mean = bias against the exact sink/window rows, sd), the shrink slope.

mu is the engine's RoPE-aware centre (src/backend/cpu/runner.cpp key_centre + model::rope_centre):
m = the mean pre-RoPE key of the first 64 tokens of the engine's calibration passage
(src/engine/key_centre.cpp, positions 1..63), mu = E_p[R(p)] m over p = 0..context-1 (context =
the longest prompt + 8, as tq passkey sizes its engine); computed on the exact forward (the
engine's own step runs on its quantized cache: a small difference).

--full N also runs the whole model N times (rotation seeds) with the spec's cache simulated (keys 3
bits, 4 in edge layers 0,1,28,29; values 2 / 4 bits; positions < 4 and the last 64 before each query
exact), for each of --variants (raw, centre, *-nc, *-unb, perrow, plainmu; '+bare' = bare k3v2: no
side buffer, no edge layers), and reports the answer tokens' log-probabilities and greedy hits.
--kl-tokens N instead measures the variants' KL against the exact forward on a text.

  PY=".venv/bin/python bench/quality/needle_keys.py --pick 6,9,10,11,12,13,14,15,16,17,18,19,20,21,23 --seeds 8"
  $PY                                          # a, b, c: raw, centre, raw-unb, centre-unb
  $PY --modes raw,centre,raw-nc,centre-nc      # c with the library's norm correction
  $PY --allq                                   # c with no exact sink/window
  .venv/bin/python bench/quality/needle_keys.py --pick 6,9,12,14,18,20 --seeds 1 --min-mass 2 --full 2 \
      --variants raw,centre,centre-unb,centre-nc
  .venv/bin/python bench/quality/needle_keys.py --kl-tokens 1024 --full 2 --variants raw,centre,raw-nc,centre-nc,raw-unb,centre-unb
(one thread: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1; 2-6 min each on one core; findings: /work/notes/needle-keys.md)
"""
import argparse
import ast
import os
import time

import numpy as np

import turboquant as tq
from llama_numpy import Model, softmax

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
M64 = (1 << 64) - 1


def centre_text():
    """The engine's calibration passage, read from src/engine/key_centre.cpp (one copy of it): C's
    adjacent string literals and their \\" escapes are Python's too."""
    src = open(os.path.join(ROOT, "src", "engine", "key_centre.cpp"), encoding="utf-8").read()
    body = src[src.index("const char* key_centre_text()"):]
    body = body[body.index("return") + len("return"):body.index(";")]
    return ast.literal_eval("(" + body + ")")


CENTRE_TEXT = centre_text()


class MT64:
    """std::mt19937_64."""

    def __init__(self, seed):
        self.mt = [0] * 312
        self.mt[0] = seed & M64
        for i in range(1, 312):
            self.mt[i] = (6364136223846793005 * (self.mt[i - 1] ^ (self.mt[i - 1] >> 62)) + i) & M64
        self.i = 312

    def __call__(self):
        if self.i >= 312:
            mt = self.mt
            for k in range(312):
                y = (mt[k] & 0xFFFFFFFF80000000) | (mt[(k + 1) % 312] & 0x7FFFFFFF)
                mt[k] = mt[(k + 156) % 312] ^ (y >> 1) ^ (0xB5026F5AA96619E9 if y & 1 else 0)
            self.i = 0
        y = self.mt[self.i]
        self.i += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        y ^= y >> 43
        return y & M64


def build_prompts(tok, hay, lengths, depths, trials, seed):
    """tq passkey's prompts (src/engine/eval.cpp evaluate_passkey, Filler::text with a haystack)."""
    intro = ("There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about "
             "the pass key.\n")
    question = "\nWhat is the pass key? The pass key is"
    cpt = len(hay[:20000]) / max(1, len(tok(hay[:20000])))
    rng = MT64(seed)
    out = []
    for ln in lengths:
        for d in depths:
            for _ in range(trials):
                key = str(10000 + rng() % 90000)
                needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
                fill = ln - 80 if ln > 80 else 1
                pick = MT64(rng())
                chars = int(fill * 1.0 * cpt)
                start = pick() % (len(hay) - chars)
                dot = hay.find(". ", start)
                if dot != -1 and dot + 2 + chars <= len(hay):
                    start = dot + 2
                t = hay[start:start + chars]
                at = int(d * len(t))
                b = t.find(". ", at)
                at = len(t) if d >= 1.0 else (len(t) if b == -1 else b + 2)
                text = intro + t[:at] + (" " if at == len(t) else "") + needle + t[at:] + question
                out.append(dict(length=ln, depth=d, key=key, ids=tok(text)))
    return out


def round_trip(qz, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    return qz.dequantize(qz.quantize(x), x.shape[0]).astype(np.float64)


QCACHE = {}


def quantizer(bits, seed, nc=False):
    if (bits, seed, nc) not in QCACHE:
        QCACHE[(bits, seed, nc)] = tq.Quantizer(64, bits, seed=seed, norm_correction=nc)
    return QCACHE[(bits, seed, nc)]


def quant(mode, X, mu, bits, seed):
    """The decoded rows of X - mu (mu applied by the caller's mode): mode = raw | centre, optionally
    -nc (the library's norm correction, |x| / |c|) or -unb (per row, the norm that makes <x^, x> = |x|^2:
    TurboQuant's inner-product shrink removed along the row itself)."""
    base, _, opt = mode.partition("-")
    Y = X - mu if base in ("centre", "plainmu") else X
    R = round_trip(quantizer(bits, seed, nc=(opt == "nc")), Y)
    if opt == "unb":
        R = R * (np.sum(Y * Y, 1) / np.maximum(np.sum(R * Y, 1), 1e-30))[:, None]
    return Y, R


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--haystack", default=os.path.join(ROOT, "..", "shared", "data", "text", "emma.txt"))
    ap.add_argument("--lengths", default="1024")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--pick", default="", help="comma-separated indices of the built prompts to use (default: all)")
    ap.add_argument("--seeds", type=int, default=16, help="rotation seeds for c)")
    ap.add_argument("--modes", default="raw,centre,raw-unb,centre-unb", help="key storage modes of c)")
    ap.add_argument("--kbits", type=int, default=3)
    ap.add_argument("--min-mass", type=float, default=0.2, help="c) only for heads with at least this exact needle mass")
    ap.add_argument("--full", type=int, default=0, help="rotation seeds of the full simulated-cache forward (0: skip)")
    ap.add_argument("--variants", default="raw,centre", help="full-forward variants: a c) mode, perrow, plainmu; '+allq' "
                    "quantizes the sink and window too")
    ap.add_argument("--kl-tokens", type=int, default=0, help="instead: KL of --variants against the exact forward on the "
                    "first N tokens of --kl-text (perplexity-style check of a fix)")
    ap.add_argument("--kl-text", default=os.path.join(ROOT, "..", "shared", "data", "text", "northanger_abbey.txt"))
    ap.add_argument("--allq", action="store_true", help="c) with every key quantized (no exact sink/window)")
    ap.add_argument("--list", action="store_true", help="only list the prompts (keys, lengths) and exit")
    a = ap.parse_args()

    llm = tq.LLM(a.model, kv_spec="fp32", device="cpu", threads=1, n_ctx=256)
    tok = llm.tokenize
    hay = open(a.haystack, encoding="ascii").read()
    prompts = build_prompts(tok, hay, [int(x) for x in a.lengths.split(",")], [float(x) for x in a.depths.split(",")], a.trials, a.seed)
    for i, p in enumerate(prompts):
        p["i"] = i
    if a.list:
        for p in prompts:
            print(p["i"], p["length"], p["depth"], p["key"], len(p["ids"]))
        return
    if a.pick:
        prompts = [prompts[int(i)] for i in a.pick.split(",")]
    M = Model(a.model)
    L, NKV, NH, HD, G = M.L, M.nkv, M.nh, M.hd, M.g
    # tq passkey sizes one engine for its longest prompt (all 30 of the default grid: 1071 + 8)
    context = max(len(p["ids"]) for p in build_prompts(tok, hay, [int(x) for x in a.lengths.split(",")],
                                                       [float(x) for x in a.depths.split(",")], a.trials, a.seed)) + 8
    # ---- mu: the engine's calibration step
    cal = tok(CENTRE_TEXT)[:64]
    rec = []
    M.forward(cal, rec=rec, logits_at=[len(cal) - 1])
    m_pre = np.stack([r[0][1:].mean(0) for r in rec])  # [L][kv][hd] mean pre-RoPE key, position 0 left out
    MU = M.rope_centre(m_pre, context)
    MU_PLAIN = np.stack([r[1][1:].mean(0) for r in rec])  # the first version: plain mean after RoPE
    print(f"{len(prompts)} prompts, context {context}; calibration {len(cal)} tokens; |mu|/|m| (RoPE-aware shrink) "
          f"median {np.median(np.linalg.norm(MU, axis=-1) / np.linalg.norm(m_pre, axis=-1)):.2f}", flush=True)

    if a.kl_tokens:
        ids = tok(open(a.kl_text, encoding="utf-8").read()[:a.kl_tokens * 8])[:a.kl_tokens]
        ref = np.log(softmax(M.forward(ids)))
        tgt = np.array(ids[1:])
        nll_ref = -ref[np.arange(len(tgt)), tgt].mean()
        print(f"KL on {len(ids)} tokens of {os.path.basename(a.kl_text)} (mu for context {context}); exact ppl {np.exp(nll_ref):.3f}")
        print("| variant | seed | ppl vs exact % | KL | top-1 |\n|---|---|---|---|---|")
        for var in a.variants.split(","):
            for s in range(max(1, a.full)):
                lo = full_forward(M, ids, None, None, MU, MU_PLAIN, var, s, a.kbits)
                lp = np.log(softmax(lo))
                nll = -lp[np.arange(len(tgt)), tgt].mean()
                kl = (np.exp(ref) * (ref - lp)).sum(-1).mean()
                print(f"| {var} | {s} | {(np.exp(nll - nll_ref) - 1) * 100:+.2f} | {kl:.4f} | {(lp.argmax(-1) == ref.argmax(-1)).mean():.3f} |",
                      flush=True)
        return

    scale = 1 / np.sqrt(HD)
    modes = a.modes.split(",")
    P = len(prompts)
    A_norm = np.full((P, L, NKV, 4), np.nan)  # needle |k|, needle |k-mu|, hay median |k|, hay median |k-mu|
    A_mass = np.zeros((P, L, NH))  # exact needle mass, mean over the answer queries
    SINK = np.zeros((L, NKV, 6))  # first prompt: |k0|, |k0 - mu|, median |k|, sink mass, score error sd raw / centred
    A_qmu = np.zeros((P, L, NH))  # q.mu / sqrt(d), mean over every query position of the prompt
    A_info = np.full((P, L, NH, 6), np.nan)  # exact: needle score, hay mean score, q.mu, sink score, sink mass, window mass
    keys_c = ["mass", "e_n", "e_h", "sd_n", "sd_h", "slope"]
    C = {m: {k: np.full((P, L, NH), np.nan) for k in keys_c} for m in modes}
    full_rows = []
    for pi, p in enumerate(prompts):
        t0 = time.time()
        ans = tok(" " + p["key"])
        ids = list(p["ids"]) + ans
        n0 = len(p["ids"])
        Q_POS = np.arange(n0 - 1, n0 + len(ans) - 1)  # 'is', ' ', d1..d4: the positions that predict ' ', d1..d5
        targets = np.array(ans)
        digits = ans[1:]
        needle = []
        for s in range(n0 - len(digits) + 1):
            if list(p["ids"][s:s + len(digits)]) == digits:
                needle += list(range(s - 1, s + len(digits)))  # the ' ' the first answer token copies, the digits
        needle = np.array(needle, dtype=int)
        # stored by TurboQuant for every answer query (sink 4, window 64 exact); --allq: every key (no side buffer)
        quantized = np.arange(Q_POS[-1] + 1) if a.allq else np.arange(4, Q_POS[0] - 63)
        is_n = np.isin(quantized, needle)
        hayset = quantized[~is_n]
        nvis = Q_POS[-1] + 1
        vis = np.arange(nvis)[None, :] <= Q_POS[:, None]
        window = np.arange(nvis)[None, :] > Q_POS[:, None] - 64
        rec = []
        logits = M.forward(ids, rec=rec, logits_at=Q_POS)
        lp = np.log(softmax(logits))
        p["exact_lp"] = lp[np.arange(len(targets)), targets]
        p["exact_hit"] = bool(np.all(logits.argmax(-1) == targets))
        for l in range(L):
            _, k, q, _ = rec[l]
            bits = a.kbits + 1 if (l < 2 or l >= L - 2) else a.kbits
            if pi == 0:  # the attention sink, position 0 (bare specs quantize it): its norms, mass, score error
                qs = q[64:n0:4]
                for kvh in range(NKV):
                    k0, mu = k[0, kvh], MU[l, kvh]
                    Qg = qs[:, kvh * G:(kvh + 1) * G]
                    w = softmax(np.where(np.arange(n0)[None, :] <= np.arange(64, n0, 4)[:, None],
                                         np.einsum("qgd,td->gqt", Qg, k[:n0, kvh]) * scale, -np.inf))
                    sd = []
                    for x in (k0, k0 - mu):
                        e = [np.einsum("qgd,d->qg", Qg, round_trip(quantizer(bits, 7919 * s + 1000 * l + kvh), x[None])[0] - x) * scale
                             for s in range(max(a.seeds, 16))]
                        sd.append(np.std(e, 0).mean())
                    SINK[l, kvh] = [np.linalg.norm(k0), np.linalg.norm(k0 - mu), np.median(np.linalg.norm(k[1:n0, kvh], axis=1)),
                                    w[..., 0].mean(), sd[0], sd[1]]
            for kvh in range(NKV):
                K = k[:nvis, kvh]
                mu = MU[l, kvh]
                nk, nkc = np.linalg.norm(K, axis=1), np.linalg.norm(K - mu, axis=1)
                if len(needle):
                    A_norm[pi, l, kvh] = [nk[needle].mean(), nkc[needle].mean(), np.median(nk[hayset]), np.median(nkc[hayset])]
                heads = [kvh * G + j for j in range(G)]
                for hh in heads:
                    A_qmu[pi, l, hh] = (q[4:n0, hh] @ mu).mean() * scale
                ex = {}
                for hh in heads:
                    Qh = q[Q_POS, hh]
                    s_ex = np.where(vis, Qh @ K.T * scale, -np.inf)
                    w = softmax(s_ex)
                    A_mass[pi, l, hh] = w[:, needle].sum(1).mean() if len(needle) else 0
                    A_info[pi, l, hh] = [s_ex[:, needle].max(1).mean() if len(needle) else np.nan, s_ex[:, hayset].mean(),
                                         (Qh @ mu * scale).mean(), s_ex[:, 0].mean(), w[:, :4].sum(1).mean(),
                                         (w * (window & vis)).sum(1).mean()]
                    ex[hh] = s_ex
                todo = [hh for hh in heads if A_mass[pi, l, hh] >= a.min_mass]
                if not todo:
                    continue
                for mname in modes:
                    acc = {hh: {k: [] for k in keys_c} for hh in todo}
                    for s in range(a.seeds):
                        Y, R = quant(mname, K[quantized], mu if mname.startswith("centre") else 0.0, bits, 7919 * s + 1000 * l + kvh)
                        for hh in todo:
                            Qh = q[Q_POS, hh]
                            e = (Qh @ (R - Y).T) * scale  # score error of the quantized keys, [nq][len(quantized)]
                            sq = ex[hh].copy()
                            sq[:, quantized] += e
                            w = softmax(sq)
                            x = (Qh @ Y.T) * scale  # the score of what is quantized (q.(k - mu) when centred)
                            A = acc[hh]
                            A["mass"].append(w[:, needle].sum(1).mean())
                            A["e_n"].append(e[:, is_n].mean() if is_n.any() else np.nan)
                            A["e_h"].append(e[:, ~is_n].mean())
                            A["sd_n"].append((e[:, is_n] - e[:, is_n].mean(1, keepdims=True)).std() if is_n.any() else np.nan)
                            A["sd_h"].append((e[:, ~is_n] - e[:, ~is_n].mean(1, keepdims=True)).std())
                            A["slope"].append(np.sum(e * x) / np.sum(x * x))  # e ~ slope * (score of what is quantized)
                    for hh in todo:
                        for kk in keys_c:
                            C[mname][kk][pi, l, hh] = np.mean(acc[hh][kk])
        print(f"prompt {p['i']} (depth {p['depth']}, key {p['key']}, {n0} tokens, needle at {needle.tolist()[:1]}): exact "
              f"hit {p['exact_hit']}, log p of digits {np.round(p['exact_lp'], 2).tolist()}  [{time.time() - t0:.0f} s]", flush=True)
        del rec
        if a.full:
            for var in a.variants.split(","):
                for s in range(a.full):
                    lpq, hit = full_forward(M, ids, Q_POS, targets, MU, MU_PLAIN, var, s, a.kbits)
                    full_rows.append((p["i"], var, s, lpq, hit))
                    print(f"  full {var:>16} seed {s}: hit {hit:d}, sum log p {lpq.sum():7.2f}  {np.round(lpq, 2).tolist()}", flush=True)

    # ---------------- report
    mass = A_mass.mean(0)  # [L][NH]
    print("\n## a) norms of the needle's digit keys and the haystack's median, mean over prompts, per layer (mean over KV heads)")
    print("| layers | needle |k| | hay |k| | needle |k-mu| | hay |k-mu| | needle |k-mu|/|k| | hay |k-mu|/|k| |")
    print("|---|---|---|---|---|---|---|")
    An = np.nanmean(A_norm, 0)
    for l0 in range(0, L, 5):
        r = An[l0:l0 + 5].mean((0, 1))
        print(f"| {l0}-{l0 + 4} | {r[0]:.2f} | {r[2]:.2f} | {r[1]:.2f} | {r[3]:.2f} | {r[1] / r[0]:.2f} | {r[3] / r[2]:.2f} |")
    print("\n## the sink (position 0) of the first prompt: norms, attention mass (queries from 64 on), score error sd "
          "if quantized raw / centred (bare specs; sink=N keeps it fp16), per layer band, mean over KV heads")
    print("| layers | |k0| | |k0-mu| | median |k| | sink mass | error sd raw | error sd centred |\n|---|---|---|---|---|---|---|")
    for l0 in range(0, L, 5):
        r = SINK[l0:l0 + 5].mean((0, 1))
        print(f"| {l0}-{l0 + 4} | {r[0]:.1f} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} |")
    qm = A_qmu.mean(0)
    print("\n## q.mu/sqrt(d) over every query of the prompts (the offset -D q.mu the centre adds to old keys against the "
          "exact sink/window, D ~ 0.03): per layer, mean over heads, most negative head, heads below -3")
    print("| layers | mean | min | heads < -3 |\n|---|---|---|---|")
    for l0 in range(0, L, 5):
        r = qm[l0:l0 + 5]
        print(f"| {l0}-{l0 + 4} | {r.mean():+.2f} | {r.min():+.2f} | {(r < -3).sum()} of {r.size} |")
    ret = np.argwhere(mass >= 0.3)
    print(f"\n## b) retrieval heads (exact needle mass >= 0.3, mean over prompts): {len(ret)}")
    print("| layer | head | kvh | mass | needle score | hay mean score | q.mu | sink score | sink mass | window mass | "
          "needle |k-mu|/|k| | hay |k-mu|/|k| |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for l, hh in sorted(ret.tolist(), key=lambda t: -mass[t[0], t[1]]):
        inf = np.nanmean(A_info[:, l, hh], 0)
        nr = An[l, hh // G]
        print(f"| {l} | {hh} | {hh // G} | {mass[l, hh]:.3f} | {inf[0]:.2f} | {inf[1]:.2f} | {inf[2]:.2f} | {inf[3]:.2f} | {inf[4]:.3f} | "
              f"{inf[5]:.3f} | {nr[1] / nr[0]:.2f} | {nr[3] / nr[2]:.2f} |")
    print("\n## c) the same heads, keys quantized (mean over prompts where the head retrieves and over seeds): needle mass, "
          "score error e = q.(k^ - k)/sqrt(d) mean on needle / haystack tokens, its sd around the query's mean, the shrink slope")
    print("| layer | head | exact | " + " | ".join(f"{m} mass" for m in modes) + " | " +
          " | ".join(f"{m} e_n / e_h" for m in modes) + " | " + " | ".join(f"{m} sd_n / sd_h" for m in modes) + " | " +
          " | ".join(f"{m} slope" for m in modes) + " |")
    print("|---" * (3 + 4 * len(modes)) + "|")
    for l, hh in sorted(ret.tolist(), key=lambda t: -mass[t[0], t[1]]):
        f = lambda m, k: np.nanmean(C[m][k][:, l, hh])  # noqa: E731
        print(f"| {l} | {hh} | {mass[l, hh]:.3f} | " + " | ".join(f"{f(m, 'mass'):.3f}" for m in modes) + " | " +
              " | ".join(f"{f(m, 'e_n'):+.2f} / {f(m, 'e_h'):+.2f}" for m in modes) + " | " +
              " | ".join(f"{f(m, 'sd_n'):.2f} / {f(m, 'sd_h'):.2f}" for m in modes) + " | " +
              " | ".join(f"{f(m, 'slope'):+.3f}" for m in modes) + " |")
    sel = A_mass >= a.min_mass
    print("\nover every (prompt, head) with exact needle mass >= min-mass "
          f"({int(sel.sum())}): mean log(mass / exact mass), mean e_n - e_h, mean sd_n, mean sd_h")
    for m in modes:
        lr = np.log(C[m]["mass"][sel] / A_mass[sel])
        print(f"  {m:>12}: log ratio {np.nanmean(lr):+.3f}  e_n - e_h {np.nanmean(C[m]['e_n'][sel] - C[m]['e_h'][sel]):+.3f}  "
              f"e_n {np.nanmean(C[m]['e_n'][sel]):+.3f}  sd_n {np.nanmean(C[m]['sd_n'][sel]):.3f}  sd_h {np.nanmean(C[m]['sd_h'][sel]):.3f}")
    if "raw" in C and "centre" in C:
        # TurboQuant's MSE decoding shrinks what it codes by ~(1 - D): a quantized key's score moves by -D (s - q.mu)
        # centred, -D s raw; the difference, -D q.mu against the exact sink/window keys, is the prediction
        d = (C["centre"]["e_n"] - C["raw"]["e_n"])[sel]
        x = A_info[..., 2][sel]
        ok = np.isfinite(d) & np.isfinite(x)
        print(f"  needle e (centre - raw) against q.mu over those heads: slope {np.sum(d[ok] * x[ok]) / np.sum(x[ok] ** 2):+.4f} "
              f"(prediction: +D, ~+0.03 at 3 bits), corr {np.corrcoef(d[ok], x[ok])[0, 1]:+.2f}, mean q.mu {x[ok].mean():+.2f}")
    np.savez("/tmp/needle_keys.npz", A_norm=A_norm, A_mass=A_mass, A_info=A_info,
             **{f"{m}_{k}": v for m in C for k, v in C[m].items()})
    if full_rows:
        print("\n## d) full forward, simulated cache: per variant, prompts x seeds with all 5 digits greedy-correct, "
              "mean sum of the digits' log p")
        print("| variant | hits | sum log p |\n|---|---|---|")
        print(f"| exact | {sum(p['exact_hit'] for p in prompts)}/{len(prompts)} | {np.mean([p['exact_lp'].sum() for p in prompts]):.3f} |")
        for var in dict.fromkeys(r[1] for r in full_rows):
            rows = [r for r in full_rows if r[1] == var]
            print(f"| {var} | {sum(r[4] for r in rows)}/{len(rows)} | {np.mean([r[3].sum() for r in rows]):.3f} |")


def full_forward(M, ids, Q_POS, targets, MU, MU_PLAIN, var, s, kbits):
    """The model with the default spec's cache simulated: keys kbits (kbits+1 on edge layers 0,1,L-2,L-1),
    values 2 (4 on edge layers), positions < 4 and the 64 up to each query exact (fp16 side buffer).
    var: a quant() mode (raw, centre, raw-unb, centre-nc, ...), plainmu (centre with the plain mean of
    the calibration keys after RoPE), perrow (1 bit per row: stores k or k - mu, whichever decodes
    closer); '+allq' quantizes the sink and window positions too."""
    L, NKV, NH, HD, G = M.L, M.nkv, M.nh, M.hd, M.g
    n = len(ids)
    pos = np.arange(n)
    causal = pos[None, :] <= pos[:, None]
    bare = var.endswith("+bare")  # bare k3v2: no side buffer, no edge layers
    allq = var.endswith("+allq") or bare
    var = var.replace("+allq", "").replace("+bare", "")
    exact_zone = np.zeros((n, n), bool) if allq else (pos[None, :] < 4) | (pos[None, :] > pos[:, None] - 64)

    def attn(l, q, k, v):
        edge = (l < 2 or l >= L - 2) and not bare
        kb, vb = (kbits + 1, 4) if edge else (kbits, 2)
        att = np.empty((n, NH, HD))
        for kvh in range(NKV):
            K, V = k[:, kvh], v[:, kvh]
            seed = 7919 * (100 + s) + 1000 * l + kvh
            if var.startswith("perrow"):  # perrow, perrow-unb, perrow-nc
                opt = var[len("perrow"):]
                X, Kq = quant("centre" + opt, K, MU[l, kvh], kb, seed)
                _, Kr = quant("raw" + opt, K, 0.0, kb, seed)
                use_raw = np.sum((Kr - K) ** 2, 1) < np.sum((Kq - X) ** 2, 1)
                Kq = np.where(use_raw[:, None], Kr - MU[l, kvh], Kq)
            elif var == "plainmu":
                X, Kq = quant("plainmu", K, MU_PLAIN[l, kvh], kb, seed)
            else:
                X, Kq = quant(var, K, MU[l, kvh] if var.startswith("centre") else 0.0, kb, seed)
            Vq = round_trip(quantizer(vb, seed + 500), V)
            for j in range(G):
                hh = kvh * G + j
                se = q[:, hh] @ X.T / np.sqrt(HD)
                sq = q[:, hh] @ Kq.T / np.sqrt(HD)
                w = softmax(np.where(causal, np.where(exact_zone, se, sq), -np.inf))
                wz = np.where(exact_zone, w, 0)  # values: exact where the keys are
                att[:, hh] = wz @ V + (w - wz) @ Vq
        return att

    logits = M.forward(ids, attn_fn=attn, logits_at=Q_POS)
    if targets is None:
        return logits
    lp = np.log(softmax(logits))
    return lp[np.arange(len(targets)), targets], bool(np.all(logits.argmax(-1) == targets))


if __name__ == "__main__":
    main()
