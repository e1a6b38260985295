"""The vLLM plugin's tests run in the environment scripts/vllm_env.sh makes (vllm==0.33.0 and this
package, CPU only): bash scripts/test_vllm.sh. vLLM's engine needs a GPU, so these tests drive vLLM's
own pieces (plugin loader, argument parser and config, attention selector and layer, KV cache
planner and allocator, CommonAttentionMetadata) up to the op calls; docs/vllm.md says what is not run."""

import os

# vLLM's CUDA wheel on a machine without a GPU resolves no platform, and its config needs one: the
# CPU platform stands in for configuration (CUDA-specific selection is emulated in the tests).
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
