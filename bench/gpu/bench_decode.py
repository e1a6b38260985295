#!/usr/bin/env python3
"""Decode-attention benchmark on one GPU, everything in one process.

Our kernels (through the C API in libtq_capi.so, loaded with ctypes) for k3v2, k4v4, fp8 and bf16
paged caches, next to torch.nn.functional.scaled_dot_product_attention on contiguous bf16 K/V, for
32 query heads, 8 KV heads (--heads), head dim 128 (--head-dim) at the (batch, context) shapes of issue 4. Each call is
timed two ways: one call between two CUDA events (includes the Python call and launch overhead,
~20 us) and inside a CUDA graph of 20 calls (the GPU time a captured decode step pays: the figure
to quote); medians after warm-up. Bandwidth counts the cache bytes each call must read (K and V of
every token once, norms included), over the one-call time. Also: quantize_store throughput and its cost
next to one decode step (alone in a graph, and what it adds to a captured quantize_store + decode
step), chunked prefill (512 new tokens on an 8K prefix) where it stands, and a check that our bf16
path agrees with torch.

  python3 bench/gpu/bench_decode.py --lib build/h200/bindings/c/libtq_capi.so --json out.json
"""
import argparse
import contextlib
import ctypes
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

QH, KVH, D, PAGE = 32, 8, 128, 16
# issue 4's shapes, and batch 1 from 1K to 128K (issue 15: never slower than torch there)
SHAPES = [(1, 32768), (8, 32768), (16, 32768), (32, 8192), (4, 131072), (64, 4096), (1, 1024), (1, 4096), (1, 65536), (1, 131072)]
SPECS = ["k3v2", "k4v4", "fp8", "bf16"]
DT = {"f32": 0, "f16": 1, "bf16": 2}


def pages_for(tokens):
    """Pages of PAGE tokens that hold `tokens` tokens: the last one partly filled when `tokens` is not
    a multiple of PAGE (a block table's width, the max_pages of every call)."""
    return -(-tokens // PAGE)


def load(path):
    lib = ctypes.CDLL(path)
    c = ctypes
    lib.tq_cache_create.restype = c.c_void_p
    lib.tq_cache_create.argtypes = [c.c_uint32, c.c_uint32, c.c_uint32, c.c_char_p, c.c_char_p, c.c_int]
    lib.tq_cache_destroy.argtypes = [c.c_void_p]
    lib.tq_cache_bytes.restype = c.c_uint64
    lib.tq_cache_bytes.argtypes = [c.c_void_p]
    lib.tq_cache_block_bytes.restype = c.c_uint32
    lib.tq_cache_block_bytes.argtypes = [c.c_void_p]
    lib.tq_quantize_store.argtypes = [c.c_void_p, c.c_void_p, c.c_void_p, c.c_int, c.c_void_p, c.c_uint32, c.c_void_p, c.c_char_p, c.c_int]
    lib.tq_decode_workspace.restype = c.c_uint64
    lib.tq_decode_workspace.argtypes = [c.c_void_p] + [c.c_uint32] * 6
    lib.tq_prefill_workspace.restype = c.c_uint64
    lib.tq_prefill_workspace.argtypes = lib.tq_decode_workspace.argtypes
    # Version 2 of the interface passes the workspace's size after it; a library without
    # tq_capi_version (a baseline tree built before it) is version 1. lib.ws(t) gives the workspace
    # arguments of a uint8 tensor t for either.
    sized = hasattr(lib, "tq_capi_version") and lib.tq_capi_version() >= 2
    lib.ws = (lambda t: (t.data_ptr(), t.numel())) if sized else (lambda t: (t.data_ptr(),))
    lib.tq_decode.argtypes = [c.c_void_p, c.c_void_p, c.c_int, c.c_void_p, c.c_int, c.c_void_p, c.c_void_p] + [c.c_uint32] * 6 + [
        c.c_void_p] + ([c.c_uint64] if sized else []) + [c.c_void_p, c.c_char_p, c.c_int]
    lib.tq_prefill.argtypes = lib.tq_decode.argtypes
    lib.tq_store_and_decode.argtypes = lib.tq_quantize_store.argtypes[:6] + lib.tq_decode.argtypes[1:]
    # Version 3: whole prompts attended densely by cuDNN (tq_dense_prompt); lib.dense says why not.
    lib.dense = "the library predates tq_dense_prompt (C API < 3)"
    if hasattr(lib, "tq_capi_version") and lib.tq_capi_version() >= 3:
        lib.tq_dense_prompt_available.argtypes = [c.c_char_p, c.c_int]
        lib.tq_dense_prompt_workspace.restype = c.c_int64
        lib.tq_dense_prompt_workspace.argtypes = [c.c_uint32] * 5 + [c.c_int, c.c_float, c.c_char_p, c.c_int]
        lib.tq_dense_prompt.argtypes = [c.c_void_p] * 4 + [c.c_int] + [c.c_uint32] * 5 + [c.c_float, c.c_void_p, c.c_uint64, c.c_void_p,
                                                                                          c.c_char_p, c.c_int]
        why = ctypes.create_string_buffer(512)
        lib.dense = "" if lib.tq_dense_prompt_available(why, 512) else why.value.decode()
    return lib


@contextlib.contextmanager
def smem_limit(spec):
    """A spec `S@N` runs S with TQ_CUDA_SMEM_KB=N (the library reads it at every call): the kernels
    of a GPU with N KB of shared memory a block (99: sm_86/89/120, the compact ones), here. Yields S."""
    name, _, kb = spec.partition("@")
    old = os.environ.get("TQ_CUDA_SMEM_KB")
    if kb:
        os.environ["TQ_CUDA_SMEM_KB"] = kb
    try:
        yield name
    finally:
        if kb:
            if old is None:
                del os.environ["TQ_CUDA_SMEM_KB"]
            else:
                os.environ["TQ_CUDA_SMEM_KB"] = old


def check(rc, err):
    if rc != 0:
        raise RuntimeError(err.value.decode())


def timed(fn, iters=50, warmup=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def timed_graph(fn, reps=20, iters=20):
    """Time of one call inside a CUDA graph of `reps` calls: what a captured decode step pays,
    without the Python and launch overhead of one call (fn takes the stream to launch on)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(side.cuda_stream)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        stream = torch.cuda.current_stream().cuda_stream
        for _ in range(reps):
            fn(stream)
    return timed(graph.replay, iters, warmup=3) / reps


class PagedCache:
    """One layer of our paged cache on the GPU, filled through quantize_store."""

    def __init__(self, lib, spec, batch, ctx, k, v, splits=0):  # splits of our decode; 0: the library chooses
        self.lib, self.batch, self.ctx, self.splits = lib, batch, ctx, splits
        self.err = ctypes.create_string_buffer(512)
        # the last page of each sequence partly filled when ctx is not a multiple of PAGE
        self.pages_per_seq = pages_per_seq = pages_for(ctx)
        self.num_pages = batch * pages_per_seq
        self.h = lib.tq_cache_create(KVH, D, self.num_pages, spec.encode(), self.err, 512)
        if not self.h:
            raise RuntimeError(self.err.value.decode())
        # a shuffled page pool, as a paged cache sees it after some traffic
        g = torch.Generator().manual_seed(1)
        perm = torch.randperm(self.num_pages, generator=g).to(torch.int32)
        self.block_tables = perm.view(batch, pages_per_seq).cuda()
        tok = torch.arange(ctx, dtype=torch.int64)
        slots = (perm.view(batch, pages_per_seq).to(torch.int64)[:, tok // PAGE] * PAGE + tok % PAGE).reshape(-1).cuda()
        self.slots = slots
        self.fill(k, v)
        self.seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
        self.ws = torch.empty(lib.tq_decode_workspace(self.h, batch, 1, QH, pages_per_seq, ctx, splits), dtype=torch.uint8,
                              device="cuda")

    def fill(self, k, v):  # k, v: [batch * ctx, KVH, D] bf16
        step = 1 << 16
        for s in range(0, k.shape[0], step):
            e = min(s + step, k.shape[0])
            check(self.lib.tq_quantize_store(self.h, k[s:e].data_ptr(), v[s:e].data_ptr(), DT["bf16"], self.slots[s:e].data_ptr(), e - s,
                                             None, self.err, 512), self.err)

    def bytes(self):
        """The bytes of the batch * ctx tokens a decode call reads (K and V, norms included): the
        cache's bytes less the unfilled tail of each sequence's last page (all of it when ctx is a
        multiple of PAGE)."""
        return self.lib.tq_cache_bytes(self.h) * self.ctx // (self.pages_per_seq * PAGE)

    def decode(self, q, out, stream=None):
        check(self.lib.tq_decode(self.h, q.data_ptr(), DT["bf16"], out.data_ptr(), DT["bf16"], self.block_tables.data_ptr(),
                                 self.seq_lens.data_ptr(), self.batch, 1, QH, self.pages_per_seq, self.ctx, self.splits, *self.lib.ws(self.ws),
                                 stream, self.err, 512), self.err)

    def close(self):
        self.lib.tq_cache_destroy(self.h)


def prefill_rows(lib, specs, prefix=8192, chunk=512):
    """Chunked prefill at batch 1: `chunk` new queries attend to a `prefix`-token cache and,
    causally, to themselves (their K/V already in the cache), against torch's SDPA with a
    lower-right causal mask on contiguous bf16 K/V. Not a target of issue 4: where it stands."""
    from torch.nn.attention.bias import causal_lower_right
    T = prefix + chunk
    k = torch.randn(T, KVH, D, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(T, KVH, D, dtype=torch.bfloat16, device="cuda")
    k[:, :, 0] *= 8
    q = torch.randn(1, chunk, QH, D, dtype=torch.bfloat16, device="cuda") * 0.3
    kt = k.view(1, T, KVH, D).transpose(1, 2).contiguous()
    vt = v.view(1, T, KVH, D).transpose(1, 2).contiguous()
    qt = q.transpose(1, 2)
    mask = causal_lower_right(chunk, T)
    how = "enable_gqa"
    try:
        sdpa = lambda st=None: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=True)
        ref = sdpa()
    except Exception:  # this torch build has no GQA with a causal bias: K/V expanded to the query heads
        how = "K/V expanded"
        ke, ve = kt.repeat_interleave(QH // KVH, dim=1), vt.repeat_interleave(QH // KVH, dim=1)
        sdpa = lambda st=None: F.scaled_dot_product_attention(qt, ke, ve, attn_mask=mask)
        ref = sdpa()
    rows = [dict(prefill_prefix=prefix, prefill_chunk=chunk, kv=f"torch-sdpa-bf16 ({how})", ms=timed(sdpa), graph_ms=timed_graph(sdpa))]
    for spec in specs:
        with smem_limit(spec) as name:
            cache = PagedCache(lib, name, 1, T, k, v)
            ws = torch.zeros(lib.tq_prefill_workspace(cache.h, 1, chunk, QH, cache.pages_per_seq, T, 0), dtype=torch.uint8, device="cuda")
            out = torch.empty(1, chunk, QH, D, dtype=torch.bfloat16, device="cuda")
            call = lambda st=None: check(lib.tq_prefill(cache.h, q.data_ptr(), DT["bf16"], out.data_ptr(), DT["bf16"], cache.block_tables.data_ptr(),
                                                        cache.seq_lens.data_ptr(), 1, chunk, QH, cache.pages_per_seq, T, 0, *lib.ws(ws), st, cache.err,
                                                        512), cache.err)
            call()
            torch.cuda.synchronize()
            rel = ((out.transpose(1, 2).float() - ref.float()).norm() / ref.float().norm()).item()
            rows.append(dict(prefill_prefix=prefix, prefill_chunk=chunk, kv=spec, ms=timed(call), graph_ms=timed_graph(call), rel_err_vs_torch=rel))
            cache.close()
    for r in rows:
        print(f"prefill {chunk} new tokens on {prefix}: {r['kv']:28s} {r['ms']:.4f} ms one call, {r['graph_ms'] * 1e3:.1f} us in a graph"
              f" (x{rows[0]['graph_ms'] / r['graph_ms']:.2f} vs torch)" + (f", rel err vs torch {r['rel_err_vs_torch']:.2e}" if "rel_err_vs_torch" in r else ""),
              flush=True)
    return rows


def whole_prompt_rows(lib, specs, lengths, chunk=2048, dense=False):
    """A whole prompt's attention at batch 1, as the engine computes it: chunks of `chunk` new
    queries, each against the packed cache of the tokens before it and causally itself (their K/V
    stored already; quantize_store not counted), all chunks in one CUDA graph; against torch's SDPA
    with is_causal=True over the whole prompt on contiguous bf16 K/V."""
    rows = []
    for L in lengths:
        k = torch.randn(L, KVH, D, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(L, KVH, D, dtype=torch.bfloat16, device="cuda")
        k[:, :, 0] *= 8
        q = torch.randn(1, L, QH, D, dtype=torch.bfloat16, device="cuda") * 0.3
        kt, vt, qt = k.view(1, L, KVH, D).transpose(1, 2).contiguous(), v.view(1, L, KVH, D).transpose(1, 2).contiguous(), q.transpose(1, 2)
        sdpa = lambda st=None: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
        ref = sdpa()
        g_torch = timed_graph(sdpa, reps=2, iters=10)
        rows.append(dict(whole_prompt=L, kv="torch-sdpa-bf16 (causal)", graph_ms=g_torch))
        # What an engine with a bf16 paged cache also pays for the prompt: its K and V written to
        # their slots (vLLM's reshape_and_cache; here index_copy_ into a [slots, KVH, D] cache).
        kc, vc = torch.empty_like(k), torch.empty_like(v)
        slot_ids = torch.arange(L, device="cuda")

        def write(st=None):
            kc.index_copy_(0, slot_ids, k)
            vc.index_copy_(0, slot_ids, v)
        g_write = timed_graph(write, reps=2, iters=10)
        rows.append(dict(whole_prompt=L, kv="torch + bf16 cache written", graph_ms=g_torch + g_write, write_ms=g_write))
        del kc, vc
        for spec in specs:
            with smem_limit(spec) as name:
                cache = PagedCache(lib, name, 1, L, k, v)
                n = (L + chunk - 1) // chunk
                ends = [min(L, (c + 1) * chunk) for c in range(n)]
                lens = [torch.tensor([e], dtype=torch.int32, device="cuda") for e in ends]
                ws = torch.zeros(max(lib.tq_prefill_workspace(cache.h, 1, e - c * chunk, QH, cache.pages_per_seq, e, 0) for c, e in enumerate(ends)),
                                 dtype=torch.uint8, device="cuda")
                out = torch.empty(1, L, QH, D, dtype=torch.bfloat16, device="cuda")

                def call(st=None):
                    for c, e in enumerate(ends):
                        b = c * chunk
                        check(lib.tq_prefill(cache.h, q[:, b:e].data_ptr(), DT["bf16"],
                                             out[:, b:e].data_ptr(), DT["bf16"], cache.block_tables.data_ptr(), lens[c].data_ptr(), 1, e - b,
                                             QH, cache.pages_per_seq, e, 0, *lib.ws(ws), st, cache.err, 512), cache.err)
                call()
                torch.cuda.synchronize()
                rel = ((out.transpose(1, 2).float() - ref.float()).norm() / ref.float().norm()).item()
                g = timed_graph(call, reps=2, iters=10)
                rows.append(dict(whole_prompt=L, kv=spec, graph_ms=g, vs_torch=g_torch / g, rel_err_vs_torch=rel, chunk=chunk))
                cache.close()
        if dense:
            if lib.dense:
                raise RuntimeError(f"--dense: {lib.dense}")
            rows += dense_prompt_rows(lib, specs, L, q, k, v, ref, g_torch, g_write)
        del k, v, kt, vt, q
        torch.cuda.empty_cache()
    for r in rows:
        print(f"whole prompt of {r['whole_prompt']} tokens: {r['kv']:33s} {r['graph_ms']:.3f} ms in a graph" +
              (f" (x{r['vs_torch']:.2f} vs torch), rel err vs torch {r['rel_err_vs_torch']:.2e}, chunks of {r['chunk']}" if "vs_torch" in r else "") +
              (f", of which the store {r['store_ms']:.3f} ms" if "store_ms" in r else "") +
              (f" (x{r['vs_torch_with_cache']:.2f} vs torch with its bf16 cache written)" if "vs_torch_with_cache" in r else "") +
              (f", of which the cache write {r['write_ms']:.3f} ms" if "write_ms" in r else "") +
              (f", cuDNN's plan built in {r['plan_ms']:.0f} ms" if "plan_ms" in r else ""),
              flush=True)
    return rows


def dense_prompt_rows(lib, specs, L, q, k, v, ref, g_torch, g_write):
    """The same prompt attended densely (tq_dense_prompt: cuDNN's fused attention over the prompt's
    own bf16 rows, one call), then, for each spec, that plus quantize_store of its L rows: what a
    dense whole-prompt step costs against torch's attention alone, and against torch's attention
    with its bf16 cache written (g_write: the rows copied to their slots)."""
    err = ctypes.create_string_buffer(512)
    t0 = time.perf_counter()
    need = lib.tq_dense_prompt_workspace(1, L, QH, KVH, D, DT["bf16"], 0.0, err, 512)  # builds cuDNN's plan for the shape
    plan_ms = 1e3 * (time.perf_counter() - t0)
    if need < 0:
        raise RuntimeError(err.value.decode())
    ws = torch.zeros(max(need, 1), dtype=torch.uint8, device="cuda")
    out = torch.empty(1, L, QH, D, dtype=torch.bfloat16, device="cuda")

    def dense(st=None):
        check(lib.tq_dense_prompt(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), DT["bf16"], 1, L, QH, KVH, D, 0.0, ws.data_ptr(),
                                  need, st, err, 512), err)
    dense()
    torch.cuda.synchronize()
    rel = ((out.transpose(1, 2).float() - ref.float()).norm() / ref.float().norm()).item()
    g = timed_graph(dense, reps=2, iters=10)
    rows = [dict(whole_prompt=L, kv="dense (tq_dense_prompt)", graph_ms=g, vs_torch=g_torch / g, rel_err_vs_torch=rel, chunk=L,
                 plan_ms=plan_ms)]

    def row(kv, ms, **more):  # one of ours against torch's attention alone and with its cache written
        return dict(whole_prompt=L, kv=kv, graph_ms=ms, vs_torch=g_torch / ms, vs_torch_with_cache=(g_torch + g_write) / ms,
                    rel_err_vs_torch=rel, chunk=L, **more)

    for spec in specs:
        with smem_limit(spec) as name:
            cache = PagedCache(lib, name, 1, L, k, v)

            def store(st=None):
                check(lib.tq_quantize_store(cache.h, k.data_ptr(), v.data_ptr(), DT["bf16"], cache.slots.data_ptr(), L, st, cache.err, 512),
                      cache.err)
            gs = timed_graph(store, reps=2, iters=10)
            rows.append(row(f"{spec} dense + store", g + gs, store_ms=gs))
            # The same two in one graph on one stream: the baseline of the pairs below, timed as
            # they are (the row above sums two graphs, each with its share of a replay's gap).
            def seq(st=None):
                dense(st)
                store(st)
            gq = timed_graph(seq, reps=2, iters=10)
            rows.append(row(f"{spec} dense ; store, one stream", gq))
            # The two are independent (the store reads the prompt's rows, the attention its bf16
            # copy), so an engine may fork the store onto a second stream: both orders of launch,
            # joined before the step goes on, as one captured graph.
            fork = torch.cuda.Stream()
            for first in ("dense", "store"):
                def both(st=None, first=first):
                    cur = torch.cuda.current_stream()
                    fork.wait_stream(cur)
                    if first == "dense":
                        dense(cur.cuda_stream)
                    with torch.cuda.stream(fork):
                        store(fork.cuda_stream)
                    if first == "store":
                        dense(cur.cuda_stream)
                    cur.wait_stream(fork)
                gb = timed_graph(both, reps=2, iters=10)
                rows.append(row(f"{spec} dense | store, {first} first", gb))
            cache.close()
    return rows


def torch_sdpa(q, kt, vt):
    # q [B, QH, 1, D], kt/vt [B, KVH, L, D]
    return F.scaled_dot_product_attention(q, kt, vt, enable_gqa=True)


def main():
    global D, QH, KVH
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default=None, help="BATCHxCONTEXT pairs, e.g. 16x32768,4x131072; a context that is not a multiple of the "
                                                           "page size (16) ends in a partly filled page, e.g. 1x1000")
    ap.add_argument("--specs", default=",".join(SPECS),
                    help="KV specs of our kernels, e.g. k3v2,bf16; bf16@99 runs bf16 as a GPU with 99 KB of shared memory a block would "
                         "(TQ_CUDA_SMEM_KB)")
    ap.add_argument("--no-bulk", action="store_true", help="skip the bulk quantize_store measurement")
    ap.add_argument("--bulk-specs", default="k3v2", help="specs of the bulk quantize_store measurement (2^18 tokens), e.g. k3v2,k4v4")
    ap.add_argument("--store-specs", default="k3v2,k3tv2t",
                    help="specs whose quantize_store is timed beside their decode step (k3tv2t: the trellis search, lane 0 walking the row)")
    ap.add_argument("--splits", type=int, default=0, help="splits of our decode (0: the library's choice)")
    ap.add_argument("--no-prefill", action="store_true", help="skip the chunked-prefill measurement")
    ap.add_argument("--prefill-only", action="store_true", help="only the chunked-prefill measurement")
    ap.add_argument("--whole", default="", help="also whole prompts of these lengths at batch 1 in chunks (--whole-chunk), e.g. 4096,32768")
    ap.add_argument("--dense", action="store_true",
                    help="with --whole: also each prompt attended densely by tq_dense_prompt (cuDNN), alone and with its store "
                         "(off by default: it needs a build with TQ_CUDNN and cuDNN's libraries on LD_LIBRARY_PATH)")
    ap.add_argument("--whole-chunk", default="2048", help="the whole prompts' chunk in tokens, as the engine's (2048, the library's "
                                                           "kMaxPrefillChunk); a list times each")
    ap.add_argument("--head-dim", type=int, default=D, help="head dim of every cache and of torch's K/V (64, 128 or 256)")
    ap.add_argument("--heads", default=f"{QH}:{KVH}", help="query heads : KV heads of every shape (default 32:8, an 8B model's); "
                                                            "the query heads a whole multiple of the KV heads, e.g. 8:1")
    ap.add_argument("--hbm-tbps", type=float, default=4.2,
                    help="the memory bandwidth the limit column divides by, TB/s (4.2: what the kernels issue counts for an H200, "
                         "whose datasheet says 4.8)")
    args = ap.parse_args()
    if args.head_dim not in (64, 128, 256):
        ap.error(f"--head-dim must be 64, 128 or 256 (the kernels' head dims), got {args.head_dim}")
    if not args.hbm_tbps > 0 or args.hbm_tbps == float("inf"):
        ap.error(f"--hbm-tbps must be a positive bandwidth in TB/s, got {args.hbm_tbps}")
    D = args.head_dim
    try:
        QH, KVH = (int(x) for x in args.heads.split(":"))
    except ValueError:
        ap.error(f"--heads takes QUERY:KV head counts, e.g. 32:8, got {args.heads!r}")
    if not (QH > 0 and KVH > 0 and QH % KVH == 0):
        ap.error(f"--heads needs positive counts with the query heads a multiple of the KV heads, got {args.heads!r}")
    try:
        whole_chunks = [int(x) for x in args.whole_chunk.split(",")]
    except ValueError:
        ap.error(f"--whole-chunk takes token counts, e.g. 2048 or 2048,4096, got {args.whole_chunk!r}")
    if not all(c > 0 for c in whole_chunks):
        ap.error(f"--whole-chunk needs positive token counts, got {args.whole_chunk!r}")
    # any positive context: one that is not a multiple of the page size (16) ends in a partly filled page
    try:
        shapes = SHAPES if not args.shapes else [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    except ValueError:
        ap.error(f"--shapes takes BATCHxCONTEXT pairs, e.g. 16x32768,1x1000, got {args.shapes!r}")
    if not all(len(s) == 2 and s[0] > 0 and s[1] > 0 for s in shapes):
        ap.error(f"--shapes takes BATCHxCONTEXT pairs of positive counts, e.g. 16x32768,1x1000, got {args.shapes!r}")
    try:
        lengths = [int(x) for x in args.whole.split(",")] if args.whole else []
    except ValueError:
        ap.error(f"--whole takes prompt lengths in tokens, e.g. 4096,5000, got {args.whole!r}")
    if not all(L > 0 for L in lengths):
        ap.error(f"--whole needs positive prompt lengths, got {args.whole!r}")
    limit_us = lambda nbytes: nbytes / (args.hbm_tbps * 1e6)  # the call's bytes over the bandwidth
    lib = load(args.lib)
    if args.prefill_only:
        shapes = []
    torch.manual_seed(0)
    dev = torch.cuda.get_device_properties(0)
    print(f"# {dev.name}, {dev.multi_processor_count} SMs, torch {torch.__version__}", flush=True)
    rows = []
    for (B, L) in shapes:
        k = torch.randn(B * L, KVH, D, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(B * L, KVH, D, dtype=torch.bfloat16, device="cuda")
        k[:, :, 0] *= 8  # an outlier channel
        q = torch.randn(B, 1, QH, D, dtype=torch.bfloat16, device="cuda") * 0.3
        kt = k.view(B, L, KVH, D).transpose(1, 2).contiguous()
        vt = v.view(B, L, KVH, D).transpose(1, 2).contiguous()
        qt = q.view(B, QH, 1, D)
        ref = torch_sdpa(qt, kt, vt)
        t_torch = timed(lambda: torch_sdpa(qt, kt, vt))
        g_torch = timed_graph(lambda st: torch_sdpa(qt, kt, vt))
        bf16_bytes = 2 * B * L * KVH * D * 2
        rows.append(dict(batch=B, context=L, kv="torch-sdpa-bf16", ms=t_torch, bytes=bf16_bytes, gbps=bf16_bytes / t_torch / 1e6,
                         graph_ms=g_torch, head_dim=D, heads=f"{QH}:{KVH}", limit_us=limit_us(bf16_bytes), of_limit=limit_us(bf16_bytes) / (g_torch * 1e3)))
        print(f"B={B:3d} L={L:6d} torch-sdpa-bf16 {t_torch:8.4f} ms {bf16_bytes / t_torch / 1e6:7.0f} GB/s", flush=True)
        for spec in args.specs.split(","):
            with smem_limit(spec) as name:
                cache = PagedCache(lib, name, B, L, k, v, args.splits)
                out = torch.empty(B, 1, QH, D, dtype=torch.bfloat16, device="cuda")
                cache.decode(q, out)
                torch.cuda.synchronize()
                rel = ((out.view(B, QH, 1, D).float() - ref.float()).norm() / ref.float().norm()).item()
                t = timed(lambda: cache.decode(q, out))
                g = timed_graph(lambda st: cache.decode(q, out, st))
                nbytes = cache.bytes()
                row = dict(batch=B, context=L, kv=spec, ms=t, bytes=nbytes, gbps=nbytes / t / 1e6, speedup_vs_torch=t_torch / t,
                           rel_err_vs_torch=rel, graph_ms=g, graph_speedup_vs_torch=g_torch / g, head_dim=D, heads=f"{QH}:{KVH}",
                           limit_us=limit_us(nbytes), of_limit=limit_us(nbytes) / (g * 1e3))
                if spec in args.store_specs.split(","):
                    # one decode step writes one new token per sequence
                    newk, newv = k[:B].clone(), v[:B].clone()
                    slots = cache.slots[:B].clone()
                    err = ctypes.create_string_buffer(512)
                    qs = lambda st=None: check(lib.tq_quantize_store(cache.h, newk.data_ptr(), newv.data_ptr(), DT["bf16"], slots.data_ptr(), B,
                                                                     st, err, 512), err)
                    row["quantize_store_ms"] = timed(qs)
                    row["quantize_store_pct_of_decode"] = 100 * row["quantize_store_ms"] / t
                    row["quantize_store_graph_ms"] = timed_graph(qs)
                    row["quantize_store_graph_pct_of_decode"] = 100 * row["quantize_store_graph_ms"] / g
                    # what it adds to a decode step: quantize_store then decode, both captured, less decode alone
                    row["step_graph_ms"] = timed_graph(lambda st: (qs(st), cache.decode(q, out, st)))
                    row["quantize_store_step_ms"] = row["step_graph_ms"] - g
                    row["quantize_store_step_pct_of_decode"] = 100 * row["quantize_store_step_ms"] / g
                    # the same step as one quantize_store_and_decode call (the decode's prologue overlaps the store)
                    fused = lambda st: check(lib.tq_store_and_decode(cache.h, newk.data_ptr(), newv.data_ptr(), DT["bf16"], slots.data_ptr(), B,
                                                                     q.data_ptr(), DT["bf16"], out.data_ptr(), DT["bf16"],
                                                                     cache.block_tables.data_ptr(), cache.seq_lens.data_ptr(), B, 1, QH,
                                                                     cache.pages_per_seq, cache.ctx, cache.splits, *lib.ws(cache.ws), st, err,
                                                                     512), err)
                    row["fused_step_graph_ms"] = timed_graph(fused)
                    row["quantize_store_fused_ms"] = row["fused_step_graph_ms"] - g
                    row["quantize_store_fused_pct_of_decode"] = 100 * row["quantize_store_fused_ms"] / g
                rows.append(row)
                print(f"B={B:3d} L={L:6d} {spec:15s} {t:8.4f} ms {nbytes / t / 1e6:7.0f} GB/s  x{t_torch / t:5.2f} vs torch  "
                      f"rel err vs torch {rel:.2e}  in a graph {g * 1e3:.1f} us (x{g_torch / g:5.2f})" +
                      (f"  quantize_store {row['quantize_store_ms'] * 1e3:.1f} us ({row['quantize_store_pct_of_decode']:.1f}% of decode),"
                       f" in a graph {row['quantize_store_graph_ms'] * 1e3:.1f} us ({row['quantize_store_graph_pct_of_decode']:.1f}%),"
                       f" added to a captured step {row['quantize_store_step_ms'] * 1e3:.1f} us ({row['quantize_store_step_pct_of_decode']:.1f}%),"
                       f" with quantize_store_and_decode {row['quantize_store_fused_ms'] * 1e3:.1f} us ({row['quantize_store_fused_pct_of_decode']:.1f}%)"
                       if "quantize_store_ms" in row else ""),
                      flush=True)
                cache.close()
        del k, v, kt, vt
        torch.cuda.empty_cache()
    if not args.no_prefill:
        rows += prefill_rows(lib, args.specs.split(","))
    if lengths:
        for chunk in whole_chunks:
            rows += whole_prompt_rows(lib, args.specs.split(","), lengths, chunk, args.dense and chunk == whole_chunks[0])  # dense rows once
    # bulk quantize_store throughput
    n = 0 if args.no_bulk else 1 << 18
    if n:
        k = torch.randn(n, KVH, D, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(n, KVH, D, dtype=torch.bfloat16, device="cuda")
        for spec in args.bulk_specs.split(","):
            cache = PagedCache(lib, spec, 1, n, k, v)
            t = timed(lambda: cache.fill(k, v), iters=10, warmup=2)
            print(f"quantize_store {spec}: {n} tokens x {KVH} heads in {t:.3f} ms = {n / t / 1e3:.1f} M tokens/s", flush=True)
            rows.append(dict(kv=spec, quantize_store_bulk_tokens=n, ms=t, mtokens_per_s=n / t / 1e3))
            cache.close()

    print(f"\n| batch | context | head dim | kv | ms (one call) | GB/s | vs torch bf16 | us in a CUDA graph | vs torch, both in graphs "
          f"| byte limit us ({args.hbm_tbps} TB/s) | of the limit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "batch" in r:
            print(f"| {r['batch']} | {r['context']} | {r['head_dim']} | {r['kv']} | {r['ms']:.4f} | {r['gbps']:.0f} | "
                  f"{r.get('speedup_vs_torch', 1.0):.2f}x | {r['graph_ms'] * 1e3:.1f} | {r.get('graph_speedup_vs_torch', 1.0):.2f}x | "
                  f"{r['limit_us']:.1f} | {100 * r['of_limit']:.0f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=dev.name, rows=rows), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
