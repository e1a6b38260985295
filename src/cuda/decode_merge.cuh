// The split merge of decode attention: combines the splits' (max, sum, output), un-rotates the
// output once, adds the side buffer's partial (decode_side.cuh) and writes it in the output's
// dtype; then stores the step's rows into the side buffer. Used only by attention_launch.cuh.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "attention_output.cuh"
#include "decode_side.cuh"
#include "decode_tiles.cuh"
#include "device_common.cuh"
#include "tq/cuda/kernels.h"
#include "tq/kv/online_softmax.h"

namespace tq::cuda::decode {

// Combines the splits of one (sequence, query token, query head), un-rotates, writes the output.
// With a side buffer each row has splits + side_parts partials, the last ones the side blocks'
// (not rotated).
// ws_o and ws_ml are the decode grid's output, read after dev::wait_prerequisites: no __restrict__,
// which would let the compiler treat them as invariant and hoist their loads above the wait (it
// did, in a variant that read ws_ml right after the wait: SASS showed the load before ACQBULK).
// (4 blocks an SM as the bound only so that ptxas does not aim at 16 and spill, as it did at D = 256)
template <int D, bool TQ>
__global__ void __launch_bounds__(kThreads, 4)
    merge_kernel(const DecodeParams p, int splits, int side_parts, const float* ws_o, const float2* ws_ml) {
  __shared__ float o[D];
  __shared__ float f[kThreads];  // a chunk of the splits' weights 2^(m_s - M)
  __shared__ float red[kWarps];
  const size_t r = blockIdx.x;  // (seq * ntok + j) * q_heads + h
  const int h = int(r % p.q_heads), kvh = h / int(p.q_heads / p.cache.kv_heads);
  const int total = splits + side_parts;  // partials a row: the packed splits, then the side blocks'
  const float2* ml = ws_ml + r * total;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const CacheView& c = p.cache;
  // The Hadamard signs of the un-rotation are not the decode's output: loaded before the wait.
  constexpr int kCols = (D + kThreads - 1) / kThreads;  // output coordinates per thread
  float sg[kCols];
#pragma unroll
  for (int k = 0; k < kCols; ++k) {
    const int col = threadIdx.x + k * kThreads;
    sg[k] = TQ && c.vt.signs && col < D ? c.vt.signs[size_t(kvh) * D + col] : 1.0f;
  }
  dev::wait_prerequisites();  // the decode grid has finished and its writes are visible
  // This thread's split of the first kThreads (all of them but at batch 1 of very long sequences),
  // read once for the max, the sum and the weights.
  const float2 ml0 = threadIdx.x < total ? ml[threadIdx.x] : make_float2(-INFINITY, 0.0f);
  // The first kPre splits' partial outputs of this thread's columns, loaded together with ml0:
  // a batch-1 merge (8 splits at 1K) then waits for one round trip to L2 after the wait, not two.
  constexpr int kPre = 8;
  float pre[kCols][kPre];
#pragma unroll
  for (int k = 0; k < kCols; ++k)
#pragma unroll
    for (int i = 0; i < kPre; ++i) {
      const int col = threadIdx.x + k * kThreads;
      pre[k][i] = i < splits && col < D ? ws_o[(r * total + i) * D + col] : 0.0f;
    }
  // Block-wide max and sum, the splits spread over the threads (batch 1 uses ~60 splits).
  auto reduce = [&](float v, bool is_max) {
#pragma unroll
    for (int d = 16; d >= 1; d /= 2) {
      const float u = __shfl_xor_sync(0xffffffffu, v, d);
      v = is_max ? fmaxf(v, u) : v + u;
    }
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = red[0];
    for (int w = 1; w < kWarps; ++w) v = is_max ? fmaxf(v, red[w]) : v + red[w];
    __syncthreads();
    return v;
  };
  float M = ml0.x;
  for (int s = threadIdx.x + kThreads; s < total; s += kThreads) M = fmaxf(M, ml[s].x);
  M = reduce(M, true);
  // The splits' states combined against the max of all (SoftmaxState::weight: a split that saw
  // no visible token weighs 0).
  float Lsum = 0.0f;
  if (M != -INFINITY) {
    Lsum = SoftmaxState::rescaled_sum(ml0.x, ml0.y, M, dev::Exp2{});
    for (int s = threadIdx.x + kThreads; s < total; s += kThreads) Lsum += SoftmaxState::rescaled_sum(ml[s].x, ml[s].y, M, dev::Exp2{});
  }
  Lsum = reduce(Lsum, false);
  const float inv = SoftmaxState::inv_sum(Lsum);
  float acc[kCols] = {};
  for (int s0 = 0; s0 < splits; s0 += kThreads) {
    const int s = s0 + threadIdx.x;
    const float2 m = s0 == 0 ? ml0 : s < splits ? ml[s] : make_float2(-INFINITY, 0.0f);
    f[threadIdx.x] = SoftmaxState::weight(m.x, M, dev::Exp2{});
    __syncthreads();
    const int n = min(kThreads, splits - s0);
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
      const int col = threadIdx.x + k * kThreads;
      if (col >= D) continue;
      if (s0 == 0)
#pragma unroll
        for (int i = 0; i < kPre; ++i)
          if (i < n) acc[k] += pre[k][i] * f[i];
      for (int i = s0 == 0 ? kPre : 0; i < n; ++i) acc[k] += ws_o[(r * total + s0 + i) * D + col] * f[i];
    }
    __syncthreads();
  }
  // Un-rotation x = D_signs H o / sqrt(D) (Hadamard): column bits 0-4 are the lane's, so the
  // butterflies of distance < 32 are shuffles, and only the longer ones pass through shared
  // memory, with a barrier each (2 at D = 128, where all 7 were).
  const bool hadamard = TQ && c.vt.signs != nullptr;
#pragma unroll
  for (int k = 0; k < kCols; ++k) acc[k] *= inv;
  if (hadamard)
#pragma unroll
    for (int hh = 1; hh < 32 && hh < D; hh *= 2)
#pragma unroll
      for (int k = 0; k < kCols; ++k) {
        const float u = __shfl_xor_sync(0xffffffffu, acc[k], hh);
        acc[k] = lane & hh ? u - acc[k] : acc[k] + u;
      }
#pragma unroll
  for (int k = 0; k < kCols; ++k) {
    const int col = threadIdx.x + k * kThreads;
    if (col < D) o[col] = acc[k];
  }
  __syncthreads();
  if constexpr (TQ) {
    if (hadamard) {
      for (int hh = 32; hh < D; hh *= 2) {
        for (int k = threadIdx.x; k < D / 2; k += kThreads) {
          const int lo = (k / hh) * 2 * hh + k % hh;
          const float a = o[lo], b = o[lo + hh];
          o[lo] = a + b;
          o[lo + hh] = a - b;
        }
        __syncthreads();
      }
#pragma unroll
      for (int k = 0; k < kCols; ++k) {
        const int col = threadIdx.x + k * kThreads;
        if (col < D) o[col] *= c.fwht_scale * sg[k];
      }
      __syncthreads();
    } else {  // x = R^T o
      const float* R = c.vt.matrix + size_t(kvh) * D * D;
      float rot[D / kThreads > 0 ? D / kThreads : 1];
#pragma unroll
      for (int n = 0; n * kThreads < D; ++n) {
        const int col = threadIdx.x + n * kThreads;
        float s = 0.0f;
        if (col < D)
          for (int i = 0; i < D; ++i) s = fmaf(R[size_t(i) * D + col], o[i], s);
        rot[n] = s;
      }
      __syncthreads();
#pragma unroll
      for (int n = 0; n * kThreads < D; ++n) {
        const int col = threadIdx.x + n * kThreads;
        if (col < D) o[col] = rot[n];
      }
      __syncthreads();
    }
  }
  // The side blocks' partials, in the model's own coordinates: added after the un-rotation.
  for (int col = threadIdx.x; col < int(c.head_dim); col += kThreads) {
    const size_t at = r * c.head_dim + col;
    float x = o[col];
    for (int b = 0; b < side_parts; ++b)
      x += SoftmaxState::weight(ml[splits + b].x, M, dev::Exp2{}) * inv * ws_o[(r * total + splits + b) * D + col];
    store_output(p, at, x);
  }
  // Every query has read the side buffer (the attention grid is complete): the step's rows join it.
  if (p.side.active()) write_side_row(p, r, threadIdx.x, kThreads);
}

// The same for rows of few partials (kWarpMergeParts or fewer: batch 1 up to 4K tokens, and
// every batch of 4 or more at the split plan's counts): one warp a row, kWarps rows a block,
// lane l holding output coordinates [l E, l E + E). A warp needs no barrier: the (max, sum) of
// the partials sit one a lane and reduce by shuffles, and the Hadamard butterflies of distance
// >= E are shuffles too; a batch-1 merge is a chain of latencies after the decode grid's last
// block, and this one is shorter. With many partials it is slower (one warp's sequential loop
// over them: bench/results/2026-12-01-h200-decode-batch1-fixed-cost.md), so those rows keep
// merge_kernel. (4 blocks an SM as the bound only so that ptxas does not aim at 16 and spill, as
// it did.)
template <int D, bool TQ>
__global__ void __launch_bounds__(kThreads, 4) merge_rows_kernel(const DecodeParams p, int splits, int side_parts, const float* ws_o, const float2* ws_ml) {
  constexpr int E = D / 32;  // coordinates a lane
  static_assert(E >= 2 && E % 2 == 0, "whole float2 pieces a lane");
  __shared__ float dense[TQ ? kWarps : 1][TQ ? D : 1];  // dense rotations: a warp's row, for R^T o
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const size_t r = size_t(blockIdx.x) * kWarps + warp;  // (seq * ntok + j) * q_heads + h
  if (r >= size_t(p.num_seqs) * p.num_q_tokens * p.q_heads) return;  // the last block's spare warps
  const int h = int(r % p.q_heads), kvh = h / int(p.q_heads / p.cache.kv_heads);
  const int total = splits + side_parts;  // partials a row: the packed splits, then the side blocks'
  const float2* ml = ws_ml + r * total;
  const float* part = ws_o + r * total * D + lane * E;  // the lane's coordinates of partial 0
  const CacheView& c = p.cache;
  const bool hadamard = TQ && c.vt.signs != nullptr;
  // The Hadamard signs of the un-rotation are not the decode's output: loaded before the wait.
  float sg[E];
#pragma unroll
  for (int e = 0; e < E; ++e) sg[e] = hadamard ? c.vt.signs[size_t(kvh) * D + lane * E + e] : 1.0f;
  dev::wait_prerequisites();  // the decode grid has finished and its writes are visible
  // The first 32 partials' states, one a lane, and the first kPre splits' outputs, loaded
  // together: a batch-1 merge (8-32 splits) then waits for one round trip to L2 after the wait.
  const float2 ml0 = lane < total ? ml[lane] : make_float2(-INFINITY, 0.0f);
  constexpr int kPre = 8;
  float pre[kPre][E];
#pragma unroll
  for (int i = 0; i < kPre; ++i)
#pragma unroll
    for (int e = 0; e < E; e += 2) {
      const float2 x = i < splits ? *reinterpret_cast<const float2*>(part + size_t(i) * D + e) : make_float2(0.0f, 0.0f);
      pre[i][e] = x.x;
      pre[i][e + 1] = x.y;
    }
  float M = ml0.x;
  for (int s = lane + 32; s < total; s += 32) M = fmaxf(M, ml[s].x);
#pragma unroll
  for (int d = 16; d >= 1; d /= 2) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, d));
  // The partials' states combined against the max of all (SoftmaxState::weight: a split that saw
  // no visible token weighs 0).
  float Lsum = 0.0f;
  if (M != -INFINITY) {
    Lsum = SoftmaxState::rescaled_sum(ml0.x, ml0.y, M, dev::Exp2{});
    for (int s = lane + 32; s < total; s += 32) Lsum += SoftmaxState::rescaled_sum(ml[s].x, ml[s].y, M, dev::Exp2{});
  }
#pragma unroll
  for (int d = 16; d >= 1; d /= 2) Lsum += __shfl_xor_sync(0xffffffffu, Lsum, d);
  const float inv = SoftmaxState::inv_sum(Lsum);
  float acc[E] = {};
  for (int s0 = 0; s0 < splits; s0 += 32) {  // split s0 + i's weight is lane i's
    const int s = s0 + lane, n = min(32, splits - s0);
    const float2 m = s0 == 0 ? ml0 : s < splits ? ml[s] : make_float2(-INFINITY, 0.0f);
    const float f = SoftmaxState::weight(m.x, M, dev::Exp2{});
    if (s0 == 0)
#pragma unroll
      for (int i = 0; i < kPre; ++i) {
        const float fi = __shfl_sync(0xffffffffu, f, i);
        if (i < n)
#pragma unroll
          for (int e = 0; e < E; ++e) acc[e] += pre[i][e] * fi;
      }
#pragma unroll 4
    for (int i = s0 == 0 ? kPre : 0; i < n; ++i) {  // (unrolled: 4 loads in flight)
      const float fi = __shfl_sync(0xffffffffu, f, i);
      const float* src = part + size_t(s0 + i) * D;
#pragma unroll
      for (int e = 0; e < E; e += 2) {
        const float2 x = *reinterpret_cast<const float2*>(src + e);
        acc[e] += x.x * fi;
        acc[e + 1] += x.y * fi;
      }
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] *= inv;
  if constexpr (TQ) {
    if (hadamard) {
      fwht_lanes<32>(acc);  // un-rotation x = D_signs H o / sqrt(D), H by the warp's lanes
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] *= c.fwht_scale * sg[e];
    } else {  // x = R^T o, o through the warp's row in shared memory
      const float* R = c.vt.matrix + size_t(kvh) * D * D;
#pragma unroll
      for (int e = 0; e < E; ++e) dense[warp][lane * E + e] = acc[e];
      __syncwarp();
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int col = lane * E + e;
        float x = 0.0f;
        for (int i = 0; i < D; ++i) x = fmaf(R[size_t(i) * D + col], dense[warp][i], x);
        acc[e] = x;
      }
    }
  }
  // The side blocks' partials, in the model's own coordinates: added after the un-rotation.
  for (int b = 0; b < side_parts; ++b) {
    const float w = SoftmaxState::weight(ml[splits + b].x, M, dev::Exp2{}) * inv;
    const float* src = part + size_t(splits + b) * D;
#pragma unroll
    for (int e = 0; e < E; e += 2) {
      const float2 x = *reinterpret_cast<const float2*>(src + e);
      acc[e] += w * x.x;
      acc[e + 1] += w * x.y;
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int col = lane * E + e;
    if (col >= int(c.head_dim)) continue;
    const size_t at = r * c.head_dim + col;
    store_output(p, at, acc[e]);
  }
  // Every query has read the side buffer (the attention grid is complete): the step's rows join it.
  if (p.side.active()) write_side_row(p, r, lane, 32);
}

// Rows of at most this many partials (splits and side blocks) are merged by merge_rows_kernel.
constexpr int kWarpMergeParts = 16;

}  // namespace tq::cuda::decode
