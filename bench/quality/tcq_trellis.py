#!/usr/bin/env python3
"""Trellis-coded quantization on random unit rows (no model): what the 4-state trellis of
rate_distortion.py's `tcq:B` gains over the scalar codebook, what putting its levels on the
format's 1/32 grid (int8 operands) costs, and what larger shift-register trellises add.

The shift-register trellises of rate_distortion.py's tcq_encode: NU memory bits, subset
parity(s & LOW) + 2 (b xor parity(s & HIGH)) from state s and branch b; `tcq:B` is NU = 2, LOW = 1,
HIGH = 2. Every (LOW, HIGH) of each size is tried; the best is reported.

  .venv/bin/python bench/quality/tcq_trellis.py --rows 1500 --search-rows 300

Results: bench/results/2026-12-04-rate-distortion.md.
"""
import argparse
import sys

import numpy as np

import rate_distortion as rd
from codebook_fit import ideal_codebook


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--rows", type=int, default=1500, help="random unit rows for the gains")
    ap.add_argument("--search-rows", type=int, default=300, help="rows for the search over trellis rules")
    ap.add_argument("--bits", default="2,3")
    ap.add_argument("--search-bits", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.dim < 2 or a.rows < 1 or not 1 <= a.search_rows <= a.rows:
        sys.exit("--dim >= 2, --rows >= 1, 1 <= --search-rows <= --rows")
    d = a.dim
    x = np.random.default_rng(a.seed).standard_normal((a.rows, d))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    mse = lambda v, w: float(((v - w) ** 2).sum(1).mean())  # noqa: E731
    print(f"{a.rows} random unit rows, d = {d}; squared error a row\n")
    print("| bits | scalar (Lloyd-Max) | 4-state trellis | on the 1/32 grid | bound 2^(-2B) |\n|---|---|---|---|---|")
    for B in (int(b) for b in a.bits.split(",")):
        book, union = ideal_codebook(d, 1 << B), ideal_codebook(d, 2 << B)
        grid = np.round(union * np.sqrt(d) * 32) / 32 / np.sqrt(d)
        scalar = mse(u, book[np.searchsorted((book[1:] + book[:-1]) / 2, u)])
        print(f"| {B} | {scalar:.5f} | {mse(u, rd.tcq(u, union)):.5f} | {mse(u, rd.tcq(u, grid)):.5f} | {2.0 ** (-2 * B):.5f} |", flush=True)
    B, us = a.search_bits, u[:a.search_rows]
    union = ideal_codebook(d, 2 << B)
    print(f"\nthe best rule of each size, {B} bits, {a.search_rows} rows:\n\n| states | LOW | HIGH | squared error |\n|---|---|---|---|")
    for nu in (2, 3, 4):
        S = 1 << nu
        err, low, high = min((mse(us, rd.tcq_decode(*rd.tcq_encode(us, union, nu, lo, hi), union, nu, lo, hi)), lo, hi)
                             for lo in range(1, S) for hi in range(S))
        print(f"| {S} | {low} | {high} | {err:.5f} |", flush=True)


if __name__ == "__main__":
    main()
