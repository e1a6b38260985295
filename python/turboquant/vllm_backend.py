"""turboquant as a vLLM attention backend (vLLM 0.33; docs/vllm.md). Selected with
`--attention-backend CUSTOM` once the `vllm.general_plugins` entry point (turboquant.vllm_plugin)
has registered it; the KV spec is $TURBOQUANT_KV_SPEC (default k3v2).

The backend customizes each layer's KV cache spec so that a vLLM block is one packed page of the
spec (tokens_per_state = block_size, one uint8 state of block_bytes per KV head): vLLM's memory
planner then sizes and counts blocks from our page bytes, and hands each layer a uint8 view
[num_blocks, kv_heads, 1, block_bytes]. The mapping of a step onto the ops is
turboquant.vllm_adapter's, which has no vLLM import; this module is the vLLM classes around it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, List, Optional

import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
)
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheLayout

from . import vllm_adapter as adapter

BACKEND_NAME = "CUSTOM"  # the AttentionBackendEnum member the plugin registers us under


class TurboQuantBackend(AttentionBackend):
    forward_includes_kv_cache_update = True  # forward() quantizes and stores the step's K/V first
    supported_dtypes: ClassVar[List[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    # The cache's bytes are the KV spec's; vLLM's own quantized dtypes (fp8, ...) are refused by its
    # selector, with the reason supports_combination gives.
    supported_kv_cache_dtypes: ClassVar[list] = list(adapter.SUPPORTED_KV_CACHE_DTYPES)

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls():
        return TurboQuantImpl

    @staticmethod
    def get_builder_cls():
        return TurboQuantMetadataBuilder

    @classmethod
    def get_supported_head_sizes(cls) -> List[int]:
        return list(adapter.SUPPORTED_HEAD_SIZES)

    @classmethod
    def supports_combination(cls, head_size: int, dtype: torch.dtype, kv_cache_dtype, block_size: Optional[int], use_mla: bool,
                             has_sink: bool, use_sparse: bool, use_mm_prefix: bool, device_capability) -> Optional[str]:
        """The reason vLLM's selector reports beside its own ("head_size not supported", ...), which
        name neither the value nor the backend: what is refused and what is taken."""
        reasons = [r for r in (adapter.head_size_unsupported(head_size), adapter.kv_cache_dtype_unsupported(kv_cache_dtype)) if r]
        return "; ".join(f"turboquant: {r}" for r in reasons) or None

    @classmethod
    def supports_sliding_window(cls) -> bool:
        # The ops take the layer's window, and read no page wholly before it: the blocks vLLM frees
        # there (its null block in the table) are never read (docs/vllm.md).
        return True

    @classmethod
    def customize_spec(cls, spec: AttentionSpec) -> AttentionSpec:
        """One vLLM block = one page of the KV spec: per KV head, one state of block_bytes bytes. vLLM
        also calls this with specs of block size 1 to measure bytes per token (sliding-window layers,
        hybrid and skip-layer page sizes), so the state is sized with the spec's page set to the
        given block size and a page= of the spec is not checked here, but by the metadata builder,
        which has the final block size."""
        if spec.head_size_v != spec.head_size:
            raise NotImplementedError(f"turboquant's vLLM backend: V head size {spec.head_size_v} differs from the K head size "
                                      f"{spec.head_size} (docs/vllm.md)")
        tq_spec = adapter.with_page(adapter.configured_spec(), spec.block_size)
        return replace(spec, dtype=torch.uint8, tokens_per_state=spec.block_size,
                       state_content_bytes=adapter.block_bytes(tq_spec, spec.head_size))

    @classmethod
    def supported_kv_cache_layouts(cls):
        # Layer-compact: a layer's blocks are contiguous, as the ops' pages tensor is. With one
        # state per block (N = 1) the two layouts are the same bytes.
        return (KVCacheLayout.LBHNC, KVCacheLayout.LBNHC)

    @classmethod
    def supports_device_cpu_query_lens_mismatch(cls) -> bool:
        return False  # the plan is made from the host's query lengths


class TurboQuantMetadataBuilder(AttentionMetadataBuilder[adapter.Plan]):
    # Attention runs eagerly between vLLM's piecewise CUDA graphs: the plan gathers per step.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.NEVER

    def __init__(self, kv_cache_spec: AttentionSpec, layer_names: List[str], vllm_config, device: torch.device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        # The block size is final here (customize_spec also sees vLLM's probes): a page= of the spec must match it.
        self.spec = adapter.resolve_spec(adapter.configured_spec(), kv_cache_spec.block_size)
        want = adapter.block_bytes(self.spec, kv_cache_spec.head_size)
        if kv_cache_spec.tokens_per_state != kv_cache_spec.block_size or kv_cache_spec.state_content_bytes != want:
            raise ValueError(f"turboquant's vLLM backend: the KV cache spec {kv_cache_spec} is not the packed page of "
                             f"'{self.spec}' (one state of {want} bytes per block and KV head); was its block size changed "
                             "after TurboQuantBackend.customize_spec (hybrid models are not supported)?")

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata, fast_build: bool = False) -> adapter.Plan:
        m = common_attn_metadata
        if m.causal is not True:
            raise NotImplementedError("turboquant's vLLM backend: non-causal attention is not supported")
        return adapter.build_plan(self.spec, m.query_start_loc_cpu, m.seq_lens, m.block_table_tensor, m.slot_mapping,
                                  m.num_actual_tokens, m.max_seq_len)


class TurboQuantImpl(AttentionImpl[adapter.Plan]):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: Optional[int] = None, alibi_slopes=None,
                 sliding_window: Optional[int] = None, kv_cache_dtype: str = "auto", logits_soft_cap: Optional[float] = None,
                 attn_type: str = AttentionType.DECODER, kv_sharing_target_layer_name: Optional[str] = None, **extra) -> None:
        adapter.check_layer(num_heads, head_size, num_kv_heads, alibi_slopes=alibi_slopes, sliding_window=sliding_window,
                            logits_soft_cap=logits_soft_cap, attn_type=str(getattr(attn_type, "value", attn_type)), extra=extra)
        # A bad spec, or one the CUDA kernels do not run at this head size, fails at model load, not at the first step.
        spec = adapter.configured_spec()
        adapter.resolve_spec(spec)
        adapter.check_kernels(spec, head_size)
        self.num_heads, self.head_size, self.scale = num_heads, head_size, float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.sliding_window = sliding_window
        self.kv_cache_dtype = kv_cache_dtype
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name

    def forward(self, layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: Optional[adapter.Plan], output: torch.Tensor, output_scale=None, output_block_scale=None) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("turboquant's vLLM backend: fused output quantization is not supported")
        if attn_metadata is None:
            return output.fill_(0)  # vLLM's profiling run: no cache yet
        if self.kv_sharing_target_layer_name is not None:
            key = value = None  # the target layer stored them
        return adapter.forward(attn_metadata, kv_cache, query, key, value, output, self.scale, self.sliding_window)

