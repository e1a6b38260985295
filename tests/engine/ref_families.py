#!/usr/bin/env python3
"""Test only: the Gemma 3 and Qwen3 forward passes of the engine (tq run --logits, fp32 KV cache,
--exact-products) against an independent numpy forward written from the published architectures
(HF transformers' modeling_gemma3.py / modeling_qwen3.py; llama.cpp's src/models/gemma3.cpp and
qwen3.cpp for how a GGUF file stores them), on small synthetic GGUF files written here with the
`gguf` package (f32 weights, a byte-fallback SentencePiece vocabulary).

Gemma 3, as the numpy side computes it:
  x = embed[ids] * sqrt(dim)
  per layer: h = rms(x) * (1 + w_attn_norm); q, k, v = h Wq, h Wk, h Wv (per head)
             q = rms(q) * (1 + w_q_norm), k = rms(k) * (1 + w_k_norm)    (each head)
             RoPE (rotate-half); layer l is global when l % 6 == 5: base rope.freq_base, positions
             times 1 / rope.scaling.factor (linear); else local: base 10000, unscaled, and a query
             at p sees keys at t with p - t < sliding_window
             softmax(q k / sqrt(head_dim)) v Wo -> rms * (1 + w_post_attention_norm), added to x
             h = rms(x) * (1 + w_ffn_norm); (gelu_tanh(h Wg) * h Wu) Wd -> rms * (1 + w_post_ffw_norm), added
  logits = rms(x) * (1 + w_out_norm) @ embed^T
  The GGUF stores 1 + w for every norm (llama.cpp's converter folds the 1 in): the file written
  here holds 1 + w, the numpy side adds 1 to the w it drew.
Qwen3: Qwen2 (rotate-half RoPE, SiLU gated FFN, RMSNorm) without q/k/v biases, with a per-head
  RMSNorm of q and k before RoPE; untied output here.

Checks, for each family: max |engine - numpy| <= 1e-4 * max |logit| on the last token (float32
against float64 sums of <= 128 products through a handful of layers; measured ~1e-6), the same
argmax. For Gemma the prompt is longer than the sliding window, and the same numpy forward
without the window must differ from the engine by more than 100x that tolerance: a runner that
ignored the window would fail.

--model FILE: the same comparison on a real GGUF (gemma3, qwen3), its weights dequantized by
gguf.quants (loose: tolerance 1e-3 of the largest logit, the same argmax).

Exit 77 (ctest: skipped) when numpy or gguf are absent.
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
except ImportError as e:
    print(f"SKIPPED: python package missing ({e}) in {sys.executable}; bash scripts/setup.sh installs numpy and gguf "
          "into .venv (tests/engine/requirements.txt), then reconfigure", file=sys.stderr)
    sys.exit(77)

PROMPT = "The sliding window of a local layer covers only the last few tokens."


# ---------------------------------------------------------------- synthetic files
def write_vocab(w):
    # <pad> <eos> <bos> <unk>, the 256 byte tokens, Gemma's turn markers: every text encodes by byte fallback
    toks = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + ["<start_of_turn>", "<end_of_turn>"]
    types = [3, 3, 3, 2] + [6] * 256 + [3, 3]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * len(toks))
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    return len(toks)


def synthetic(path, arch, rng):
    """Writes a small `arch` GGUF; returns the hyper-parameters and the float64 weights (HF's
    convention for Gemma norms: w, used as 1 + w) the numpy forward uses."""
    hp = dict(arch=arch, layers=7 if arch == "gemma3" else 3, dim=64, hidden=96, heads=4, kv_heads=1 if arch == "gemma3" else 2,
              head_dim=32, eps=1e-6, theta=1e6 if arch == "gemma3" else 5e5, window=8 if arch == "gemma3" else 0,
              rope_factor=2.0 if arch == "gemma3" else 1.0)
    w = gguf.GGUFWriter(path, arch)
    V = write_vocab(w)
    hp["vocab"] = V
    D, F, H, KV, HD = hp["dim"], hp["hidden"], hp["heads"], hp["kv_heads"], hp["head_dim"]
    w.add_context_length(256)
    w.add_embedding_length(D)
    w.add_block_count(hp["layers"])
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_key_length(HD)
    w.add_value_length(HD)
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_rope_freq_base(hp["theta"])
    if arch == "gemma3":
        w.add_sliding_window(hp["window"])
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(hp["rope_factor"])
    W = {}

    def tensor(name, shape, scale, norm=False):
        a = rng.standard_normal(shape) * scale
        if norm and arch == "gemma3":
            W[name] = a  # HF's w; the file holds 1 + w
            w.add_tensor(name, (1.0 + a).astype(np.float32))
        else:
            a = 1.0 + a if norm else a
            W[name] = a
            w.add_tensor(name, a.astype(np.float32))

    tensor("token_embd.weight", (V, D), 0.5 if arch == "gemma3" else 1.0)
    for l in range(hp["layers"]):
        p = f"blk.{l}."
        tensor(p + "attn_norm.weight", (D,), 0.2, norm=True)
        tensor(p + "attn_q.weight", (H * HD, D), D ** -0.5)
        tensor(p + "attn_k.weight", (KV * HD, D), D ** -0.5)
        tensor(p + "attn_v.weight", (KV * HD, D), D ** -0.5)
        tensor(p + "attn_q_norm.weight", (HD,), 0.2, norm=True)
        tensor(p + "attn_k_norm.weight", (HD,), 0.2, norm=True)
        tensor(p + "attn_output.weight", (D, H * HD), (H * HD) ** -0.5)
        if arch == "gemma3":
            tensor(p + "post_attention_norm.weight", (D,), 0.2, norm=True)
            tensor(p + "post_ffw_norm.weight", (D,), 0.2, norm=True)
        tensor(p + "ffn_norm.weight", (D,), 0.2, norm=True)
        tensor(p + "ffn_gate.weight", (F, D), D ** -0.5)
        tensor(p + "ffn_up.weight", (F, D), D ** -0.5)
        tensor(p + "ffn_down.weight", (D, F), F ** -0.5)
    tensor("output_norm.weight", (D,), 0.2, norm=True)
    if arch == "qwen3":
        tensor("output.weight", (V, D), D ** -0.5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hp, W


# ---------------------------------------------------------------- a real file
def from_file(path):
    r = gguf.GGUFReader(path)
    f = {fl.name: fl for fl in r.fields.values()}

    def meta(key, default=None):
        if key not in f:
            return default
        fl = f[key]
        v = fl.parts[fl.data[0]]
        return bytes(v).decode() if fl.types[0] == gguf.GGUFValueType.STRING else v[0]
    arch = meta("general.architecture")
    T = {t.name: t for t in r.tensors}
    hp = dict(arch=arch, layers=int(meta(f"{arch}.block_count")), dim=int(meta(f"{arch}.embedding_length")),
              heads=int(meta(f"{arch}.attention.head_count")), kv_heads=int(meta(f"{arch}.attention.head_count_kv")),
              head_dim=int(meta(f"{arch}.attention.key_length")), eps=float(meta(f"{arch}.attention.layer_norm_rms_epsilon")),
              theta=float(meta(f"{arch}.rope.freq_base", 10000.0)), window=int(meta(f"{arch}.attention.sliding_window", 0)),
              rope_factor=float(meta(f"{arch}.rope.scaling.factor", 1.0)) if meta(f"{arch}.rope.scaling.type") == "linear" else 1.0)

    class Lazy(dict):
        def __missing__(self, name):
            t = T[name]
            # the embedding (262144 x 640 on Gemma-3-270M) stays float32: half the memory
            a = dequantize(t.data, t.tensor_type).astype(np.float32 if name == "token_embd.weight" else np.float64)
            a = a.reshape(-1, int(t.shape[0]))
            a = a[0] if a.shape[0] == 1 else a
            if arch == "gemma3" and name.endswith("norm.weight"):
                a = a - 1.0  # back to HF's w
            if name != "token_embd.weight":
                self[name] = a
            return a
    return hp, Lazy()


# ---------------------------------------------------------------- the numpy forward
def forward(hp, W, ids, use_window=True, keys=None, key_fn=None, all_logits=False):
    """Last-token logits ([n][vocab] with all_logits); keys (a dict): keys[l] = layer l's keys
    [n][kv_heads][head_dim] as the cache gets them; key_fn(l, k): what attention reads instead
    (experiments: a quantizer's round trip)."""
    arch, D, H, KV, HD, eps = hp["arch"], hp["dim"], hp["heads"], hp["kv_heads"], hp["head_dim"], hp["eps"]
    gemma = arch == "gemma3"
    n = len(ids)

    def rms(x, name):
        w = W[name]
        w = 1.0 + w if gemma else w
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def rope(x, theta, pos_scale):  # x [n][heads][HD]; HF rotate_half: pairs (i, i + HD/2)
        inv = theta ** (-np.arange(0, HD, 2) / HD)
        ang = (np.arange(n) * pos_scale)[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., :HD // 2], x[..., HD // 2:]
        return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)

    emb = W["token_embd.weight"]
    x = emb[ids] * (np.sqrt(D) if gemma else 1.0)
    pos = np.arange(n)
    for l in range(hp["layers"]):
        p = f"blk.{l}."
        local = gemma and hp["window"] > 0 and l % 6 != 5
        h = rms(x, p + "attn_norm.weight")
        q = (h @ W[p + "attn_q.weight"].T).reshape(n, H, HD)
        k = (h @ W[p + "attn_k.weight"].T).reshape(n, KV, HD)
        v = (h @ W[p + "attn_v.weight"].T).reshape(n, KV, HD)
        q, k = rms(q, p + "attn_q_norm.weight"), rms(k, p + "attn_k_norm.weight")
        theta, ps = (10000.0, 1.0) if local else (hp["theta"], 1.0 / hp["rope_factor"])
        q, k = rope(q, theta, ps), rope(k, theta, ps)
        if keys is not None:
            keys[l] = k
        if key_fn is not None:
            k = key_fn(l, k)
        visible = pos[None, :] <= pos[:, None]
        if local and use_window:
            visible &= pos[:, None] - pos[None, :] < hp["window"]
        mask = np.where(visible, 0.0, -np.inf)
        g = H // KV
        att = np.empty((n, H, HD))
        for hh in range(H):
            s = q[:, hh] @ k[:, hh // g].T / np.sqrt(HD) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            att[:, hh] = (s / s.sum(axis=1, keepdims=True)) @ v[:, hh // g]
        o = att.reshape(n, -1) @ W[p + "attn_output.weight"].T
        x = x + (rms(o, p + "post_attention_norm.weight") if gemma else o)
        h = rms(x, p + "ffn_norm.weight")
        gt, up = h @ W[p + "ffn_gate.weight"].T, h @ W[p + "ffn_up.weight"].T
        act = 0.5 * gt * (1 + np.tanh(np.sqrt(2 / np.pi) * (gt + 0.044715 * gt ** 3))) if gemma else gt / (1 + np.exp(-gt))
        f = (act * up) @ W[p + "ffn_down.weight"].T
        x = x + (rms(f, p + "post_ffw_norm.weight") if gemma else f)
    try:
        out = W["output.weight"]
    except KeyError:  # tied: the embedding (unscaled) is the classifier
        out = emb
    if all_logits:
        return rms(x, "output_norm.weight") @ out.T
    return rms(x[-1:], "output_norm.weight")[0] @ out.T


# ---------------------------------------------------------------- the engine
def engine(tq, model, prompt, ctx):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.bin")
        subprocess.run([tq, "run", "-m", model, "-p", prompt, "-n", "0", "--kv", "fp32", "--ctx", str(ctx), "--device", "cpu",
                        "--exact-products", "--logits", out], check=True, stdout=subprocess.DEVNULL)
        raw = open(out, "rb").read()
    n = int(np.frombuffer(raw[:4], "<i4")[0])
    return np.frombuffer(raw[4:4 + 4 * n], "<i4").astype(np.int64), np.frombuffer(raw[4 + 4 * n:], "<f4").astype(np.float64)


def check(label, hp, W, ids, got, rel):
    ref = forward(hp, W, ids)
    err, tol = np.max(np.abs(ref - got)), rel * np.max(np.abs(ref))
    ok = err <= tol and np.argmax(got) == np.argmax(ref)
    print(f"{label}: {len(ids)} tokens, vocab {ref.size}: max |engine - numpy| = {err:.3e}, tolerance {tol:.3e}, "
          f"argmax engine {int(np.argmax(got))} numpy {int(np.argmax(ref))}")
    if hp["arch"] == "gemma3" and hp["window"] and len(ids) > hp["window"]:
        blind = np.max(np.abs(forward(hp, W, ids, use_window=False) - got))
        print(f"{label}: without the sliding window numpy differs from the engine by {blind:.3e} (must exceed {100 * tol:.3e})")
        ok = ok and blind > 100 * tol
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tq", required=True)
    ap.add_argument("--model", help="a real gemma3 / qwen3 GGUF instead of the synthetic ones")
    ap.add_argument("--prompt", default=PROMPT)
    a = ap.parse_args()
    ok = True
    if a.model:
        if not os.path.exists(a.model):
            print(f"SKIPPED: {a.model} is absent (scripts/get_gemma3.sh fetches Gemma-3-270M)", file=sys.stderr)
            sys.exit(77)
        ids, got = engine(a.tq, a.model, a.prompt, 128)
        hp, W = from_file(a.model)
        ok = check(f"{hp['arch']} {os.path.basename(a.model)}", hp, W, ids, got, 1e-3)
    else:
        rng = np.random.default_rng(17)
        with tempfile.TemporaryDirectory() as d:
            for arch in ("gemma3", "qwen3"):
                path = os.path.join(d, f"tiny-{arch}.gguf")
                hp, W = synthetic(path, arch, rng)
                ids, got = engine(a.tq, path, a.prompt, 128)
                ok = check(f"synthetic {arch}", hp, W, ids, got, 1e-4) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
