// The split merge of decode attention, run by the last block of a (sequence, KV head, m-tile) to
// finish its split (decode_kernel counts them): combines the splits' (max, sum, output) of its
// query rows, un-rotates the outputs once and writes them in the output's dtype. One launch in all:
// a separate merge kernel cost a launch and a drain of the grid (~3 us of a batch-1 step in a CUDA
// graph). Used only by decode_attention.cu (through decode_kernel.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "decode_query.cuh"
#include "decode_tiles.cuh"
#include "tq/cuda/kernels.h"

namespace tq::cuda::decode {

// Split s of query row slot `slot` ((seq * ntok + j) * q_heads + h) is ws_o[(slot * splits + s) * D ..]
// and ws_ml[slot * splits + s]. Other blocks wrote them: read through L2 (__ldcg), never a stale L1.
template <int D, bool TQ>
__device__ void merge_splits(const DecodeParams& p, int seq, int kvh, int mt, int splits, const float* __restrict__ ws_o,
                             const float2* __restrict__ ws_ml, MergeSmem<D>& s) {
  const int group = int(p.q_heads / p.cache.kv_heads), nrows = min(kRows, group * int(p.num_q_tokens) - mt * kRows);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  auto slot_of = [&](int r) {
    const int row = mt * kRows + r, j = row / group, h = kvh * group + row % group;
    return (size_t(seq) * p.num_q_tokens + j) * p.q_heads + h;
  };
  // ---- each row's max and 1 / sum over the splits: warp w takes rows 2w and 2w + 1 ----
  static_assert(kRows == 2 * kWarps, "each warp reduces two rows");
  for (int r = 2 * warp; r < 2 * warp + 2; ++r) {
    const float2* ml = ws_ml + (r < nrows ? slot_of(r) : 0) * splits;
    float M = -INFINITY, L = 0.0f;
    if (r < nrows) {
      for (int i = lane; i < splits; i += 32) M = fmaxf(M, __ldcg(&ml[i]).x);
#pragma unroll
      for (int d = 16; d >= 1; d /= 2) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, d));
      if (M != -INFINITY)
        for (int i = lane; i < splits; i += 32) {
          const float2 x = __ldcg(&ml[i]);
          if (x.x != -INFINITY) L += x.y * exp2f(x.x - M);
        }
#pragma unroll
      for (int d = 16; d >= 1; d /= 2) L += __shfl_xor_sync(0xffffffffu, L, d);
    }
    if (lane == 0) {
      s.M[r] = M;
      s.inv_l[r] = L > 0 ? 1.0f / L : 0.0f;
    }
  }
  __syncthreads();
  // ---- O = sum over splits of weight x output: thread float4 k holds row (tid + k kThreads) / (D/4) ----
  constexpr int kPer = kRows * D / 4 / kThreads;  // float4s per thread
  float4 acc[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) acc[k] = make_float4(0, 0, 0, 0);
  for (int s0 = 0; s0 < splits; s0 += kThreads) {
    const int n = min(kThreads, splits - s0);
    for (int r = 0; r < kRows; ++r) {
      const int i = s0 + threadIdx.x;
      float w = 0.0f;
      if (r < nrows && i < splits) {
        const float2 x = __ldcg(&ws_ml[slot_of(r) * splits + i]);
        w = x.x != -INFINITY ? exp2f(x.x - s.M[r]) * s.inv_l[r] : 0.0f;
      }
      s.f[r][threadIdx.x] = w;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int idx = threadIdx.x + k * kThreads, r = idx / (D / 4), c4 = idx % (D / 4);
      if (r < nrows) {
        const float4* src = reinterpret_cast<const float4*>(ws_o) + (slot_of(r) * splits + s0) * (D / 4) + c4;
#pragma unroll 4
        for (int i = 0; i < n; ++i) {
          const float4 x = __ldcg(src + size_t(i) * (D / 4));
          const float w = s.f[r][i];
          acc[k].x += x.x * w;
          acc[k].y += x.y * w;
          acc[k].z += x.z * w;
          acc[k].w += x.w * w;
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int idx = threadIdx.x + k * kThreads;
    reinterpret_cast<float4*>(&s.o[0][0])[idx] = acc[k];
  }
  __syncthreads();
  // ---- un-rotate (TurboQuant values) and write ----
  const CacheView& c = p.cache;
  auto store = [&](int r, int col, float x) {
    const size_t at = slot_of(r) * c.head_dim + col;
    if (p.out_dtype == DType::kF32) {
      static_cast<float*>(p.out)[at] = x;
    } else if (p.out_dtype == DType::kF16) {
      static_cast<__half*>(p.out)[at] = __float2half_rn(x);
    } else {
      static_cast<__nv_bfloat16*>(p.out)[at] = __float2bfloat16_rn(x);
    }
  };
  if constexpr (TQ) {
    if (c.vt.signs) {  // x = D_signs H o / sqrt(D)
      fwht_rows(s.o);
      for (int i = threadIdx.x; i < kRows * D; i += kThreads) {
        const int r = i / D, col = i % D;
        if (r < nrows && col < int(c.head_dim)) store(r, col, s.o[r][col] * c.fwht_scale * c.vt.signs[size_t(kvh) * D + col]);
      }
    } else {  // x = R^T o
      const float* R = c.vt.matrix + size_t(kvh) * D * D;
      for (int i = threadIdx.x; i < kRows * D; i += kThreads) {
        const int r = i / D, col = i % D;
        if (r >= nrows || col >= int(c.head_dim)) continue;
        float x = 0.0f;
        for (int k = 0; k < D; ++k) x = fmaf(R[size_t(k) * D + col], s.o[r][k], x);
        store(r, col, x);
      }
    }
  } else {
    for (int i = threadIdx.x; i < kRows * D; i += kThreads) {
      const int r = i / D, col = i % D;
      if (r < nrows && col < int(c.head_dim)) store(r, col, s.o[r][col]);
    }
  }
}

}  // namespace tq::cuda::decode
