#!/usr/bin/env bash
# Makes sure clang and libFuzzer are here, for the sanitized build (the asan preset) and the fuzz
# harnesses: the distribution's clang (/usr/bin/clang++) and the libclang-rt-<version>-dev of it
# (libclang_rt.fuzzer and the sanitizer runtimes). Installs them when missing; the normal build needs neither (gcc).
set -euo pipefail
# clang first, then the runtime package of its own version (14 on Debian 12, 18 on Ubuntu 24.04,
# 19 on Debian 13: a fixed libclang-rt-14-dev matched only the first)
install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "clang_deps: the sanitized build and the fuzzers need clang and libFuzzer: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
install clang
install "libclang-rt-$(clang++ -dumpversion | cut -d. -f1)-dev"
lib=$(clang++ -print-file-name=libclang_rt.fuzzer-x86_64.a)
if [ ! -f "$lib" ]; then
  echo "clang_deps: clang++ ($(clang++ --version | head -1)) has no libFuzzer runtime (libclang_rt.fuzzer-x86_64.a):" \
       "install the libclang-rt package of that clang version" >&2
  exit 1
fi
