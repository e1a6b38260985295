// Query preparation of the decode kernels: rows loaded, rotated with the keys' rotation
// (TurboQuant) and scaled. Used only by decode_attention.cu (through decode_kernel.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "decode_tiles.cuh"
#include "tq/cuda/kernels.h"

namespace tq::cuda::decode {

// In-place unnormalized Walsh-Hadamard transform of each of the kRows rows of x (shared memory),
// the block's threads spread over the butterflies of a pass.
template <int D>
__device__ void fwht_rows(float (&x)[kRows][D]) {
  for (int h = 1; h < D; h *= 2) {
    for (int i = threadIdx.x; i < kRows * D / 2; i += kThreads) {
      const int r = i / (D / 2), k = i % (D / 2), lo = (k / h) * 2 * h + k % h;
      const float a = x[r][lo], b = x[r][lo + h];
      x[r][lo] = a + b;
      x[r][lo + h] = a - b;
    }
    __syncthreads();
  }
}

// This thread's elements of the 8 query rows of (sequence, KV head, m-tile): element n is row i / D,
// column i % D of the rows, i = threadIdx.x + n kThreads; zero past the group and the head dim.
// Loaded into registers first, so that the decode kernel can start its copies while they arrive.
template <int D>
__device__ void load_queries(const DecodeParams& p, int seq, int kvh, int mt, float (&v)[kRows * D / kThreads]) {
  const CacheView& c = p.cache;
  const int group = int(p.q_heads / c.kv_heads), rows_total = group * int(p.num_q_tokens);
#pragma unroll
  for (int n = 0; n < kRows * D / kThreads; ++n) {
    const int i = threadIdx.x + n * kThreads, r = i / D, col = i % D, row = mt * kRows + r;
    v[n] = 0.0f;
    if (row < rows_total && col < int(c.head_dim)) {
      const int j = row / group, h = kvh * group + row % group;
      const size_t at = ((size_t(seq) * p.num_q_tokens + j) * p.q_heads + h) * c.head_dim + col;
      v[n] = p.q_dtype == DType::kF32   ? static_cast<const float*>(p.q)[at]
             : p.q_dtype == DType::kF16 ? __half2float(static_cast<const __half*>(p.q)[at])
                                        : __bfloat162float(static_cast<const __nv_bfloat16*>(p.q)[at]);
    }
  }
}

// The query rows of load_queries, rotated with the keys' rotation (TurboQuant) and scaled by
// softmax scale * log2(e), into q: shared [kRows][D]. kDense = false compiles only the Hadamard
// path (the decode kernel's own copy).
template <int D, Kind KIND, bool kDense = true>
__device__ void rotate_queries(const DecodeParams& p, int kvh, const float (&v)[kRows * D / kThreads], float (&q)[kRows][D]) {
  const CacheView& c = p.cache;
#pragma unroll
  for (int n = 0; n < kRows * D / kThreads; ++n) {
    const int i = threadIdx.x + n * kThreads, col = i % D;
    float x = v[n];
    if constexpr (KIND == Kind::kTq)
      if (c.kt.signs) x *= c.kt.signs[size_t(kvh) * D + col];
    q[i / D][col] = x;
  }
  __syncthreads();
  // TurboQuant keys decode in units of 1/sqrt(D) (the codebook's z-units): that factor rides here.
  const float qscale = (p.scale > 0 ? p.scale : rsqrtf(float(c.head_dim))) * kLog2e * (KIND == Kind::kFp8 ? c.k_scale : 1.0f) *
                       (KIND == Kind::kTq ? rsqrtf(float(D)) : 1.0f);
  if constexpr (KIND == Kind::kTq) {
    if (c.kt.signs) {  // in-place FWHT over each row, then its normalization
      fwht_rows(q);
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
  float v[kRows * D / kThreads];
  load_queries<D>(p, seq, kvh, mt, v);
  rotate_queries<D, KIND>(p, kvh, v, q);
  float* dst = ws_q + size_t(blockIdx.y * gridDim.x + blockIdx.x) * kRows * D;
  for (int i = threadIdx.x; i < kRows * D; i += kThreads) dst[i] = q[i / D][i % D];
}

}  // namespace tq::cuda::decode
