#!/usr/bin/env bash
# The virtual environment the vLLM plugin's tests run in (docs/vllm.md): vllm==0.33.0 from PyPI,
# pytest, and turboquant built from this checkout without the CUDA kernels (vLLM's GPU engine cannot
# run on the machines here; the tests check the plugin's wiring through vLLM's own loader, registry,
# metadata builder and KV cache spec). Usage: bash scripts/vllm_env.sh [venv dir, default .vllm-venv]
# Idempotent: vllm is installed once (a marker file records it), turboquant is rebuilt each run
# (build/python keeps the build, so that costs seconds when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION=0.33.0  # the version the plugin targets; pyproject.toml's `vllm` extra says the same
venv=${1:-${TQ_VLLM_VENV:-.vllm-venv}}
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check --quiet)
start=$(date +%s)
[ -x "$py" ] || python3 -m venv "$venv"
# the marker: vllm's version and the pins below (a pin changed is installed again)
marker="$VLLM_VERSION $(sha256sum tests/python/requirements.txt | cut -c1-16)"
if [ "$(cat "$venv/vllm.installed" 2>/dev/null)" != "$marker" ]; then
  # pytest and the build backend pinned as tests/python/requirements.txt pins them (so that the
  # turboquant build below needs no isolation), but not its numpy: vllm's dependencies choose that.
  "${pip[@]}" install "vllm==$VLLM_VERSION" $(grep -v '^numpy' tests/python/requirements.txt)
  echo "$marker" > "$venv/vllm.installed"
  echo "vllm_env.sh: vllm $VLLM_VERSION installed in $(( $(date +%s) - start )) s"
fi
mid=$(date +%s)
# One compile job at a time unless told otherwise: the CPU machines here are small and shared.
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-1} nice "${pip[@]}" install --no-build-isolation --no-deps . \
  --config-settings=cmake.define.TQ_CUDA=OFF
echo "vllm_env.sh: turboquant built and installed in $(( $(date +%s) - mid )) s"
