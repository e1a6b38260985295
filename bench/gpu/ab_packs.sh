#!/usr/bin/env bash
# A kernel change against its baseline from two prebuilt C-API packs (bench/gpu/prebuild.sh
# SUITES="tq_capi" PREBUILT=...), with no build on the GPU: the decode benchmark of each pack in
# its own process beside torch, alternating base and head for ROUNDS rounds (default 2; the first
# run of a call runs slightly slower, so the order flips each round), then ab_table.py's table;
# every run's JSON and text in $OUT/ab.tgz.
# Carry both packs. BASE and HEAD: the packs' folders; ARGS: bench_decode.py's options (default:
# the targets' shapes, k3v2 at HEAD_DIM, default 128). Results in $OUT (or ./gpu-out).
#   BASE=.stage/capi HEAD=.stage/five HEAD_DIM=64 bash bench/gpu/ab_packs.sh
# A store change: the bulk store and whole prompts (dense, the store beside it) instead of decode:
#   ARGS="--prefill-only --no-prefill --whole 4096,8192 --dense --specs k3v2" BASE=... HEAD=... ROUNDS=3 bash bench/gpu/ab_packs.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
BASE=${BASE:?the baseline pack (e.g. .stage/capi)}
HEAD=${HEAD:?the changed pack}
HEAD_DIM=${HEAD_DIM:-128}
ROUNDS=${ROUNDS:-2}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ab_packs.sh: ROUNDS is a whole number of rounds, not '$ROUNDS'"; exit 1; }
for P in "$BASE" "$HEAD"; do
  [ -f "$P/libtq_capi.so" ] || [ -f "$P/libtq_capi.so.xz" ] || { echo "ab_packs.sh: no libtq_capi.so in $P"; exit 1; }
  if [ -f "$P/libtq_capi.so.xz" ]; then xz -d -f "$P/libtq_capi.so.xz" || exit 1; fi
done
rm -rf "$OUT/ab" && mkdir -p "$OUT/ab"  # this call's runs only
# The packs' own libraries (prebuild.sh's lib/: the same cuDNN-free runtime for both), cuDNN for
# --dense (torch's, PyPI nvidia-cudnn-cu13, as run_prebuilt.sh finds it) and the toolkit's.
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null)
export LD_LIBRARY_PATH=$PWD/$BASE/lib${cudnn:+:$cudnn/lib}:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ARGS=${ARGS:---head-dim $HEAD_DIM --specs k3v2 --shapes $(python3 bench/gpu/targets.py --shapes) --no-bulk --no-prefill}
for round in $(seq 1 "$ROUNDS"); do
  order="base h200"
  [ $((round % 2)) = 0 ] && order="h200 base"
  for tree in $order; do  # ab_table.py's names: base, and h200 for the head
    P=$BASE
    [ "$tree" = h200 ] && P=$HEAD
    python3 bench/gpu/bench_decode.py --lib "$P/libtq_capi.so" --json "$OUT/ab/decode_${tree}_r$round.json" $ARGS \
      >"$OUT/ab/decode_${tree}_r$round.txt" 2>&1 || { echo "ab_packs.sh: $P, round $round failed:"; tail -5 "$OUT/ab/decode_${tree}_r$round.txt"; }
  done
done
python3 bench/gpu/ab_table.py "$OUT/ab" | tee "$OUT/ab_table.md"
tar czf "$OUT/ab.tgz" -C "$OUT" ab && rm -rf "$OUT/ab"  # one file: a call brings back a few only
