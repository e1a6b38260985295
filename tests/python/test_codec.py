"""Quantizers and the host paged cache: errors within the distortion table's bounds, codes equal
to the pages' bit for bit, the reference attention against numpy, and clear refusals."""

import numpy as np
import pytest

import turboquant as tq


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_quantize_dequantize_error_within_bounds(bits):
    d, n = 128, 4000
    x = unit_rows(n, d, seed=bits)
    q = tq.Quantizer(dim=d, bits=bits, seed=5)
    codes = q.quantize(x)
    assert codes.dtype == np.uint8 and codes.shape == (q.bytes(n),)
    y = q.dequantize(codes)
    assert y.shape == (n, d) and y.dtype == np.float32
    err = ((x - y) ** 2).sum(axis=1)
    row = tq.distortion(dim=d, bits=[bits], samples=100)[0]
    assert row["mse_lower"] <= err.mean() <= row["mse_upper"]
    assert err.mean() == pytest.approx(row["mse_expected"], rel=0.05)  # the Lloyd-Max expectation, 4000 rows
    assert q.bits_per_element == pytest.approx((bits * 128 + 16) / 128)


def test_dot_is_the_dot_of_the_decoded_rows():
    q = tq.Quantizer(dim=96, bits=4)  # 96: dense rotation
    x = unit_rows(50, 96, seed=1)
    query = unit_rows(1, 96, seed=2)[0]
    codes = q.quantize(x)
    np.testing.assert_allclose(q.dot(query, codes), q.dequantize(codes) @ query, rtol=1e-4, atol=1e-5)


def test_trellis_coded_quantizer():
    x = unit_rows(400, 128, seed=5)
    plain, trellis = tq.Quantizer(dim=128, bits=3), tq.Quantizer(dim=128, bits=3, tcq=True)
    assert trellis.name == "turboquant-mse3t" and trellis.bytes(7) == plain.bytes(7)  # the same bytes, other codes
    err = {q.name: ((q.dequantize(q.quantize(x)) - x) ** 2).sum(axis=1).mean() for q in (plain, trellis)}
    assert err["turboquant-mse3t"] < err["turboquant-mse3"] * 10 ** -0.05, err  # at least 0.5 dB (measured 1.2)
    query = unit_rows(1, 128, seed=6)[0]
    codes = trellis.quantize(x)
    np.testing.assert_allclose(trellis.dot(query, codes), trellis.dequantize(codes) @ query, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="trellis-coded rows are MSE rows"):
        tq.Quantizer(dim=128, bits=3, prod=True, tcq=True)


def test_prod_is_unbiased():
    d, n = 128, 1500
    x, y = unit_rows(n, d, seed=3), unit_rows(n, d, seed=4)
    q = tq.Quantizer(dim=d, bits=3, prod=True)
    err = np.array([q.dot(y[i], q.quantize(x[i:i + 1]))[0] for i in range(n)]) - (x * y).sum(axis=1)
    assert abs(err.mean()) < 4 * err.std() / np.sqrt(n)


@pytest.mark.parametrize("spec", ["k3v2", "k4v4:prod", "k2v3:rot=dense:seed=9", "k4v4:nc", "fp16", "bf16", "k3tv2t:ip", "k4v2t"])
def test_spec_quantizer_codes_equal_the_pages(spec):
    layers, heads, d = 3, 2, 80 if "dense" in spec else 128
    s = tq.KvSpec(spec)
    cache = tq.KvCache(s, layers=layers, kv_heads=heads, head_dim=d, num_pages=2)
    ps = cache.page_size
    rng = np.random.default_rng(11)
    k = rng.standard_normal((ps, heads, d)).astype(np.float32)
    v = rng.standard_normal((ps, heads, d)).astype(np.float32)
    layer, page = 2, 1
    cache.write(layer, np.arange(page * ps, (page + 1) * ps, dtype=np.int64), k, v)
    L = cache.layout
    for h in range(heads):
        block = cache.data[layer, page, h]
        for tensor, rows, sections in [("k", k, [("k_codes", "k_row"), ("k_qjl", "k_qjl_row"), ("k_norms", None), ("k_rnorms", None)]),
                                       ("v", v, [("v_codes", "v_row"), ("v_norms", None)])]:
            q = s.quantizer(d, tensor, layer=layer, head=h, layers=layers, kv_heads=heads)
            codes = q.quantize(np.ascontiguousarray(rows[:, h, :]))
            # The quantizer lays a batch out like a page: [rows][main] [rows][qjl] [rows] norms [rows] residual norms.
            off = 0
            for start, row_key in sections:
                width = L[row_key] if row_key else (2 if (tensor == "k" and s.k_encoding.startswith("tq")) or
                                                    (tensor == "v" and s.v_encoding.startswith("tq")) else 0)
                if start == "k_rnorms" and s.k_encoding != "tq_prod":
                    width = 0
                n = width * ps
                assert bytes(codes[off:off + n]) == bytes(block[L[start]:L[start] + n]), (spec, tensor, h, start)
                off += n
            assert off == len(codes)
            # And decoding goes the same way through both paths.
            got_k, got_v = cache.read(layer, np.arange(page * ps, (page + 1) * ps, dtype=np.int64))
            np.testing.assert_array_equal(q.dequantize(codes), (got_k if tensor == "k" else got_v)[:, h, :])


def test_attention_matches_numpy():
    heads, q_heads, d, ps = 2, 4, 64, 16
    s = tq.KvSpec("k4v4")
    cache = tq.KvCache(s, layers=1, kv_heads=heads, head_dim=d, num_pages=4)
    rng = np.random.default_rng(3)
    lens = [21, 37]
    tables = np.array([[2, 0, 0], [1, 3, 0]], dtype=np.int32)
    for sq, n in enumerate(lens):
        slots = np.array([tables[sq, t // ps] * ps + t % ps for t in range(n)], dtype=np.int64)
        cache.write(0, slots, rng.standard_normal((n, heads, d)).astype(np.float32), rng.standard_normal((n, heads, d)).astype(np.float32))
    ntok = 2
    q = rng.standard_normal((2, ntok, q_heads, d)).astype(np.float32)
    out = cache.attention(0, q, tables, np.array(lens, dtype=np.int32))
    for sq, n in enumerate(lens):
        slots = np.array([tables[sq, t // ps] * ps + t % ps for t in range(n)], dtype=np.int64)
        K, V = cache.read(0, slots)
        for j in range(ntok):
            visible = n - ntok + j + 1
            for h in range(q_heads):
                kv = h // (q_heads // heads)
                logits = K[:visible, kv] @ q[sq, j, h] / np.sqrt(d)
                p = np.exp(logits - logits.max())
                want = (p / p.sum()) @ V[:visible, kv]
                np.testing.assert_allclose(out[sq, j, h], want, rtol=1e-4, atol=1e-5)


def test_bad_arrays_are_refused_clearly():
    q = tq.Quantizer(dim=64, bits=3)
    with pytest.raises(TypeError, match=r"Quantizer.quantize: x must be float32, got float64"):
        q.quantize(np.zeros((2, 64)))
    with pytest.raises(ValueError, match=r"x must have shape \[rows, dim\] = \[\*, 64\], got \[2, 63\]"):
        q.quantize(np.zeros((2, 63), dtype=np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        q.quantize(np.zeros((64, 4), dtype=np.float32).T)
    with pytest.raises(ValueError, match="NaN|nan"):
        x = np.zeros((1, 64), dtype=np.float32)
        x[0, 5] = np.nan
        q.quantize(x)
    with pytest.raises(ValueError, match="not a whole number"):
        q.dequantize(np.zeros(q.bytes(1) + 1, dtype=np.uint8))
    with pytest.raises(TypeError, match="codes must be uint8, got int32"):
        q.dequantize(np.zeros(10, dtype=np.int32))
    with pytest.raises(ValueError, match="bits"):
        tq.Quantizer(dim=64, bits=9)
    with pytest.raises(ValueError, match="'sink=4'"):
        tq.KvCache(tq.KvSpec("k3v2:sink=4"), layers=1, kv_heads=1, head_dim=64, num_pages=1)
    cache = tq.KvCache(tq.KvSpec("k3v2"), layers=1, kv_heads=2, head_dim=64, num_pages=1)
    with pytest.raises(ValueError, match=r"k must have shape \[tokens, kv_heads, head_dim\] = \[1, 2, 64\], got \[1, 1, 64\]"):
        cache.write(0, np.zeros(1, dtype=np.int64), np.zeros((1, 1, 64), np.float32), np.zeros((1, 1, 64), np.float32))
    with pytest.raises(ValueError, match="slot"):
        cache.write(0, np.array([16], dtype=np.int64), np.zeros((1, 2, 64), np.float32), np.zeros((1, 2, 64), np.float32))
    with pytest.raises(ValueError, match="layer 1 is outside"):
        cache.read(1, np.zeros(1, dtype=np.int64))
    q = np.zeros((1, 1, 2, 64), np.float32)
    with pytest.raises(ValueError, match=r"KvCache.attention: block_tables\[0\]\[0\] is -1, outside the cache's 1 pages"):
        cache.attention(0, q, np.array([[-1]], np.int32), np.array([1], np.int32))  # was named as slot -16


def test_baselines():
    x = unit_rows(64, 128, seed=9)
    for name, worst in [("fp16", 1e-6), ("int8", 1e-3), ("int4", 0.1), ("q4_0", 0.1), ("kivi4", 0.1)]:
        q = tq.Quantizer.baseline(name, 128)
        rows = 64 if name.startswith("kivi") else None
        y = q.dequantize(q.quantize(x), rows=rows)
        assert ((x - y) ** 2).sum(axis=1).mean() < worst, name


def test_a_refused_write_writes_nothing():
    # A row the format cannot store (a NaN) was refused after the rows before it were written: the
    # cache held part of the write. Every slot keeps its bytes now (a repeated slot and a skipped
    # one included), and the error names the row.
    cache = tq.KvCache(tq.KvSpec("k3v2"), layers=1, kv_heads=2, head_dim=64, num_pages=2)
    rng = np.random.default_rng(4)
    k, v = rng.standard_normal((2, 20, 2, 64)).astype(np.float32)
    cache.write(0, np.arange(20, dtype=np.int64), k, v)
    before = cache.data.copy()
    slots = np.array([31, 2, -1, 2, 9, 7, 3], dtype=np.int64)
    k2, v2 = rng.standard_normal((2, len(slots), 2, 64)).astype(np.float32)
    k2[5, 1, 3] = np.nan
    with pytest.raises(ValueError, match=r"KvCache.write: row 5 \(slot 7\): cannot quantize a non-finite value: element 3 is nan; "
                                         "nothing was written"):
        cache.write(0, slots, k2, v2)
    np.testing.assert_array_equal(cache.data, before)
    k2[5, 1, 3] = 0
    cache.write(0, slots, k2, v2)
    assert not np.array_equal(cache.data, before)


def test_torch_tensors_with_a_lazy_negation_or_conjugation_are_read_as_their_values():
    # torch exports a tensor's DLPack without its negative or conjugate bit: x._neg_view() and the
    # imaginary part of a conjugate view came in as the values of x, and their codes were x's.
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(unit_rows(4, 64, seed=3))
    q = tq.Quantizer(dim=64, bits=3)
    neg = x._neg_view()
    assert neg.is_neg()
    assert np.array_equal(q.quantize(neg), q.quantize(-x))
    assert not np.array_equal(q.quantize(neg), q.quantize(x))  # not vacuous: the sign shows in the codes
    imag = torch.complex(x, -x).conj().imag  # the values of x, held as -(-x) lazily
    assert imag.is_neg()
    assert np.array_equal(q.quantize(imag), q.quantize(x))
    codes = q.quantize(x)
    np.testing.assert_array_equal(q.dot(neg[0], codes), q.dot((-x[0]).contiguous(), codes))
    cache, also = (tq.KvCache(tq.KvSpec("k3v2"), layers=1, kv_heads=2, head_dim=64, num_pages=1) for _ in range(2))
    kv = x.reshape(2, 2, 64)
    cache.write(0, torch.arange(2), kv._neg_view(), kv)
    also.write(0, torch.arange(2), -kv, kv)
    assert np.array_equal(cache.data, also.data)


def test_quantizers_and_host_caches_pickle():
    # multiprocessing and copy.deepcopy: a quantizer is built again from what was asked for (its codes
    # the same bytes), a host cache carries its pages.
    import copy
    import pickle

    x = unit_rows(5, 96, seed=11)
    for q in [tq.Quantizer(96, 3, seed=7, rotation="dense"), tq.Quantizer(96, 2, tcq=True, rotation="dense"),
              tq.Quantizer.baseline("kivi2", 96, group=16), tq.Quantizer.baseline("fp8", 96, fp8_scale=0.5),
              tq.KvSpec("k3v2:edge=1/k4v4").quantizer(96, "v", layer=3, head=1, layers=4, kv_heads=2)]:
        for r in (pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
            assert repr(r) == repr(q)
            assert np.array_equal(r.quantize(x), q.quantize(x)), repr(q)
    # not vacuous: another seed gives other codes
    assert not np.array_equal(tq.Quantizer(96, 3, seed=8, rotation="dense").quantize(x), tq.Quantizer(96, 3, seed=7, rotation="dense").quantize(x))
    cache = tq.KvCache(tq.KvSpec("k4v2"), layers=2, kv_heads=2, head_dim=64, num_pages=3)
    k, v = np.random.default_rng(2).standard_normal((2, 10, 2, 64)).astype(np.float32)
    cache.write(1, np.arange(10, dtype=np.int64), k, v)
    back = pickle.loads(pickle.dumps(cache))
    assert repr(back) == repr(cache)
    assert np.array_equal(back.data, cache.data)
    assert all(np.array_equal(a, b) for a, b in zip(back.read(1, np.arange(10, dtype=np.int64)), cache.read(1, np.arange(10, dtype=np.int64))))
    with pytest.raises(ValueError, match="3 bytes of pages for a cache of 9984"):
        tq.KvCache.__new__(tq.KvCache).__setstate__(("k4v2", 2, 2, 64, 3, b"abc"))
    with pytest.raises(ValueError, match="not a Quantizer's state"):
        tq.Quantizer.__new__(tq.Quantizer).__setstate__(("x",))
