#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main job on its default input: the paper's
# distortion table at d = 128 and the KV-cache sizes of a Llama-3-8B-shaped model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc 2>/dev/null || echo 2)"
tq=build/release/src/cli/tq
"$tq" distortion --dim 128 --bits 1,2,3,4 --method both
"$tq" kv-size --layers 32 --kv-heads 8 --head-dim 128 --kv fp16,fp8,k4v4,k3v2,k2v2 --context 32768
