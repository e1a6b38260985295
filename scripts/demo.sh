#!/usr/bin/env bash
# Installs what is missing, builds, fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF)
# and runs it on the CPU with tq run's default KV cache (k3v2, the edge layers k4v4, sink and window
# in fp16 side buffers); then what that cache costs against fp16 and fp8, for this model and for a
# Llama-3.1-8B-shaped one, at a few context lengths.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh system  # the Debian packages; the demo needs nothing of .venv's (torch, transformers)
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc 2>/dev/null || echo 2)" --target tq
tq=build/release/apps/cli/tq
bash scripts/get_model.sh
"$tq" run --chat -p "Write a short poem about the sea." -n 120 --temp 0
echo
echo "== What one sequence's KV cache costs: SmolLM2-135M (30 layers, 3 KV heads x 64, trained to 8192 tokens)"
"$tq" kv-size --layers 30 --kv-heads 3 --head-dim 64 --kv fp16,fp8,k4v4,default,k3v2 --context 1024,8192
echo
echo "== The same for a Llama-3.1-8B shape (32 layers, 8 KV heads x 128) at long contexts"
"$tq" kv-size --layers 32 --kv-heads 8 --head-dim 128 --kv fp16,fp8,k4v4,default,k3v2 --context 8192,32768,131072
# The bottom line, from the same numbers: one 32K-token sequence of the 8B shape.
"$tq" kv-size --layers 32 --kv-heads 8 --head-dim 128 --kv fp16,fp8,default --context 32768 --json | python3 -c '
import json, sys
rows = {row["kv"]: row["mib_at_32768"] for row in json.load(sys.stdin)["rows"]}
fp16, fp8 = rows.pop("fp16"), rows.pop("fp8")
(spec, ours), = rows.items()
print(f"\nOne 32K-token sequence of Llama-3.1-8B: {ours:.1f} MiB with the default cache ({spec}),")
print(f"against {fp16:.0f} MiB in fp16 ({fp16 / ours:.1f}x more) and {fp8:.0f} MiB in fp8 ({fp8 / ours:.1f}x more).")'
