// Writing attention output rows: elements in the output's dtype, and the un-rotation of
// TurboQuant's values (x = signs * H o / sqrt(D)) on rows held in MMA accumulator fragments. Used
// by the split merge (decode_merge.cuh) and by the prefill kernels where they write their rows
// themselves (prefill::writes_output).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "tq/cuda/kernels.h"

namespace tq::cuda::decode {

// Element `at` of the attention output, in its dtype.
__device__ __forceinline__ void store_output(const DecodeParams& p, size_t at, float x) {
  if (p.out_dtype == DType::kF32) {
    static_cast<float*>(p.out)[at] = x;
  } else if (p.out_dtype == DType::kF16) {
    static_cast<__half*>(p.out)[at] = __float2half_rn(x);
  } else {
    static_cast<__nv_bfloat16*>(p.out)[at] = __float2bfloat16_rn(x);
  }
}

// Two adjacent output elements in one store (p even and 2 sizeof(Out)-aligned).
__device__ __forceinline__ void put2(float* p, float x, float y) { *reinterpret_cast<float2*>(p) = make_float2(x, y); }
__device__ __forceinline__ void put2(__half* p, float x, float y) { *reinterpret_cast<__half2*>(p) = __floats2half2_rn(x, y); }
__device__ __forceinline__ void put2(__nv_bfloat16* p, float x, float y) { *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y); }

// The two rows a thread holds in m16n8 accumulator fragments (fwht_fragment_rows' layout) to the
// output rows that start at out + row_at[i], where valid[i]: whole rows of 8 J elements, out
// 2 sizeof(Out)-aligned, a store a pair.
template <class Out, int J>
__device__ __forceinline__ void store_fragment_rows(Out* out, const size_t (&row_at)[2], const bool (&valid)[2], const float (&o)[J][4], int t) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
    if (valid[i])
#pragma unroll
      for (int nt = 0; nt < J; ++nt) put2(out + row_at[i] + 8 * nt + 2 * t, o[nt][2 * i], o[nt][2 * i + 1]);
}

// The unnormalized Walsh-Hadamard transform of the two rows a thread holds in m16n8 accumulator
// fragments side by side, o[J][4]: row g in elements 0 and 1 of n-tile nt, row g + 8 in 2 and 3,
// at columns 8 nt + 2 t and 8 nt + 2 t + 1 (g = lane / 4, t = lane % 4), so a row's D = 8 J
// columns lie in the quad's 4 lanes. Column bit 0 is an element pair, bits 1 and 2 are the quad's
// lanes (shuffles), bits 3 and up the n-tile: the other butterflies stay in registers. Every lane
// of the warp calls it.
template <int J>
__device__ __forceinline__ void fwht_fragment_rows(float (&o)[J][4], int t) {
  static_assert(J >= 1 && (J & (J - 1)) == 0, "a power of two of n-tiles");
#pragma unroll
  for (int nt = 0; nt < J; ++nt)
#pragma unroll
    for (int e = 0; e < 4; e += 2) {
      const float a = o[nt][e], b = o[nt][e + 1];
      o[nt][e] = a + b;
      o[nt][e + 1] = a - b;
    }
#pragma unroll
  for (int m = 1; m < 4; m *= 2) {  // column bits 1 and 2: the lane t ^ m holds the other half
    const bool upper = t & m;
#pragma unroll
    for (int nt = 0; nt < J; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float u = __shfl_xor_sync(0xffffffffu, o[nt][e], m);
        o[nt][e] = upper ? u - o[nt][e] : o[nt][e] + u;
      }
  }
#pragma unroll
  for (int h = 1; h < J; h *= 2)
#pragma unroll
    for (int nt = 0; nt < J; ++nt)
      if (!(nt & h))
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float a = o[nt][e], b = o[nt + h][e];
          o[nt][e] = a + b;
          o[nt + h][e] = a - b;
        }
}

}  // namespace tq::cuda::decode
