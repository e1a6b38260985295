#!/usr/bin/env bash
# The vLLM attention backend's tests on this CPU machine (docs/vllm.md): scripts/vllm_env.sh makes or
# updates .vllm-venv (vllm==0.33.0, pytest, turboquant built CPU-only), then pytest runs tests/vllm
# (the plugin inside vLLM's loader, parser, selector, KV cache planner and allocator) and
# tests/python/test_vllm_adapter.py (the batch-to-ops mapping; its real-op part runs where the ops do).
# Not part of scripts/test.sh: the first run installs vLLM and its CUDA wheels (about 5 minutes and
# 10 GB here); later runs take about 30 s. TQ_VLLM_VENV picks another environment directory.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TQ_VLLM_VENV:-.vllm-venv}
start=$(date +%s)
bash scripts/vllm_env.sh "$venv"
echo "test_vllm.sh: environment ready in $(( $(date +%s) - start )) s"
start=$(date +%s)
rc=0
"$venv/bin/python" -m pytest tests/vllm tests/python/test_vllm_adapter.py -q -rs -p no:cacheprovider || rc=$?
echo "test_vllm.sh: tests took $(( $(date +%s) - start )) s"
exit "$rc"
