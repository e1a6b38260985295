#!/usr/bin/env bash
# Installs what turboquant needs to build and test on a fresh Debian/Ubuntu machine.
# Idempotent: packages already present are skipped, so a second run costs seconds.
set -euo pipefail

pkgs=(build-essential cmake ninja-build pkg-config
      libgtest-dev libgmock-dev libbenchmark-dev
      libcli11-dev libfmt-dev nlohmann-json3-dev libcpp-httplib-dev  # tq serve: JSON and HTTP
      python3-pip python3-venv)  # scripts/get_model.sh downloads the model wheel with pip; .venv below

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi

# .venv: the Python packages the tests use, from PyPI, kept out of the system Python: the openai
# client that tests tq serve (tests/serve/requirements.txt), numpy and gguf for the reference
# forward pass of tests/engine/ref_logits.py (tests/engine/requirements.txt). CMake runs those tests
# with .venv/bin/python. The Python package's tests and build backend: tests/python/requirements.txt;
# torch and transformers for its transformers integration: tests/python/requirements-torch.txt.
# matplotlib for the quality plots (bench/quality/requirements.txt; tests/scripts draws them).
cd "$(dirname "$0")/.."
reqs=(tests/serve/requirements.txt tests/engine/requirements.txt tests/python/requirements.txt tests/python/requirements-torch.txt
  bench/quality/requirements.txt)
if [ -x .venv/bin/python ] && cat "${reqs[@]}" | cmp -s - .venv/requirements.installed; then
  echo "setup: .venv up to date"
else
  echo "setup: installing $(cat "${reqs[@]}" | tr '\n' ' ')into .venv"
  python3 -m venv .venv
  for r in "${reqs[@]}"; do .venv/bin/pip install --quiet --disable-pip-version-check -r "$r"; done
  cat "${reqs[@]}" > .venv/requirements.installed
fi

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: nvcc found, CUDA sources will be compiled (sm_90; scripts/test.sh: sm_80 to sm_120)"
else
  echo "setup: no nvcc, CUDA sources are skipped (CPU build only)"
fi
