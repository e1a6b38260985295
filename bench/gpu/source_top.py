"""Prints the SASS instructions of an Nsight Compute source-page CSV (profile_source.sh) with the
most warp-state samples, and each one's leading stall reasons.
    python3 bench/gpu/source_top.py ncu_source_decode_kernel.csv [rows]"""
import csv
import sys


def number(s):
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return 0.0


def main():
    rows = [r for r in csv.reader(open(sys.argv[1])) if r]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    head_i = next(i for i, r in enumerate(rows) if any("Source" == c for c in r))
    head, body = rows[head_i], rows[head_i + 1:]
    col = {name: i for i, name in enumerate(head)}
    total_c = next(i for i, n in enumerate(head) if "Sampling (All" in n)
    # per-reason sample columns: names like "stall_long_sb" or "Warp Stall Sampling (... long_scoreboard)"
    reasons = [i for i, n in enumerate(head) if n.startswith("stall_") or "stalled_" in n]
    total = sum(number(r[total_c]) for r in body if len(r) > total_c)
    print(f"{len(body)} instructions, {total:.0f} samples; columns: {', '.join(head[:6])} ...")
    order = sorted(range(len(body)), key=lambda i: -number(body[i][total_c]) if len(body[i]) > total_c else 0)
    for i in order[:top]:
        r = body[i]
        n = number(r[total_c])
        why = sorted(((number(r[j]), head[j]) for j in reasons if j < len(r) and number(r[j]) > 0), reverse=True)[:3]
        why_s = " ".join(f"{name.replace('stall_', '')}:{v:.0f}" for v, name in why)
        print(f"{i:5d} {r[col.get('Address', 0)]:>6} {100 * n / max(total, 1):5.1f}%  {r[col['Source']][:60]:60s} {why_s}")


if __name__ == "__main__":
    main()
