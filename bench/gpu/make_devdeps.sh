#!/usr/bin/env bash
# Makes .devdeps/ (ignored), the copies of this machine's Debian packages that a GPU machine without
# them builds against (TQ_DEPS_DIR; bench/gpu/run_h200.sh passes it): fmt's headers (header-only),
# GoogleTest's sources, and cpp-httplib for `tq serve` (its header, its shared library and the
# libraries that one loads: OpenSSL 3, zlib, Brotli; with the headers httplib.h includes, since its
# classes change layout with the OpenSSL and compression switches Debian built it with).
# Run scripts/setup.sh first; carry .devdeps with the work tree (14 MB; 3 MB as a tar.xz).
set -euo pipefail
cd "$(dirname "$0")/../.."
d=.devdeps
rm -rf "$d/fmt" "$d/googletest" "$d/httplib" && mkdir -p "$d/httplib/include" "$d/httplib/lib"  # what scripts/python_gpu_deps.sh adds stays
cp -r /usr/include/fmt "$d/"
cp -r /usr/src/googletest "$d/"
lib=/usr/lib/x86_64-linux-gnu
if [ -f /usr/include/httplib.h ] && [ -f "$lib/libcpp-httplib.so" ]; then
  cp /usr/include/httplib.h /usr/include/zlib.h /usr/include/zconf.h "$d/httplib/include/"
  cp -r /usr/include/openssl /usr/include/brotli "$d/httplib/include/"
  cp /usr/include/x86_64-linux-gnu/openssl/*.h "$d/httplib/include/openssl/"  # configuration.h, opensslconf.h
  for so in libcpp-httplib.so libssl.so.3 libcrypto.so.3 libz.so.1 libbrotlicommon.so.1 libbrotlidec.so.1 libbrotlienc.so.1; do
    cp -L "$lib/$so" "$d/httplib/lib/$so"
  done
  # under the soname the library records, for the loader (a copy: links may not travel)
  cp "$lib/libcpp-httplib.so" "$d/httplib/lib/$(objdump -p "$lib/libcpp-httplib.so" | awk '/SONAME/ {print $2}')"
else
  echo "make_devdeps.sh: libcpp-httplib-dev is not installed: tq serve will not be built there" >&2
fi
# cudnn-frontend's headers (header-only; scripts/setup.sh installs them into .venv) for the dense
# prompt path (src/cuda/dense_prompt.cpp); the GPU machine's cuDNN is torch's (nvidia-cudnn-cu13).
fe=$(ls -d .venv/lib/python3*/site-packages/include 2>/dev/null | head -1)
if [ -n "$fe" ] && [ -f "$fe/cudnn_frontend.h" ]; then
  rm -rf "$d/cudnn_frontend" && mkdir -p "$d/cudnn_frontend" && cp -r "$fe" "$d/cudnn_frontend/include"
else
  echo "make_devdeps.sh: cudnn-frontend is not in .venv (scripts/setup.sh python): no dense prompts there" >&2
fi
du -sh "$d"
