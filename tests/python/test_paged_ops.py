"""The torch ops on every device here: the CPU always (CI), the GPU where there is one
(scripts/test_python_gpu.sh). Pages bit for bit equal to the host KvCache's, attention against
its double-precision reference, the side buffer (sink/window) against a reference built from
the same rows, the same side rows on both devices, torch.compile tracing, and clear refusals."""

import numpy as np
import pytest

import turboquant as tq

torch = pytest.importorskip("torch", reason="torch is not installed (tests/python/requirements-torch.txt)")

import turboquant.torch_ops as tqo  # noqa: E402

HEADS, D = 2, 64
DEVICES = ["cpu"] + (["cuda"] if tqo.available() else [])


def rows(n, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, HEADS, D, generator=g) * scale).to(torch.float16)


def slots_of(table, first, n, ps):
    return [table[t // ps] * ps + t % ps for t in range(first, first + n)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", ["k3v2", "k4v4", "k2v2:page=32", "fp16", "k3v2:rot=dense", "k3v2:prod", "fp8", "k3tv2t:ip"])
def test_pages_equal_the_host_cache(device, spec):
    if device == "cuda" and spec.endswith(":prod"):  # the GPU kernels take MSE keys only, and say so when the pages are made
        with pytest.raises(ValueError, match="new_cache: prod keys have no GPU kernel"):
            torch.ops.turboquant.new_cache(spec, 2, HEADS, D, 4, torch.device(device))
        return
    pages = torch.ops.turboquant.new_cache(spec, 2, HEADS, D, 4, torch.device(device))
    host = tq.KvCache(tq.KvSpec(spec), 2, HEADS, D, num_pages=4)
    ps = host.page_size
    n = 2 * ps + 5
    k, v = rows(n, 1), rows(n, 2, 3.0)
    slots = torch.randperm(4 * ps, generator=torch.Generator().manual_seed(3))[:n].to(torch.int64)
    slots[3] = -1  # skipped
    torch.ops.turboquant.quantize_store(pages, k.to(device), v.to(device), slots.to(device), spec, 1)
    host.write(1, slots.numpy(), k.float().numpy(), v.float().numpy())
    np.testing.assert_array_equal(pages.cpu().numpy(), host.data)


def _filled(spec, device, lens, tables, num_pages=12):
    pages = torch.ops.turboquant.new_cache(spec, 1, HEADS, D, num_pages, torch.device(device))
    host = tq.KvCache(tq.KvSpec(spec), 1, HEADS, D, num_pages=num_pages)
    ks, vs = [], []
    for s, n in enumerate(lens):
        k, v = rows(n, 10 + s), rows(n, 20 + s)
        sl = torch.tensor(slots_of(tables[s], 0, n, host.page_size), dtype=torch.int64)
        torch.ops.turboquant.quantize_store(pages, k.to(device), v.to(device), sl.to(device), spec, 0)
        host.write(0, sl.numpy(), k.float().numpy(), v.float().numpy())
        ks.append(k)
        vs.append(v)
    return pages, host, ks, vs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", ["k3v2", "k4v4", "fp16", "k3v2:prod", "k3tv2t", "k2tv3t"])
@pytest.mark.parametrize("ntok, prefill", [(1, False), (4, False), (37, True)])
def test_attention_matches_the_reference(device, spec, ntok, prefill):
    if device == "cuda" and spec.endswith(":prod"):
        pytest.skip("the GPU kernels take MSE keys only (test_pages_equal_the_host_cache checks the refusal)")
    lens, tables = [50, 90], [[3, 1, 5, 7, 0, 0], [0, 2, 4, 6, 8, 9]]  # pages in any order, none shared
    pages, host, _, _ = _filled(spec, device, lens, tables)
    q = torch.randn(2, ntok, 2 * HEADS, D, generator=torch.Generator().manual_seed(5))
    bt, sl = torch.tensor(tables, dtype=torch.int32), torch.tensor(lens, dtype=torch.int32)
    op = torch.ops.turboquant.prefill_attention if prefill else torch.ops.turboquant.decode_attention
    out = op(pages, q.to(device), bt.to(device), sl.to(device), spec, 0, max(lens), 0.0, torch.float32).cpu().numpy()
    ref = host.attention(0, q.numpy(), bt.numpy(), sl.numpy())
    err = np.linalg.norm(out - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert err.max() < 1e-3  # the kernels' bound against the reference (tests/cuda); the CPU sums in float, the reference in double


def _side_reference(host, k_all, v_all, q, first, sink, window, scale):
    """Attention of queries at first.. over positions 0..first+ntok-1: dequantized page rows, except
    positions < sink or within `window` of the query, which are the fp16 rows themselves."""
    n = first + q.shape[0]
    kd, vd = k_all[:n].float().numpy().astype(np.float64), v_all[:n].float().numpy().astype(np.float64)
    kp, vp = host.read(0, np.arange(n, dtype=np.int64))  # one sequence in pages 0.. in order
    out = np.zeros(q.shape, dtype=np.float64)
    group = q.shape[1] // HEADS
    for j in range(q.shape[0]):
        p = first + j
        t = np.arange(p + 1)
        side = (t < sink) | (p - t < window)
        for h in range(q.shape[1]):
            kv = h // group
            kk = np.where(side[:, None], kd[:p + 1, kv], kp[:p + 1, kv])
            vv = np.where(side[:, None], vd[:p + 1, kv], vp[:p + 1, kv])
            s = kk @ q[j, h].double().numpy() * scale
            w = np.exp(s - s.max())
            out[j, h] = w @ vv / w.sum()
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec, sink, window", [("k3v2", 4, 16), ("k2v2", 0, 8), ("k4v4", 3, 0), ("fp16", 2, 5)])
def test_side_buffer_against_the_reference(device, spec, sink, window):
    """A sequence prefilled in two chunks (37 and 20 tokens), then decode steps of 1 and 3 tokens,
    each step storing its rows and attending with the side buffer: outputs against the reference,
    and the slot's rows are the fp16 rows of the positions it keeps."""
    ring = window + 8 if window else 0
    ps = tq.KvSpec(spec).page_size
    total = 37 + 20 + 1 + 3
    pages = torch.ops.turboquant.new_cache(spec, 1, HEADS, D, 8, torch.device(device))
    host = tq.KvCache(tq.KvSpec(spec), 1, HEADS, D, num_pages=8)
    side = torch.full((2, 1, sink + ring, 2, HEADS, D), float("nan"), dtype=torch.float16, device=device)  # slot 1 is ours
    k_all, v_all = rows(total, 30), rows(total, 31, 2.0)
    table = list(range(8))
    bt = torch.tensor([table], dtype=torch.int32, device=device)
    slot = torch.tensor([1], dtype=torch.int32, device=device)
    first = 0
    for n in (37, 20, 1, 3):
        sl = torch.tensor(slots_of(table, first, n, ps), dtype=torch.int64)
        k, v = k_all[first:first + n], v_all[first:first + n]
        torch.ops.turboquant.quantize_store(pages, k.to(device), v.to(device), sl.to(device), spec, 0)
        host.write(0, sl.numpy(), k.float().numpy(), v.float().numpy())
        q = torch.randn(1, n, 2 * HEADS, D, generator=torch.Generator().manual_seed(40 + n))
        op = torch.ops.turboquant.prefill_attention_side if n > 8 else torch.ops.turboquant.decode_attention_side
        lens = torch.tensor([first + n], dtype=torch.int32, device=device)
        out = op(pages, q.to(device), bt, lens, spec, 0, first + n, side, slot, k[None].to(device), v[None].to(device), sink, window,
                 0.0, torch.float32)
        ref = _side_reference(host, k_all, v_all, q[0], first, sink, window, D ** -0.5)
        err = np.linalg.norm(out[0].cpu().numpy() - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert err.max() < 1e-3, f"step of {n} at {first}: relative error {err.max()}"
        first += n
        got = side[1, 0].cpu()
        for pos in range(first):
            if pos < sink:
                row = pos
            elif ring and pos >= first - ring:
                row = sink + pos % ring
            else:
                continue
            assert torch.equal(got[row, 0], k_all[pos]) and torch.equal(got[row, 1], v_all[pos]), f"side row of position {pos}"
    assert torch.isnan(side[0]).all(), "another sequence's slot was written"


def test_compile_traces_the_cpu_ops():
    pages = torch.ops.turboquant.new_cache("k3v2", 1, HEADS, D, 4, torch.device("cpu"))
    bt = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32)

    def step(pages, q, k, v, slots, lens):
        torch.ops.turboquant.quantize_store(pages, k, v, slots, "k3v2", 0)
        return torch.ops.turboquant.decode_attention(pages, q, bt, lens, "k3v2", 0, 64)

    k, v = rows(20, 1).float(), rows(20, 2).float()
    q = torch.randn(1, 1, 2 * HEADS, D)
    args = (q, k, v, torch.arange(20, dtype=torch.int64), torch.tensor([20], dtype=torch.int32))
    eager = step(pages, *args)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)  # the fake kernels and the mutation of pages, no codegen
    pages.zero_()
    torch.testing.assert_close(compiled(pages, *args), eager, rtol=0, atol=0)


def test_refusals_on_the_cpu():
    pages = torch.ops.turboquant.new_cache("k3v2", 1, HEADS, D, 2, torch.device("cpu"))
    k = torch.zeros(3, HEADS, D)
    slots = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="k must be float16, bfloat16 or float32, got torch.int32"):
        torch.ops.turboquant.quantize_store(pages, k.int(), k, slots, "k3v2", 0)
    with pytest.raises(ValueError, match="slot 99 at index 0 is outside the cache"):
        torch.ops.turboquant.quantize_store(pages, k, k, torch.tensor([99, 0, 1]), "k3v2", 0)
    with pytest.raises(ValueError, match="policy knob 'sink=4'"):
        torch.ops.turboquant.new_cache("k3v2:sink=4", 1, HEADS, D, 2, torch.device("cpu"))
    for device in ("meta", "mps"):  # (were told there was no NVIDIA driver)
        with pytest.raises(ValueError, match=f"new_cache: device '{device}' is not supported: the pages live on 'cpu' or 'cuda'"):
            torch.ops.turboquant.new_cache("k3v2", 1, HEADS, D, 2, torch.device(device))
    if not tq.HAVE_CUDA:
        with pytest.raises(RuntimeError, match="this turboquant build has no CUDA kernels"):
            torch.ops.turboquant.new_cache("k3v2", 1, HEADS, D, 2, torch.device("cuda"))
    q = torch.zeros(1, 1, 2 * HEADS, D)
    bt, lens = torch.zeros(1, 2, dtype=torch.int32), torch.ones(1, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"max_seq_len \(32\) is less than sequence 0's length \(40\)"):
        torch.ops.turboquant.decode_attention(pages, q, bt, torch.tensor([40], dtype=torch.int32), "k3v2", 0, 32)
    with pytest.raises(ValueError, match=r"max_seq_len \(40\) is more than a row of block_tables holds: 2 pages x 16 = 32 tokens"):
        torch.ops.turboquant.decode_attention(pages, q, bt, torch.tensor([40], dtype=torch.int32), "k3v2", 0, 40)
    # a page id is named as given (a -1 was read, and named, as page 4294967295); pages the
    # sequence does not reach are not read, nor checked
    for bad in (-1, 2):
        with pytest.raises(ValueError, match=rf"attention: block_tables\[0\]\[1\] is {bad}, outside the cache's 2 pages"):
            torch.ops.turboquant.decode_attention(pages, q, torch.tensor([[0, bad]], dtype=torch.int32),
                                                  torch.tensor([17], dtype=torch.int32), "k3v2", 0, 17)
    torch.ops.turboquant.decode_attention(pages, q, torch.tensor([[0, -1]], dtype=torch.int32), torch.tensor([16], dtype=torch.int32),
                                          "k3v2", 0, 16)
    side = torch.zeros(1, 1, 4 + 8, 2, HEADS, D, dtype=torch.float16)
    with pytest.raises(ValueError, match="sink 4 and window 16 need sink \\+ a ring of at least the window"):
        torch.ops.turboquant.decode_attention_side(pages, q, bt, lens, "k3v2", 0, 1, side, torch.zeros(1, dtype=torch.int32),
                                                   k[:1, None], k[:1, None], 4, 16)
    with pytest.raises(TypeError, match="side must be a float16 tensor"):
        torch.ops.turboquant.decode_attention_side(pages, q, bt, lens, "k3v2", 0, 1, side.float(), torch.zeros(1, dtype=torch.int32),
                                                   k[:1, None], k[:1, None], 4, 8)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_refused_store_stores_nothing(threads):
    # A row past fp16 was refused after the rows before it (or, over threads, beside it) were
    # stored: the pages held part of the call. They keep every byte now.
    pages = torch.ops.turboquant.new_cache("k3v2", 1, HEADS, D, 4, torch.device("cpu"))
    torch.ops.turboquant.quantize_store(pages, rows(40, 1).float(), rows(40, 2).float(), torch.arange(40), "k3v2", 0)
    before = pages.clone()
    k, v = rows(40, 3).float(), rows(40, 4).float()
    v[30, 0] = 1e5  # a norm past 65504
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with pytest.raises(ValueError, match=r"quantize_store: row 30 \(slot 53\): vector norm .* exceeds the fp16 range .*; "
                                             "nothing was written"):
            torch.ops.turboquant.quantize_store(pages, k, v, torch.arange(23, 63), "k3v2", 0)
    finally:
        torch.set_num_threads(was)
    assert torch.equal(pages, before)


@pytest.mark.parametrize("prefill", [False, True])
def test_a_nan_or_inf_query_attends_to_nan(prefill):
    # The CPU ops gave such a query zeros (their softmax skips NaN scores) where KvCache.attention
    # and torch's SDPA give NaN; the other queries are untouched. (The CPU ops only: the CUDA
    # kernels check nothing per query, docs/python.md.)
    lens, tables = [50, 90], [[3, 1, 5, 7, 0, 0], [0, 2, 4, 6, 8, 9]]
    pages, host, _, _ = _filled("k3v2", "cpu", lens, tables)
    ntok = 5 if prefill else 1
    q = torch.randn(2, ntok, 2 * HEADS, D, generator=torch.Generator().manual_seed(6))
    bad = q.clone()
    bad[0, -1, 1, 7] = float("nan")
    bad[1, 0, 3, 0] = float("inf")
    bt, sl = torch.tensor(tables, dtype=torch.int32), torch.tensor(lens, dtype=torch.int32)
    op = torch.ops.turboquant.prefill_attention if prefill else torch.ops.turboquant.decode_attention
    out = op(pages, bad, bt, sl, "k3v2", 0, max(lens), 0.0, torch.float32)
    nan_rows = torch.zeros(q.shape[:3], dtype=torch.bool)
    nan_rows[0, -1, 1] = nan_rows[1, 0, 3] = True
    assert torch.equal(out.isnan().all(-1), nan_rows) and not out[~nan_rows].isnan().any()
    assert np.array_equal(np.isnan(host.attention(0, bad.numpy(), bt.numpy(), sl.numpy())), out.isnan().numpy())
    sdpa = torch.nn.functional.scaled_dot_product_attention(bad.transpose(1, 2), torch.randn(2, 2 * HEADS, 90, D),
                                                            torch.randn(2, 2 * HEADS, 90, D)).transpose(1, 2)
    assert torch.equal(sdpa.isnan(), out.isnan())
    good = op(pages, q, bt, sl, "k3v2", 0, max(lens), 0.0, torch.float32)
    assert torch.equal(out[~nan_rows], good[~nan_rows])
