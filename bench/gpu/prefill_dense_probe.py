#!/usr/bin/env python3
"""What a prefill that attends over dense bf16 K/V would cost, as the engine chunks a whole prompt.

Issue 15's whole-prompt target (k3v2 prefill >= 0.9x torch's causal SDPA on 4K-32K prompts) is
furthest from met (0.47-0.64x on the H200, bench/results/2026-12-05-h200-main.md), and our own bf16
prefill is 0.42x torch there: the gap is the kernel's, not the packed format's. One way around it is
to decode each chunk's prefix from the packed cache into a bf16 scratch and run a dense attention
kernel (cuDNN's, torch's own choice) over it. Before building that, this measures its ceiling with
torch alone, on the shapes of bench_decode.py's whole-prompt rows (batch 1, 32 query / 8 KV heads):

  whole         torch SDPA, is_causal, over the whole prompt in one call (bench_decode.py's baseline)
  chunked       the same attention in the engine's chunks (2048 new tokens), each chunk against its
                prefix and itself with a lower-right causal mask: dense attention as the engine
                would call it (torch runs such a bias on its flash backend, not on cuDNN)
  + scratch     chunked, plus each chunk's K/V prefix copied into a scratch buffer first: the bf16
                writes of a decode into a scratch (its packed reads are 5x fewer bytes; not counted)
  whole, cuDNN / whole, flash
                the whole prompt with torch's backend forced: cuDNN's attention, or the flash
                backend (FlashAttention-2's kernels), which a lower-right causal bias dispatches to;
                so that "chunked" is read as the backend it ran on, not as the chunking's cost
  chunked, cuDNN
                the chunks on cuDNN: each chunk's rows against its prefix (no mask) and against
                itself (causal), the two merged by their log-sum-exp, K/V expanded to the query
                heads beforehand (untimed): what chunking costs the fastest kernel torch has

All in CUDA graphs (bench_decode.timed_graph), medians; the ratios are whole / row (>= 0.9 is the
target's bar).

  python3 bench/gpu/prefill_dense_probe.py [--lengths 4096,8192,32768] [--head-dim 128] [--json out.json]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_decode import timed_graph  # noqa: E402  (the same timing as the other tables)

QH, KVH = 32, 8


def cudnn_lse_attention(q, k, v, causal):
    """cuDNN's attention (torch's own op; equal query and KV heads) with its log-sum-exp:
    (out [1, H, n, D], natural log-sum-exp [1, H, n] in fp32)."""
    r = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False)
    return r[0], r[1].reshape(r[0].shape[:3]).float()


def whole_and_chunked(L, D, chunk, device="cuda", timer=timed_graph, lse_attention=None):
    """One row of the table: the timings (timer(fn, reps, iters), ms) and how far the chunked
    attention is from the whole one (relative L2; 0 up to the kernels' own summation order).
    lse_attention(q, k, v, causal) -> (out, log-sum-exp) stands in for cuDNN's (the CPU test's)."""
    from torch.nn.attention.bias import causal_lower_right
    k = torch.randn(1, KVH, L, D, dtype=torch.bfloat16, device=device)
    v = torch.randn(1, KVH, L, D, dtype=torch.bfloat16, device=device)
    q = torch.randn(1, QH, L, D, dtype=torch.bfloat16, device=device) * 0.3
    ks, vs = torch.empty_like(k), torch.empty_like(v)  # the scratch a decode would write
    ends = [min(L, e) for e in range(chunk, L + chunk, chunk)]
    masks = [causal_lower_right(e - (e - 1) // chunk * chunk, e) for e in ends]

    def whole(st=None):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def chunked(st=None, scratch=False):
        outs = []
        for e, m in zip(ends, masks):
            b = (e - 1) // chunk * chunk
            kk, vv = k[:, :, :e], v[:, :, :e]
            if scratch:
                ks[:, :, :e].copy_(kk)
                vs[:, :, :e].copy_(vv)
                kk, vv = ks[:, :, :e], vs[:, :, :e]
            outs.append(attend(q[:, :, b:e], kk, vv, m))
        return outs

    def attend(qc, kk, vv, m):
        if gqa:
            return F.scaled_dot_product_attention(qc, kk, vv, attn_mask=m, enable_gqa=True)
        return F.scaled_dot_product_attention(qc, kk.repeat_interleave(QH // KVH, dim=1), vv.repeat_interleave(QH // KVH, dim=1), attn_mask=m)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    def whole_on(backend):
        def run(st=None):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return run

    ke, ve = k.repeat_interleave(QH // KVH, dim=1), v.repeat_interleave(QH // KVH, dim=1)  # cuDNN's own op takes equal heads

    cudnn = lse_attention or cudnn_lse_attention

    def chunked_cudnn(st=None):
        outs = []
        for e in ends:
            b = (e - 1) // chunk * chunk
            qc = q[:, :, b:e]
            o, l = cudnn(qc, ke[:, :, b:e], ve[:, :, b:e], True)
            if b:
                o0, l0 = cudnn(qc, ke[:, :, :b], ve[:, :, :b], False)
                lm = torch.logaddexp(l0, l)
                o = (o0.float() * torch.exp(l0 - lm)[..., None] + o.float() * torch.exp(l - lm)[..., None]).to(q.dtype)
            outs.append(o)
        return outs

    gqa = True
    try:  # as bench_decode.prefill_rows: a torch build without GQA under a causal bias expands K/V
        attend(q[:, :, :1], k[:, :, :1], v[:, :, :1], causal_lower_right(1, 1))
    except Exception:
        gqa = False

    ref = whole()
    got = torch.cat(chunked(), dim=2)
    rel = ((got.float() - ref.float()).norm() / ref.float().norm()).item()  # the two orders of the same sums
    row = dict(whole_prompt=L, head_dim=D, chunk=chunk, rel_diff=rel, gqa=gqa,
               whole_ms=timer(whole, reps=2, iters=10),
               chunked_ms=timer(chunked, reps=2, iters=10),
               scratch_ms=timer(lambda st=None: chunked(st, scratch=True), reps=2, iters=10))
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            row[f"whole_{name}_ms"] = timer(whole_on(backend), reps=2, iters=10)
        except RuntimeError as e:  # the backend refuses the shape on this GPU or build
            row[f"whole_{name}_ms"], row[f"whole_{name}_error"] = None, str(e).split("\n")[0]
    try:
        got = torch.cat(chunked_cudnn(), dim=2)
        row["chunked_cudnn_rel_diff"] = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
        row["chunked_cudnn_ms"] = timer(chunked_cudnn, reps=2, iters=10)
    except (RuntimeError, AttributeError) as e:
        row["chunked_cudnn_ms"], row["chunked_cudnn_error"] = None, str(e).split("\n")[0]
    del k, v, q, ks, vs, ke, ve
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="4096,8192,32768", help="prompt lengths, comma-separated (default 4096,8192,32768)")
    ap.add_argument("--head-dim", type=int, default=128, choices=(64, 128, 256))
    ap.add_argument("--chunk", type=int, default=2048, help="new tokens a chunk, as the engine's token budget (default 2048)")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    a = ap.parse_args()
    try:
        lengths = [int(x) for x in a.lengths.split(",")]
    except ValueError:
        ap.error(f"--lengths must be whole numbers separated by commas, got {a.lengths!r}")
    if any(n <= 0 for n in lengths) or a.chunk <= 0:
        ap.error(f"lengths and --chunk must be positive, got {a.lengths!r} and {a.chunk}")
    if not torch.cuda.is_available():
        sys.exit("prefill_dense_probe.py: no CUDA device (this measures GPU kernels)")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    rows = [whole_and_chunked(L, a.head_dim, a.chunk) for L in lengths]
    print(f"\n| prompt | head dim | whole ms | chunked ms | whole / chunked | + scratch ms | whole / (+ scratch) | chunked vs whole, rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['whole_prompt']} | {r['head_dim']} | {r['whole_ms']:.3f} | {r['chunked_ms']:.3f} | {r['whole_ms'] / r['chunked_ms']:.2f}x | "
              f"{r['scratch_ms']:.3f} | {r['whole_ms'] / r['scratch_ms']:.2f}x | {r['rel_diff']:.1e} |")
    ms = lambda r, key: "-" if r.get(key) is None else f"{r[key]:.3f}"
    print(f"\n| prompt | whole ms (torch's choice) | whole, cuDNN forced | whole, flash forced | chunked, cuDNN (merged) | whole / chunked cuDNN | its rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        c = r.get("chunked_cudnn_ms")
        ratio = "-" if c is None else f"{r['whole_ms'] / c:.2f}x"
        print(f"| {r['whole_prompt']} | {r['whole_ms']:.3f} | {ms(r, 'whole_cudnn_ms')} | {ms(r, 'whole_flash_ms')} | {ms(r, 'chunked_cudnn_ms')} | "
              f"{ratio} | {r.get('chunked_cudnn_rel_diff', r.get('chunked_cudnn_error', '-'))} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
