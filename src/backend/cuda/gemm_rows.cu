// The products of steps of 1..16 rows (decode at small batch, speculative verification) on
// tensor cores: the kernel and its invariance are in gemm_rows_kernel.cuh; this file picks its
// tiling and launches it.
#include <cuda_runtime.h>

#include <cstdint>

#include "gemm_rows_kernel.cuh"
#include "launch_common.h"
#include "layers.h"
#include "tq/check.h"

namespace tq::cuda::layers {
namespace {

// 16 warps of 16 weight rows, 2 chunks a round; steps of 1..8 rows with the next round's weights
// in flight, 9..16 without and with registers for 2 blocks an SM (their second n-tile's registers
// cost occupancy otherwise). The fastest of bench/gpu/gemm_rows_sweep.cu's tilings on the H200, in
// the sweep and in whole decode steps (bench/results/2026-12-01-h200-gemm-rows.md). Both deal the
// chunks to the warps and add them in the same order, so a row's outputs are the same bits
// whichever takes the step.
using OneTile = gemm_rows_impl::Tiling<16, 2, true, 0>;
using TwoTiles = gemm_rows_impl::Tiling<16, 2, false, 2>;
static_assert(OneTile::kWarps == TwoTiles::kWarps && OneTile::kUnroll == TwoTiles::kUnroll, "batch invariance: one summation order");

template <class T, int TILES>
void launch(const bf16_t* w, uint32_t rows, uint32_t cols, const bf16_t* x, uint32_t n, float* y, Stream s) {
  // The weights are read before the previous kernel ends (gemm_rows_kernel.cuh).
  const cudaError_t e = launch_dependent(gemm_rows_impl::kernel<T, TILES>, dim3((rows + 15) / 16), dim3(T::kWarps * 32), 0, s,
                                         reinterpret_cast<const uint4*>(w), rows, cols / 8, reinterpret_cast<const uint4*>(x), n, y);
  TQ_CHECK(e == cudaSuccess, "gemm_rows: launch of {} x {} by {} rows failed: {}", rows, cols, n, cudaGetErrorString(e));
}

}  // namespace

void gemm_rows(const bf16_t* w, uint32_t rows, uint32_t cols, const bf16_t* x, uint32_t n, float* y, Stream s) {
  const uint32_t most = kGemmRowsMax;
  TQ_CHECK(gemm_rows_takes(n, cols), "gemm_rows: {} rows of {} columns: takes 1..{} rows of a multiple of 8 columns", n, cols, most);
  if (n <= 8) return launch<OneTile, 1>(w, rows, cols, x, n, y, s);
  launch<TwoTiles, 2>(w, rows, cols, x, n, y, s);
}

}  // namespace tq::cuda::layers
