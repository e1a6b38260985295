#!/usr/bin/env bash
# Whole decode steps with the decode kernel's own choice of 8- or 16-row blocks (two m-tiles share
# each packed tile's decode) against 8-row blocks only (TQ_DECODE_ROWS=8), or any MODES of
# TQ_DECODE_ROWS (auto = unset, 8, 16), interleaved over ROUNDS rounds in alternating order, after
# bench/gpu/run_h200.sh has built build/h200. Prints a table of ms a step and the k-token step
# against the one-token step. Every run's JSON and text in $OUT/ab.tgz.
#   bash bench/gpu/decode_rows_ab.sh   (ROUNDS=2, ARGS="tq bench options" to change the grid)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
TQ=${TQ:-./build/h200/apps/cli/tq}
ARGS=${ARGS:---shape llama-3.1-8b --kv k3v2,default,bf16 --batch 1 --context 4096,32768 --queries 1,8,9 --prefill none --steps 20}
AB=$OUT/ab
mkdir -p "$AB"
MODES=${MODES:-auto 8}
for round in $(seq 1 "${ROUNDS:-2}"); do
  order=$MODES
  [ $((round % 2)) = 0 ] && order=$(printf '%s\n' $MODES | tac | tr '\n' ' ')  # the first run of a call ran ~1% slower
  for rows in $order; do
    if [ "$rows" = auto ]; then unset TQ_DECODE_ROWS; else export TQ_DECODE_ROWS=$rows; fi
    $TQ bench $ARGS --json "$AB/rows${rows}_$round.json" >"$AB/rows${rows}_$round.txt" 2>"$AB/rows${rows}_$round.err" ||
      { echo "tq bench failed (rows $rows, round $round)"; tail -5 "$AB/rows${rows}_$round.err"; }
  done
done
unset TQ_DECODE_ROWS
python3 bench/gpu/decode_rows_table.py "$AB"/rows*_*.json | tee "$OUT/decode_rows.md"
tar czf "$OUT/ab.tgz" -C "$OUT" ab && rm -rf "$AB"
