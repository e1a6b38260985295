#!/usr/bin/env bash
# Fills .devdeps/ (ignored by git, carried to the GPU machine with the work tree) with what
# scripts/test_python_gpu.sh needs there, where nothing can be downloaded: the wheels of the build
# backend for its Python 3.12 (.devdeps/wheels), fmt's headers (.devdeps/fmt, as bench/gpu/run_h200.sh
# uses them) and stories260K for the LLM test (.devdeps/data); gguf's wheel too, for the transformers
# benchmark. Run here, on a machine with PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .devdeps/wheels  # a pin bumped would leave both versions' wheels, which test_python_gpu.sh installs together
mkdir -p .devdeps/wheels .devdeps/data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .devdeps/wheels \
  scikit-build-core==0.11.6 nanobind==2.9.2 pathspec==0.12.1 packaging==25.0 \
  gguf==0.19.0  # transformers reads GGUF files with it (bench/python/transformers_cache.py --gguf)
[ -d .devdeps/fmt ] || cp -r /usr/include/fmt .devdeps/
data=${TQ_SHARED_DATA:-../shared/data}
[ -d "$data/stories260K" ] && cp -r "$data/stories260K" .devdeps/data/
du -sh .devdeps
