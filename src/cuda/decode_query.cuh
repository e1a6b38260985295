// Query preparation of the decode kernels: rows loaded, rotated with the keys' rotation
// (TurboQuant) and scaled. Used only by attention_launch.cuh (through decode_kernel.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "decode_tiles.cuh"
#include "tq/cuda/kernels.h"

namespace tq::cuda::decode {

// The 8 query rows of (sequence, KV head, m-tile) are held 16 threads a row (a half warp), each
// with kQE consecutive coordinates, so the Hadamard transform runs in registers and shuffles:
// at batch 1 the query work is the head of a chain of latencies (it was 7 shared-memory passes
// with a barrier each, and loads one element at a time).
template <int D>
inline constexpr int kQE = D / 16;
static_assert(kRows * 16 == kThreads, "16 threads a query row");

// This thread's query row of the block and its first coordinate.
__device__ __forceinline__ int query_row() { return threadIdx.x / 16; }
template <int D>
__device__ __forceinline__ int query_col() {
  return int(threadIdx.x % 16) * kQE<D>;
}

// Coordinates [query_col, + kQE) of query row mt * kRows + r (r: this thread's row of the m-tile,
// query_row() in a block of kThreads), as given (times the keys' Hadamard signs for TurboQuant);
// zero past the group and past head_dim.
template <int D, Kind KIND>
__device__ void load_query(const DecodeParams& p, int seq, int kvh, int mt, float (&v)[kQE<D>], int r = -1) {
  const CacheView& c = p.cache;
  const int group = int(p.q_heads / c.kv_heads), rows_total = group * int(p.num_q_tokens);
  const int row = mt * kRows + (r < 0 ? query_row() : r), c0 = query_col<D>(), hd = int(c.head_dim);
#pragma unroll
  for (int e = 0; e < kQE<D>; ++e) v[e] = 0.0f;
  if (row < rows_total) {
    const int j = int(uint32_t(row) / uint32_t(group)), h = kvh * group + int(uint32_t(row) % uint32_t(group));
    const size_t at = ((size_t(seq) * p.num_q_tokens + j) * p.q_heads + h) * c.head_dim + c0;
    // all loads issued before any is used (the dtype test is uniform); whole rows of 16-bit
    // queries at 16-byte aligned addresses (the usual case) as 16-byte loads
    if (kQE<D> * 2 % 16 == 0 && p.q_dtype != DType::kF32 && c0 + kQE<D> <= hd &&
        reinterpret_cast<uintptr_t>(static_cast<const __half*>(p.q) + at) % 16 == 0) {
      uint32_t words[kQE<D> / 2];  // two elements a word, in order
#pragma unroll
      for (int u = 0; u < kQE<D> / 8; ++u) {
        const uint4 w = reinterpret_cast<const uint4*>(static_cast<const __half*>(p.q) + at)[u];
        words[4 * u] = w.x, words[4 * u + 1] = w.y, words[4 * u + 2] = w.z, words[4 * u + 3] = w.w;
      }
      if (p.q_dtype == DType::kF16) {
#pragma unroll
        for (int e = 0; e < kQE<D>; ++e) v[e] = __half2float(__ushort_as_half(uint16_t(words[e / 2] >> (16 * (e % 2)))));
      } else {
#pragma unroll
        for (int e = 0; e < kQE<D>; ++e) v[e] = __bfloat162float(__ushort_as_bfloat16(uint16_t(words[e / 2] >> (16 * (e % 2)))));
      }
    } else if (p.q_dtype == DType::kF32) {
#pragma unroll
      for (int e = 0; e < kQE<D>; ++e)
        if (c0 + e < hd) v[e] = static_cast<const float*>(p.q)[at + e];
    } else if (p.q_dtype == DType::kF16) {
#pragma unroll
      for (int e = 0; e < kQE<D>; ++e)
        if (c0 + e < hd) v[e] = __half2float(static_cast<const __half*>(p.q)[at + e]);
    } else {
#pragma unroll
      for (int e = 0; e < kQE<D>; ++e)
        if (c0 + e < hd) v[e] = __bfloat162float(static_cast<const __nv_bfloat16*>(p.q)[at + e]);
    }
  }
  if constexpr (KIND == Kind::kTq) {
    if (c.kt.signs) {
      const float* sg = c.kt.signs + size_t(kvh) * D + c0;
      if (kQE<D> % 4 == 0 && reinterpret_cast<uintptr_t>(sg) % 16 == 0) {  // the device tables' (cudaMalloc, D floats a head)
#pragma unroll
        for (int u = 0; u < kQE<D> / 4; ++u) {
          const float4 s4 = reinterpret_cast<const float4*>(sg)[u];
          v[4 * u] *= s4.x;
          v[4 * u + 1] *= s4.y;
          v[4 * u + 2] *= s4.z;
          v[4 * u + 3] *= s4.w;
        }
      } else {
#pragma unroll
        for (int e = 0; e < kQE<D>; ++e) v[e] *= sg[e];
      }
    }
  }
}

// In-place unnormalized Walsh-Hadamard transform of a row of L E coordinates held by L
// consecutive lanes (lane % L holds [lane % L * E, + E)): butterflies of distance h < E inside a
// thread, then h = m E with the lane m apart. Every lane of the warp calls it. The query rows
// (L = 16: a row a half warp) and merge_rows_kernel's outputs (L = 32) use it.
template <int L, int E>
__device__ __forceinline__ void fwht_lanes(float (&v)[E]) {
  static_assert(L == 16 || L == 32, "a half warp or a warp");
#pragma unroll
  for (int h = 1; h < E; h *= 2)
#pragma unroll
    for (int e = 0; e < E; ++e)
      if (!(e & h)) {
        const float a = v[e], b = v[e + h];
        v[e] = a + b;
        v[e + h] = a - b;
      }
#pragma unroll
  for (int m = 1; m < L; m *= 2) {
    const bool upper = threadIdx.x & m;  // this lane holds the "+ h" half of each pair
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float u = __shfl_xor_sync(0xffffffffu, v[e], m);
      v[e] = upper ? u - v[e] : v[e] + u;
    }
  }
}

// Softmax scale times log2(e), with the scales the cache's keys decode without.
template <int D, Kind KIND>
__device__ __forceinline__ float query_scale(const DecodeParams& p) {
  const CacheView& c = p.cache;
  // TurboQuant keys decode in units of 1/sqrt(D) (the codebook's z-units): that factor rides here.
  return (p.scale > 0 ? p.scale : rsqrtf(float(c.head_dim))) * kLog2e * (KIND == Kind::kFp8 ? c.k_scale : 1.0f) *
         (KIND == Kind::kTq ? rsqrtf(float(D)) : 1.0f);
}

// The rest of query_registers after load_query: the Hadamard transform and the scale. (Split so
// that the decode kernel can issue other loads between the two.)
template <int D, Kind KIND>
__device__ __forceinline__ void finish_query(const DecodeParams& p, float (&v)[kQE<D>]) {
  float s = query_scale<D, KIND>(p);
  if constexpr (KIND == Kind::kTq) {
    if (p.cache.kt.signs) {
      fwht_lanes<16>(v);
      s *= p.cache.fwht_scale;
    }
  }
#pragma unroll
  for (int e = 0; e < kQE<D>; ++e) v[e] *= s;
}

// This thread's coordinates of its query row, rotated with the keys' Hadamard rotation
// (TurboQuant) and scaled, in registers. Dense rotations are not applied here (rotate_queries).
template <int D, Kind KIND>
__device__ void query_registers(const DecodeParams& p, int seq, int kvh, int mt, float (&v)[kQE<D>]) {
  load_query<D, KIND>(p, seq, kvh, mt, v);
  finish_query<D, KIND>(p, v);
}

// The 8 query rows of (sequence, KV head, m-tile), rotated with the keys' rotation and scaled,
// into q (shared [kRows][D]); zero rows past the group. Dense rotations (a D x D product per row,
// rows of R in global memory) go through shared memory.
template <int D, Kind KIND>
__device__ void rotate_queries(const DecodeParams& p, int seq, int kvh, int mt, float (&q)[kRows][D]) {
  const CacheView& c = p.cache;
  const int r = query_row(), c0 = query_col<D>();
  float v[kQE<D>];
  if (KIND != Kind::kTq || c.kt.signs) {
    query_registers<D, KIND>(p, seq, kvh, mt, v);
#pragma unroll
    for (int e = 0; e < kQE<D>; ++e) q[r][c0 + e] = v[e];
    __syncthreads();
    return;
  }
  load_query<D, KIND>(p, seq, kvh, mt, v);
#pragma unroll
  for (int e = 0; e < kQE<D>; ++e) q[r][c0 + e] = v[e];
  __syncthreads();
  constexpr int kPer = kRows * D / kThreads;
  float acc[kPer];
  const float* R = c.kt.matrix + size_t(kvh) * D * D;
#pragma unroll
  for (int n = 0; n < kPer; ++n) {
    const int i = threadIdx.x + n * kThreads, rr = i / D, row = i % D;
    float sum = 0.0f;
    for (int k = 0; k < D; ++k) sum = fmaf(R[size_t(row) * D + k], q[rr][k], sum);
    acc[n] = sum;
  }
  __syncthreads();
  const float qscale = query_scale<D, KIND>(p);
#pragma unroll
  for (int n = 0; n < kPer; ++n) {
    const int i = threadIdx.x + n * kThreads;
    q[i / D][i % D] = acc[n] * qscale;
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
