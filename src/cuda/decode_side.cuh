// Attention over the KV policy's side buffer (SideView in kernels.h: the sink and the recent-token
// window, fp16 rows), and the write of the step's rows into it. Used only by decode_attention.cu
// (through decode_kernel.cuh, prefill_kernel.cuh and decode_merge.cuh).
//
// The packed splits of a decode or prefill grid leave out, per query row, the positions below
// `sink` and those within `window` of the row's query (their tiles mask them); one more block
// along the grid's splits reads exactly those positions here, in full precision, and writes one
// more partial state per row. Its rows are not rotated (the side keeps the model's own K and V),
// so merge_kernel adds this partial after it has un-rotated the packed ones. A block's side
// tokens are few (sink + window + its rows' span), so this is plain CUDA-core work: chunks of
// kSideChunk rows through shared memory, one score a thread, online softmax per query row.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "decode_query.cuh"
#include "decode_tiles.cuh"
#include "device_common.cuh"
#include "tq/cuda/kernels.h"
#include "tq/kv/online_softmax.h"

namespace tq::cuda::decode {

inline constexpr int kSideChunk = 16;  // side tokens a pass: one a lane of a query row's 16 threads

template <int D>
struct SideSmem {
  float q[kRows][D];                 // the block's query rows as given (unrotated), scaled to the log2 domain
  __half2 k[kSideChunk][D / 2 + 1];  // the chunk's keys; a word of padding staggers the rows' banks
  __half v[kSideChunk][D];           // the chunk's values
  float w[kRows][kSideChunk];        // the chunk's weights exp2(s - m) per query row
};

// Element i of an array of the given dtype, as fp16 (round to nearest even, as the CPU's side
// buffer rounds its fp32 rows).
__device__ __forceinline__ __half side_half(const void* base, DType dt, size_t i) {
  if (dt == DType::kF32) return __float2half_rn(static_cast<const float*>(base)[i]);
  if (dt == DType::kF16) return static_cast<const __half*>(base)[i];
  return __float2half_rn(__bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]));
}

// The row of the side slot that holds position t (t < sink, or a ring position), or -1.
__device__ __forceinline__ int side_row(const SideView& sv, int t) {
  if (t < int(sv.sink)) return t;
  return sv.ring ? int(sv.sink) + t % int(sv.ring) : -1;
}

// The side partial of query rows mt * kRows .. + kRows of (seq, KV head kvh): into workspace slot
// `split` (of gridDim.x) of each row, as the packed splits write theirs. Every thread of the
// block calls it; `smem` holds at least a SideSmem<D>.
template <int D>
__device__ __noinline__ void side_attention(const DecodeParams& p, int seq, int kvh, int mt, int split, float* ws_o, float2* ws_ml,
                                            void* smem) {
  SideSmem<D>& sm = *static_cast<SideSmem<D>*>(smem);
  const SideView& sv = p.side;
  const int H = int(p.cache.kv_heads), hd = int(p.cache.head_dim);
  const int group = int(p.q_heads) / H, nq = int(p.num_q_tokens), rows_total = group * nq;
  if (mt * kRows >= rows_total) return;  // a prefill block's m-tile past its rows (uniform)
  const int len = p.seq_lens[seq], first = len - nq;  // the step's tokens: positions first .. len - 1
  const int r = query_row(), lane16 = int(threadIdx.x % 16), c0 = query_col<D>();
  const int row = mt * kRows + r;
  const bool valid = row < rows_total;
  const int qpos = first + (valid ? row / group : 0);
  // The union of the block's rows' side positions: [0, a_end) and [b_begin, q_hi].
  const int q_lo = first + mt * kRows / group, q_hi = first + (min(mt * kRows + kRows, rows_total) - 1) / group;
  const int sink = int(sv.sink), window = int(sv.window);
  const int a_end = min(sink, q_hi + 1);
  const int b_begin = window ? max(a_end, q_lo - window + 1) : q_hi + 1;
  const int count = a_end + (q_hi + 1 - b_begin);
  const auto position = [&](int i) { return i < a_end ? i : b_begin + (i - a_end); };

  __syncthreads();  // a previous call's threads are done with sm
  {
    float v[kQE<D>];
    load_query<D, Kind::kF16>(p, seq, kvh, mt, v);  // as given: no rotation, no cache scales
    const float s = (p.scale > 0 ? p.scale : rsqrtf(float(hd))) * kLog2e;
#pragma unroll
    for (int e = 0; e < kQE<D>; ++e) sm.q[r][c0 + e] = v[e] * s;
  }
  const uint16_t* slot = sv.data + size_t(sv.slots[seq]) * sv.slot_stride;
  const size_t row_elems = size_t(2) * H * hd;  // a side row: K then V of every KV head

  float acc[kQE<D>];
#pragma unroll
  for (int e = 0; e < kQE<D>; ++e) acc[e] = 0.0f;
  float m = -INFINITY, dsum = 0.0f;  // SoftmaxState of this thread's row (each of its 16 threads keeps it)
  for (int i0 = 0; i0 < count; i0 += kSideChunk) {
    const int n = min(kSideChunk, count - i0);
    __syncthreads();  // the previous chunk is read (the first time: the queries are in place)
    for (int x = threadIdx.x; x < kSideChunk * D; x += kThreads) {
      const int i = x / D, col = x % D;
      __half kx = __float2half_rn(0.0f), vx = kx;
      if (i < n && col < hd) {
        const int t = position(i0 + i);
        if (t >= first) {  // the step's own row
          const size_t at = ((size_t(seq) * nq + (t - first)) * H + kvh) * hd + col;
          kx = side_half(sv.new_k, sv.new_dtype, at);
          vx = side_half(sv.new_v, sv.new_dtype, at);
        } else {
          const uint16_t* src = slot + size_t(side_row(sv, t)) * row_elems + size_t(kvh) * hd + col;
          kx = __ushort_as_half(src[0]);
          vx = __ushort_as_half(src[size_t(H) * hd]);
        }
      }
      reinterpret_cast<__half*>(&sm.k[i][0])[col] = kx;
      sm.v[i][col] = vx;
    }
    __syncthreads();
    // ---- the score of (row r, token i0 + lane16), masked to the row's own side positions ----
    const int t = position(i0 + lane16);
    const bool live = valid && lane16 < n && t <= qpos && (t < sink || (window > 0 && t > qpos - window));
    float s = -INFINITY;
    if (live) {
      float dot = 0.0f;
#pragma unroll 8
      for (int w = 0; w < D / 2; ++w) {
        const float2 kk = __half22float2(sm.k[lane16][w]);
        dot = fmaf(sm.q[r][2 * w], kk.x, fmaf(sm.q[r][2 * w + 1], kk.y, dot));
      }
      s = dot;
    }
    float mx = s;
#pragma unroll
    for (int o = 1; o < 16; o *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    const SoftmaxState::Step st = SoftmaxState::update(m, dsum, mx, dev::Exp2{});
    const float w = live ? exp2f(s - st.base) : 0.0f;
    float wsum = w;
#pragma unroll
    for (int o = 1; o < 16; o *= 2) wsum += __shfl_xor_sync(0xffffffffu, wsum, o);
    dsum += wsum;
    sm.w[r][lane16] = w;
    __syncwarp();  // the row's 16 threads share a warp
#pragma unroll
    for (int e = 0; e < kQE<D>; ++e) acc[e] *= st.scale;
    for (int i = 0; i < n; ++i) {
      const float wi = sm.w[r][i];
#pragma unroll
      for (int e = 0; e < kQE<D>; ++e) acc[e] = fmaf(wi, __half2float(sm.v[i][c0 + e]), acc[e]);
    }
  }
  if (!valid) return;
  const int j = row / group, h = kvh * group + row % group;
  const size_t at = ((size_t(seq) * nq + j) * p.q_heads + h) * gridDim.x + split;
#pragma unroll
  for (int e = 0; e < kQE<D>; ++e) ws_o[at * D + c0 + e] = acc[e];
  if (lane16 == 0) ws_ml[at] = make_float2(m, dsum);
}

// merge_kernel's block r = (seq * num_q_tokens + j) * q_heads + h, the first query head of its KV
// head: writes the step's row j of that KV head into the sequence's side slot (a sink row, or
// the ring for the last `ring` positions). Called after every query has read the side buffer.
__device__ __forceinline__ void write_side_row(const DecodeParams& p, size_t r) {
  const SideView& sv = p.side;
  const int group = int(p.q_heads / p.cache.kv_heads), h = int(r % p.q_heads);
  if (h % group != 0) return;
  const int H = int(p.cache.kv_heads), hd = int(p.cache.head_dim), nq = int(p.num_q_tokens), kvh = h / group;
  const int seq = int(r / p.q_heads) / nq, j = int(r / p.q_heads) % nq;
  const int len = p.seq_lens[seq], pos = len - nq + j;
  if (pos >= int(sv.sink) && pos < len - int(sv.ring)) return;  // not a sink position, and older than the ring keeps
  const int dst_row = side_row(sv, pos);
  if (dst_row < 0) return;
  uint16_t* dst = sv.data + size_t(sv.slots[seq]) * sv.slot_stride + size_t(dst_row) * 2 * H * hd + size_t(kvh) * hd;
  const size_t src = ((size_t(seq) * nq + j) * H + kvh) * hd;
  for (int col = threadIdx.x; col < hd; col += kThreads) {
    dst[col] = __half_as_ushort(side_half(sv.new_k, sv.new_dtype, src + col));
    dst[size_t(H) * hd + col] = __half_as_ushort(side_half(sv.new_v, sv.new_dtype, src + col));
  }
}

}  // namespace tq::cuda::decode
