#!/usr/bin/env bash
# The Python package's part of the test command: pip install . into .venv (scripts/setup.sh makes
# it, with tests/python/requirements.txt: pytest, numpy and the build backend), then pytest on
# tests/python. The tests compare with the tq command of build/release (TQ_BIN elsewhere) and read
# stories260K from ../shared/data ($TQ_SHARED_DATA); what is missing is reported as skipped.
# The package is built without the CUDA kernels here unless TQ_PYTHON_CUDA=ON: the C++ build has
# compiled and tested them already, and a second compilation would double CI's longest step. A
# plain `pip install .` builds them wherever nvcc is found.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
start=$(date +%s)
# No build isolation: the backend is in .venv already (no download per run; the GPU machine, offline,
# installs it from wheels the same way). build/python keeps the build between runs.
# A unity build, as the release build's (scripts/test.sh says why).
"$py" -m pip install --quiet --disable-pip-version-check --no-build-isolation . --config-settings=cmake.define.TQ_CUDA="${TQ_PYTHON_CUDA:-OFF}" \
  --config-settings=cmake.define.CMAKE_UNITY_BUILD="${TQ_UNITY_BUILD:-ON}"
echo "test_python.sh: pip install . took $(( $(date +%s) - start )) s"
"$py" -m pytest tests/python -q -rs -p no:cacheprovider
