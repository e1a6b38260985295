#!/usr/bin/env python3
"""2t trellis-coded rows: a start in state 0 (the format until 2026-12-05) against a tail-biting
trellis (the start state taken from the row's last two branch bits, so no bits are added; the
encoder keeps the best of four searches whose end state equals their start). A plain-Python
Viterbi on Gaussian coordinates with the union codebook of the N(0, 1) 3-bit Lloyd-Max levels, and
the level rule of include/tq/format.h (union[4 j + t_{i-1} + 2 (t_{i-2} xor t_i)]). Prints each
variant's squared error and the mean error of the first coordinates (a bias) against what noise
alone gives. The prototype of the format's tail-biting trellis (since 2026-12-05;
docs/kv-specs.md, "Tail-biting"; the format's own test: TrellisRows.FirstCoordinatesAreUnbiased);
not part of CI.

  .venv/bin/python bench/quality/tcq_tail_biting.py --dim 128 --rows 2000
"""
import argparse

import numpy as np

LEVELS = np.array([-2.152, -1.344, -0.756, -0.245, 0.245, 0.756, 1.344, 2.152])  # 3-bit Lloyd-Max, N(0, 1)
STATES = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (t_{i-1}, t_{i-2})


def level(j, t, s):
    return LEVELS[4 * j + s[0] + 2 * (s[1] ^ t)]


def viterbi(y, start):
    """Least-squared-error path from `start`: (cost by end state, back pointers per coordinate)."""
    cost = {s: (0.0 if s == start else np.inf) for s in STATES}
    back = []
    for yi in y:
        new, bk = {s: np.inf for s in STATES}, {}
        for s, c in cost.items():
            if c == np.inf:
                continue
            for t in (0, 1):
                e = [(yi - level(j, t, s)) ** 2 for j in (0, 1)]
                j = int(np.argmin(e))
                ns = (t, s[0])
                if c + e[j] < new[ns]:
                    new[ns], bk[ns] = c + e[j], (s, t, j)
        back.append(bk)
        cost = new
    return cost, back


def reconstruct(back, start, end):
    steps, s = [], end
    for bk in reversed(back):
        ps, t, j = bk[s]
        steps.append((t, j))
        s = ps
    out, s = [], start
    for t, j in reversed(steps):
        out.append(level(j, t, s))
        s = (t, s[0])
    return np.array(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=128, help="coordinates a row (the padded head dim)")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    sq = {"start in state 0": 0.0, "tail-biting": 0.0}
    bias = {k: np.zeros(a.dim) for k in sq}
    for _ in range(a.rows):
        y = rng.standard_normal(a.dim)
        cost, back = viterbi(y, (0, 0))
        r = reconstruct(back, (0, 0), min(cost, key=cost.get))
        sq["start in state 0"] += ((r - y) ** 2).mean()
        bias["start in state 0"] += r - y
        best = min(((viterbi(y, s), s) for s in STATES), key=lambda x: x[0][0][x[1]])
        (cost, back), s = best
        r = reconstruct(back, s, s)
        sq["tail-biting"] += ((r - y) ** 2).mean()
        bias["tail-biting"] += r - y
    for k in sq:
        mse = sq[k] / a.rows
        print(f"{k:18s} mse {mse:.5f}  mean error of coordinates 0..3 {np.round(bias[k][:4] / a.rows, 4)}"
              f"  (noise alone: ±{np.sqrt(mse / a.rows):.4f})")


if __name__ == "__main__":
    main()
