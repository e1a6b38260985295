// Attention over the KV policy's side buffer (SideView in kernels.h: the sink and the recent-token
// window, fp16 rows), and the write of the step's rows into it. Used only by attention_launch.cuh
// (through decode_kernel.cuh, prefill_kernel.cuh, prefill_ws.cuh and decode_merge.cuh).
//
// The packed splits of a decode or prefill grid leave out, per query row, the positions below
// `sink` and those within `window` of the row's query (their tiles mask them); one more block
// along the grid's splits reads exactly those positions here, in full precision, and writes one
// more partial state per row. Its rows are not rotated (the side keeps the model's own K and V),
// so merge_kernel adds this partial after it has un-rotated the packed ones. A block's side
// tokens are few (sink + window + its rows' span), so this is plain CUDA-core work: chunks of
// kSideChunk rows through shared memory, online softmax per query row. Decode spreads a block's
// side positions over several blocks, a chunk each (side_blocks); prefill, whose grid has blocks
// enough, gives each 64-row block one side block that loops over its m-tiles and chunks.
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

// The first position a split of a block whose first row sees up to visible_min reads: 0, or in a
// sliding-window layer that row's window start, rounded down to 16 (the plan's splits cover the
// window from there: span_tokens in decode_attention.cu). Decode and both prefill kernels.
__device__ __forceinline__ int window_base(const DecodeParams& p, int visible_min) {
  return p.sliding_window ? max(0, visible_min - int(p.sliding_window)) & ~15 : 0;
}
// The position from which a tile is seen whole by every row up to visible_max (the sink's end, or
// that row's window start).
__device__ __forceinline__ int begin_for_all(const DecodeParams& p, int visible_max) {
  return p.sliding_window ? max(int(p.side.sink), visible_max - int(p.sliding_window)) : int(p.side.sink);
}

inline constexpr int kSideChunk = 16;  // side tokens a pass: one a lane of a query row's 16 threads

// The reduction of side_attention's partial dots across a row's 16 lanes, one halving a level: a
// lane keeps entries [O, 2O) of the current range where its bit O is set, else [0, O), and adds its
// partner's (lane ^ O) other half, so lane l ends with the sum of entry l. The levels are templates
// rather than a loop: with #pragma unroll alone, a larger kernel around it once left the level loop
// rolled (part[] in local memory, its entries chosen by address).
template <int O, int N>
__device__ __forceinline__ void fold_halves(float (&part)[N], int lane16) {
  const bool upper = lane16 & O;
#pragma unroll
  for (int j = 0; j < O; ++j) {
    const float send = upper ? part[j] : part[j + O], keep = upper ? part[j + O] : part[j];
    part[j] = keep + __shfl_xor_sync(0xffffffffu, send, O);
  }
  if constexpr (O > 1) fold_halves<O / 2>(part, lane16);
}

template <int D>
struct SideSmem {
  __half k[kSideChunk][D], v[kSideChunk][D];  // the chunk's keys and values (zero past head_dim)
};

// Element i of an array of the given dtype, as fp16 (round to nearest even, as the CPU's side
// buffer rounds its fp32 rows).
__device__ __forceinline__ __half side_half(const void* base, DType dt, size_t i) {
  if (dt == DType::kF32) return __float2half_rn(static_cast<const float*>(base)[i]);
  if (dt == DType::kF16) return static_cast<const __half*>(base)[i];
  return __float2half_rn(__bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]));
}

// Elements i .. i + 7 (i a multiple of 8, 16-byte aligned as fp16) as 8 fp16 in a uint4.
__device__ __forceinline__ uint4 side_half8(const void* base, DType dt, size_t i) {
  if (dt == DType::kF16) return *reinterpret_cast<const uint4*>(static_cast<const __half*>(base) + i);
  float f[8];
  if (dt == DType::kF32) {
    const float4 a = reinterpret_cast<const float4*>(static_cast<const float*>(base) + i)[0];
    const float4 b = reinterpret_cast<const float4*>(static_cast<const float*>(base) + i)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  } else {
    const uint4 u = *reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(base) + i);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      f[2 * e] = __uint_as_float(w[e] << 16);
      f[2 * e + 1] = __uint_as_float(w[e] & 0xFFFF0000u);
    }
  }
  uint32_t h[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) h[e] = __half_as_ushort(__float2half_rn(f[2 * e])) | uint32_t(__half_as_ushort(__float2half_rn(f[2 * e + 1]))) << 16;
  return make_uint4(h[0], h[1], h[2], h[3]);
}

// Side blocks of a decode grid (after its packed splits): one a chunk of the most side positions
// a block's rows can have (sink, window, and the span of up to 8 query tokens); 0 without a side
// buffer. Prefill grids have one (prefill_kernel.cuh, prefill_ws.cuh).
TQ_HD int side_decode_blocks(const DecodeParams& p) {
  return p.side.active() ? int((p.side.sink + p.side.window + p.num_q_tokens + kSideChunk - 1) / kSideChunk) : 0;
}

// The row of the side slot that holds position t (t < sink, or a ring position), or -1.
__device__ __forceinline__ int side_row(const SideView& sv, int t) {
  if (t < int(sv.sink)) return t;
  return sv.ring ? int(sv.sink) + t % int(sv.ring) : -1;
}

// Of the side positions of query rows mt * kRows .. + kRows of (seq, KV head kvh) -- the union of
// the rows' [0, sink) and (q - window, q], listed in position order -- entries [i_begin, i_end):
// their partial state per row into workspace slot `split` (of gridDim.x), as the packed splits
// write theirs (rows with none of them: m = -inf, sum 0). A group of kThreads threads calls it:
// the block's, or warpgroup `wg` of a larger block (threads kThreads wg .. + kThreads, with its
// own SideSmem<D> at `smem` and its own barrier, number wg, so that the warpgroups of Hopper's
// prefill block work on different m-tiles at once). Thread (row r, lane l of 16) holds the row's
// query coordinates [l D/16, + D/16) in registers; a chunk's 16 scores come from partial dots
// reduced across the 16 lanes so that lane l ends with token l's.
template <int D>
__device__ __forceinline__ void side_attention(const DecodeParams& p, int seq, int kvh, int mt, int split, int i_begin, int i_end,
                                               float* ws_o, float2* ws_ml, void* smem, int wg = 0) {
  SideSmem<D>& sm = *static_cast<SideSmem<D>*>(smem);
  const int tid = int(threadIdx.x) - kThreads * wg;  // the thread's index in its group
  // The group's barrier, of its kThreads threads (in a block of kThreads, __syncthreads). Number 0
  // as an immediate where wg is the constant 0 (decode, the mma.sync prefill): a number in a
  // register makes ptxas reserve all 16 of the block's barriers.
  const auto sync = [wg] {
    if (wg == 0)
      asm volatile("bar.sync 0, %0;" ::"n"(kThreads) : "memory");
    else
      asm volatile("bar.sync %0, %1;" ::"r"(wg), "n"(kThreads) : "memory");
  };
  constexpr int E = kQE<D>;  // coordinates a thread
  const SideView& sv = p.side;
  const int H = int(p.cache.kv_heads), hd = int(p.cache.head_dim);
  const int group = int(p.q_heads) / H, nq = int(p.num_q_tokens), rows_total = group * nq;
  if (mt * kRows >= rows_total) return;  // a prefill block's m-tile past its rows (uniform)
  const int len = p.seq_lens[seq], first = len - nq;  // the step's tokens: positions first .. len - 1
  const int r = tid / 16, lane16 = int(threadIdx.x % 16), c0 = query_col<D>();
  const int row = mt * kRows + r;
  const bool valid = row < rows_total;
  const int qpos = first + (valid ? row / group : 0);
  // The union of the block's rows' side positions: [0, a_end) and [b_begin, q_hi].
  const int q_lo = first + mt * kRows / group, q_hi = first + (min(mt * kRows + kRows, rows_total) - 1) / group;
  const int sink = int(sv.sink), window = int(sv.window), swa = int(p.sliding_window);  // swa: a sliding-window layer's
  const int a_end = min(sink, q_hi + 1);
  const int b_begin = window ? max(a_end, q_lo - window + 1) : q_hi + 1;
  const int count = min(i_end, a_end + (q_hi + 1 - b_begin));
  const auto position = [&](int i) { return i < a_end ? i : b_begin + (i - a_end); };

  float q[E] = {};  // the row's query as given (unrotated, no cache scales), scaled to the log2 domain
  load_query<D, Kind::kF16>(p, seq, kvh, mt, q, r);
  const float qs = (p.scale > 0 ? p.scale : rsqrtf(float(hd))) * kLog2e;
#pragma unroll
  for (int e = 0; e < E; ++e) q[e] *= qs;
  const uint16_t* slot = sv.data + size_t(sv.slots[seq]) * sv.slot_stride;
  const size_t row_elems = size_t(2) * H * hd;  // a side row: K then V of every KV head
  // Where entry i's K row of this KV head is (its V row is H * hd elements further): the step's
  // own rows in new_k / new_v, the others in the slot.
  const auto source = [&](int i, const void*& kb, const void*& vb, DType& dt, size_t& at) {
    const int t = position(i);
    if (t >= first) {
      kb = sv.new_k, vb = sv.new_v, dt = sv.new_dtype, at = ((size_t(seq) * nq + (t - first)) * H + kvh) * hd;
    } else {
      kb = vb = slot, dt = DType::kF16, at = size_t(side_row(sv, t)) * row_elems + size_t(kvh) * hd;
      vb = slot + size_t(H) * hd;
    }
  };

  float acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.0f;
  float m = -INFINITY, dsum = 0.0f;  // SoftmaxState of this thread's row (each of its 16 threads keeps it)
  for (int i0 = i_begin; i0 < count; i0 += kSideChunk) {
    const int n = min(kSideChunk, count - i0);
    sync();  // the previous chunk (or call) is read
    if (hd % 8 == 0) {  // 16-byte pieces, all issued before any is stored
      constexpr int kUnits = kSideChunk * D / 8, kPer = (kUnits + kThreads - 1) / kThreads;
      uint4 ku[kPer], vu[kPer];
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int x = tid + u * kThreads, i = x / (D / 8), col = x % (D / 8) * 8;
        ku[u] = vu[u] = make_uint4(0, 0, 0, 0);
        if (x < kUnits && i < n && col < hd) {
          const void *kb, *vb;
          DType dt;
          size_t at;
          source(i0 + i, kb, vb, dt, at);
          ku[u] = side_half8(kb, dt, at + col);
          vu[u] = side_half8(vb, dt, at + col);
        }
      }
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int x = tid + u * kThreads, i = x / (D / 8), col = x % (D / 8) * 8;
        if (x < kUnits) {
          *reinterpret_cast<uint4*>(&sm.k[i][col]) = ku[u];
          *reinterpret_cast<uint4*>(&sm.v[i][col]) = vu[u];
        }
      }
    } else {
      for (int x = tid; x < kSideChunk * D; x += kThreads) {
        const int i = x / D, col = x % D;
        __half kx = __float2half_rn(0.0f), vx = kx;
        if (i < n && col < hd) {
          const void *kb, *vb;
          DType dt;
          size_t at;
          source(i0 + i, kb, vb, dt, at);
          kx = side_half(kb, dt, at + col);
          vx = side_half(vb, dt, at + col);
        }
        sm.k[i][col] = kx;
        sm.v[i][col] = vx;
      }
    }
    sync();
    // ---- scores: partial dots of the thread's coordinates with each of the 16 keys, reduced so
    // that lane l of the row holds token i0 + l's ----
    float part[kSideChunk];
#pragma unroll
    for (int i = 0; i < kSideChunk; ++i) {
      float dot = 0.0f;
#pragma unroll
      for (int e = 0; e < E; e += 2) {
        const float2 kk = __half22float2(*reinterpret_cast<const __half2*>(&sm.k[i][c0 + e]));
        dot = fmaf(q[e], kk.x, fmaf(q[e + 1], kk.y, dot));
      }
      part[i] = dot;
    }
    fold_halves<kSideChunk / 2>(part, lane16);
    const int t = position(i0 + lane16);
    const bool live = valid && lane16 < n && t <= qpos && (t < sink || (window > 0 && t > qpos - window)) && (swa == 0 || t > qpos - swa);
    const float s = live ? part[0] : -INFINITY;
    float mx = s;
#pragma unroll
    for (int o = 1; o < 16; o *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    const SoftmaxState::Step st = SoftmaxState::update(m, dsum, mx, dev::Exp2{});
    const float w = live ? exp2f(s - st.base) : 0.0f;
    float wsum = w;
#pragma unroll
    for (int o = 1; o < 16; o *= 2) wsum += __shfl_xor_sync(0xffffffffu, wsum, o);
    dsum += wsum;
    // ---- values: acc = acc * scale + sum_i w_i v_i over the thread's coordinates ----
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] *= st.scale;
    const int row_lane0 = int(threadIdx.x % 32) & 16;  // the row's first lane in the warp
#pragma unroll
    for (int i = 0; i < kSideChunk; ++i) {
      const float wi = __shfl_sync(0xffffffffu, w, row_lane0 + i);
#pragma unroll
      for (int e = 0; e < E; e += 2) {
        const float2 vv = __half22float2(*reinterpret_cast<const __half2*>(&sm.v[i][c0 + e]));
        acc[e] = fmaf(wi, vv.x, acc[e]);
        acc[e + 1] = fmaf(wi, vv.y, acc[e + 1]);
      }
    }
  }
  if (!valid) return;
  const int j = row / group, h = kvh * group + row % group;
  const size_t at = ((size_t(seq) * nq + j) * p.q_heads + h) * gridDim.x + split;
#pragma unroll
  for (int e = 0; e < E; ++e) ws_o[at * D + c0 + e] = acc[e];
  if (lane16 == 0) ws_ml[at] = make_float2(m, dsum);
}

// The merge's row r = (seq * num_q_tokens + j) * q_heads + h, the first query head of its KV
// head: writes the step's row j of that KV head into the sequence's side slot (a sink row, or
// the ring for the last `ring` positions). Called after every query has read the side buffer.
// (first, stride: this thread's first column and the columns' stride)
__device__ __forceinline__ void write_side_row(const DecodeParams& p, size_t r, int first, int stride) {
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
  for (int col = first; col < hd; col += stride) {
    dst[col] = __half_as_ushort(side_half(sv.new_k, sv.new_dtype, src + col));
    dst[size_t(H) * hd + col] = __half_as_ushort(side_half(sv.new_v, sv.new_dtype, src + col));
  }
}

}  // namespace tq::cuda::decode
