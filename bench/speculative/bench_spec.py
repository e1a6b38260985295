#!/usr/bin/env python3
"""Speculative decoding against plain decoding, side by side: `tq run` with and without --spec on a
copy-heavy workload and on free generation, greedy, repeated; reports median generation tokens/s,
the ratio to plain decoding, the drafts' acceptance, and whether the text is the same.

  python3 bench/speculative/bench_spec.py --tq build/release/apps/cli/tq --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --device cpu --reps 5 --spec ngram,ngram:k=4

Workloads (texts from ../shared/data/text, Jane Austen's Emma):
  copy   a passage, the passage again, then its first words: the model goes on copying (like an edit
         or a quoted answer, where the output repeats the prompt)
  free   a chat request for a story: little to copy
"""
import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path


def workloads(text_file):
    lines = Path(text_file).read_text(encoding="utf-8").splitlines()
    passage = " ".join(lines[199:212]).strip()
    first = " ".join(passage.split()[:12])
    return {
        "copy": (["-p", f"{passage}\n\n{passage}\n\n{first}"], False),
        "free": (["-p", "Write a long story about a dragon who learns to cook."], True),
    }


def run(args, extra, chat, spec):
    cmd = [args.tq, "run", "-m", args.model, "--device", args.device, "-n", str(args.tokens), "--kv", args.kv] + extra
    if chat:
        cmd.append("--chat")
    if spec:
        cmd += ["--spec", spec]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    m = re.search(r"generation: (\d+) tokens, ([\d.]+) tokens/s", p.stderr)
    s = re.search(r"(\d+) of (\d+) drafted tokens kept .*?, ([\d.]+) tokens per verify step", p.stderr)
    return {
        "text": p.stdout,
        "tokens": int(m.group(1)),
        "tps": float(m.group(2)),
        "accept": (int(s.group(1)) / max(int(s.group(2)), 1)) if s else None,
        "per_step": float(s.group(3)) if s else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tq", default="build/release/apps/cli/tq")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--kv", default="k3v2:edge=2/k4v4:sink=4:window=64")
    ap.add_argument("--spec", default="ngram", help="comma-separated --spec values to compare with plain decoding")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--text", default=str(Path(__file__).resolve().parents[2].parent / "shared/data/text/emma.txt"))
    args = ap.parse_args()
    specs = [""] + args.spec.split(",")
    print(f"| workload | spec | tokens | tokens/s (median of {args.reps}) | vs plain | drafts kept | tokens per verify step | same text |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (extra, chat) in workloads(args.text).items():
        results = {s: [] for s in specs}
        for _ in range(args.reps):  # interleaved, so drift in the machine's speed hits every config alike
            for s in specs:
                results[s].append(run(args, extra, chat, s))
        plain = statistics.median(r["tps"] for r in results[""])
        for s in specs:
            rs = results[s]
            tps = statistics.median(r["tps"] for r in rs)
            acc = f"{100 * rs[0]['accept']:.0f}%" if rs[0]["accept"] is not None else "-"
            per = f"{rs[0]['per_step']:.2f}" if rs[0]["per_step"] is not None else "-"
            same = all(r["text"] == results[""][0]["text"] for r in rs)
            print(f"| {name} | {s or 'plain'} | {rs[0]['tokens']} | {tps:.1f} | {tps / plain:.2f} | {acc} | {per} | {'yes' if same else 'NO'} |",
                  flush=True)


if __name__ == "__main__":
    main()
