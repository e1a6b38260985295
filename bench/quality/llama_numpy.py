"""A llama-family GGUF model (SmolLM2) in numpy fp64, for the quality experiments of bench/quality/
(key_transforms.py, codebook_fit.py, needle_keys.py): weights dequantized on first use (by
tests/engine/ref_logits.py's dequantizer), RoPE on adjacent pairs (2i, 2i+1) as the engine runs
llama GGUFs, exact causal attention unless an experiment replaces it (`attn_fn`). Also the token
ids of a text as `tq run` makes them (any model family)."""
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "engine"))
import gguf  # noqa: E402
from ref_logits import dequantize  # noqa: E402


ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def add_model_args(ap, calib_help, calib_tokens, tokens=1024):
    """The options of an experiment that runs the model over a text: the tq binary (its
    tokenizer), the GGUF, the text scored (its first --tokens tokens), and a calibration text (its
    first --calib-tokens tokens; calib_help says what it fixes)."""
    ap.add_argument("--tq", default=os.path.join(ROOT, "build", "release", "apps", "cli", "tq"), help="the tq binary (tokenizer)")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--text", default=os.path.join(ROOT, "..", "shared", "data", "text", "northanger_abbey.txt"))
    ap.add_argument("--calib", default=os.path.join(ROOT, "..", "shared", "data", "text", "emma.txt"),
                    help=f"calibration text: {calib_help} (its first --calib-tokens tokens)")
    ap.add_argument("--calib-tokens", type=int, default=calib_tokens)
    ap.add_argument("--tokens", type=int, default=tokens)


def token_ids(tq, model, path, n):
    """The first n token ids of a text file as `tq run` (the binary at tq) tokenizes it for model:
    its --logits file starts with them."""
    text = open(path, encoding="utf-8").read()[: n * 8]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "l.bin")
        subprocess.run([tq, "run", "-m", model, "-p", text, "-n", "0", "--kv", "fp16", "--ctx", str(4 * n + 16), "--device", "cpu",
                        "--allow-long-context", "--logits", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        raw = open(out, "rb").read()
    count = int(np.frombuffer(raw[:4], "<i4")[0])
    return np.frombuffer(raw[4:4 + 4 * count], "<i4").astype(np.int64)[:n]


class Model:
    def __init__(self, path):
        r = gguf.GGUFReader(path)
        fields = {f.name: f for f in r.fields.values()}
        meta = lambda k: fields[k].parts[fields[k].data[0]][0]  # noqa: E731
        self.L = int(meta("llama.block_count"))
        self.nh, self.nkv = int(meta("llama.attention.head_count")), int(meta("llama.attention.head_count_kv"))
        self.eps, theta = float(meta("llama.attention.layer_norm_rms_epsilon")), float(meta("llama.rope.freq_base"))
        self.T = {t.name: t for t in r.tensors}
        self.cache = {}
        self.emb = self.W("token_embd.weight")
        self.hd = self.emb.shape[1] // self.nh
        self.g = self.nh // self.nkv
        self.inv = theta ** (-np.arange(0, self.hd, 2) / self.hd)

    def W(self, name):
        if name not in self.cache:
            t = self.T[name]
            self.cache[name] = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1, int(t.shape[0]))
        return self.cache[name]

    def rms(self, x, name):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * self.W(name)[0]

    def rope(self, x, pos):  # [n][heads][hd], adjacent pairs (2i, 2i+1), as the engine for llama GGUFs
        ang = pos[:, None] * self.inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        y = np.empty_like(x)
        y[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
        y[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
        return y

    def rope_centre(self, m, context):
        """model::rope_centre: per pair [[a, -b], [b, a]] m, (a, b) the mean (cos, sin) over 0..context-1."""
        ang = np.arange(context)[:, None] * self.inv[None, :]
        a, b = np.cos(ang).mean(0), np.sin(ang).mean(0)
        mu = np.empty_like(m)
        mu[..., 0::2] = a * m[..., 0::2] - b * m[..., 1::2]
        mu[..., 1::2] = b * m[..., 0::2] + a * m[..., 1::2]
        return mu

    def forward(self, ids, rec=None, attn_fn=None, logits_at=None):
        """rec: per layer (k_pre [n][kv][hd], k [n][kv][hd] post-RoPE, q [n][heads][hd] post-RoPE, v).
        attn_fn(l, q, k, v) -> att [n][heads][hd] replaces exact causal attention."""
        n = len(ids)
        x = self.emb[ids]
        pos = np.arange(n, dtype=np.float64)
        attn_fn = attn_fn or per_head(None, self.g)
        for l in range(self.L):
            p = f"blk.{l}."
            h = self.rms(x, p + "attn_norm.weight")
            q = self.rope((h @ self.W(p + "attn_q.weight").T).reshape(n, self.nh, self.hd), pos)
            kpre = (h @ self.W(p + "attn_k.weight").T).reshape(n, self.nkv, self.hd)
            k = self.rope(kpre, pos)
            v = (h @ self.W(p + "attn_v.weight").T).reshape(n, self.nkv, self.hd)
            if rec is not None:
                rec.append((kpre, k, q, v))
            att = attn_fn(l, q, k, v)
            x = x + att.reshape(n, -1) @ self.W(p + "attn_output.weight").T
            f = self.rms(x, p + "ffn_norm.weight")
            gate, up = f @ self.W(p + "ffn_gate.weight").T, f @ self.W(p + "ffn_up.weight").T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ self.W(p + "ffn_down.weight").T
        out = self.W("output.weight") if "output.weight" in self.T else self.emb
        xs = x if logits_at is None else x[logits_at]
        return self.rms(xs, "output_norm.weight") @ out.T


def softmax(s):
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return s / s.sum(axis=-1, keepdims=True)


def per_head(kv_fn, g):
    """An attn_fn for Model.forward: exact causal attention of each KV head's (Q, K, V), after
    kv_fn(l, kvh, Q [n][g][hd], K [n][hd], V [n][hd]) -> (Q, K, V) where given (a transform, a
    quantizer's round trip); without one, the model's own attention."""
    def attn_fn(l, q, k, v):
        n, nh, hd = q.shape
        mask = np.triu(np.full((n, n), -np.inf), 1)
        att = np.empty((n, nh, hd))
        for kvh in range(k.shape[1]):
            Q, K, V = q[:, kvh * g:kvh * g + g], k[:, kvh], v[:, kvh]
            if kv_fn is not None:
                Q, K, V = kv_fn(l, kvh, Q, K, V)
            for j in range(g):
                att[:, kvh * g + j] = softmax(Q[:, j] @ K.T / np.sqrt(hd) + mask) @ V
        return att
    return attn_fn


def scores(ref, lo, ids):
    """(ppl, ppl ratio - 1 in %, KL in nats, top-1 agreement, reference ppl) of logits lo against ref,
    next-token targets ids[1:]."""
    lp_ref, lp = np.log(softmax(ref)), np.log(softmax(lo))
    tgt = np.array(ids[1:])
    nll_ref = -lp_ref[np.arange(len(tgt)), tgt].mean()
    nll = -lp[np.arange(len(tgt)), tgt].mean()
    kl = (np.exp(lp_ref) * (lp_ref - lp)).sum(-1).mean()
    return np.exp(nll), (np.exp(nll - nll_ref) - 1) * 100, kl, (lo.argmax(-1) == ref.argmax(-1)).mean(), np.exp(nll_ref)
