// gemm_rows' kernel, a template over its tiling so that bench/gpu/gemm_rows_sweep.cu can time the
// variants side by side; gemm_rows.cu instantiates the one the runner uses (its comment says why).
//
// y = x W^T on tensor cores with the weight rows as the MMA's M dimension and the step's rows as
// its N ("swap AB"), so each weight element is read once from memory whatever the row count, and
// the activations (a few KiB a row) are re-read from L1/L2 once per 16 weight rows rather than once
// per weight vector (the one-row GEMV's design, which lost to cuBLAS from 4 rows on).
//
// Batch invariance: an output y[t][r] is the sum of the same products in the same order whatever
// n is and whatever the other rows hold: a warp's MMAs accumulate its chunks in a fixed order
// (an MMA's outputs are independent dot products: a column never mixes with another), and the
// block adds its warps' sums in warp order. So a token's logits are the same bits in a one-token
// step and in an 8-token verification step. (The tiling is fixed at compile time, never by n.)
//
// The weights never depend on earlier kernels: launched as a programmatic dependent launch on
// Hopper, a block issues its first weight loads before it waits for the previous kernel (which
// wrote x), so the weight stream starts during the previous kernel's tail.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "device_common.cuh"

namespace tq::cuda::layers::gemm_rows_impl {

// Each lane (g = lane / 4, c = lane % 4) loads 8 consecutive bf16 of weight rows g and g + 8 at
// columns chunk * 32 + c * 8 .. + 7, and the same 8 columns of step row g. The reduction order
// inside a dot product is free, so those 8 physical columns become the MMA's logical k = 2c, 2c+1,
// 2c+8, 2c+9 of two k16 steps (A: m16n8k16 row-major fragment; B: its column-major fragment, the
// same k for the same lane), each product used exactly once.
__device__ __forceinline__ void mma_bf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// The tiling. WARPS: warps a block (16 weight rows, its columns dealt to the warps in chunks of
// 32); UNROLL: chunks a warp takes a round (2 x UNROLL 16-byte weight loads a lane); PREFETCH: the
// next round's weight loads are issued before this round's MMAs (twice the registers); MINB: the
// blocks per SM the registers are budgeted for (__launch_bounds__; 0: the compiler's choice).
template <int WARPS, int UNROLL, bool PREFETCH, int MINB>
struct Tiling {
  static constexpr int kWarps = WARPS, kUnroll = UNROLL, kMinBlocks = MINB;
  static constexpr bool kPrefetch = PREFETCH;
};

// w: [rows][vecs] and x: [n][vecs] 16-byte vectors of 8 bf16 (vecs = cols / 8); y: [n][rows] fp32.
// Grid: one block per 16 weight rows. TILES: 8-row n-tiles, n <= 8 * TILES.
template <class T, int TILES>
__global__ void __launch_bounds__(T::kWarps * 32, T::kMinBlocks)
    kernel(const uint4* __restrict__ w, uint32_t rows, uint32_t vecs, const uint4* x, uint32_t n, float* y) {
  constexpr int kWarps = T::kWarps, kUnroll = T::kUnroll;
  __shared__ float part[kWarps][TILES][16][8];  // each warp's sums: [warp][n-tile][weight row][step row]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const uint32_t row0 = blockIdx.x * 16;
  const bool lo_ok = row0 + g < rows, hi_ok = row0 + g + 8 < rows;
  const uint4* wlo = w + size_t(lo_ok ? row0 + g : 0) * vecs;
  const uint4* whi = w + size_t(hi_ok ? row0 + g + 8 : 0) * vecs;
  const uint32_t chunks = (vecs + 3) / 4;  // 4 vectors (32 columns) a chunk; the last may be partial

  float acc[TILES][4] = {};
  uint4 alo[kUnroll], ahi[kUnroll];
  const auto load_w = [&](uint32_t ch0, uint4(&lo)[kUnroll], uint4(&hi)[kUnroll]) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t ch = ch0 + u * kWarps, v = ch * 4 + c;
      const bool ok = ch < chunks && v < vecs;
      lo[u] = ok && lo_ok ? __ldcs(wlo + v) : make_uint4(0, 0, 0, 0);  // read once: not kept in cache
      hi[u] = ok && hi_ok ? __ldcs(whi + v) : make_uint4(0, 0, 0, 0);
    }
  };
  const auto round = [&](uint32_t ch0) {  // the MMAs of the chunks of a round, weights in alo/ahi
    uint4 b[kUnroll][TILES];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t ch = ch0 + u * kWarps, v = ch * 4 + c;
      const bool ok = ch < chunks && v < vecs;
#pragma unroll
      for (int t = 0; t < TILES; ++t) {
        const uint32_t r = t * 8 + g;
        b[u][t] = ok && r < n ? __ldg(x + size_t(r) * vecs + v) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int t = 0; t < TILES; ++t) {
        mma_bf16(acc[t], alo[u].x, ahi[u].x, alo[u].y, ahi[u].y, b[u][t].x, b[u][t].y);
        mma_bf16(acc[t], alo[u].z, ahi[u].z, alo[u].w, ahi[u].w, b[u][t].z, b[u][t].w);
      }
    }
  };
  constexpr uint32_t kStride = kUnroll * kWarps;  // chunks a block takes a round
  load_w(warp, alo, ahi);                         // the weights do not depend on the previous kernel
  dev::wait_prerequisites();                      // x does
  dev::allow_dependents();
  if constexpr (T::kPrefetch) {
    uint4 nlo[kUnroll], nhi[kUnroll];  // the next round's weights, in flight during this round's MMAs
    for (uint32_t ch0 = warp; ch0 < chunks; ch0 += kStride) {
      if (ch0 + kStride < chunks) load_w(ch0 + kStride, nlo, nhi);
      round(ch0);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) alo[u] = nlo[u], ahi[u] = nhi[u];
    }
  } else {
    for (uint32_t ch0 = warp; ch0 < chunks; ch0 += kStride) {
      if (ch0 != uint32_t(warp)) load_w(ch0, alo, ahi);
      round(ch0);
    }
  }
  // Accumulator fragment: acc[t][0..1] = rows g, step rows t*8 + 2c, 2c+1; acc[t][2..3] = row g + 8.
#pragma unroll
  for (int t = 0; t < TILES; ++t) {
    part[warp][t][g][2 * c] = acc[t][0], part[warp][t][g][2 * c + 1] = acc[t][1];
    part[warp][t][g + 8][2 * c] = acc[t][2], part[warp][t][g + 8][2 * c + 1] = acc[t][3];
  }
  __syncthreads();
  // Thread i: weight row i % 16 of step row i / 16, so neighbouring threads write neighbouring y.
  for (int i = threadIdx.x; i < TILES * 128; i += kWarps * 32) {
    const int r = i & 15, s = i >> 4, t = s >> 3, col = s & 7;
    if (uint32_t(s) >= n || row0 + r >= rows) continue;
    float sum = part[0][t][r][col];
#pragma unroll
    for (int k = 1; k < kWarps; ++k) sum += part[k][t][r][col];
    y[size_t(s) * rows + row0 + r] = sum;
  }
}

}  // namespace tq::cuda::layers::gemm_rows_impl
