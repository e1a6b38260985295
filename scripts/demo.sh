#!/usr/bin/env bash
# Installs what is missing, builds, fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF)
# and runs it on the CPU with a K3/V2 TurboQuant KV cache; then the KV-cache sizes of a
# Llama-3-8B-shaped model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc 2>/dev/null || echo 2)"
tq=build/release/apps/cli/tq
bash scripts/get_model.sh
"$tq" run --chat -p "Write a short poem about the sea." -n 120 --temp 0 --kv k3v2:sink=4:window=64
"$tq" kv-size --layers 32 --kv-heads 8 --head-dim 128 --kv fp16,fp8,k4v4,k3v2,k2v2 --context 32768
