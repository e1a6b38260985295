// Query preparation of the decode kernels: rows loaded, rotated with the keys' rotation
// (TurboQuant) and scaled. Used only by decode_attention.cu (through decode_kernel.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "decode_tiles.cuh"
#include "tq/cuda/kernels.h"

namespace tq::cuda::decode {

// The 8 query rows of (sequence, KV head, m-tile): loaded, rotated with the keys' rotation
// (TurboQuant), scaled by softmax scale * log2(e); zero rows past the group. q: shared [kRows][D].
// kDense = false compiles only the Hadamard path (the decode kernel's own copy).
template <int D, Kind KIND, bool kDense = true>
__device__ void rotate_queries(const DecodeParams& p, int seq, int kvh, int mt, float (&q)[kRows][D]) {
  const CacheView& c = p.cache;
  const int group = int(p.q_heads / c.kv_heads), rows_total = group * int(p.num_q_tokens);
  // ---- query rows: load, rotate (TurboQuant keys), scale ----
  for (int i = threadIdx.x; i < kRows * D; i += kThreads) {
    const int r = i / D, col = i % D, row = mt * kRows + r;
    float v = 0.0f;
    if (row < rows_total && col < int(c.head_dim)) {
      const int j = row / group, h = kvh * group + row % group;
      const size_t at = ((size_t(seq) * p.num_q_tokens + j) * p.q_heads + h) * c.head_dim + col;
      v = p.q_dtype == DType::kF32   ? static_cast<const float*>(p.q)[at]
          : p.q_dtype == DType::kF16 ? __half2float(static_cast<const __half*>(p.q)[at])
                                     : __bfloat162float(static_cast<const __nv_bfloat16*>(p.q)[at]);
    }
    if constexpr (KIND == Kind::kTq)
      if (c.kt.signs) v *= c.kt.signs[size_t(kvh) * D + col];
    q[r][col] = v;
  }
  __syncthreads();
  // TurboQuant keys decode in units of 1/sqrt(D) (the codebook's z-units): that factor rides here.
  const float qscale = (p.scale > 0 ? p.scale : rsqrtf(float(c.head_dim))) * kLog2e * (KIND == Kind::kFp8 ? c.k_scale : 1.0f) *
                       (KIND == Kind::kTq ? rsqrtf(float(D)) : 1.0f);
  if constexpr (KIND == Kind::kTq) {
    if (c.kt.signs) {  // in-place FWHT over each row, then its normalization
      for (int h = 1; h < D; h *= 2) {
        for (int i = threadIdx.x; i < kRows * D / 2; i += kThreads) {
          const int r = i / (D / 2), k = i % (D / 2), lo = (k / h) * 2 * h + k % h;
          const float a = q[r][lo], b = q[r][lo + h];
          q[r][lo] = a + b;
          q[r][lo + h] = a - b;
        }
        __syncthreads();
      }
      for (int i = threadIdx.x; i < kRows * D; i += kThreads) q[i / D][i % D] *= c.fwht_scale * qscale;
    } else if constexpr (kDense) {  // dense: q_rot = R q, rows of R in global memory
      float acc[kRows * D / kThreads];
      const float* R = c.kt.matrix + size_t(kvh) * D * D;
#pragma unroll
      for (int n = 0; n < kRows * D / kThreads; ++n) {
        const int i = threadIdx.x + n * kThreads, r = i / D, row = i % D;
        float s = 0.0f;
        for (int k = 0; k < D; ++k) s = fmaf(R[size_t(row) * D + k], q[r][k], s);
        acc[n] = s;
      }
      __syncthreads();
#pragma unroll
      for (int n = 0; n < kRows * D / kThreads; ++n) {
        const int i = threadIdx.x + n * kThreads;
        q[i / D][i % D] = acc[n] * qscale;
      }
    }
  } else {
    for (int i = threadIdx.x; i < kRows * D; i += kThreads) q[i / D][i % D] *= qscale;
  }
  __syncthreads();

}

// Rotates each query once (not once per split): [seq][kv head][m-tile][kRows][D] floats in the workspace.
template <int D, Kind KIND>
__global__ void __launch_bounds__(kThreads) prepare_queries(const DecodeParams p, int mtiles, float* __restrict__ ws_q) {
  __shared__ float q[kRows][D];
  const int kvh = blockIdx.x / mtiles, mt = blockIdx.x % mtiles, seq = blockIdx.y;
  rotate_queries<D, KIND>(p, seq, kvh, mt, q);
  float* dst = ws_q + size_t(blockIdx.y * gridDim.x + blockIdx.x) * kRows * D;
  for (int i = threadIdx.x; i < kRows * D; i += kThreads) dst[i] = q[i / D][i % D];
}

}  // namespace tq::cuda::decode
