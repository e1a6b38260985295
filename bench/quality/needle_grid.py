#!/usr/bin/env python3
"""Needle-in-a-haystack grid and the quality-against-bits Pareto plot (issue: quality, second round).

  run     tq passkey --by-depth --json over lengths x depths x trials for each KV spec, one JSON file
          (the GPU engine is ~100x faster than the CPU at 8K prompts: --device cuda where there is one)
  plot    heatmaps of a run's accuracy, one panel a spec, into a PNG
  pareto  quality against bits per element (KL and perplexity) from a results JSON of
          bench/quality/vs_llama_cpp_kv.py (ours and llama.cpp's cache types), into a PNG

  python3 bench/quality/needle_grid.py run --tq build/release/apps/cli/tq --device cuda \\
      --haystack ../shared/data/text/emma.txt --out bench/results/needle.json
  .venv/bin/python bench/quality/needle_grid.py plot bench/results/needle.json --png docs/needle_grid.png
  .venv/bin/python bench/quality/needle_grid.py pareto bench/results/2026-11-30-kv-vs-llama-cpp.json \\
      --png docs/quality_pareto.png

`run` needs only the tq binary (no Python packages); the plots need matplotlib
(bench/quality/requirements.txt, installed into .venv by scripts/setup.sh). Not part of CI, except
tests/scripts/test_needle_grid.py, which draws both plots from small inputs.
"""
import argparse
import datetime
import json
import subprocess
import sys
import time

DEFAULT_KV = "fp16,fp8,k4v4,k3v2,k3v2:ip:edge=2/k4v4:sink=4:window=64:centre"
# tq run's default spec (include/tq/kv/spec.h), and the one before 2026-12-01 (the committed
# grids ran it), as the plots label them
DEFAULT_POLICY = "k3v2:ip:edge=2/k4v4:sink=4:window=64:centre"
PREVIOUS_POLICY = "k3v2:edge=2/k4v4:sink=4:window=64"


def label(kv):
    """A spec's name in the plots: tq run's default policies by name, whatever the order of their options."""
    opts = sorted(kv.split(":"))
    if opts == sorted(DEFAULT_POLICY.split(":")):
        return "default policy"
    return "default policy until 2026-12-01" if opts == sorted(PREVIOUS_POLICY.split(":")) else kv


def run(a):
    cmd = [a.tq, "passkey", "--model", a.model, "--kv", a.kv, "--lengths", a.lengths, "--depths", a.depths,
           "--trials", str(a.trials), "--by-depth", "--json", "--seed", str(a.seed)]
    if a.haystack:
        cmd += ["--haystack", a.haystack]
    if a.device:
        cmd += ["--device", a.device]
    print("running:", " ".join(cmd), file=sys.stderr)
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"needle_grid: tq passkey failed with exit code {p.returncode}")
    rows = json.loads(p.stdout)["rows"]
    out = {"date": datetime.date.today().isoformat(), "command": " ".join(cmd), "seconds": round(time.time() - t0, 1),
           "rows": rows}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"needle_grid: {len(rows)} cells in {out['seconds']} s -> {a.out}", file=sys.stderr)
    for kv in dict.fromkeys(r["kv"] for r in rows):
        mine = [r for r in rows if r["kv"] == kv]
        print(f"{kv}: {sum(r['correct'] for r in mine)}/{sum(r['trials'] for r in mine)} keys found")


def grid(rows):
    """{kv: (lengths, depths, accuracy[depth][length])} from tq passkey --by-depth rows."""
    out = {}
    for kv in dict.fromkeys(r["kv"] for r in rows):
        mine = [r for r in rows if r["kv"] == kv]
        depths = sorted({r["depth"] for r in mine})
        lengths = sorted({r["asked"] for r in mine})  # columns: the asked lengths (prompts come out near them)
        acc = [[float("nan")] * len(lengths) for _ in depths]
        for r in mine:
            acc[depths.index(r["depth"])][lengths.index(r["asked"])] = r["correct"] / r["trials"]
        out[kv] = (lengths, depths, acc)
    return out


def plot(a):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(a.results) as f:
        res = json.load(f)
    g = grid(res["rows"])
    fig, axes = plt.subplots(1, len(g), figsize=(3.2 * len(g) + 1, 3.6), squeeze=False)
    for ax, (kv, (lengths, depths, acc)) in zip(axes[0], g.items()):
        im = ax.imshow(acc, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45, fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths], fontsize=7)
        for i in range(len(depths)):
            for j in range(len(lengths)):
                ax.text(j, i, f"{acc[i][j]:.1f}", ha="center", va="center", fontsize=6)
        ax.set_title(label(kv), fontsize=9)
        ax.set_xlabel("prompt tokens", fontsize=8)
    axes[0][0].set_ylabel("depth of the needle", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="keys found")
    fig.suptitle(a.title or f"Needle in a haystack ({res.get('date', '')})", fontsize=10)
    fig.savefig(a.png, dpi=130, bbox_inches="tight")
    print(f"needle_grid: {a.png}", file=sys.stderr)


def pareto(a):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(a.results) as f:
        rows = json.load(f)
    rows = [r for r in rows if r.get("bits") and r["bits"] < 16]  # the full-precision references are the zero
    for r in rows:
        r["x"] = r.get("bits_with_side", r["bits"])  # sink/window side buffers for a 2048-token window
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, ylabel in ((axes[0], "kl", "KL against the engine's own fp16 cache (nats, log scale)"),
                           (axes[1], "delta_pct", "perplexity change (%)")):
        for engine, marker, color in (("llama.cpp", "s", "tab:blue"), ("tq", "o", "tab:red")):
            mine = [r for r in rows if r["engine"] == engine and r.get(key) is not None]
            ax.scatter([r["x"] for r in mine], [r[key] for r in mine], marker=marker, color=color, label=engine)
            for r in mine:
                ax.annotate(label(r["kv"]), (r["x"], r[key]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("bits per element (side buffers counted at 2048 tokens)")
        ax.set_ylabel(ylabel, fontsize=8)
        if key == "kl":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(a.title or "Quality against bits per element (lower left is better)", fontsize=10)
    fig.savefig(a.png, dpi=130, bbox_inches="tight")
    print(f"needle_grid: {a.png}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the grid with tq passkey")
    r.add_argument("--tq", default="build/release/apps/cli/tq")
    r.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    r.add_argument("--kv", default=DEFAULT_KV)
    r.add_argument("--lengths", default="1024,2048,4096,6144,8000", help="prompt tokens (SmolLM2's context is 8192)")
    r.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    r.add_argument("--trials", type=int, default=10)
    r.add_argument("--haystack", default="../shared/data/text/emma.txt")
    r.add_argument("--device", default="")
    r.add_argument("--seed", type=int, default=1234)
    r.add_argument("--out", required=True)
    p = sub.add_parser("plot", help="heatmaps of a run")
    p.add_argument("results")
    p.add_argument("--png", required=True)
    p.add_argument("--title", default="")
    q = sub.add_parser("pareto", help="quality against bits from vs_llama_cpp_kv.py's JSON")
    q.add_argument("results")
    q.add_argument("--png", required=True)
    q.add_argument("--title", default="")
    a = ap.parse_args()
    {"run": run, "plot": plot, "pareto": pareto}[a.cmd](a)


if __name__ == "__main__":
    main()
