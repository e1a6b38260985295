"""PyTorch ops over the library's paged cache: a cache made from a KV spec, quantize_store,
decode_attention and prefill_attention, registered with torch.library so that torch.compile
traces them (each has a fake implementation that checks shapes and dtypes and makes outputs
without touching data) and CUDA graphs capture them (they run on torch's current stream and
allocate only through torch). On a GPU they run the CUDA kernels; on the CPU (a CPU kernel of the
same ops) the library's CPU code on the same page layout: the same bytes in the pages, the CPU
engine's attention over them.

    import torch, turboquant.torch_ops as tqo
    cache = tqo.CudaKvCache("k3v2", layers=32, kv_heads=8, head_dim=128, num_pages=1024)
    cache.store(layer, k, v, slots)                     # k, v: [tokens, kv_heads, head_dim] fp16/bf16/fp32
    out = cache.decode(layer, q, block_tables, seq_lens, max_seq_len)   # q: [seqs, 1..9, q_heads, head_dim]

The ops themselves are torch.ops.turboquant.{new_cache, quantize_store, decode_attention,
prefill_attention, decode_attention_side, prefill_attention_side}; the pages are a uint8 tensor
[layers, num_pages, kv_heads, block_bytes] in the format of docs/format.md. The ops take a spec's
format (specs with policy knobs are refused by name); the policy's sink and window are the side
buffer of the *_side attention ops (SideView in include/tq/cuda/kernels.h), and edge layers are
pages of their own format (turboquant.transformers.TurboQuantCache puts them together). Importing this module
needs torch; the CUDA ops need a build with the CUDA kernels (turboquant.HAVE_CUDA) and a GPU.
Before capturing a CUDA graph, run each shape once: the first call of a (spec, shape, device)
uploads the codec tables.
"""


import atexit
import functools
import numbers
import math
from typing import Optional, Tuple

import torch

from . import _C

__all__ = ["CudaKvCache", "available", "page_shape", "decode_attention", "decode_attention_side", "new_cache", "prefill_attention",
           "prefill_attention_side", "quantize_store"]

_ROW_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_DECODE_QUERY_TOKENS = 9  # kernels.h kMaxDecodeQueryTokens
MAX_PREFILL_CHUNK = 2048  # kernels.h kMaxPrefillChunk


def available() -> bool:
    """Whether the CUDA ops can run here: a build with the CUDA kernels and a visible GPU (the CPU
    ops run everywhere)."""
    return bool(_C.HAVE_CUDA) and torch.cuda.is_available()


def _require() -> None:
    if not _C.HAVE_CUDA:
        raise RuntimeError("this turboquant build has no CUDA kernels: pip install . where nvcc is found (docs/python.md)")


@functools.lru_cache(maxsize=None)
def _spec(spec: str) -> "_C.KvSpec":
    s = _C.KvSpec(spec)
    if s.policy:
        raise ValueError(f"KV spec '{spec}': the CUDA ops implement the page format only, not the policy knob '{s.policy[0]}' "
                         "(sink, window and edge layers belong to the engine)")
    return s


def page_shape(spec: str, layers: int, kv_heads: int, head_dim: int, num_pages: int) -> Tuple[int, int, int, int]:
    """The shape of the pages tensor: [layers, num_pages, kv_heads, block_bytes] (uint8)."""
    s = _spec(spec)
    for name, v, hi in (("layers", layers, 4096), ("kv_heads", kv_heads, 1024), ("head_dim", head_dim, 1024), ("num_pages", num_pages, 1 << 31)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if not 1 <= v <= hi:
            raise ValueError(f"{name} must be 1..{hi}, got {v}")
    return (layers, num_pages, kv_heads, s.page_bytes(1, 1, head_dim))


@functools.lru_cache(maxsize=None)
def _format(spec: str, layers: int, kv_heads: int, head_dim: int, device: int) -> "_C.CudaFormat":
    _require()
    return _C.CudaFormat(_spec(spec), layers, kv_heads, head_dim, device)


@functools.lru_cache(maxsize=None)
def _cpu_format(spec: str, layers: int, kv_heads: int, head_dim: int) -> "_C.CpuFormat":
    return _C.CpuFormat(_spec(spec), layers, kv_heads, head_dim)


# nanobind objects held by the caches are released before the interpreter's teardown (nanobind
# reports objects still alive at its exit as leaks)
atexit.register(lambda: [f.cache_clear() for f in (_spec, _format, _cpu_format)])


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _check_pages(fn: str, pages: torch.Tensor, spec: str, head_dim: int) -> None:
    if pages.dtype != torch.uint8 or pages.dim() != 4:
        raise TypeError(f"{fn}: pages must be a uint8 tensor [layers, num_pages, kv_heads, block_bytes] (new_cache), got "
                        f"{pages.dtype} {list(pages.shape)}")
    want = page_shape(spec, pages.shape[0], pages.shape[2], head_dim, pages.shape[1])
    _check(tuple(pages.shape) == want, f"{fn}: pages {list(pages.shape)} are not pages of '{spec}' at head_dim {head_dim} "
                                       f"(block_bytes {want[3]})")
    _check(pages.is_contiguous(), f"{fn}: pages must be contiguous")


def _check_rows(fn: str, name: str, t: torch.Tensor, shape: Tuple[Optional[int], ...], device: torch.device) -> None:
    if t.dtype not in _ROW_DTYPES:
        raise TypeError(f"{fn}: {name} must be float16, bfloat16 or float32, got {t.dtype}")
    _check(t.dim() == len(shape) and all(w is None or w == g for w, g in zip(shape, t.shape)),
           f"{fn}: {name} must have shape [{', '.join('*' if w is None else str(w) for w in shape)}], got {list(t.shape)}")
    _check(t.device == device, f"{fn}: {name} is on {t.device}, the pages on {device}")
    _check(t.is_contiguous(), f"{fn}: {name} must be contiguous (tensor.contiguous())")


def _check_ints(fn: str, name: str, t: torch.Tensor, dtype: torch.dtype, shape: Tuple[Optional[int], ...], device: torch.device) -> None:
    if t.dtype != dtype:
        raise TypeError(f"{fn}: {name} must be {dtype}, got {t.dtype}")
    _check(t.dim() == len(shape) and all(w is None or w == g for w, g in zip(shape, t.shape)),
           f"{fn}: {name} must have shape [{', '.join('*' if w is None else str(w) for w in shape)}], got {list(t.shape)}")
    _check(t.device == device, f"{fn}: {name} is on {t.device}, the pages on {device}")
    _check(t.is_contiguous(), f"{fn}: {name} must be contiguous")


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


# ---- new_cache ----------------------------------------------------------------------------------
def _check_device(device) -> torch.device:
    """The ops' devices: the CPU and CUDA (another was told there was no NVIDIA driver)."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"new_cache: device {str(device)!r} is not supported: the pages live on 'cpu' or 'cuda'")
    return device


@torch.library.custom_op("turboquant::new_cache", mutates_args=())
def new_cache(spec: str, layers: int, kv_heads: int, head_dim: int, num_pages: int, device: torch.device) -> torch.Tensor:
    """Zeroed pages of `spec` for a model shape, with the format's codec tables uploaded to `device`
    ('cpu' or 'cuda')."""
    shape = page_shape(spec, layers, kv_heads, head_dim, num_pages)
    device = _check_device(device)
    if device.type == "cpu":
        # the host cache's 64 GiB bound on pages and codec tables, counted before either exists
        try:
            _C.check_host_cache(_spec(spec), layers, kv_heads, head_dim, num_pages)
        except ValueError as e:
            raise ValueError(f"new_cache: {e}") from None
        _cpu_format(spec, layers, kv_heads, head_dim)  # builds the codecs now, and refuses a head dim they cannot take
    else:
        _require()  # (before torch.cuda is asked for a device: a build without the kernels says so)
        # a cache the attention kernels cannot read is refused now, not at its first attention call
        unsupported = _C.gpu_kernels_unsupported(_spec(spec), head_dim)
        _check(not unsupported, f"new_cache: {unsupported}")
        _format(spec, layers, kv_heads, head_dim, device.index if device.index is not None else torch.cuda.current_device())
    return torch.zeros(shape, dtype=torch.uint8, device=device)


@new_cache.register_fake
def _(spec, layers, kv_heads, head_dim, num_pages, device):
    _check_device(device)
    return torch.empty(page_shape(spec, layers, kv_heads, head_dim, num_pages), dtype=torch.uint8, device=device)


# ---- quantize_store -----------------------------------------------------------------------------
def _check_rank(fn: str, name: str, t: torch.Tensor, dims: Tuple[str, ...]) -> None:
    """The rank, before the head dim is read from the last size."""
    _check(t.dim() == len(dims), f"{fn}: {name} must be [{', '.join(dims)}], got shape {list(t.shape)}")


def _check_store(pages, k, v, slots, spec, layer):
    fn = "quantize_store"
    _check_rank(fn, "k", k, ("tokens", "kv_heads", "head_dim"))
    head_dim = k.shape[-1]
    _check_pages(fn, pages, spec, head_dim)
    _check(0 <= layer < pages.shape[0], f"{fn}: layer {layer} is outside the cache's {pages.shape[0]} layers")
    _check_ints(fn, "slots", slots, torch.int64, (None,), pages.device)
    n, kv_heads = slots.shape[0], pages.shape[2]
    _check_rows(fn, "k", k, (n, kv_heads, head_dim), pages.device)
    _check_rows(fn, "v", v, (n, kv_heads, head_dim), pages.device)
    _check(k.dtype == v.dtype, f"{fn}: k is {k.dtype}, v is {v.dtype}: give both the same dtype")


def _store_cuda(pages, k, v, slots, spec, layer):
    _check_store(pages, k, v, slots, spec, layer)
    f = _format(spec, pages.shape[0], pages.shape[2], k.shape[-1], pages.device.index)
    f.quantize_store(layer, pages, k, v, slots, _stream(pages.device))


def _store_cpu(pages, k, v, slots, spec, layer):
    _check_store(pages, k, v, slots, spec, layer)
    f = _cpu_format(spec, pages.shape[0], pages.shape[2], k.shape[-1])
    # fp16 and bf16 rows widen to float32 exactly: the codes the CUDA kernel writes from them
    f.quantize_store(layer, pages, k.float().contiguous(), v.float().contiguous(), slots, _threads())


@torch.library.custom_op("turboquant::quantize_store", mutates_args=("pages",))
def quantize_store(pages: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, spec: str, layer: int) -> None:
    """Rotates, quantizes and packs new K/V rows into their slots (page * page_size + offset; -1
    skips) of `layer`. k, v: [tokens, kv_heads, head_dim]; slots: int64 [tokens], distinct apart
    from -1 (as vLLM's reshape_and_cache: of two rows given one slot, which lands is unspecified;
    checking would cost the GPU a sort and a sync every call)."""
    _store_cuda(pages, k, v, slots, spec, layer)


quantize_store.register_kernel("cpu")(_store_cpu)


@quantize_store.register_fake
def _(pages, k, v, slots, spec, layer):
    _check_store(pages, k, v, slots, spec, layer)


# ---- decode_attention / prefill_attention -------------------------------------------------------
def _check_side(fn, pages, q, side, side_slots, new_k, new_v, sink, window):
    if sink < 0 or window < 0:
        raise ValueError(f"{fn}: sink and window must be >= 0, got {sink} and {window}")
    if not sink and not window:
        return
    if side is None or side_slots is None or new_k is None or new_v is None:
        raise ValueError(f"{fn}: a side buffer (sink {sink}, window {window}) needs side, side_slots, new_k and new_v")
    seqs, ntok, kv_heads, head_dim = q.shape[0], q.shape[1], pages.shape[2], q.shape[3]
    if side.dtype != torch.float16 or side.dim() != 6:
        raise TypeError(f"{fn}: side must be a float16 tensor [slots, layers, sink + ring, 2, kv_heads, head_dim], got {side.dtype} "
                        f"{list(side.shape)}")
    _check(side.shape[1] == pages.shape[0] and side.shape[3:] == (2, kv_heads, head_dim),
           f"{fn}: side {list(side.shape)} must be [slots, {pages.shape[0]}, sink + ring, 2, {kv_heads}, {head_dim}]")
    rows = side.shape[2]
    _check(rows >= sink and (rows == sink if window == 0 else rows - sink >= window),
           f"{fn}: side holds {rows} rows a layer; sink {sink} and window {window} need sink + a ring of at least the window")
    _check(side.device == pages.device and side.is_contiguous(), f"{fn}: side must be contiguous, on {pages.device}")
    _check_ints(fn, "side_slots", side_slots, torch.int32, (seqs,), pages.device)
    _check_rows(fn, "new_k", new_k, (seqs, ntok, kv_heads, head_dim), pages.device)
    _check_rows(fn, "new_v", new_v, (seqs, ntok, kv_heads, head_dim), pages.device)
    _check(new_k.dtype == new_v.dtype, f"{fn}: new_k is {new_k.dtype}, new_v is {new_v.dtype}: give both the same dtype")


def _check_attention(fn, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, max_q_tokens, out_dtype,
                     side=None, side_slots=None, new_k=None, new_v=None, sink=0, window=0):
    _check_rank(fn, "q", q, ("seqs", "tokens", "q_heads", "head_dim"))
    head_dim = q.shape[-1]
    _check_pages(fn, pages, spec, head_dim)
    _check(0 <= layer < pages.shape[0], f"{fn}: layer {layer} is outside the cache's {pages.shape[0]} layers")
    _check_rows(fn, "q", q, (None, None, None, head_dim), pages.device)
    seqs, ntok, q_heads = q.shape[0], q.shape[1], q.shape[2]
    _check(1 <= ntok <= max_q_tokens, f"{fn}: {ntok} query tokens per sequence, the kernel takes 1..{max_q_tokens}")
    _check(q_heads % pages.shape[2] == 0, f"{fn}: q_heads ({q_heads}) must be a multiple of the cache's KV heads ({pages.shape[2]})")
    _check_ints(fn, "block_tables", block_tables, torch.int32, (seqs, None), pages.device)
    _check_ints(fn, "seq_lens", seq_lens, torch.int32, (seqs,), pages.device)
    _check(max_seq_len >= ntok, f"{fn}: max_seq_len ({max_seq_len}) must bound every sequence's length, at least the {ntok} queries")
    width, page_size = block_tables.shape[1], _spec(spec).page_size  # the CUDA kernels' bound (validate_attention)
    _check(max_seq_len <= width * page_size, f"{fn}: max_seq_len ({max_seq_len}) is more than a row of block_tables holds: {width} "
                                             f"pages x {page_size} = {width * page_size} tokens")
    if out_dtype is not None and out_dtype not in _ROW_DTYPES:
        raise TypeError(f"{fn}: out_dtype must be float16, bfloat16 or float32, got {out_dtype}")
    _check_side(fn, pages, q, side, side_slots, new_k, new_v, sink, window)


def _check_lengths(fn, seq_lens, max_seq_len):
    """max_seq_len bounds every length: the CUDA kernels split max_seq_len positions among their
    blocks, and a longer sequence's positions past them would not be read. The GPU cannot check
    the lengths (they are on the device); the CPU, whose lengths are on the host, refuses them."""
    if seq_lens.numel():
        longest = int(seq_lens.max())
        _check(longest <= max_seq_len, f"{fn}: max_seq_len ({max_seq_len}) is less than sequence {int(seq_lens.argmax())}'s length "
                                       f"({longest}): it must bound every seq_lens")


def _check_window(fn, sliding_window):
    _check(isinstance(sliding_window, int) and not isinstance(sliding_window, bool) and 0 <= sliding_window < 2**31,
           f"{fn}: sliding_window must be an int >= 0 and < 2**31 (0: none), got {sliding_window!r}")


def _check_scale(fn, scale):
    # (the kernels read any scale <= 0, NaN included, as "the default": refused here rather than
    # silently replaced)
    _check(scale == 0 or (math.isfinite(scale) and scale > 0),
           f"{fn}: scale must be 0 (1/sqrt(head_dim)) or a positive finite number, got {scale!r}")


def _max_tokens(prefill):
    return MAX_PREFILL_CHUNK if prefill else MAX_DECODE_QUERY_TOKENS


def _attention(prefill, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale, out_dtype, side, side_slots, new_k, new_v,
               sink, window, sliding_window=0):
    fn = "prefill_attention" if prefill else "decode_attention"
    _check_window(fn, sliding_window)
    _check_scale(fn, scale)
    _check_attention(fn, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, _max_tokens(prefill), out_dtype, side, side_slots,
                     new_k, new_v, sink, window)
    f = _format(spec, pages.shape[0], pages.shape[2], q.shape[-1], pages.device.index)
    out = torch.empty(q.shape, dtype=out_dtype or q.dtype, device=q.device)
    shape = (q.shape[0], q.shape[1], q.shape[2], block_tables.shape[1], max_seq_len, sink, window, sliding_window)
    ws_bytes = f.prefill_workspace_bytes(*shape) if prefill else f.decode_workspace_bytes(*shape)
    workspace = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device=q.device)
    f.attention(prefill, layer, pages, q, out, block_tables, seq_lens, max_seq_len, scale, workspace, _stream(pages.device),
                side, side_slots, new_k, new_v, sink, window, sliding_window)
    return out


def _attention_cpu(prefill, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale, out_dtype, side, side_slots, new_k, new_v,
                   sink, window, sliding_window=0):
    fn = "prefill_attention" if prefill else "decode_attention"
    _check_window(fn, sliding_window)
    _check_scale(fn, scale)
    _check_attention(fn, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, _max_tokens(prefill), out_dtype, side, side_slots,
                     new_k, new_v, sink, window)
    _check_lengths(fn, seq_lens, max_seq_len)
    f = _cpu_format(spec, pages.shape[0], pages.shape[2], q.shape[-1])
    out = torch.empty(q.shape, dtype=torch.float32)
    if sink or window:  # the side rows are fp16, the step's too (rounded as the CUDA kernels round them)
        new_k, new_v = new_k.to(torch.float16).contiguous(), new_v.to(torch.float16).contiguous()
    f.attention(layer, pages, q.float().contiguous(), out, block_tables, seq_lens, scale, side, side_slots, new_k, new_v, sink, window,
                _threads(), sliding_window)
    return out.to(out_dtype or q.dtype)


@torch.library.custom_op("turboquant::decode_attention", mutates_args=())
def decode_attention(pages: torch.Tensor, q: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor, spec: str, layer: int,
                     max_seq_len: int, scale: float = 0.0, out_dtype: Optional[torch.dtype] = None, sliding_window: int = 0) -> torch.Tensor:
    """Paged attention of each sequence's last 1..9 tokens (q: [seqs, tokens, q_heads, head_dim],
    causal among themselves) over its pages: block_tables int32 [seqs, max_pages], seq_lens int32
    [seqs] (the queries' K/V rows already stored), max_seq_len a bound of seq_lens known on the
    host. GQA: query head h reads KV head h / (q_heads / kv_heads). scale 0: 1/sqrt(head_dim).
    sliding_window > 0: a query at position p sees only positions t with p - t < sliding_window."""
    return _attention(False, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale, out_dtype, None, None, None, None, 0, 0,
                      sliding_window)


@torch.library.custom_op("turboquant::prefill_attention", mutates_args=())
def prefill_attention(pages: torch.Tensor, q: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor, spec: str, layer: int,
                      max_seq_len: int, scale: float = 0.0, out_dtype: Optional[torch.dtype] = None, sliding_window: int = 0) -> torch.Tensor:
    """decode_attention for a chunk of up to 2048 new queries per sequence (chunked prefill): each
    attends to the packed prefix and, causally, to the chunk (store the chunk's K/V first)."""
    return _attention(True, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale, out_dtype, None, None, None, None, 0, 0,
                      sliding_window)


# The side-buffer variants are ops of their own: a mutated argument must be given (torch's custom
# ops index mutated arguments by position), so the plain ops keep their signature.
@torch.library.custom_op("turboquant::decode_attention_side", mutates_args=("side",))
def decode_attention_side(pages: torch.Tensor, q: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor, spec: str,
                          layer: int, max_seq_len: int, side: torch.Tensor, side_slots: torch.Tensor, new_k: torch.Tensor,
                          new_v: torch.Tensor, sink: int, window: int, scale: float = 0.0,
                          out_dtype: Optional[torch.dtype] = None, sliding_window: int = 0) -> torch.Tensor:
    """decode_attention with the KV policy's side buffer (SideView in include/tq/cuda/kernels.h):
    a query at position p reads positions < sink and within `window` of p from the fp16 side
    rows instead of the pages. side: float16 [slots, layers, sink + ring, 2, kv_heads, head_dim]
    (ring >= window, 0 without a window), side_slots int32 [seqs] each sequence's slot, new_k /
    new_v [seqs, tokens, kv_heads, head_dim] the rows just stored: the step's own positions are
    read from them, and the call then writes them into the slots (sink rows, the ring's last
    `ring` positions)."""
    return _attention(False, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale, out_dtype, side, side_slots, new_k, new_v,
                      sink, window, sliding_window)


@torch.library.custom_op("turboquant::prefill_attention_side", mutates_args=("side",))
def prefill_attention_side(pages: torch.Tensor, q: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor, spec: str,
                           layer: int, max_seq_len: int, side: torch.Tensor, side_slots: torch.Tensor, new_k: torch.Tensor,
                           new_v: torch.Tensor, sink: int, window: int, scale: float = 0.0,
                           out_dtype: Optional[torch.dtype] = None, sliding_window: int = 0) -> torch.Tensor:
    """prefill_attention with the side buffer of decode_attention_side."""
    return _attention(True, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale, out_dtype, side, side_slots, new_k, new_v,
                      sink, window, sliding_window)


def _register(op, prefill: bool, side: bool) -> None:
    fn = "prefill_attention" if prefill else "decode_attention"

    if side:
        def cpu(pages, q, block_tables, seq_lens, spec, layer, max_seq_len, side, side_slots, new_k, new_v, sink, window, scale=0.0,
                out_dtype=None, sliding_window=0):
            return _attention_cpu(prefill, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale, out_dtype, side, side_slots,
                                  new_k, new_v, sink, window, sliding_window)

        def fake(pages, q, block_tables, seq_lens, spec, layer, max_seq_len, side, side_slots, new_k, new_v, sink, window, scale=0.0,
                 out_dtype=None, sliding_window=0):
            _check_window(fn, sliding_window)
            _check_scale(fn, scale)
            _check_attention(fn, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, _max_tokens(prefill), out_dtype, side,
                             side_slots, new_k, new_v, sink, window)
            return torch.empty(q.shape, dtype=out_dtype or q.dtype, device=q.device)
    else:
        def cpu(pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale=0.0, out_dtype=None, sliding_window=0):
            return _attention_cpu(prefill, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale, out_dtype, None, None, None,
                                  None, 0, 0, sliding_window)

        def fake(pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale=0.0, out_dtype=None, sliding_window=0):
            _check_window(fn, sliding_window)
            _check_scale(fn, scale)
            _check_attention(fn, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, _max_tokens(prefill), out_dtype)
            return torch.empty(q.shape, dtype=out_dtype or q.dtype, device=q.device)
    op.register_kernel("cpu")(cpu)
    op.register_fake(fake)


for _op, _prefill, _side in ((decode_attention, False, False), (prefill_attention, True, False), (decode_attention_side, False, True),
                             (prefill_attention_side, True, True)):
    _register(_op, _prefill, _side)


# The ops' kernels without the torch dispatcher, for eager callers that call them per layer and
# step (turboquant.transformers): the same code, less Python between the calls.
def store(pages, k, v, slots, spec: str, layer: int) -> None:
    """quantize_store on the pages' device, eagerly."""
    (_store_cpu if pages.device.type == "cpu" else _store_cuda)(pages, k, v, slots, spec, layer)


def attend(prefill: bool, pages, q, block_tables, seq_lens, spec: str, layer: int, max_seq_len: int, scale: float = 0.0, out_dtype=None,
           side=None, side_slots=None, new_k=None, new_v=None, sink: int = 0, window: int = 0, sliding_window: int = 0):
    """prefill_attention (prefill) or decode_attention, with the side buffer where sink or window
    is set (the *_side ops), on the pages' device, eagerly; sliding_window as the ops take it."""
    fn = _attention_cpu if pages.device.type == "cpu" else _attention
    return fn(prefill, pages, q, block_tables, seq_lens, spec, layer, max_seq_len, scale, out_dtype, side, side_slots, new_k, new_v, sink,
              window, sliding_window)


class CudaKvCache:
    """Pages of a KV spec on a GPU and the ops over them, layer by layer."""

    def __init__(self, spec: str, layers: int, kv_heads: int, head_dim: int, num_pages: int, device="cuda"):
        self.spec = _C.KvSpec(spec).canonical
        self.head_dim = head_dim
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"CudaKvCache lives on a CUDA device, got {device}")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.pages = torch.ops.turboquant.new_cache(self.spec, layers, kv_heads, head_dim, num_pages, device)
        self.page_size = _spec(self.spec).page_size

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        torch.ops.turboquant.quantize_store(self.pages, k, v, slots, self.spec, layer)

    def decode(self, layer, q, block_tables, seq_lens, max_seq_len, scale=0.0, out_dtype=None, sliding_window=0) -> torch.Tensor:
        return torch.ops.turboquant.decode_attention(self.pages, q, block_tables, seq_lens, self.spec, layer, max_seq_len, scale, out_dtype,
                                                     sliding_window)

    def prefill(self, layer, q, block_tables, seq_lens, max_seq_len, scale=0.0, out_dtype=None, sliding_window=0) -> torch.Tensor:
        return torch.ops.turboquant.prefill_attention(self.pages, q, block_tables, seq_lens, self.spec, layer, max_seq_len, scale, out_dtype,
                                                      sliding_window)
