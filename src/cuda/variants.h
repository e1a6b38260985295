// Which of an attention kernel's two variants a build for one architecture carries. Where a
// kernel's Hopper tiles exceed the 99 KB of shared memory a block of sm_86, 89 and 120, it also
// has a compact variant (attention_launch.cuh chooses between them at run time). A GPU of those
// never runs the full variant and a datacenter Blackwell (227 KB) never the compact one, so their
// builds compile only the variant they run (the compile time of the attention kernels, CI's
// longest step, grows with every kernel compiled for every architecture).
// sm_80 (A100: 163 KB, whose cubin also runs on sm_86 and 89) and sm_90 (where the tests force the
// compact ones with TQ_CUDA_SMEM_KB) carry both. The host side asks the kernels' PTX version
// (kernels_arch) rather than the GPU's, since a cubin runs on later GPUs of its major version
// (sm_86's on sm_87, with 163 KB) and PTX is compiled for GPUs newer than any build target.
// Host and device code alike; no CUDA headers.
#pragma once

#include <cstddef>

namespace tq::cuda {

// The shared memory a block of the smallest GPUs the kernels are built for (sm_86, 89, 120).
constexpr size_t kSmallSmem = 99 * 1024;

// arch: compute capability x 10, as __CUDA_ARCH__ / 10 and cudaFuncAttributes::ptxVersion give it.
constexpr bool compact_only_arch(int arch) { return arch == 86 || arch == 89 || arch / 10 == 12; }
constexpr bool full_only_arch(int arch) { return arch / 10 == 10; }  // sm_100 and 103 (B200, B300: 227 KB)

// Whether a build for `arch` carries a kernel's variant (`compact` or full) when the kernel has
// both (`has_compact`); a kernel with one variant is always carried.
constexpr bool variant_carried(int arch, bool has_compact, bool compact) {
  if (!has_compact) return true;
  return compact ? !full_only_arch(arch) : !compact_only_arch(arch);
}

// Whether the build also carries the prefill's mma.sync kernel of full tiles for Hopper (sm_90a),
// where its warpgroup-MMA kernel runs instead (launch_common.h's warpgroup_mma): only when built
// with -DTQ_CUDA_PORTABLE_ON_HOPPER=ON, as the GPU tests are, so that TQ_CUDA_PORTABLE=1 runs the
// path of every other GPU there. Left out by default: its 48 kernels (3 head dims x 16 caches) lengthen the attention
// kernels' compile, CI's longest step (docs/cuda.md, "GPUs other than the H200").
#ifndef TQ_CUDA_PORTABLE_ON_HOPPER
#define TQ_CUDA_PORTABLE_ON_HOPPER 0
#endif
constexpr bool kPortableOnHopper = TQ_CUDA_PORTABLE_ON_HOPPER != 0;

// The variant the host launches for a kernel that has both, in a build for `arch`, where the
// full one needs more shared memory a block than the GPU allows (`full_too_big`): the carried
// one, and where both are, the one that fits. (A full-only build on a GPU told to plan for less,
// TQ_CUDA_SMEM_KB on a B200, gets the full one, which the launch refuses by its size.)
constexpr bool choose_compact(int arch, bool full_too_big) {
  return compact_only_arch(arch) ? true : full_only_arch(arch) ? false : full_too_big;
}

}  // namespace tq::cuda
