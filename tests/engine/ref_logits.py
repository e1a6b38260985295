#!/usr/bin/env python3
"""Test only: SmolLM2 (GGUF, arch llama) logits from an independent numpy forward pass, compared
with the engine's (tq run --logits, fp32 KV cache), twice: with --exact-products (fp32 products on
the dequantized weights) to a tight bound, and with the default 8-bit activations to a loose one.

Weights are dequantized by the `gguf` package (gguf.quants.dequantize), the forward is written
here from the architecture (RMSNorm, RoPE on adjacent pairs as llama.cpp runs GGUF llama, GQA,
SwiGLU) in float64. Tolerance: max |diff| <= 1e-4 * max |logit| (measured: 2.3e-5 of a max of ~29). Both sides use the same Q4_1
weights; the engine computes in float32 (sums of <= 1536 products, ~1e-5 relative each, over 30
layers), so its logits differ from float64 by about 1e-4 of their range; a wrong orientation, RoPE
pairing, head mapping or norm moves them by O(1).

The default path quantizes every product's activations to 8 bits (src/backend/cpu/qdot.cpp); that
is noise of its own, about 2.6% of the largest logit here (measured: quantizing numpy's activations
the same way, then again after a 1e-7 relative nudge of them, moves its logits by 0.75 of ~29, as
codes cross rounding boundaries). Bound: 10% of the largest logit and the same argmax.

Exit 77 (ctest: skipped) when the model or python packages are absent.
"""
import argparse
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    from gguf.quants import dequantize
except ImportError as e:  # scripts/setup.sh installs both into .venv, which CMake runs this with
    print(f"SKIPPED: python package missing ({e}) in {sys.executable}; bash scripts/setup.sh installs numpy and gguf "
          "into .venv (tests/engine/requirements.txt), then reconfigure", file=sys.stderr)
    sys.exit(77)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tq", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="The capital of France is Paris, and the capital of Italy is")
    a = ap.parse_args()
    if not os.path.exists(a.model):
        print(f"SKIPPED: {a.model} is absent: bash scripts/get_model.sh fetches it (scripts/test.sh does)", file=sys.stderr)
        sys.exit(77)
    def engine(*flags):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "logits.bin")
            subprocess.run([a.tq, "run", "-m", a.model, "-p", a.prompt, "-n", "0", "--kv", "fp32", "--ctx", "64",
                            "--device", "cpu", "--logits", out, *flags], check=True, stdout=subprocess.DEVNULL)
            raw = open(out, "rb").read()
        n = int(np.frombuffer(raw[:4], "<i4")[0])
        return n, np.frombuffer(raw[4:4 + 4 * n], "<i4"), np.frombuffer(raw[4 + 4 * n:], "<f4").astype(np.float64)
    n, ids, exact = engine("--exact-products")
    _, _, fast = engine()

    r = gguf.GGUFReader(a.model)
    f = {fl.name: fl for fl in r.fields.values()}
    def meta(key):
        fl = f[key]
        return fl.parts[fl.data[0]][0]
    L = int(meta("llama.block_count"))
    nh, nkv = int(meta("llama.attention.head_count")), int(meta("llama.attention.head_count_kv"))
    eps = float(meta("llama.attention.layer_norm_rms_epsilon"))
    theta = float(meta("llama.rope.freq_base")) if "llama.rope.freq_base" in f else 10000.0
    T = {t.name: t for t in r.tensors}
    def W(name):
        t = T[name]
        return dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1, int(t.shape[0]))  # [rows][cols]
    emb = W("token_embd.weight")
    dim = emb.shape[1]
    hd = dim // nh

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    pos = np.arange(n)
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = pos[:, None] * inv[None, :]  # [n][hd/2]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):  # x [n][heads][hd], pairs (2i, 2i+1)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        c, s = cos[:, None, :], sin[:, None, :]
        y = np.empty_like(x)
        y[..., 0::2] = x0 * c - x1 * s
        y[..., 1::2] = x0 * s + x1 * c
        return y

    x = emb[ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(L):
        p = f"blk.{l}."
        h = rms(x, W(p + "attn_norm.weight")[0])
        q = rope((h @ W(p + "attn_q.weight").T).reshape(n, nh, hd))
        k = rope((h @ W(p + "attn_k.weight").T).reshape(n, nkv, hd))
        v = (h @ W(p + "attn_v.weight").T).reshape(n, nkv, hd)
        g = nh // nkv
        att = np.empty((n, nh, hd))
        for hh in range(nh):
            s = q[:, hh] @ k[:, hh // g].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            att[:, hh] = s @ v[:, hh // g]
        x = x + att.reshape(n, -1) @ W(p + "attn_output.weight").T
        h = rms(x, W(p + "ffn_norm.weight")[0])
        gt, up = h @ W(p + "ffn_gate.weight").T, h @ W(p + "ffn_up.weight").T
        x = x + (gt / (1 + np.exp(-gt)) * up) @ W(p + "ffn_down.weight").T
    out_w = W("output.weight") if "output.weight" in T else emb
    ref = rms(x[-1], W("output_norm.weight")[0]) @ out_w.T
    ok = True
    for label, got, rel in (("exact products", exact, 1e-4), ("8-bit activations", fast, 0.1)):
        err = np.max(np.abs(ref - got))
        tol = rel * np.max(np.abs(ref))
        print(f"{label}: {n} tokens, vocab {ref.size}: max |engine - numpy| = {err:.3e}, tolerance {tol:.3e}, "
              f"argmax engine {int(np.argmax(got))} numpy {int(np.argmax(ref))}")
        ok = ok and err <= tol and np.argmax(got) == np.argmax(ref)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
