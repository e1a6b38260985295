#!/usr/bin/env python3
"""TurboQuantCache against DynamicCache (sdpa) in Hugging Face transformers, on one GPU.

For a Llama-3.1-8B-shaped model built from its config with random weights (bf16; --layers to
take fewer than its 32 layers), and for SmolLM2-135M read from a GGUF file (--gguf, needs the
`gguf` package; real weights, real text), at each context length: a prefill of that many tokens,
then --steps decode steps of one token, timed (CUDA-synchronized wall clock of the steps, after two
warm-up steps). DynamicCache runs first and its greedy tokens are fed to every other cache
(teacher forcing), so each cache decodes the same tokens, and each step's logits are compared
with DynamicCache's: KL(DynamicCache || cache), mean and max over the steps, and how often the
top token agrees. Cache memory: DynamicCache's K/V tensors; TurboQuantCache's pages and side
buffer (allocated once, max_cache_len). The last thing printed is one markdown table.

  python3 bench/python/transformers_cache.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf --out bench/results/x.md
  python3 bench/python/transformers_cache.py --smoke          # a tiny model on the CPU: checks the script itself
"""

import argparse
import gc
import math
import sys
import time
from pathlib import Path

import torch
import transformers

import turboquant as tq
from turboquant.transformers import TurboQuantCache

LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192},
                   bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False)
SMOKE = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             head_dim=64, max_position_embeddings=4096, initializer_range=0.05)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dynamic_bytes(cache):
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    if not total and hasattr(cache, "key_cache"):  # older layouts
        total = sum(t.numel() * t.element_size() for t in cache.key_cache + cache.value_cache)
    return total


def run(model, attn, cache, ids, steps, feed=None):
    """Prefill ids, then `steps` one-token steps (feeding `feed`'s tokens, else greedy ones). Returns
    (tokens fed [steps], logits [steps, vocab] float32 on the CPU, decode seconds, prefill seconds)."""
    model.config._attn_implementation = attn
    device = ids.device
    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        sync(device)
        prefill_s = time.perf_counter() - t0
        logits = [out.logits[0, -1].float()]
        toks = []
        tok = out.logits[:, -1:].argmax(-1) if feed is None else feed[0].view(1, 1)
        warm = 2
        t0 = None
        for i in range(steps + warm):
            if i == warm:
                sync(device)
                t0 = time.perf_counter()
            toks.append(tok)
            out = model(tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits.append(out.logits[0, -1].float())
            if i + 1 < steps + warm:
                tok = out.logits[:, -1:].argmax(-1) if feed is None else feed[i + 1].view(1, 1)
        sync(device)
        decode_s = time.perf_counter() - t0
    return torch.cat(toks).view(-1), torch.stack(logits[:-1]).cpu(), decode_s, prefill_s


def compare(ref, other):
    p, q = ref.log_softmax(-1), other.log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1)
    agree = (ref.argmax(-1) == other.argmax(-1)).float().mean().item()
    return kl.mean().item(), kl.max().item(), agree


def bench_model(name, model, contexts, specs, steps, make_ids, rows, device):
    cfg = model.config
    for n in contexts:
        ids = make_ids(n).to(device)
        total = n + steps + 2
        cache = transformers.DynamicCache()
        toks, ref, dec, pre = run(model, "sdpa", cache, ids, steps)
        mib = dynamic_bytes(cache) / 2**20
        rows.append((name, n, "DynamicCache (sdpa)", mib, steps / dec, pre, None))
        print(f"{name} {n:>6} DynamicCache      {mib:9.1f} MiB  {steps / dec:7.1f} tok/s  prefill {pre:6.2f} s", flush=True)
        del cache
        gc.collect()
        for spec in specs:
            cache = TurboQuantCache(spec, max_cache_len=total)
            _, logits, dec, pre = run(model, "turboquant", cache, ids, steps, feed=toks)
            m = cache.memory()
            mib = (m["pages"] + m["side"]) / 2**20
            kl = compare(ref, logits)
            rows.append((name, n, f"TurboQuantCache {spec}", mib, steps / dec, pre, kl))
            head_dim = model.model.layers[0].self_attn.head_dim
            want = tq.kv_size(spec, cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, [total])[0][f"mib_at_{total}"]
            print(f"{name} {n:>6} {spec:17} {mib:9.1f} MiB  {steps / dec:7.1f} tok/s  prefill {pre:6.2f} s  KL mean {kl[0]:.2e} "
                  f"max {kl[1]:.2e}  top-1 {kl[2]:.3f}  (kv_size: {want:.1f} MiB)", flush=True)
            del cache
            gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def load_gguf(path, dtype, device):
    """transformers' GGUF reader without its from_pretrained, which wants accelerate for a GGUF file:
    the config from the file's metadata, the tensors dequantized and named for the model."""
    try:
        import accelerate  # noqa: F401

        return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).to(device).eval()
    except ImportError:
        pass
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if "rotary" not in m and not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"{path.name}: tensors missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(device=device, dtype=dtype).eval()


def text_ids(tokenizer, n):
    """n tokens of real text (this repository's docs, repeated as needed)."""
    root = Path(__file__).resolve().parents[2]
    text = "\n\n".join(p.read_text() for p in sorted((root / "docs").glob("*.md")))
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    reps = math.ceil(n / len(ids))
    return ids.repeat(reps)[:n][None]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="4096,8192,16384,32768")
    ap.add_argument("--specs", default="k4v4,k3v2,default")
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed per run")
    ap.add_argument("--layers", type=int, default=32, help="layers of the Llama-3.1-8B-shaped model (32: all)")
    ap.add_argument("--gguf", help="SmolLM2-135M GGUF file (transformers reads it with the gguf package)")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="a tiny model, short contexts, on the CPU unless a GPU is there")
    ap.add_argument("--out", help="also write the table (markdown) here")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    contexts = [int(c) for c in a.contexts.split(",")]
    specs = [s for s in a.specs.split(",") if s]
    rows = []
    t_start = time.perf_counter()
    env = (f"torch {torch.__version__}, transformers {transformers.__version__}, turboquant {tq.__version__} "
           f"(HAVE_CUDA {tq.HAVE_CUDA}), {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}")
    print(env, flush=True)

    if not a.skip_llama:
        shape = dict(SMOKE if a.smoke else LLAMA_31_8B)
        if a.smoke:
            contexts = [c for c in contexts if c <= 1024] or [256, 512]
        else:
            shape["num_hidden_layers"] = a.layers
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        torch.manual_seed(0)
        t0 = time.perf_counter()
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # built and initialized in bf16 on the GPU: no fp32 copy of 8B parameters
        try:
            with torch.device(device):
                model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).eval()
        finally:
            torch.set_default_dtype(default_dtype)
        name = "Llama-3.1-8B shape" + (" (smoke)" if a.smoke else f", {a.layers} of 32 layers" if a.layers != 32 else "")
        print(f"{name}: random weights, {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, {dtype}, "
              f"built in {time.perf_counter() - t0:.1f} s", flush=True)
        g = torch.Generator().manual_seed(1)
        bench_model(name, model, contexts, specs, a.steps, lambda n: torch.randint(0, shape["vocab_size"], (1, n), generator=g), rows,
                    device)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if a.gguf:
        try:
            import gguf  # noqa: F401
        except ImportError:
            print(f"SmolLM2: skipped, the gguf package is not importable here (transformers needs it to read {a.gguf})", flush=True)
        else:
            path = Path(a.gguf)
            tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            model = load_gguf(path, dtype, device)
            limit = model.config.max_position_embeddings
            ctx = [c for c in contexts if c + a.steps + 2 <= limit]
            print(f"SmolLM2-135M from {path.name}: {dtype}, contexts {ctx} (its limit {limit})", flush=True)
            bench_model("SmolLM2-135M", model, ctx, specs, a.steps, lambda n: text_ids(tok, n), rows, device)

    lines = [f"{env}; {a.steps} decode steps a run, batch 1; total {time.perf_counter() - t_start:.0f} s", "",
             "| model | context | cache | cache MiB | decode tok/s | prefill s | KL mean | KL max | top-1 agree |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, n, cache, mib, tps, pre, kl in rows:
        k = f"{kl[0]:.2e} | {kl[1]:.2e} | {kl[2]:.3f}" if kl else "- | - | -"
        lines.append(f"| {name} | {n} | {cache} | {mib:.1f} | {tps:.1f} | {pre:.2f} | {k} |")
    table = "\n".join(lines)
    if a.out:
        Path(a.out).write_text(table + "\n")
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
