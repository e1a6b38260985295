"""The core of turboquant's vLLM attention backend (turboquant.vllm_backend, docs/vllm.md), with no
vLLM import: it maps vLLM's batch (a flat token layout cut by query_start_loc, block tables, slot
mappings, per-layer cache tensors) onto the torch ops of turboquant.torch_ops, so it runs and is
tested where vLLM is not installed (the GPU machine has torch but not vLLM).

A layer's cache, as vLLM allocates it for our KV cache spec, is a uint8 view [num_blocks, kv_heads,
1, block_bytes]: one packed block (docs/format.md) per (page, KV head), a page being one vLLM block.
The ops take pages [layers, num_pages, kv_heads, block_bytes]; each layer's view is passed as a
one-layer cache (layer 0), so every layer uses the rotations the spec's seed gives layer 0.

A step's batch becomes one quantize_store of all its new tokens, then attention calls: requests are
grouped by query length (the ops take a dense [seqs, tokens, heads, dim] query), a group of length
1..9 is one decode_attention call, a longer one is cut into chunks of up to 2048 queries, each one
prefill_attention call (or decode_attention for a last chunk of at most 9, the decode kernels'
kMaxDecodeQueryTokens) over the sequence as it stands at the chunk's end. The plan is built once
per step on the host from query_start_loc_cpu.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from . import _C
from .torch_ops import MAX_DECODE_QUERY_TOKENS, MAX_PREFILL_CHUNK

ENV_SPEC = "TURBOQUANT_KV_SPEC"
DEFAULT_SPEC = "k3v2"
# Head dims every spec's kernels take (tq/cuda launch_common.cpp attention_unsupported): TurboQuant
# rows padded to these work too, but a float spec (fp16) needs them exactly, so only these are claimed.
SUPPORTED_HEAD_SIZES = (64, 128, 256)
# vLLM's --kv-cache-dtype values the backend takes: the cache's bytes are the KV spec's, so only the
# ones that ask for no quantization of vLLM's own (fp8, ...) are accepted.
SUPPORTED_KV_CACHE_DTYPES = ("auto", "float16", "bfloat16")
# The ops the adapter calls (torch.ops.turboquant.*); a module attribute so that the CPU tests can
# put a reference in their place where the ops have no implementation.
OPS = torch.ops.turboquant


def configured_spec() -> str:
    """The KV spec the backend stores: $TURBOQUANT_KV_SPEC, else k3v2 (read in every vLLM process;
    workers inherit the environment)."""
    return os.environ.get(ENV_SPEC, "").strip() or DEFAULT_SPEC


def _parse(spec: str) -> "_C.KvSpec":
    """The parsed spec, refusing policy knobs: the backend stores the page format only."""
    s = _C.KvSpec(spec)
    if s.policy:
        raise ValueError(f"KV spec '{spec}': the vLLM backend stores the page format only, not the policy knob "
                         f"'{s.policy[0]}' (sink, window and edge layers are the turboquant engine's; docs/vllm.md)")
    return s


def _names_page(spec: str) -> bool:
    return any(opt.strip().startswith("page=") for opt in spec.split(":")[1:])


def with_page(spec: str, block_size: int) -> str:
    """The spec's format with pages of block_size tokens, whatever page= it names, refusing nothing
    else: what a KV cache spec of that block size holds. vLLM calls customize_spec with specs of
    block size 1 to measure bytes per token (sliding-window layers, hybrid and skip-layer page
    sizing), so sizing must not refuse a page= that is meant for the final block size."""
    s = _parse(spec)
    if s.page_size == block_size:
        text = s.canonical
    else:
        base = ":".join(opt for opt in s.canonical.split(":") if not opt.startswith("page="))
        text = _C.KvSpec(f"{base}:page={block_size}").canonical
    return text  # (seed= travels in the canonical form: the rotations it names are the pages' bytes)


def resolve_spec(spec: str, block_size: Optional[int] = None) -> str:
    """The spec with vLLM's final block size as its page size (None: checks the spec only). A spec
    naming another page size is refused: vLLM's --block-size decides how many tokens a block covers.
    Only where the block size is final (the metadata builder); sizing probes use with_page."""
    s = _parse(spec)
    if block_size is None:
        return with_page(spec, s.page_size)
    if _names_page(spec) and s.page_size != block_size:
        raise ValueError(f"KV spec '{spec}' has pages of {s.page_size} tokens but vLLM's block size is {block_size}: "
                         f"pass --block-size {s.page_size}, or drop page= from the spec")
    return with_page(spec, block_size)


def head_size_unsupported(head_size: int) -> str:
    """Why the backend does not take a head size ('' when it does), naming it."""
    if head_size in SUPPORTED_HEAD_SIZES:
        return ""
    return (f"head size {head_size} has no kernel; supported: {', '.join(map(str, SUPPORTED_HEAD_SIZES))} (the CUDA kernels' "
            "head dims; TurboQuant rows padded up to one of them, e.g. 112, are not claimed here)")


def kv_cache_dtype_unsupported(kv_cache_dtype: Optional[str]) -> str:
    """Why the backend does not take vLLM's --kv-cache-dtype ('' when it does), naming it."""
    if kv_cache_dtype is None or kv_cache_dtype in SUPPORTED_KV_CACHE_DTYPES:
        return ""
    return (f"--kv-cache-dtype '{kv_cache_dtype}' must be {'/'.join(SUPPORTED_KV_CACHE_DTYPES)}; the KV format is "
            f"${ENV_SPEC} ('{configured_spec()}' here)")


def kernel_unsupported(spec: str, head_size: int) -> str:
    """Why the CUDA attention kernels do not run `spec` at `head_size` ('' when they do): the rule of
    every build (tq::gpu_kernels_unsupported, which the CUDA build's attention_unsupported applies
    too). The GPU's shared memory, which depends on the device, is checked at the op's first call."""
    return _C.gpu_kernels_unsupported(_C.KvSpec(spec), head_size)


def check_kernels(spec: str, head_size: int) -> None:
    """Refuses, naming the spec and the rule, a spec the CUDA kernels do not run: at model load, not
    at the first request."""
    why = kernel_unsupported(spec, head_size)
    if why:
        raise ValueError(f"KV spec '{spec}' has no CUDA attention kernel at head size {head_size}: {why}. The kernels run "
                         "TurboQuant K and V of 2..4 bits with MSE keys, or fp16, bf16 or fp8 for both, at head dims 64, 128 "
                         "and 256 (gpu_kernels_unsupported in src/kv/spec.cpp; docs/vllm.md)")


def block_bytes(spec: str, head_size: int) -> int:
    """Bytes of one packed block: a page of one KV head (a page of `spec`'s page_size tokens)."""
    return _C.KvSpec(spec).page_bytes(1, 1, head_size)


def page_size_bytes(spec: str, kv_heads: int, head_size: int) -> int:
    """Bytes of one vLLM block of one layer: what our KV cache spec reports as page_size_bytes."""
    return kv_heads * block_bytes(spec, head_size)


def check_layer(num_heads: int, head_size: int, num_kv_heads: Optional[int], *, alibi_slopes=None, sliding_window=None,
                logits_soft_cap=None, attn_type: str = "decoder", head_size_v: Optional[int] = None, extra: Optional[dict] = None) -> None:
    """Refuses, by name, what the ops do not compute."""
    def no(what):
        raise NotImplementedError(f"turboquant's vLLM backend: {what} (docs/vllm.md)")

    if attn_type != "decoder":
        no(f"attention type '{attn_type}' is not supported, only causal decoder attention")
    if alibi_slopes is not None:
        no("ALiBi is not supported")
    if sliding_window is not None and not (isinstance(sliding_window, int) and not isinstance(sliding_window, bool)
                                           and 1 <= sliding_window < 2**31):
        no(f"a sliding window of {sliding_window!r} (an int in 1 .. 2**31 - 1: the positions a query sees, itself included)")
    if logits_soft_cap:
        no(f"logits soft-capping ({logits_soft_cap}) is not supported")
    if head_size_unsupported(head_size):
        no(head_size_unsupported(head_size))
    if head_size_v is not None and head_size_v != head_size:
        no(f"V head size {head_size_v} differs from the K head size {head_size}")
    kv = num_kv_heads or num_heads
    if num_heads % kv:
        no(f"{num_heads} query heads are not a multiple of {kv} KV heads")
    for name, value in (extra or {}).items():
        if value is not None and value is not False:
            no(f"'{name}' is not supported")


@dataclass
class Call:
    """One attention op call: num_seqs sequences of q_len queries each."""
    prefill: bool
    num_seqs: int
    q_len: int
    start: int  # the rows are start .. start + num_seqs * q_len of the flat batch when rows is None
    rows: Optional[torch.Tensor]  # int64 [num_seqs * q_len]: the rows of the flat batch, sequence-major
    block_table: torch.Tensor  # int32 [num_seqs, max_blocks]
    seq_lens: torch.Tensor  # int32 [num_seqs]: each sequence's length at the end of this call's queries


@dataclass
class Plan:
    """A step's attention plan, shared by every layer."""
    spec: str
    num_actual_tokens: int
    slot_mapping: torch.Tensor  # int64 [num_actual_tokens]; -1: not stored (padding)
    max_seq_len: int
    calls: List[Call] = field(default_factory=list)


def build_plan(spec: str, query_start_loc_cpu: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor,
               slot_mapping: torch.Tensor, num_actual_tokens: int, max_seq_len: int) -> Plan:
    """The plan of one step from vLLM's CommonAttentionMetadata fields: query_start_loc_cpu (host,
    [num_reqs + 1]), seq_lens (device int32, each request's length including this step's queries),
    block_table (device int32 [num_reqs, max_blocks]), slot_mapping (device int64), max_seq_len
    (a host bound of seq_lens)."""
    qsl = query_start_loc_cpu.to(torch.int64).numpy()
    num_reqs = len(qsl) - 1
    query_lens = np.diff(qsl)
    block_table = block_table[:num_reqs]
    seq_lens = seq_lens[:num_reqs]
    if block_table.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise TypeError(f"block_table and seq_lens must be int32, got {block_table.dtype} and {seq_lens.dtype}")
    device = block_table.device
    plan = Plan(spec, int(num_actual_tokens), slot_mapping[:num_actual_tokens].to(torch.int64), int(max_seq_len))
    for q_len in np.unique(query_lens):
        q_len = int(q_len)
        if q_len == 0:
            continue  # padding requests
        reqs = np.flatnonzero(query_lens == q_len)
        consecutive = bool(reqs[-1] - reqs[0] + 1 == len(reqs))
        reqs_t = None if consecutive else torch.from_numpy(reqs).to(device)
        tables = block_table[reqs[0]:reqs[-1] + 1] if consecutive else block_table.index_select(0, reqs_t)
        lens = seq_lens[reqs[0]:reqs[-1] + 1] if consecutive else seq_lens.index_select(0, reqs_t)
        step = MAX_DECODE_QUERY_TOKENS if q_len <= MAX_DECODE_QUERY_TOKENS else MAX_PREFILL_CHUNK
        for begin in range(0, q_len, step):
            end = min(q_len, begin + step)
            n = end - begin
            # rows are one contiguous range when the chunk is whole requests in a row, or one request
            if len(reqs) == 1 or (n == q_len and consecutive):
                start, rows = int(qsl[reqs[0]] + begin), None
            else:
                start = 0
                rows = torch.from_numpy((qsl[reqs][:, None] + begin + np.arange(n)[None, :]).reshape(-1)).to(device)
            chunk_lens = lens if end == q_len else lens - (q_len - end)  # the sequence as it stands at the chunk's end
            plan.calls.append(Call(n > MAX_DECODE_QUERY_TOKENS, len(reqs), n, start, rows, tables.contiguous(), chunk_lens.contiguous()))
    return plan


def pages_of(kv_cache: torch.Tensor, kv_heads: int, head_size: int, spec: str) -> torch.Tensor:
    """vLLM's per-layer cache view [num_blocks, kv_heads, 1, block_bytes] as the ops' one-layer pages."""
    bb = block_bytes(spec, head_size)
    if kv_cache.dtype != torch.uint8 or kv_cache.dim() != 4 or tuple(kv_cache.shape[1:]) != (kv_heads, 1, bb):
        raise ValueError(f"turboquant's vLLM backend: the layer's KV cache is {kv_cache.dtype} {list(kv_cache.shape)}, not uint8 "
                         f"[num_blocks, {kv_heads}, 1, {bb}] of '{spec}' (was the KV cache spec customized by TurboQuantBackend?)")
    if not kv_cache.is_contiguous():
        raise ValueError("turboquant's vLLM backend: the layer's KV cache view is not contiguous; it needs a layer-compact "
                         "KV cache layout (VLLM_KV_CACHE_LAYOUT=LBHNC)")
    return kv_cache.view(1, kv_cache.shape[0], kv_heads, bb)


def forward(plan: Plan, kv_cache: torch.Tensor, query: torch.Tensor, key: Optional[torch.Tensor], value: Optional[torch.Tensor],
            output: torch.Tensor, scale: float, sliding_window: Optional[int] = None) -> torch.Tensor:
    """One layer of a step: stores the step's new K/V rows (key/value None: a layer that shares another
    layer's cache, nothing to store), then attention into output [tokens, q_heads, head_dim]; rows past
    the plan's num_actual_tokens (vLLM's padding) are left as they are. sliding_window: a query at p
    sees p - t < sliding_window only; the ops read no page wholly before the window of a call's first
    query, which are the blocks vLLM hands back for sliding-window layers (its null block in the table)."""
    heads, dim = query.shape[1], query.shape[2]
    kv_heads = key.shape[1] if key is not None else kv_cache.shape[1]
    pages = pages_of(kv_cache, kv_heads, dim, plan.spec)
    n = plan.num_actual_tokens
    if key is not None and value is not None and n > 0:
        OPS.quantize_store(pages, key[:n].contiguous(), value[:n].contiguous(), plan.slot_mapping, plan.spec, 0)
    for c in plan.calls:
        rows = c.num_seqs * c.q_len
        q = query[c.start:c.start + rows] if c.rows is None else query.index_select(0, c.rows)
        q = q.reshape(c.num_seqs, c.q_len, heads, dim).contiguous()
        op = OPS.prefill_attention if c.prefill else OPS.decode_attention
        out = op(pages, q, c.block_table, c.seq_lens, plan.spec, 0, plan.max_seq_len, scale, output.dtype,
                 sliding_window or 0).view(rows, heads, dim)
        if c.rows is None:
            output[c.start:c.start + rows].copy_(out)
        else:
            output.index_copy_(0, c.rows, out)
    return output
