"""The torch ops on a GPU (scripts/test_python_gpu.sh runs them on the H200): pages bit for bit
equal to the CPU cache's, attention against the CPU reference, torch.compile and CUDA-graph
capture equal to eager, and clear refusals, on the CPU ops too. The GPU tests are skipped where
the CUDA kernels or a GPU is missing (the CPU CI); all of them where torch is."""

import numpy as np
import pytest

import turboquant as tq

torch = pytest.importorskip("torch", reason="torch is not installed (the GPU machine has it)")

import turboquant.torch_ops as tqo  # noqa: E402

gpu = pytest.mark.skipif(not tqo.available(), reason="no GPU visible to torch" if tq.HAVE_CUDA else
                         "this turboquant build has no CUDA kernels (CPU CI builds with TQ_CUDA=OFF)")
DEVICES = ["cpu"] + (["cuda"] if tqo.available() else [])
LAYERS, HEADS, D = 2, 2, 128


def rows(n, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, HEADS, D, generator=g) * scale).to(torch.float16)


def slots_for(tables, lens, ps):
    return [torch.tensor([tables[s][t // ps] * ps + t % ps for t in range(n)], dtype=torch.int64) for s, n in enumerate(lens)]


@gpu
@pytest.mark.parametrize("spec", ["k3v2", "k4v4", "k2v2:page=32", "fp16", "k3v2:rot=dense", "k3tv2t:ip"])
def test_pages_equal_the_cpu_cache(spec):
    cache = tqo.CudaKvCache(spec, LAYERS, HEADS, D, num_pages=4)
    cpu = tq.KvCache(tq.KvSpec(spec), LAYERS, HEADS, D, num_pages=4)
    n = 2 * cache.page_size + 5
    k, v = rows(n, 1), rows(n, 2, 3.0)
    slots = torch.randperm(4 * cache.page_size)[:n].to(torch.int64)
    slots[3] = -1  # skipped
    cache.store(1, k.cuda(), v.cuda(), slots.cuda())
    cpu.write(1, slots.numpy(), k.float().numpy(), v.float().numpy())
    torch.cuda.synchronize()
    np.testing.assert_array_equal(cache.pages.cpu().numpy(), cpu.data)


def _filled(spec, lens, tables, seed=0):
    cache = tqo.CudaKvCache(spec, LAYERS, HEADS, D, num_pages=12)
    cpu = tq.KvCache(tq.KvSpec(spec), LAYERS, HEADS, D, num_pages=12)
    for s, sl in enumerate(slots_for(tables, lens, cache.page_size)):
        k, v = rows(len(sl), 10 + s + seed), rows(len(sl), 20 + s + seed)
        cache.store(0, k.cuda(), v.cuda(), sl.cuda())
        cpu.write(0, sl.numpy(), k.float().numpy(), v.float().numpy())
    return cache, cpu


def _two_sequences(spec, ntok, prefill, seed):
    """Sequences of 50 and 90 tokens over pages in any order, none shared, and ntok fp16 queries
    each: (cache, its CPU copy, q, block tables, lengths, the cache's decode or prefill)."""
    lens, tables = [50, 90], [[3, 1, 5, 7, 0, 0], [0, 2, 4, 6, 8, 9]]
    cache, cpu = _filled(spec, lens, tables)
    q = (torch.randn(2, ntok, 2 * HEADS, D, generator=torch.Generator().manual_seed(seed))).to(torch.float16)
    bt = torch.tensor(tables, dtype=torch.int32)
    sl = torch.tensor(lens, dtype=torch.int32)
    return cache, cpu, q, bt, sl, cache.prefill if prefill else cache.decode


@gpu
@pytest.mark.parametrize("spec", ["k3v2", "k4v4", "fp16", "k3tv2t", "k2tv3t"])
@pytest.mark.parametrize("ntok, prefill", [(1, False), (4, False), (37, True)])
def test_attention_matches_the_cpu_reference(spec, ntok, prefill):
    cache, cpu, q, bt, sl, fn = _two_sequences(spec, ntok, prefill, 5)
    lens = sl.tolist()
    out = fn(0, q.cuda(), bt.cuda(), sl.cuda(), max_seq_len=max(lens), out_dtype=torch.float32).cpu().numpy()
    ref = cpu.attention(0, q.float().numpy(), bt.numpy(), sl.numpy())
    err = np.linalg.norm(out - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert err.max() < 1e-3  # tests/cuda's bound for the kernels against the reference


@gpu
@pytest.mark.parametrize("spec", ["k3v2", "fp16"])
@pytest.mark.parametrize("ntok, prefill", [(1, False), (9, False), (37, True)])
def test_sliding_window_matches_the_cpu_op(spec, ntok, prefill):
    """sliding_window on the GPU op against the same op on a CPU copy of the pages (the CPU
    engine's attend_pages), windows shorter and longer than the sequences; the window changes
    the output (a window the kernels ignored would not)."""
    cache, _, q, bt, sl, fn = _two_sequences(spec, ntok, prefill, 6)
    lens = sl.tolist()
    full = fn(0, q.cuda(), bt.cuda(), sl.cuda(), max_seq_len=max(lens), out_dtype=torch.float32).cpu().numpy()
    for window in (1, 17, 64, 200):
        out = fn(0, q.cuda(), bt.cuda(), sl.cuda(), max_seq_len=max(lens), out_dtype=torch.float32, sliding_window=window).cpu().numpy()
        ref = tqo.attend(prefill, cache.pages.cpu(), q, bt, sl, cache.spec, 0, max(lens), out_dtype=torch.float32,
                         sliding_window=window).numpy()
        err = np.linalg.norm(out - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert err.max() < 1e-3, window  # as test_attention_matches_the_cpu_reference
        moved = np.linalg.norm(out - full, axis=-1) / np.linalg.norm(full, axis=-1)
        if window <= 17:
            assert moved.max() > 0.05, window
        elif window >= max(lens):
            assert moved.max() == 0.0, window  # the same plan and kernels as without a window


@gpu
def test_compile_and_cuda_graph_equal_eager():
    lens, tables = [40, 70], [[1, 2, 3, 0, 0], [4, 5, 6, 7, 0]]
    cache, _ = _filled("k3v2", lens, tables)
    bt, sl = torch.tensor(tables, dtype=torch.int32).cuda(), torch.tensor(lens, dtype=torch.int32).cuda()
    q = torch.randn(2, 1, 2 * HEADS, D, device="cuda", dtype=torch.float16)
    new_k, new_v = torch.randn(2, HEADS, D, device="cuda", dtype=torch.float16), torch.randn(2, HEADS, D, device="cuda", dtype=torch.float16)
    new_slots = torch.tensor([tables[0][40 // 16] * 16 + 40 % 16, tables[1][70 // 16] * 16 + 70 % 16], dtype=torch.int64, device="cuda")
    sl1 = sl + 1

    def step(pages, q, k, v, slots, bt, lens):
        torch.ops.turboquant.quantize_store(pages, k, v, slots, "k3v2", 0)
        return torch.ops.turboquant.decode_attention(pages, q, bt, lens, "k3v2", 0, 80)  # 5 pages of 16

    eager = step(cache.pages, q, new_k, new_v, new_slots, bt, sl1).clone()
    compiled = torch.compile(step, fullgraph=True)
    np.testing.assert_array_equal(compiled(cache.pages, q, new_k, new_v, new_slots, bt, sl1).cpu().numpy(), eager.cpu().numpy())

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step(cache.pages, q, new_k, new_v, new_slots, bt, sl1)  # warm-up on the side stream, as torch's docs ask
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(cache.pages, q, new_k, new_v, new_slots, bt, sl1)
    graph.replay()
    torch.cuda.synchronize()
    np.testing.assert_array_equal(out.cpu().numpy(), eager.cpu().numpy())


@gpu
def test_refusals():
    cache = tqo.CudaKvCache("k3v2", LAYERS, HEADS, D, num_pages=2)
    k = torch.zeros(3, HEADS, D, device="cuda", dtype=torch.float16)
    slots = torch.zeros(3, dtype=torch.int64, device="cuda")
    with pytest.raises(TypeError, match="k must be float16, bfloat16 or float32, got torch.int32"):
        cache.store(0, k.int(), k, slots)
    with pytest.raises(ValueError, match=r"v must have shape \[3, 2, 128\], got \[3, 2, 64\]"):
        cache.store(0, k, k[..., :64].contiguous(), slots)
    with pytest.raises(TypeError, match="slots must be torch.int64"):
        cache.store(0, k, k, slots.int())
    with pytest.raises(ValueError, match="layer 5 is outside"):
        cache.store(5, k, k, slots)
    with pytest.raises(ValueError, match="policy knob 'sink=4'"):
        tqo.CudaKvCache("k3v2:sink=4", LAYERS, HEADS, D, num_pages=2)
    q = torch.zeros(1, 10, HEADS, D, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="10 query tokens per sequence, the kernel takes 1..9"):
        cache.decode(0, q, torch.zeros(1, 2, dtype=torch.int32, device="cuda"), torch.ones(1, dtype=torch.int32, device="cuda"), 16)


@pytest.mark.parametrize("device", DEVICES)
def test_ranks_and_max_seq_len_are_refused_by_name(device):
    """A k or q of another rank is named with its shape (it was read as head dim 0), and
    max_seq_len must lie between the longest sequence and what a row of block_tables holds: the
    CUDA kernels split max_seq_len positions among their blocks (validate_attention refuses more
    than the pages hold; of a longer sequence they would read only a part). The CPU op, whose
    lengths are on the host, refuses a length over max_seq_len as well (it ignored max_seq_len);
    the GPU op cannot see the lengths without waiting for the device."""
    ops = torch.ops.turboquant
    ps = tq.KvSpec("k3v2").page_size
    pages = ops.new_cache("k3v2", LAYERS, HEADS, D, 2, device)
    k = rows(3, 1).to(device)
    with pytest.raises(ValueError, match=r"quantize_store: k must be \[tokens, kv_heads, head_dim\], got shape \[2, 128\]"):
        ops.quantize_store(pages, k[0], k[0], torch.arange(2, device=device), "k3v2", 0)
    ops.quantize_store(pages, k, k, torch.arange(3, device=device), "k3v2", 0)
    q = torch.zeros(1, 1, 2 * HEADS, D, dtype=torch.float16, device=device)
    bt = torch.zeros(1, 1, dtype=torch.int32, device=device)
    sl = torch.tensor([3], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"decode_attention: q must be \[seqs, tokens, q_heads, head_dim\], got shape \[1, 4, 128\]"):
        ops.decode_attention(pages, q[0], bt, sl, "k3v2", 0, 3)
    with pytest.raises(ValueError, match=rf"max_seq_len \({ps + 1}\) is more than a row of block_tables holds: 1 pages x {ps} = {ps}"):
        ops.decode_attention(pages, q, bt, sl, "k3v2", 0, ps + 1)
    assert ops.decode_attention(pages, q, bt, sl, "k3v2", 0, ps).shape == q.shape  # any bound of the lengths
    if device == "cpu":
        with pytest.raises(ValueError, match=r"max_seq_len \(2\) is less than sequence 0's length \(3\)"):
            ops.decode_attention(pages, q, bt, sl, "k3v2", 0, 2)



@pytest.mark.parametrize("device", DEVICES)
def test_scales_and_head_dims_are_refused_by_value(device):
    """The kernels (and the CPU attention) read any scale <= 0, NaN included, as the default
    1/sqrt(head_dim): a NaN gave a plausible answer. Only 0 means the default now. On a GPU,
    new_cache refuses a head dim the attention kernels cannot read (it made pages that only the
    first attention call refused)."""
    ops = torch.ops.turboquant
    pages = ops.new_cache("k3v2", LAYERS, HEADS, D, 2, device)
    k = rows(3, 1).to(device)
    ops.quantize_store(pages, k, k, torch.arange(3, device=device), "k3v2", 0)
    q = torch.ones(1, 1, 2 * HEADS, D, dtype=torch.float16, device=device)
    bt = torch.zeros(1, 1, dtype=torch.int32, device=device)
    sl = torch.tensor([3], dtype=torch.int32, device=device)
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match=rf"decode_attention: scale must be 0 \(1/sqrt\(head_dim\)\) or a positive finite number, "
                                             rf"got {bad!r}"):
            ops.decode_attention(pages, q, bt, sl, "k3v2", 0, 3, bad)
    default = ops.decode_attention(pages, q, bt, sl, "k3v2", 0, 3, 0.0)
    explicit = ops.decode_attention(pages, q, bt, sl, "k3v2", 0, 3, float(D) ** -0.5)
    torch.testing.assert_close(default, explicit, rtol=0, atol=1e-3)
    if device == "cuda":
        with pytest.raises(ValueError, match=r"new_cache: head dim 96 \(padded 96\) has no kernel; supported: 64, 128, 256"):
            ops.new_cache("k3v2", LAYERS, HEADS, 96, 2, device)
    else:  # the CPU attention pads any head dim
        assert ops.new_cache("k3v2", LAYERS, HEADS, 96, 2, device).shape[1] == 2


@gpu
def test_llm_on_the_gpu(smollm2, stories):
    llm = tq.LLM(smollm2, kv_spec="k3v2", device="cuda")
    assert llm.device == "cuda"
    text = llm.generate("Once upon a time", max_tokens=30)
    assert len(text) > 20 and "".join(llm.generate("Once upon a time", max_tokens=30, stream=True)) == text
    # stories260K's heads of 8 have no kernel: refused by name, not run wrongly
    model, tok = stories
    with pytest.raises(tq.Error, match="head dim 8 .* has no kernel"):
        tq.LLM(model, tokenizer=tok, kv_spec="k3v2", device="cuda")
