#!/usr/bin/env bash
# Builds the GPU test suites on this (development) machine for Hopper, and packs them for a GPU call
# that then runs them without building (bench/gpu/run_prebuilt.sh): every second of a GPU machine
# is device time, and the build of test_cuda alone is minutes of it. The suites are built as the
# GPU script builds them (release, -DTQ_CUDA_PORTABLE_ON_HOPPER=ON) for sm_90a only, SASS alone,
# stripped and xz-compressed into .stage/prebuilt/ (ignored; ~14 MB a suite), with the shared
# libraries they load from outside the C and C++ runtimes and CUDA's driver (fmt, cpp-httplib and
# what it loads, the CUDA runtime), so that they run on a GPU machine that lacks the Debian packages.
#   bash bench/gpu/prebuild.sh                       test_cuda
#   SUITES="test_cuda test_cuda_runner" bash bench/gpu/prebuild.sh
#   SUITES="tq_capi tq" bash bench/gpu/prebuild.sh   the C API library and the tq command, for a
#       benchmark call with no build (run_prebuilt.sh's BENCH_ARGS, ENGINE_BENCH)
#   VARIANTS="fmad|-fmad=false|attention_d64.cu" bash bench/gpu/prebuild.sh
#       also test_cuda with one CUDA source of src/cuda recompiled with FLAGS appended (the rest
#       of the library as built), as .stage/prebuilt/test_cuda_NAME: a diagnosis compares a
#       kernel's results under other compile options (space-separated NAME|FLAGS|SOURCE entries)
# Carry .stage in the call (`run` carry: [".stage"]; 64 MiB with the work tree, so three suites
# or variants at a time) and run `bash bench/gpu/run_prebuilt.sh` there.
# BUILD_DIR (default build/prebuilt) is the build folder; CMake's own flags as the GPU script's.
# PREBUILT (default .stage/prebuilt) is where the pack goes: two packs in two folders of .stage
# can be carried by two calls one after the other, as `run` carry [".stage/NAME"].
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BUILD_DIR:-build/prebuilt}
P=${PREBUILT:-.stage/prebuilt}  # where the pack goes (carry it, or .stage)
SUITES=${SUITES:-test_cuda}
command -v nvcc >/dev/null || { echo "prebuild.sh: nvcc is not on PATH (scripts/setup.sh system installs the CUDA toolkit)" >&2; exit 1; }
command -v xz >/dev/null || { echo "prebuild.sh: xz is missing (apt-get install xz-utils)" >&2; exit 1; }
mkdir -p "$B"
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQ_CUDA=ON -DTQ_CUDA_ARCHS=90-real -DTQ_CUDA_PORTABLE_ON_HOPPER=ON \
  -DTQ_BUILD_BENCH=OFF >"$B/prebuild-configure.log" 2>&1 || { tail -20 "$B/prebuild-configure.log"; exit 1; }
echo "prebuild.sh: building $SUITES in $B (sm_90a)"
ninja -C "$B" $SUITES
rm -rf "$P" && mkdir -p "$P/lib"

# One suite into the pack: stripped, compressed, and the libraries it loads that are not the C
# and C++ runtimes, the driver or cuBLAS (the GPU machine's, the same CUDA release's: cuBLASLt
# alone is 540 MB).
pack() {  # pack BINARY NAME
  local tmp; tmp=$(mktemp)
  cp "$1" "$tmp" && strip "$tmp"
  xz -T0 -6 -c "$tmp" >"$P/$2.xz" && rm -f "$tmp"
  ldd "$1" | awk '/=> \// {print $1, $3}' | while read -r so path; do
    case "$so" in
      libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libgcc_s.so*|libstdc++.so*|libcuda.so*|libcublas*) ;;
      *) [ -f "$P/lib/$so" ] || cp -L "$path" "$P/lib/$so" ;;
    esac
  done
}
for s in $SUITES; do
  case "$s" in
    tq_capi) bin=$B/bindings/c/libtq_capi.so name=libtq_capi.so ;;  # the C API bench_decode.py loads
    tq) bin=$B/apps/cli/tq name=tq ;;                                # the command (tq bench)
    *) bin=$(find "$B/tests" -name "$s" -type f -perm -u+x | head -1) name=$s ;;
  esac
  [ -n "$bin" ] && [ -f "$bin" ] || { echo "prebuild.sh: $s was not built" >&2; exit 1; }
  pack "$bin" "$name"
done

# Variants: the one object recompiled by its own build command (ninja's, with FLAGS appended and
# another output), put into a copy of libtq_cuda.a in its place, and test_cuda linked again by its
# own link command against that copy.
for v in ${VARIANTS:-}; do
  IFS='|' read -r name flags src <<<"$v"
  [ -n "$name" ] && [ -n "$src" ] || { echo "prebuild.sh: a variant is NAME|FLAGS|SOURCE, not '$v'" >&2; exit 1; }
  obj=src/cuda/CMakeFiles/tq_cuda.dir/$src.o
  V=variants/$name
  (
    cd "$B" && mkdir -p "$V"
    cmds=$(ninja -t commands tests/cuda/test_cuda)
    cc=$(grep -F -- "-o $obj" <<<"$cmds" | head -1)
    link=$(grep -F -- '-o tests/cuda/test_cuda ' <<<"$cmds" | tail -1 | awk -F' && ' '{print $2}')
    [ -n "$cc" ] && [ -n "$link" ] || { echo "prebuild.sh: no build command for $src or for test_cuda's link" >&2; exit 1; }
    cc=${cc//-o $obj/-o $V/$src.o}
    cc=${cc//-MF $obj.d/-MF $V/$src.o.d}
    cc=${cc//-MT $obj/-MT $V/$src.o}
    echo "prebuild.sh: variant $name: $src with $flags"
    eval "$cc $flags"
    cp src/cuda/libtq_cuda.a "$V/libtq_cuda.a"
    (cd "$V" && ar r libtq_cuda.a "$src.o")
    link=${link//src\/cuda\/libtq_cuda.a/$V\/libtq_cuda.a}
    link=${link//-o tests\/cuda\/test_cuda /-o $V\/test_cuda }
    eval "$link"
  )
  pack "$B/$V/test_cuda" "test_cuda_$name"
done
du -sh "$P" && ls -la "$P" "$P/lib"
[ "$(du -sm "$P" | cut -f1)" -lt 50 ] || echo "prebuild.sh: $P is over 50 MB: with the work tree it may not fit a call's 64 MiB" >&2
