#!/usr/bin/env bash
# The GPU runner against the CPU runner on a real model file, with the `tq` commands users run:
# perplexity per KV spec, pass-key results and greedy text on a set of prompts.
# Bounds. fp16 caches: perplexity within 0.5%, pass-key counts and greedy text (32 tokens) equal.
# Quantized caches: the GPU's K/V rows differ from the CPU's by bf16 weight rounding, so some codes
# land in the neighbouring cell and the cache is another draw of the same quantization, like another
# rotation seed. So each device runs three rotation seeds, and the means of the draws must agree
# within max(0.5%, 3 standard errors of their difference) (s: the draws' pooled relative standard
# deviation, n = 3); their text and pass-key counts are reported, not required equal.
#   bash bench/gpu/check_model.sh TQ MODEL TEXT [OUTDIR]
# CHECK_TOKENS=N scores N tokens of TEXT (4096; the CPU half of a larger model's sweep may outlast a
# device call: Gemma-3-270M's did at 4096).
# Prints one table; exits 1 when a comparison fails. `def` is tq run's default spec (sink, window,
# edge layers), on both devices.
set -uo pipefail
tq=${1:?tq binary}; model=${2:?model file}; text=${3:?text file}; out=${4:-${OUT:-.}}
def=k3v2:ip:edge=2/k4v4:sink=4:window=64:centre  # kDefaultKvSpec (include/tq/kv/spec.h)
specs=fp16,k4v4,k3v2,$def
seeds=k4v4:seed=1,k4v4:seed=2,k3v2:seed=1,k3v2:seed=2,$def:seed=1,$def:seed=2
for d in cpu cuda; do
  # fp16 reference on both devices (the GPU has no fp32 cache), so the rows compare alike.
  "$tq" perplexity -m "$model" -f "$text" --ctx 512 --max-tokens "${CHECK_TOKENS:-4096}" --kv $specs,$seeds --ref fp16 --chunk 128 --device $d --json \
    >"$out/ppl_$d.json" 2>"$out/ppl_$d.err" || { cat "$out/ppl_$d.err"; exit 1; }
  "$tq" passkey -m "$model" --kv fp16,k3v2,$def --lengths 256,1024 --device $d --json >"$out/passkey_$d.json" 2>"$out/passkey_$d.err" ||
    { cat "$out/passkey_$d.err"; exit 1; }
  i=0
  for p in "Why is the sky blue?" "Write a haiku about the sea." "What is 17 times 23?" "Name three uses of a paperclip." \
           "Explain what a KV cache is in one paragraph."; do
    for kv in fp16 $def; do
      "$tq" run -m "$model" --chat -p "$p" -n 32 --temp 0 --kv $kv --device $d >"$out/run_${d}_${i}_${kv//[:\/=]/_}.txt" 2>>"$out/run_$d.err" ||
        { tail -3 "$out/run_$d.err"; exit 1; }
    done
    i=$((i + 1))
  done
done
python3 - "$out" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
ok = True
def rows(path):
    return {r["kv"]: r for r in json.load(open(path))["rows"]}
cpu, gpu = rows(f"{out}/ppl_cpu.json"), rows(f"{out}/ppl_cuda.json")
print("| check | cpu | cuda | difference | bound | |")
print("|---|---|---|---|---|---|")
from statistics import mean, stdev
for kv in [k for k in cpu if ":seed=" not in k]:
    draws = lambda rows: [rows[k]["ppl"] for k in rows if k == kv or k.startswith(kv + ":seed=")]
    a, b = draws(cpu), draws(gpu)
    d = 100 * (mean(b) / mean(a) - 1)
    if len(a) == 1:
        bound, what = 0.5, "0.5%"
    else:
        s = 100 * ((stdev(a) / mean(a)) ** 2 / 2 + (stdev(b) / mean(b)) ** 2 / 2) ** 0.5
        bound = max(0.5, 3 * s * (2 / len(a)) ** 0.5)
        what = f"{bound:.2f}% (means of {len(a)} seeds; s {s:.2f}%)"
    good = abs(d) <= bound
    ok &= good
    print(f"| perplexity {kv} | {mean(a):.4f} | {mean(b):.4f} | {d:+.3f}% | {what} | {'ok' if good else 'FAIL'} |")
pc, pg = json.load(open(f"{out}/passkey_cpu.json"))["rows"], json.load(open(f"{out}/passkey_cuda.json"))["rows"]
for a, b in zip(pc, pg):
    good = a["correct"] == b["correct"]
    exact = a["kv"] == "fp16"
    ok &= good or not exact
    print(f"| passkey {a['kv']} @ {a['length']} | {a['correct']}/{a['trials']} | {b['correct']}/{b['trials']} | | "
          f"{'equal' if exact else 'reported'} | {'ok' if good else 'FAIL' if exact else 'differs'} |")
for kv in ("fp16", "k3v2_ip_edge_2_k4v4_sink_4_window_64_centre"):
    same = total = 0
    for f in sorted(glob.glob(f"{out}/run_cpu_*_{kv}.txt")):
        total += 1
        a, b = open(f).read(), open(f.replace("run_cpu_", "run_cuda_")).read()
        same += a == b
        if a != b:
            print(f"|   {os.path.basename(f)}: cpu {a!r}\n|   cuda {b!r}")
    exact = kv == "fp16"
    ok &= same == total or not exact
    print(f"| greedy text {kv}, 32 tokens | {total} prompts | {same} identical | | {'all' if exact else 'reported'} | "
          f"{'ok' if same == total else 'FAIL' if exact else 'differs'} |")
sys.exit(0 if ok else 1)
PY
