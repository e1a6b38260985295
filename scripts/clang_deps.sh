#!/usr/bin/env bash
# Makes sure clang and libFuzzer are here, for the sanitized build (the asan preset) and the fuzz
# harnesses: Debian 12's clang (/usr/bin/clang++) and libclang-rt-14-dev (libclang_rt.fuzzer and
# the sanitizer runtimes). Installs them when missing; the normal build needs neither (gcc).
set -euo pipefail
pkgs=(clang libclang-rt-14-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "clang_deps: the sanitized build and the fuzzers need clang and libFuzzer: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
lib=$(clang++ -print-file-name=libclang_rt.fuzzer-x86_64.a)
if [ ! -f "$lib" ]; then
  echo "clang_deps: clang++ ($(clang++ --version | head -1)) has no libFuzzer runtime (libclang_rt.fuzzer-x86_64.a):" \
       "install the libclang-rt package of that clang version" >&2
  exit 1
fi
