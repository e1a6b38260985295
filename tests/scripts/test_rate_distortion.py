#!/usr/bin/env python3
"""bench/quality/rate_distortion.py's arithmetic, which its tables rest on: reverse water-filling
spends exactly the bits it is given and never gives a component more distortion than its variance;
the isotropic bound is water-filling's answer for equal variances; trellis-coded quantization's
parallel decode is the trellis walk; quantizer texts are parsed or refused by name. Exit 77 (skipped) without numpy or gguf."""
import os
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def main():
    try:
        import numpy as np
        sys.path.insert(0, os.path.join(ROOT, "bench", "quality"))
        import rate_distortion as rd
    except ImportError as e:
        print(f"SKIPPED: {e} (tests/engine/requirements.txt; scripts/setup.sh)")
        return 77
    rng = np.random.default_rng(3)
    for _ in range(20):
        lam = np.exp(rng.uniform(-12, 2, size=int(rng.integers(2, 130))))
        bits = float(rng.uniform(0.5, 8)) * len(lam)
        D = rd.water_fill(lam, bits)
        rate = np.sum(np.maximum(0.0, 0.5 * np.log2(lam / D)))
        assert abs(rate - bits) < 1e-6 * bits, (rate, bits)
        assert np.all(D <= lam * (1 + 1e-12)) and np.all(D > 0)
        theta = D.max()  # one water level: every component below it keeps its variance as distortion
        assert np.allclose(D[lam >= theta], theta) and np.allclose(D[lam < theta], lam[lam < theta])
    # Equal variances 1/d at B bits a coordinate: D = 2^(-2B) a unit row, the shannon:B channel's.
    d, B = 64, 3
    assert abs(rd.water_fill(np.full(d, 1.0 / d), B * d).sum() - 2.0 ** (-2 * B)) < 1e-9
    # Trellis-coded quantization: the parallel decode (a coordinate's level from its own code and
    # its two previous branch bits) is Marcellin and Fischer's 4-state trellis walked from state 0
    # (from state s, branch b: subset SUBSET[s][b], next state NEXT[s][b]), and beats the scalar
    # codebook of the same bits on random unit rows.
    SUBSET, NEXT = ((0, 2), (1, 3), (2, 0), (3, 1)), ((0, 1), (2, 3), (0, 1), (2, 3))
    from codebook_fit import ideal_codebook
    x = rng.standard_normal((500, d))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    for B in (2, 3):
        union = ideal_codebook(d, 2 << B)
        bits, idx = rd.tcq_encode(u, union)
        assert bits.min() >= 0 and bits.max() <= 1 and idx.min() >= 0 and idx.max() < 1 << (B - 1)
        state, walk = np.zeros(len(u), dtype=int), np.empty_like(u)
        for i in range(d):
            sub = np.array([SUBSET[a][b] for a, b in zip(state, bits[:, i])])
            walk[:, i] = union[4 * idx[:, i] + sub]
            state = np.array([NEXT[a][b] for a, b in zip(state, bits[:, i])])
        assert np.array_equal(walk, rd.tcq_decode(bits, idx, union))
        book = ideal_codebook(d, 1 << B)
        scalar = ((u - book[np.searchsorted((book[1:] + book[:-1]) / 2, u)]) ** 2).sum(1).mean()
        trellis = ((u - walk) ** 2).sum(1).mean()
        assert trellis < scalar * 10 ** (-0.05), (B, trellis, scalar)  # at least 0.5 dB
    assert rd.parse("split:16@6+3", 64) == ("split", 6, (16, 6, 3))
    assert rd.parse("tcq:3", 64) == ("tcq", 3, None)
    assert rd.parse("tq:4", 64) == ("tq", 4, None) and rd.parse("exact", 64) == ("exact", 0, None)
    for bad in ("tq:0", "tq:9", "tq", "foo:2", "split:64@6+3", "split:16@6", "exact:3"):
        try:
            rd.parse(bad, 64)
        except SystemExit as e:
            assert bad.split(":")[0] in str(e) or "split" in str(e), (bad, str(e))
        else:
            raise AssertionError(f"'{bad}' was accepted")
    print("rate_distortion: water-filling, the trellis decode and parsing hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
