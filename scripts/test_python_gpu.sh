#!/usr/bin/env bash
# The Python package on the GPU machine (the H200): pip install . with the CUDA kernels, then every
# test of tests/python, the torch ops' included (tests/python/test_torch_ops.py). The machine is
# offline and has torch, CMake and nvcc but not fmt: scripts/python_gpu_deps.sh fills .devdeps/
# here first (the backend's wheels, fmt's headers, stories260K), and the run carries it:
#   run(command="bash scripts/test_python_gpu.sh", carry=[".devdeps"])
# Logs go to $OUT (or ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
py=${PYTHON:-python3}
if ls .devdeps/wheels/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tq-site .devdeps/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/tq-site${PYTHONPATH:+:$PYTHONPATH}
fi
deps=()
[ -f .devdeps/fmt/format.h ] && deps=(--config-settings=cmake.define.TQ_DEPS_DIR="$PWD/.devdeps")
[ -d .devdeps/data/stories260K ] && export TQ_SHARED_DATA="$PWD/.devdeps/data"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
start=$(date +%s)
"$py" -m pip install --no-build-isolation --no-deps --no-index -v . --config-settings=cmake.define.TQ_CUDA=ON --config-settings=build-dir=build/python-gpu "${deps[@]}" \
  >"$OUT/pip_install.log" 2>&1 || { tail -40 "$OUT/pip_install.log"; exit 1; }
echo "pip install . with CUDA: $(( $(date +%s) - start )) s"
cd "$OUT"  # import the installed package, not python/ of the source tree
"$py" -c "import torch, turboquant as tq; print('turboquant', tq.__version__, 'HAVE_CUDA', tq.HAVE_CUDA, 'torch', torch.__version__, torch.cuda.get_device_name())"
"$py" -m pytest "$OLDPWD/tests/python" -v -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.log"
exit "${PIPESTATUS[0]}"
