#!/usr/bin/env python3
"""CPU decode attention over packed pages by GQA group: one new token a sequence, 8 KV heads of
head dim 128, query heads 8 (group 1: MHA), 16 (group 2) and 32 (group 4), the median of 15 calls
of turboquant.torch_ops.decode_attention on CPU pages (cpu::attend_pages, the engine's attention).
The group decides the value path (src/backend/cpu/attention.cpp): one query a KV head accumulates
each value row itself (accumulate_rotated), more share a page tile of decoded rows.

  PYTHONPATH=DIR python3 bench/python/cpu_decode_groups.py [BATCH CONTEXT SPECS]   (default 1 8192 k3v2,k3tv2t)

DIR: a `pip install --target DIR .` of the tree to time; run two such installs in alternation for
an A/B (bench/results/2026-12-05-cpu-mha-values.md).
"""
import statistics
import sys
import time

import torch

import turboquant.torch_ops as ops


def main():
    B = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    L = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
    specs = (sys.argv[3] if len(sys.argv) > 3 else "k3v2,k3tv2t").split(",")
    KVH, D, PS = 8, 128, 16
    torch.manual_seed(0)
    out = []
    for spec in specs:
        pages = ops.new_cache(spec, 1, KVH, D, B * L // PS, "cpu")
        k, v = torch.randn(B * L, KVH, D), torch.randn(B * L, KVH, D)
        ops.quantize_store(pages, k, v, torch.arange(B * L, dtype=torch.int64), spec, 0)
        block_tables = torch.arange(B * L // PS, dtype=torch.int32).view(B, L // PS)
        seq_lens = torch.full((B,), L, dtype=torch.int32)
        for group in (1, 2, 4):
            q = torch.randn(B, 1, KVH * group, D)
            call = lambda: ops.decode_attention(pages, q, block_tables, seq_lens, spec, 0, L)
            for _ in range(3):
                call()
            ts = []
            for _ in range(15):
                t0 = time.perf_counter()
                call()
                ts.append(time.perf_counter() - t0)
            out.append(f"{spec} group {group}: {statistics.median(ts) * 1e6:.0f} us")
    print(f"{torch.get_num_threads()} threads, batch {B}, context {L}; " + "; ".join(out))


if __name__ == "__main__":
    main()
