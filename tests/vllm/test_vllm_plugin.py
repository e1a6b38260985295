"""turboquant's attention backend inside vLLM 0.33's own machinery, on a CPU machine: the entry point
through vLLM's plugin loader, `--attention-backend CUSTOM` through vLLM's argument parser, config and
attention selector into real `Attention` layers of a Llama-shaped config (no weights, no download),
their KV cache spec through vLLM's planner and allocator, and the step metadata from vLLM's
CommonAttentionMetadata through our builder to the op calls (under FakeTensorMode: the ops' fake
implementations check every call's shapes and dtypes; the kernels themselves run in
tests/python/test_vllm_adapter.py where a GPU is)."""

import itertools
import json
import re
from importlib.metadata import entry_points

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here: bash scripts/vllm_env.sh makes .vllm-venv with vllm==0.33.0")
import torch  # noqa: E402
from vllm.config import set_current_vllm_config  # noqa: E402
from vllm.engine.arg_utils import EngineArgs  # noqa: E402
from vllm.model_executor.layers.attention import Attention  # noqa: E402
from vllm.platforms.interface import DeviceCapability  # noqa: E402
from vllm.plugins import load_general_plugins  # noqa: E402
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402
from vllm.v1.attention.backend import CommonAttentionMetadata  # noqa: E402
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402
from vllm.v1.attention.backends.utils import get_supported_kv_cache_layouts, resolve_kv_cache_layout  # noqa: E402
from vllm.v1.core.kv_cache_planning import get_kv_cache_config_from_groups, get_kv_cache_groups  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec  # noqa: E402
from vllm.v1.worker.utils import allocate_kv_cache, customize_attention_spec  # noqa: E402

import turboquant as tq  # noqa: E402
import turboquant.vllm_adapter as va  # noqa: E402
from turboquant.vllm_backend import TurboQuantBackend, TurboQuantImpl  # noqa: E402

assert vllm.__version__ == "0.33.0", f"the backend targets vLLM 0.33.0, this is {vllm.__version__}"

LAYERS, HEADS, KV_HEADS, HEAD_DIM = 4, 8, 4, 128
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HEADS * HEAD_DIM, "intermediate_size": 2048,
         "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "num_hidden_layers": LAYERS, "head_dim": HEAD_DIM,
         "vocab_size": 1000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float16"}
# Gemma 3's text-only checkpoints (Gemma3ForCausalLM): 5 sliding-window layers, then a full one.
GEMMA3_TEXT = {**LLAMA, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "num_hidden_layers": 6,
               "sliding_window": 512, "sliding_window_pattern": 6, "query_pre_attn_scalar": HEAD_DIM, "torch_dtype": "bfloat16"}
# The multimodal checkpoints (Gemma3ForConditionalGeneration, model_type gemma3) around the same text model.
GEMMA3 = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": GEMMA3_TEXT, "mm_tokens_per_image": 4,
          "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "image_size": 64, "patch_size": 16}, "torch_dtype": "bfloat16"}
_models = itertools.count()


def cuda_selection(selected_backend, attn_selector_config, num_heads=None):
    """vLLM's CUDA platform's branch for an explicitly selected backend (platforms/cuda.py
    get_attn_backend_cls), which cannot be imported without libcuda: the registry's class, checked by
    its validate_configuration on an H200 (compute capability 9.0)."""
    cls = selected_backend.get_class()
    reasons = cls.validate_configuration(device_capability=DeviceCapability(9, 0), **attn_selector_config._asdict())
    if reasons:
        raise ValueError(f"Selected backend {selected_backend} is not valid for this configuration. Reason: {reasons}")
    return f"{cls.__module__}.{cls.__qualname__}"


def engine_config(model_dir, hf_config):
    """The VllmConfig of `vllm serve <model_dir> --attention-backend CUSTOM`, through vLLM's parser,
    for a config.json only (no weights, no download); attention selection as on CUDA."""
    (model_dir / "config.json").write_text(json.dumps(hf_config))
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())  # loads the general plugins first, as vLLM's CLI does
    args = parser.parse_args(["--model", str(model_dir), "--attention-backend", "CUSTOM", "--skip-tokenizer-init", "--load-format", "dummy"])
    cfg = EngineArgs.from_cli_args(args).create_engine_config()
    from vllm import platforms

    platforms.current_platform.get_attn_backend_cls = cuda_selection
    return cfg


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """The VllmConfig of `vllm serve <llama> --attention-backend CUSTOM`."""
    return engine_config(tmp_path_factory.mktemp("llama"), LLAMA)


def make_layers(cfg, n=LAYERS, **kwargs):
    """n Attention layers as a Llama model builds them (each model of the tests has its own names)."""
    model = next(_models)
    with set_current_vllm_config(cfg):
        return [Attention(HEADS, HEAD_DIM, HEAD_DIM ** -0.5, num_kv_heads=KV_HEADS, cache_config=cfg.cache_config,
                          prefix=f"model{model}.layers.{i}.self_attn.attn", **kwargs) for i in range(n)]


def specs_of(cfg, layers):
    return {a.layer_name: customize_attention_spec(a.get_attn_backend(), a.get_kv_cache_spec(cfg)) for a in layers}


def test_entry_point_registers_the_backend_through_vllms_loader():
    assert "turboquant.vllm_plugin:register" in [e.value for e in entry_points(group="vllm.general_plugins")]
    load_general_plugins()
    assert AttentionBackendEnum["CUSTOM"].get_class() is TurboQuantBackend
    assert TurboQuantBackend.get_name() == "CUSTOM"


def test_one_flag_selects_it(config):
    assert config.attention_config.backend is AttentionBackendEnum.CUSTOM
    layer = make_layers(config, 1)[0]
    assert layer.attn_backend is TurboQuantBackend and isinstance(layer.impl, TurboQuantImpl)
    assert layer.backend is AttentionBackendEnum.CUSTOM


def test_what_the_ops_do_not_compute_is_refused(config, monkeypatch):
    reasons = TurboQuantBackend.validate_configuration(96, torch.float16, "fp8", 16, False, True, False, False, False,
                                                       DeviceCapability(9, 0), "decoder")
    assert {"head_size not supported", "kv_cache_dtype not supported", "attention sinks not supported"} <= set(reasons)
    assert any(r.startswith("turboquant: head size 96 ") and "--kv-cache-dtype 'fp8'" in r for r in reasons)  # ours: one reason
    with pytest.raises(NotImplementedError, match="soft-capping"):
        make_layers(config, 1, logits_soft_cap=30.0)
    with pytest.raises(NotImplementedError, match="V head size 64 differs"):
        specs_of(config, make_layers(config, 1, head_size_v=64))
    monkeypatch.setenv(va.ENV_SPEC, "k3v2:sink=4")
    with pytest.raises(ValueError, match="policy knob 'sink=4'"):
        make_layers(config, 1)


def test_the_selector_names_the_head_size_and_kv_cache_dtype_it_refuses(config, monkeypatch):
    """vLLM's own reasons ("head_size not supported") name neither the value nor the backend; the
    backend's supports_combination adds one that names both, and what is taken instead."""
    with pytest.raises(ValueError, match=re.escape("turboquant: head size 96 has no kernel; supported: 64, 128, 256")):
        with set_current_vllm_config(config):
            Attention(HEADS, 96, 96 ** -0.5, num_kv_heads=KV_HEADS, cache_config=config.cache_config, prefix=f"hs{next(_models)}.attn")
    monkeypatch.setenv(va.ENV_SPEC, "k4v4")
    monkeypatch.setattr(config.cache_config, "cache_dtype", "fp8")
    with pytest.raises(ValueError, match=re.escape("turboquant: --kv-cache-dtype 'fp8' must be auto/float16/bfloat16; the KV format "
                                                   "is $TURBOQUANT_KV_SPEC ('k4v4' here)")):
        make_layers(config, 1)


@pytest.mark.parametrize("spec, why", [("k3v2:prod", "prod keys have no GPU kernel"),
                                       ("k5v5", "this build has kernels for K and V widths 2..4 bits, got k5v5"),
                                       ("k8v8", "this build has kernels for K and V widths 2..4 bits, got k8v8"),
                                       ("k1v1", "this build has kernels for K and V widths 2..4 bits, got k1v1"),
                                       ("fp32", "fp32 caches have no GPU kernel"),
                                       ("k2.5v2.5", "fractional widths (K 2.5, V 2.5 bits: the outlier split)"),
                                       ("k2v4", None), ("bf16", None), ("fp8", None)])
def test_a_spec_the_kernels_do_not_run_is_refused_at_model_load(config, monkeypatch, spec, why):
    """gpu_kernels_unsupported's rule (src/kv/spec.cpp), at layer construction: not at the
    first request, where the kernels would refuse it."""
    monkeypatch.setenv(va.ENV_SPEC, spec)
    if why is None:
        assert make_layers(config, 1)[0].impl is not None
        return
    with pytest.raises(ValueError, match=f"KV spec '{re.escape(spec)}' has no CUDA attention kernel at head size {HEAD_DIM}: {re.escape(why)}"):
        make_layers(config, 1)


@pytest.mark.parametrize("spec, block_size", [("k3v2", 16), ("k4v4", 16), ("k2v2", 32), ("fp16", 16)])
def test_page_size_accounting(config, monkeypatch, spec, block_size):
    monkeypatch.setenv(va.ENV_SPEC, spec)
    monkeypatch.setattr(config.cache_config, "block_size", block_size)
    layers = make_layers(config)
    specs = specs_of(config, layers)
    s = next(iter(specs.values()))
    page = tq.KvSpec(spec + ("" if block_size == 16 else f":page={block_size}"))
    # one vLLM block of one layer is one page of the spec over the layer's KV heads, in bytes
    assert s.page_size_bytes == KV_HEADS * page.page_bytes(1, 1, HEAD_DIM) == va.page_size_bytes(va.resolve_spec(spec, block_size), KV_HEADS, HEAD_DIM)
    assert LAYERS * s.page_size_bytes == page.page_bytes(LAYERS, KV_HEADS, HEAD_DIM)  # = the engine's page of the model
    # vLLM's planner: the blocks that fit are the memory over the model's page bytes
    layouts = [x.name for x in get_supported_kv_cache_layouts([TurboQuantBackend])]
    monkeypatch.setattr(config.cache_config, "kv_cache_layout", None)
    resolve_kv_cache_layout(config, [layouts], specs.values())
    memory = 1 << 30
    kv = get_kv_cache_config_from_groups(config, get_kv_cache_groups(config, specs), memory)
    assert kv.num_blocks == memory // (LAYERS * s.page_size_bytes)
    fp16_blocks = memory // (LAYERS * 2 * block_size * KV_HEADS * HEAD_DIM * 2)  # what an fp16 cache would hold
    assert kv.num_blocks / fp16_blocks == pytest.approx(16 / page.bits_per_element(HEAD_DIM), rel=0.01)
    # vLLM's allocator hands each layer a view the ops take as its pages
    caches = allocate_kv_cache(kv, torch.device("cpu"), config.cache_config.get_resolved_kv_cache_layout())
    for name in specs:
        pages = va.pages_of(caches[name], KV_HEADS, HEAD_DIM, va.resolve_spec(spec, block_size))
        assert pages.shape == (1, kv.num_blocks, KV_HEADS, page.page_bytes(1, 1, HEAD_DIM))


def test_a_spec_with_another_page_size_is_refused_where_the_block_size_is_final(config, monkeypatch):
    """vLLM sizes pages through customize_spec with specs of block size 1 (a sliding-window layer's
    bytes per token; platforms/interface.py for hybrid and skip-layer models): those are sized, not
    refused. The metadata builder, which has the final block size, refuses a page= that differs."""
    monkeypatch.setenv(va.ENV_SPEC, "k3v2:page=32")
    probe = TurboQuantBackend.customize_spec(FullAttentionSpec(block_size=1, num_kv_heads=KV_HEADS, head_size=HEAD_DIM, dtype=torch.float16))
    assert probe.page_size_bytes == KV_HEADS * tq.KvSpec("k3v2:page=1").page_bytes(1, 1, HEAD_DIM)
    specs = specs_of(config, make_layers(config, 1, per_layer_sliding_window=512) + make_layers(config, 1))
    assert {type(x) for x in specs.values()} == {SlidingWindowSpec, FullAttentionSpec} and {x.block_size for x in specs.values()} == {16}
    for name, spec in specs.items():
        with pytest.raises(ValueError, match=re.escape("KV spec 'k3v2:page=32' has pages of 32 tokens but vLLM's block size is 16: "
                                                       "pass --block-size 32")):
            TurboQuantBackend.get_builder_cls()(spec, [name], config, torch.device("cpu"))
    monkeypatch.setattr(config.cache_config, "block_size", 32)  # what the message says to pass
    specs = specs_of(config, make_layers(config, 1, per_layer_sliding_window=512) + make_layers(config, 1))
    for name, spec in specs.items():
        assert TurboQuantBackend.get_builder_cls()(spec, [name], config, torch.device("cpu")).spec == "k3v2:page=32"


def test_metadata_from_vllms_common_metadata_reaches_the_ops(config, monkeypatch):
    monkeypatch.setenv(va.ENV_SPEC, "k3v2")
    layers = make_layers(config, 2)
    specs = specs_of(config, layers)
    spec = next(iter(specs.values()))
    builder = TurboQuantBackend.get_builder_cls()(spec, list(specs), config, torch.device("cpu"))
    # a step as vLLM's input batch makes it: two decodes, a 3-token speculative decode, a prompt chunk
    # over a cached prefix, then 3 padded tokens
    query_lens, context = [1, 1, 3, 40], [30, 77, 12, 16]
    seq_lens = [c + q for c, q in zip(context, query_lens)]
    qsl = torch.tensor([0, 1, 2, 5, 45], dtype=torch.int32)
    tables = torch.arange(4 * 8, dtype=torch.int32).view(4, 8)
    slots = torch.cat([torch.tensor([int(tables[r, t // 16]) * 16 + t % 16 for t in range(c, c + q)]) for r, (c, q) in
                       enumerate(zip(context, query_lens))] + [torch.full((3,), -1)]).long()
    common = CommonAttentionMetadata(query_start_loc=qsl, query_start_loc_cpu=qsl, seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
                                     num_reqs=4, num_actual_tokens=45, max_query_len=40, max_seq_len=max(seq_lens),
                                     block_table_tensor=tables, slot_mapping=slots)
    plan = builder.build(0, common)
    assert sorted((c.prefill, c.num_seqs, c.q_len) for c in plan.calls) == [(False, 1, 3), (False, 2, 1), (True, 1, 40)]
    assert plan.spec == "k3v2" and plan.num_actual_tokens == 45 and plan.max_seq_len == 77 + 1

    # every layer's forward, as vLLM's unified attention op calls it, under FakeTensorMode
    from torch._subclasses.fake_tensor import FakeTensorMode

    num_blocks = 40
    with FakeTensorMode(allow_non_fake_inputs=True):
        kv_cache = torch.empty(num_blocks, KV_HEADS, 1, va.block_bytes("k3v2", HEAD_DIM), dtype=torch.uint8)
        qkv = torch.randn(48, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=torch.float16)  # vLLM splits q, k, v out of one tensor
        q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
        for layer in layers:
            out = torch.empty(48, HEADS, HEAD_DIM, dtype=torch.float16)
            got = layer.impl.forward(layer, q.view(-1, HEADS, HEAD_DIM), k.view(-1, KV_HEADS, HEAD_DIM), v.view(-1, KV_HEADS, HEAD_DIM),
                                     kv_cache, plan, out)
            assert got.shape == (48, HEADS, HEAD_DIM)


@pytest.mark.parametrize("spec", ["k3v2", "k3v2:page=16"])
def test_sliding_window_layers_beside_full_ones(config, monkeypatch, spec):
    """Gemma 3's layout: sliding-window layers (window 512) and a full one. vLLM's selector takes the
    backend for both, each layer's impl carries its window to the ops, the sliding layers' KV spec is
    vLLM's SlidingWindowSpec with our page bytes (vLLM first sizes it with a block of one token, which
    a page= equal to the block size must pass), the planner puts the two kinds in groups of the same
    page size, and the allocator's views are pages."""
    monkeypatch.setenv(va.ENV_SPEC, spec)
    local = make_layers(config, 3, per_layer_sliding_window=512)
    full = make_layers(config, 1)
    assert all(a.impl.sliding_window == 512 for a in local) and full[0].impl.sliding_window is None
    specs = specs_of(config, local + full)
    kinds = {type(x) for x in specs.values()}
    assert SlidingWindowSpec in kinds and len(kinds) == 2
    for x in specs.values():
        assert x.page_size_bytes == va.page_size_bytes("k3v2", KV_HEADS, HEAD_DIM)
        if isinstance(x, SlidingWindowSpec):
            assert x.sliding_window == 512
    layouts = [x.name for x in get_supported_kv_cache_layouts([TurboQuantBackend])]
    monkeypatch.setattr(config.cache_config, "kv_cache_layout", None)
    resolve_kv_cache_layout(config, [layouts], specs.values())
    kv = get_kv_cache_config_from_groups(config, get_kv_cache_groups(config, specs), 1 << 30)
    caches = allocate_kv_cache(kv, torch.device("cpu"), config.cache_config.get_resolved_kv_cache_layout())
    for name in specs:
        assert va.pages_of(caches[name], KV_HEADS, HEAD_DIM, "k3v2").shape[1:3] == (kv.num_blocks, KV_HEADS)
    # each group's builder accepts its spec; the window reaches the op calls
    calls = []
    monkeypatch.setattr(va, "OPS", type("Ops", (), {
        "quantize_store": staticmethod(lambda *a: None),
        "decode_attention": staticmethod(lambda *a: calls.append(a[-1]) or torch.zeros(a[1].shape, dtype=a[8])),
        "prefill_attention": staticmethod(lambda *a: calls.append(a[-1]) or torch.zeros(a[1].shape, dtype=a[8]))}))
    for group in kv.kv_cache_groups:
        TurboQuantBackend.get_builder_cls()(group.kv_cache_spec, group.layer_names, config, torch.device("cpu"))
    qsl = torch.tensor([0, 1, 41], dtype=torch.int32)
    common = CommonAttentionMetadata(query_start_loc=qsl, query_start_loc_cpu=qsl, seq_lens=torch.tensor([700, 40], dtype=torch.int32),
                                     num_reqs=2, num_actual_tokens=41, max_query_len=40, max_seq_len=700,
                                     block_table_tensor=torch.zeros(2, 44, dtype=torch.int32), slot_mapping=torch.zeros(41, dtype=torch.long))
    plan = TurboQuantBackend.get_builder_cls()(specs[local[0].layer_name], [a.layer_name for a in local], config,
                                               torch.device("cpu")).build(0, common)
    kv_cache = caches[local[0].layer_name]
    q, k = torch.zeros(41, HEADS, HEAD_DIM, dtype=torch.float16), torch.zeros(41, KV_HEADS, HEAD_DIM, dtype=torch.float16)
    for a in local + full:
        a.impl.forward(a, q, k, k, kv_cache, plan, torch.empty(41, HEADS, HEAD_DIM, dtype=torch.float16))
    assert calls == [512, 512] * 3 + [0, 0]  # a decode and a prefill call a layer


def test_text_only_gemma3_is_selected_and_multimodal_gemma3_is_refused_by_vllm(config, tmp_path_factory):
    """What docs/vllm.md says of Gemma 3: a text-only checkpoint (model_type gemma3_text) gets the
    backend for its sliding-window and full layers; vLLM marks the multimodal one (model_type gemma3)
    a multimodal-prefix LM (bidirectional attention over image tokens), and its selector refuses a
    backend that does not declare supports_mm_prefix, as this one does not."""
    text = engine_config(tmp_path_factory.mktemp("gemma3_text"), GEMMA3_TEXT)
    assert not text.model_config.is_mm_prefix_lm and text.model_config.get_sliding_window() == 512
    layers = make_layers(text, 1, per_layer_sliding_window=512) + make_layers(text, 1)
    assert all(a.attn_backend is TurboQuantBackend for a in layers) and layers[0].impl.sliding_window == 512
    assert not TurboQuantBackend.supports_mm_prefix()
    multimodal = engine_config(tmp_path_factory.mktemp("gemma3"), GEMMA3)
    assert multimodal.model_config.is_mm_prefix_lm
    with pytest.raises(ValueError, match="partial multimodal token full attention not supported"):
        make_layers(multimodal, 1, per_layer_sliding_window=512)
