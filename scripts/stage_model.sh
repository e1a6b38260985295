#!/usr/bin/env bash
# Moves a model file bigger than one device call may carry (64 MiB) to the GPU machine in parts,
# over consecutive calls while the machine stays warm (device/README.md of the tool library).
#   here:   bash scripts/stage_model.sh split models/SmolLM2-135M-Instruct.Q4_1.gguf
#           -> .stage/<name>.part-00, .part-01, ... (48 MiB each) and <name>.sha256 (.stage is ignored)
#   there:  bash scripts/stage_model.sh put DIR
#           (each call carries one part in .stage/) moves the parts present into DIR; once all are
#           there, joins them into DIR/<name>, checks the SHA-256, removes the parts and prints the
#           path; exits 1 while a file is not complete.
# DIR must outlive the calls: an ignored folder at the repository root of the device's copy
# (e.g. models/), not inside a carried folder, which the next call replaces.
set -euo pipefail
cmd=${1:-}
case "$cmd" in
  split)
    f=${2:?usage: stage_model.sh split FILE}
    [[ -s $f ]] || { echo "stage_model.sh: '$f' is missing or empty" >&2; exit 2; }
    name=$(basename "$f")
    mkdir -p .stage
    rm -f ".stage/$name".*
    split -b 48M -d "$f" ".stage/$name.part-"
    # the checksum, then the part count (put joins that many: parts of an earlier, longer staging are left out)
    { (cd "$(dirname "$f")" && sha256sum "$name"); echo "# parts $(ls .stage/"$name".part-* | wc -l)"; } >".stage/$name.sha256"
    echo "$(ls .stage/"$name".part-* | wc -l) parts of $name in .stage/ ($(du -h "$f" | cut -f1)); carry one per call"
    ;;
  put)
    dest=${2:?usage: stage_model.sh put DIR}
    mkdir -p "$dest/.parts"
    shopt -s nullglob
    for p in .stage/*.part-* .stage/*.sha256; do cp "$p" "$dest/.parts/"; done
    incomplete=0
    for sum in "$dest"/.parts/*.sha256; do
      name=$(basename "$sum" .sha256)
      [[ -s $dest/$name ]] && (cd "$dest" && grep -v '^#' ".parts/$name.sha256" | sha256sum -c --quiet - >/dev/null 2>&1) &&
        { echo "$dest/$name"; continue; }
      want=$(sed -n 's/^# parts //p' "$sum")
      parts=()
      for ((i = 0; i < ${want:-0}; i++)); do
        part=$(printf '%s/.parts/%s.part-%02d' "$dest" "$name" "$i")
        [[ -f $part ]] && parts+=("$part")
      done
      if ((${#parts[@]} == ${want:-0} && ${want:-0} > 0)) && cat "${parts[@]}" >"$dest/$name.tmp" &&
        (cd "$dest" && grep -v '^#' ".parts/$name.sha256" | sed "s|  $name\$|  $name.tmp|" | sha256sum -c --quiet - >/dev/null 2>&1); then
        mv "$dest/$name.tmp" "$dest/$name"
        rm -f "$dest/.parts/$name".part-*  # the file is whole: a second copy would fill the device's disk
        echo "$dest/$name"
      else
        rm -f "$dest/$name.tmp"
        echo "stage_model.sh: $name: ${#parts[@]} of ${want:-?} part(s) staged, not complete yet" >&2
        incomplete=1
      fi
    done
    exit "$incomplete"  # nonzero until every file is whole, so that `put DIR && tq run -m DIR/...` waits for it
    ;;
  *)
    echo "usage: stage_model.sh split FILE | put DIR" >&2
    exit 2
    ;;
esac
