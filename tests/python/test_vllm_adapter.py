"""The vLLM backend's core (turboquant.vllm_adapter) without vLLM: a batch laid out as vLLM lays it
out (a flat token layout cut by query_start_loc, block tables, slot mappings, a per-layer uint8 cache
[num_blocks, kv_heads, 1, block_bytes]) mapped onto the ops. Everywhere: the plan's arithmetic, with
a float reference in place of the ops. Where the ops run (a CUDA build on a GPU; CPU once the ops
have a CPU implementation): the real ops against the host cache's reference attention and, for fp16
pages, against plain attention over the same K/V. The vLLM side is tests/vllm (scripts/test_vllm.sh)."""

import re
import types

import numpy as np
import pytest

import turboquant as tq

torch = pytest.importorskip("torch", reason="torch is not installed (the vLLM backend needs it)")
import turboquant.vllm_adapter as va  # noqa: E402

HEADS, KV_HEADS, D, PS = 4, 2, 128, 16
# A mixed step as vLLM's scheduler makes them: (tokens already in the cache, this step's queries).
# Decodes, a speculative 3-token decode, a padding request (0 queries), a short prompt, a prompt
# chunk over a cached prefix, and a prompt longer than one prefill chunk (2048).
BATCH = [(49, 1), (0, 37), (20, 3), (5, 0), (70, 1), (33, 200), (0, 2100), (10, 1)]


def make_batch(seed=0, num_blocks=None, batch=None):
    """vLLM-layout tensors for `batch` (default BATCH): pages in a scattered order, history rows, the step's rows."""
    batch = batch or BATCH
    g = torch.Generator().manual_seed(seed)
    lens = [h + n for h, n in batch]
    need = [-(-max(n, 1) // PS) for n in lens]
    num_blocks = num_blocks or sum(need) + 3
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables = torch.zeros(len(batch), max(need), dtype=torch.int32)
    for r, k in enumerate(need):
        tables[r, :k] = torch.tensor(perm[:k], dtype=torch.int32)
        perm = perm[k:]
    kk = [torch.randn(n, KV_HEADS, D, generator=g) for n in lens]
    vv = [torch.randn(n, KV_HEADS, D, generator=g) for n in lens]
    qq = [torch.randn(n, HEADS, D, generator=g) for _, n in batch]
    slot = lambda r, t: int(tables[r, t // PS]) * PS + t % PS  # noqa: E731
    hist_slots = torch.tensor([slot(r, t) for r, (h, _) in enumerate(batch) for t in range(h)], dtype=torch.int64)
    step_slots = [slot(r, t) for r, (h, n) in enumerate(batch) for t in range(h, h + n)]
    step_slots += [-1, -1]  # vLLM pads the token count (CUDA-graph sizes) with slot -1
    qsl = torch.tensor(np.cumsum([0] + [n for _, n in batch]), dtype=torch.int32)
    return types.SimpleNamespace(
        batch=batch, lens=lens, tables=tables, num_blocks=num_blocks, k=kk, v=vv,
        hist_k=torch.cat([k[:h] for k, (h, _) in zip(kk, batch)]), hist_v=torch.cat([v[:h] for v, (h, _) in zip(vv, batch)]),
        hist_slots=hist_slots, query=torch.cat(qq + [torch.zeros(2, HEADS, D)]),
        key=torch.cat([k[h:] for k, (h, _) in zip(kk, batch)] + [torch.zeros(2, KV_HEADS, D)]),
        value=torch.cat([v[h:] for v, (h, _) in zip(vv, batch)] + [torch.zeros(2, KV_HEADS, D)]),
        slots=torch.tensor(step_slots, dtype=torch.int64), qsl=qsl, seq_lens=torch.tensor(lens, dtype=torch.int32),
        num_actual_tokens=int(qsl[-1]))


def plain_attention(b, scale, window=None):
    """Causal GQA attention of each request's queries over its unquantized K/V, flat [tokens, heads, D];
    with a sliding window, a query at p sees p - t < window only."""
    out = []
    for r, (h, n) in enumerate(b.batch):
        if n == 0:
            continue
        q = b.query[b.qsl[r]:b.qsl[r] + n].double()  # [n, H, D]
        k = b.k[r].double().repeat_interleave(HEADS // KV_HEADS, 1)  # [L, H, D]
        v = b.v[r].double().repeat_interleave(HEADS // KV_HEADS, 1)
        s = torch.einsum("qhd,khd->hqk", q, k) * scale
        pos = torch.arange(h, h + n)[:, None]
        s = s.masked_fill(torch.arange(h + n)[None, :] > pos, float("-inf"))
        if window:
            s = s.masked_fill(torch.arange(h + n)[None, :] <= pos - window, float("-inf"))
        out.append(torch.einsum("hqk,khd->qhd", s.softmax(-1), v))
    return torch.cat(out)


def run_step(b, spec, device, dtype=torch.float16, scale=D ** -0.5, window=None, null_blocks=False):
    """One layer's step as vLLM runs it. null_blocks (with a window): as vLLM's sliding-window layers,
    each request's blocks wholly before its first query's window point to a block never written,
    filled with 0xFF bytes (NaN norms and rows), which a read would carry into the output."""
    bb = va.block_bytes(spec, D)
    kv_cache = torch.zeros(b.num_blocks, KV_HEADS, 1, bb, dtype=torch.uint8, device=device)  # a layer as vLLM views it
    pages = va.pages_of(kv_cache, KV_HEADS, D, spec)
    va.OPS.quantize_store(pages, b.hist_k.to(device, dtype), b.hist_v.to(device, dtype), b.hist_slots.to(device), spec, 0)
    tables = b.tables.clone()
    if null_blocks:
        used = {int(b.tables[r, t]) for r, L in enumerate(b.lens) for t in range(-(-max(L, 1) // PS))}
        null = min(set(range(b.num_blocks)) - used)  # one of make_batch's spare blocks
        kv_cache[null] = 0xFF
        for r, (h, _) in enumerate(b.batch):
            tables[r, :max(0, h - window + 1) // PS] = null
    plan = va.build_plan(spec, b.qsl, b.seq_lens.to(device), tables.to(device), b.slots.to(device), b.num_actual_tokens, max(b.lens))
    output = torch.full((len(b.slots), HEADS, D), 7.0, dtype=dtype, device=device)
    va.forward(plan, kv_cache, b.query.to(device, dtype), b.key.to(device, dtype), b.value.to(device, dtype), output, scale, window)
    return plan, kv_cache, output


class FloatPages:
    """The ops' contract over float rows kept beside the pages (keyed by the pages' storage): a
    stand-in that checks the plan's slots, block tables, lengths and causal positions on any device."""

    def __init__(self):
        self.rows = {}

    def _store(self, pages):
        return self.rows.setdefault(pages.data_ptr(), torch.zeros(pages.shape[1] * PS, 2, KV_HEADS, D, dtype=torch.float64))

    def quantize_store(self, pages, k, v, slots, spec, layer):
        assert pages.shape[0] == 1 and layer == 0 and slots.dtype == torch.int64 and k.is_contiguous()
        keep = slots >= 0
        self._store(pages)[slots[keep]] = torch.stack([k[keep], v[keep]], 1).double()

    def _attention(self, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale, out_dtype, sliding_window, limit):
        assert 1 <= q.shape[1] <= limit and q.is_contiguous() and block_tables.dtype == seq_lens.dtype == torch.int32
        assert int(seq_lens.max()) <= max_seq_len
        rows, out = self._store(pages), torch.empty(q.shape, dtype=torch.float64)
        n = q.shape[1]
        for s in range(q.shape[0]):
            L = int(seq_lens[s])
            slots = block_tables[s].long()[torch.arange(L) // PS] * PS + torch.arange(L) % PS
            k = rows[slots, 0].repeat_interleave(q.shape[2] // KV_HEADS, 1)
            v = rows[slots, 1].repeat_interleave(q.shape[2] // KV_HEADS, 1)
            sc = torch.einsum("qhd,khd->hqk", q[s].double(), k) * scale
            sc = sc.masked_fill(torch.arange(L)[None, :] > torch.arange(L - n, L)[:, None], float("-inf"))
            if sliding_window:
                sc = sc.masked_fill(torch.arange(L)[None, :] <= torch.arange(L - n, L)[:, None] - sliding_window, float("-inf"))
            out[s] = torch.einsum("hqk,khd->qhd", sc.softmax(-1), v)
        return out.to(out_dtype or q.dtype)

    def decode_attention(self, *a):
        return self._attention(*a, limit=9)  # kernels.h kMaxDecodeQueryTokens: a token and up to 8 drafts

    def prefill_attention(self, *a):
        return self._attention(*a, limit=2048)


@pytest.mark.parametrize("window", [None, 24])
def test_plan_maps_a_mixed_batch(monkeypatch, window):
    monkeypatch.setattr(va, "OPS", FloatPages())
    b = make_batch()
    plan, _, out = run_step(b, "k3v2", "cpu", dtype=torch.float32, window=window)
    kinds = sorted((c.prefill, c.q_len, c.num_seqs) for c in plan.calls)
    # decodes of 1 token (3 requests), the 3-token one, 37 and 200 as one prefill each, 2100 as 2048 + 52
    assert kinds == [(False, 1, 3), (False, 3, 1), (True, 37, 1), (True, 52, 1), (True, 200, 1), (True, 2048, 1)]
    covered = torch.cat([torch.arange(c.start, c.start + c.num_seqs * c.q_len) if c.rows is None else c.rows for c in plan.calls])
    assert sorted(covered.tolist()) == list(range(b.num_actual_tokens))  # every query once, padding rows never
    np.testing.assert_allclose(out[:b.num_actual_tokens].double(), plain_attention(b, D ** -0.5, window), atol=1e-5)
    assert (out[b.num_actual_tokens:] == 7).all()  # vLLM's padding rows untouched


def test_plan_takes_9_queries_to_a_decode_call(monkeypatch):
    """The decode kernels take up to 9 queries a sequence (kMaxDecodeQueryTokens): a 9-token
    speculative decode is one decode call, and so is the last chunk of 9 of a 2057-token prompt."""
    monkeypatch.setattr(va, "OPS", FloatPages())
    b = make_batch(seed=2, batch=[(40, 9), (0, 2057), (3, 0), (50, 9), (5, 1)])
    plan, _, out = run_step(b, "k3v2", "cpu", dtype=torch.float32)
    kinds = sorted((c.prefill, c.q_len, c.num_seqs, c.rows is None) for c in plan.calls)
    # the two 9-token decodes are not neighbours (a padding request between): their rows are gathered
    assert kinds == [(False, 1, 1, True), (False, 9, 1, True), (False, 9, 2, False), (True, 2048, 1, True)]
    np.testing.assert_allclose(out[:b.num_actual_tokens].double(), plain_attention(b, D ** -0.5), atol=1e-5)
    assert (out[b.num_actual_tokens:] == 7).all()


def test_plan_of_a_decode_batch_uses_vllms_tensors():
    b = make_batch()
    qsl = torch.arange(len(BATCH) + 1, dtype=torch.int32)
    plan = va.build_plan("k3v2", qsl, b.seq_lens, b.tables, b.slots[:len(BATCH)], len(BATCH), max(b.lens))
    (c,) = plan.calls
    assert (c.prefill, c.num_seqs, c.q_len, c.start, c.rows) == (False, len(BATCH), 1, 0, None)
    assert c.block_table.data_ptr() == b.tables.data_ptr() and c.seq_lens.data_ptr() == b.seq_lens.data_ptr()  # no copies


def test_spec_and_layer_refusals():
    assert va.resolve_spec("k3v2", 16) == "k3v2"
    assert va.resolve_spec("k4v4:nc", 32) == tq.KvSpec("k4v4:nc:page=32").canonical  # vLLM's block size is the page size
    with pytest.raises(ValueError, match="pass --block-size 32"):
        va.resolve_spec("k3v2:page=32", 16)
    with pytest.raises(ValueError, match="policy knob 'sink=4'"):
        va.resolve_spec("k3v2:sink=4", 16)
    with pytest.raises(ValueError, match="k9v2"):
        va.resolve_spec("k9v2", 16)
    assert va.page_size_bytes("k3v2", 8, 128) == 8 * tq.KvSpec("k3v2").page_bytes(1, 1, 128)
    va.check_layer(32, 128, 8)
    va.check_layer(32, 128, 8, sliding_window=4096)
    for kwargs, what in [(dict(sliding_window=0), "sliding window of 0"), (dict(sliding_window=2**31), "sliding window of 2147483648"),
                         (dict(sliding_window=4096.0), "sliding window of 4096.0"), (dict(alibi_slopes=[1.0]), "ALiBi"),
                         (dict(logits_soft_cap=30.0), "soft-capping"), (dict(attn_type="encoder_only"), "encoder_only"),
                         (dict(extra={"sinks": torch.zeros(4)}), "'sinks'")]:
        with pytest.raises(NotImplementedError, match=what):
            va.check_layer(32, 128, 8, **kwargs)
    with pytest.raises(NotImplementedError, match="head size 96 has no kernel; supported: 64, 128, 256"):
        va.check_layer(32, 96, 8)
    with pytest.raises(ValueError, match=r"not uint8 \[num_blocks, 2, 1, "):
        va.pages_of(torch.zeros(4, 2, 16, 2 * D, dtype=torch.float16), 2, D, "k3v2")


def test_a_sizing_probe_takes_the_spec_at_any_block_size():
    """vLLM sizes pages through the backend's customize_spec with a block of one token (a sliding-
    window layer's bytes per token, hybrid and skip-layer page sizes): with_page sets the page and
    refuses no page= there; resolve_spec, at the final block size, refuses a page= that differs."""
    assert va.with_page("k3v2:page=16", 1) == "k3v2:page=1"
    assert va.with_page("k3v2:page=32", 16) == "k3v2"
    assert va.with_page("k4v4:nc:page=32", 1) == tq.KvSpec("k4v4:nc:page=1").canonical
    assert va.resolve_spec("k3v2:page=16", 16) == "k3v2"
    with pytest.raises(ValueError, match=re.escape("has pages of 16 tokens but vLLM's block size is 1: pass --block-size 16")):
        va.resolve_spec("k3v2:page=16", 1)
    with pytest.raises(ValueError, match="policy knob 'sink=4'"):
        va.with_page("k3v2:sink=4", 1)
    # seed= is kept (in the canonical form): the rotations, so the bytes, are the spec's
    for spec in (va.resolve_spec("k4v4:seed=7", 32), va.with_page("k4v4:seed=7:page=16", 1), va.resolve_spec("k4v4:seed=7")):
        assert tq.KvSpec(spec).seed == 7, spec
    assert tq.KvSpec(va.resolve_spec("k4v4:seed=7", 32)).page_size == 32


def test_the_selector_reasons_name_the_value():
    assert va.head_size_unsupported(128) == "" and va.kv_cache_dtype_unsupported("auto") == ""
    assert va.kv_cache_dtype_unsupported(None) == ""  # vLLM's "not given"
    assert va.head_size_unsupported(96).startswith("head size 96 has no kernel; supported: 64, 128, 256")
    assert "112" in va.head_size_unsupported(112)  # TurboQuant rows would pad it to 128, but it is not claimed
    assert va.kv_cache_dtype_unsupported("fp8").startswith("--kv-cache-dtype 'fp8' must be auto/float16/bfloat16; the KV format is "
                                                           "$TURBOQUANT_KV_SPEC")


# gpu_kernels_unsupported (src/kv/spec.cpp) over specs and head sizes: what it says ('': runs)
KERNEL_RULE = [
    ("k3v2", 128, ""), ("k2v4", 64, ""), ("k4v4", 256, ""), ("k2v2:nc", 128, ""), ("k3v2", 112, ""),  # 112: TurboQuant rows padded to 128
    ("fp16", 128, ""), ("bf16", 64, ""), ("fp8", 256, ""),
    ("k3v2", 96, "head dim 96 (padded 96) has no kernel"), ("fp16", 112, "head dim 112 (padded 112) has no kernel"),
    ("k3v2:prod", 128, "prod keys have no GPU kernel"), ("k5v5", 128, "widths 2..4 bits, got k5v5"),
    ("k8v8", 128, "widths 2..4 bits, got k8v8"), ("k1v1", 128, "widths 2..4 bits, got k1v1"), ("k2v5", 128, "got k2v5"),
    ("fp32", 128, "fp32 caches have no GPU kernel"), ("k2.5v2.5", 128, "fractional widths (K 2.5, V 2.5 bits"),
    ("k3.5v2", 128, "fractional widths (K 3.5, V 2 bits"), ("k3tv2t", 128, ""), ("k2tv3t:ip", 64, ""),
    ("k3v2t", 64, "trellis-coded K or V alone (K 3, V 2t bits"), ("k4tv4t", 128, "2t and 3t bits, got K 4t, V 4t"),
]


@pytest.mark.parametrize("spec, head_size, why", KERNEL_RULE)
def test_specs_the_kernels_do_not_run_are_refused(spec, head_size, why):
    got = va.kernel_unsupported(spec, head_size)
    assert why in got if why else got == ""
    if not why:
        va.check_kernels(spec, head_size)
        return
    with pytest.raises(ValueError, match=f"KV spec '{re.escape(spec)}' has no CUDA attention kernel at head size {head_size}: "
                                         f".*{re.escape(why)}.*gpu_kernels_unsupported in src/kv/spec.cpp"):
        va.check_kernels(spec, head_size)


# ---- the real ops, where they run ------------------------------------------------------------------
def _op_devices():
    import turboquant.torch_ops as tqo

    devices = ["cuda"] if tqo.available() else []
    try:  # a CPU implementation of the ops, where the build has one
        tqo.quantize_store(torch.zeros(1, 1, 1, va.block_bytes("fp16", 64), dtype=torch.uint8), torch.zeros(1, 1, 64),
                           torch.zeros(1, 1, 64), torch.zeros(1, dtype=torch.int64), "fp16", 0)
        devices.append("cpu")
    except Exception:
        pass
    return devices


OP_DEVICES = _op_devices()


@pytest.mark.skipif(not OP_DEVICES, reason="the turboquant ops run on no device here (a CUDA build on a GPU, or CPU ops)")
@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("spec", ["k3v2", "k4v4", "fp16"])
def test_real_ops_match_the_references(device, spec):
    b = make_batch(seed=3)
    scale = 0.1
    _, kv_cache, out = run_step(b, spec, device, scale=scale)
    out = out[:b.num_actual_tokens].double().cpu()
    # the host cache's reference attention over the same writes (layer 0 of a one-layer cache)
    host = tq.KvCache(tq.KvSpec(spec), 1, KV_HEADS, D, num_pages=b.num_blocks)
    h = b.hist_slots.numpy()
    host.write(0, h, b.hist_k.half().float().numpy(), b.hist_v.half().float().numpy())
    real = b.slots >= 0
    host.write(0, b.slots[real].numpy(), b.key[real].half().float().numpy(), b.value[real].half().float().numpy())
    np.testing.assert_array_equal(kv_cache.cpu().view(1, b.num_blocks, KV_HEADS, -1).numpy(), host.data)  # the same bytes
    for r, (hlen, n) in enumerate(b.batch):
        if n == 0:
            continue
        q = b.query[b.qsl[r]:b.qsl[r] + n].half().float().numpy()[None]
        ref = host.attention(0, q * scale * D ** 0.5, b.tables[r:r + 1].numpy(), b.seq_lens[r:r + 1].numpy())[0]
        got = out[b.qsl[r]:b.qsl[r] + n].numpy()
        err = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert err.max() < 2e-3, (r, n, err.max())  # fp16 output against the float reference
    if spec == "fp16":  # lossless pages: plain attention over the K/V vLLM gave
        ref = plain_attention(types.SimpleNamespace(**{**vars(b), "k": [k.half().double() for k in b.k],
                                                       "v": [v.half().double() for v in b.v], "query": b.query.half().double()}), scale)
        assert ((out - ref).norm(dim=-1) / ref.norm(dim=-1)).max() < 2e-3


@pytest.mark.skipif(not OP_DEVICES, reason="the turboquant ops run on no device here (a CUDA build on a GPU, or CPU ops)")
@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("spec", ["k3v2", "fp16"])
def test_a_sliding_window_reads_no_block_before_it(device, spec):
    """A sliding-window layer (window 24, blocks of 16): with the blocks wholly before each request's
    window pointing at a poisoned block, as vLLM's tables do, the same output bits as with every
    block in place (so none of them is read); with fp16 pages, plain windowed attention."""
    b = make_batch(seed=5)
    _, _, kept = run_step(b, spec, device, scale=0.1, window=24)
    _, _, nulled = run_step(b, spec, device, scale=0.1, window=24, null_blocks=True)
    n = b.num_actual_tokens
    assert torch.isfinite(nulled[:n]).all()
    assert torch.equal(kept[:n], nulled[:n])
    if spec == "fp16":
        ref = plain_attention(types.SimpleNamespace(**{**vars(b), "k": [k.half().double() for k in b.k],
                                                       "v": [v.half().double() for v in b.v], "query": b.query.half().double()}), 0.1, 24)
        got = nulled[:n].double().cpu()
        assert ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max() < 2e-3


@pytest.mark.skipif("cuda" not in OP_DEVICES, reason="the CUDA ops do not run here: the kernel rule is compared with the kernels "
                                                     "only where they run")
@pytest.mark.parametrize("spec, head_size, why", KERNEL_RULE)
def test_the_kernel_rule_is_the_cuda_kernels(spec, head_size, why):
    """kernel_unsupported (gpu_kernels_unsupported) against the kernels themselves: the CUDA decode op
    runs what it takes and refuses what it refuses."""
    cuda = torch.device("cuda")
    pages = torch.zeros(1, 2, 1, va.block_bytes(spec, head_size), dtype=torch.uint8, device=cuda)
    q = torch.zeros(1, 1, 1, head_size, dtype=torch.float16, device=cuda)
    tables, lens = torch.zeros(1, 1, dtype=torch.int32, device=cuda), torch.ones(1, dtype=torch.int32, device=cuda)

    def call():
        torch.ops.turboquant.decode_attention(pages, q, tables, lens, spec, 0, 1, 1.0, torch.float16, 0)
        torch.cuda.synchronize()

    if not why:
        call()
        return
    with pytest.raises(ValueError):
        call()
