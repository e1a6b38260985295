// The chunked-prefill kernel: 64 query rows of one (sequence, KV head) against a split of the
// sequence's pages, flash-attention style on tensor cores. Used only by attention_launch.cuh;
// Hopper runs prefill_ws.cuh's kernel instead, built from the same pieces (the tile layout, the
// fills, the softmax step).
//
// Decode reads each packed page once per 8 query rows, which is right when there are at most 8
// (the GQA group times 1..8 query tokens) but makes a chunk of 512 new tokens stream its prefix
// 256 times per KV head. Here the 4 warps of a block share each tile of tile_tokens keys and values:
//   fill   the block's threads load the tile's packed rows (registers, or cp.async for fp16/bf16)
//          while the tensor cores work on the previous tile, then decode them once into shared
//          memory as 16-bit rows (TurboQuant: the fp16-exact centroids, norms kept apart);
//   S      each warp owns 16 query rows: S = Q K^T with ldmatrix fragments, the query split in
//          16-bit high and low parts (two MMAs) as in decode, so S is exact to fp32 rounding;
//   P V    online softmax in the log2 domain, P scaled by the value norms (fp16: its high part
//          only; bf16: high and low), O += P V from ldmatrix.trans fragments of the value rows.
// So the integer work of unpacking codes is done once per 64 query rows instead of once per 8,
// and the prefix is read from memory rows/64 times instead of rows/8.
// Output as decode's splits: unnormalized rows with (max, sum) in the workspace, merged,
// un-rotated and written by merge_kernel; or, where a row has one split and no side block
// (writes_output: whole prompts and chunks large enough to fill the GPU), normalized, un-rotated
// and written by the block itself, which saves the merge's launch and the workspace's round trip.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <type_traits>

#include "attention_output.cuh"
#include "decode_ops.cuh"
#include "decode_side.cuh"
#include "decode_tiles.cuh"
#include "device_common.cuh"
#include "tq/cuda/kernels.h"
#include "tq/kv/online_softmax.h"
#include "variants.h"

namespace tq::cuda::prefill {

using decode::Kind;
using decode::begin_for_all;
using decode::window_base;
constexpr int kWarps = 4, kThreads = 32 * kWarps, kWarpRows = 16, kBlockRows = kWarps * kWarpRows;

// Tokens per shared tile: 64, or 32 at D = 256, whose accumulators take 128 registers already.
// The compact kernels for GPUs with 99 KB of shared memory a block (sm_86, 89, 120) take 16 at
// D = 256: the query rows' 64 KB and two 16-token tiles of keys and values fit there (97 KB a
// block, against 129 KB with 32-token tiles).
constexpr int tile_tokens(int D, bool compact = false) { return D >= 256 ? (compact ? 16 : 32) : 64; }

// A tile of R rows of D 16-bit elements (query rows, or a tile's keys or values) is stored as D/64
// blocks of R rows x 64 elements (128 bytes: 8 chunks of 16 bytes), chunk c of row r at c ^ (r & 7):
// the 8 rows an ldmatrix reads at one chunk fall in 8 different bank groups, and it is the
// canonical 128-byte-swizzled layout wgmma reads (wgmma.cuh). tile_chunk: the 16-byte unit of
// chunk c (0 .. D/8) of row r.
template <int R>
__device__ __forceinline__ int tile_chunk(int r, int c) {
  return (c >> 3) * (R * 8) + r * 8 + ((c & 7) ^ (r & 7));
}

// T: tokens a tile (tile_tokens). Every array is a whole number of KB, so each tile starts
// 1 KB-aligned when the struct does (wgmma's swizzle atoms).
template <int D, int T = tile_tokens(D)>
struct Smem {
  uint4 q[2][D / 64][kBlockRows][8];  // query rows, 16-bit high and low parts (tile_chunk<kBlockRows>)
  uint4 k[2][D / 64][T][8];           // decoded key tiles, double-buffered (tile_chunk<T>)
  uint4 v[2][D / 64][T][8];           // decoded value tiles
  float kn[2][T], vn[2][T];           // TurboQuant norms of the tiles' tokens
  __half lut_k[16], lut_v[16];        // TurboQuant centroids in fp16 z-units x sqrt(D)
};
static_assert(sizeof(Smem<64>::q) % 1024 == 0 && sizeof(Smem<256, 16>::k[0]) % 1024 == 0, "1 KB-aligned tiles");

// A launch's dynamic shared memory: the struct and the 1 KB the kernel may skip to align it.
template <int D, int T = tile_tokens(D)>
constexpr size_t smem_bytes() {
  return sizeof(Smem<D, T>) + 1024;
}

// Blocks per SM, as the H200's shared memory allows (D = 128: 98 KB, 2 blocks).
template <int D, int T = tile_tokens(D)>
constexpr int resident_blocks() {
  constexpr int n = 227 * 1024 / int(smem_bytes<D, T>() + 1024);
  return n < 1 ? 1 : n > 4 ? 4 : n;
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// This lane's ldmatrix addresses in a tile of R rows (tile_chunk<R>): its row r (lane-dependent,
// r & 7 = lane & 7) at chunk 2 cp + h sits at at[cp % 4] + 16 (8 R (cp / 4) + 8 rows) when the row
// is r + rows, rows a multiple of 8: the swizzle only touches the low 3 bits of the chunk. So
// every ldmatrix of the loop is one register plus an immediate.
template <int R>
struct LdsmLane {
  uint32_t at[4];
  __device__ LdsmLane(uint32_t base, int r, int h) {
#pragma unroll
    for (int b = 0; b < 4; ++b) at[b] = base + 16 * (r * 8 + ((2 * b + h) ^ (r & 7)));
  }
  __device__ uint32_t operator()(int rows, int cp) const { return at[cp % 4] + 16 * (8 * R * (cp / 4) + 8 * rows); }
};

// Where token T of the sequence lives: its page block and row, clamped to the last token (so every
// load reads written bytes; such tokens are masked). Page sizes that are powers of two (the
// usual ones) take a shift and a mask instead of a division.
struct Pages {
  const uint8_t* data;
  const int32_t* bt;
  uint32_t kv_heads, block_bytes;
  int kvh, len, ps, shift;  // shift = log2(ps), or -1
  __device__ Pages(const DecodeParams& p, const int32_t* bt_, int kvh_, int len_)
      : data(p.cache.data), bt(bt_), kv_heads(p.cache.kv_heads), block_bytes(p.cache.layout.bytes), kvh(kvh_), len(len_),
        ps(int(p.cache.page_size)), shift(-1) {
    if ((ps & (ps - 1)) == 0)
      for (shift = 0; (1 << shift) < ps;) ++shift;
  }
  __device__ decode::TokenAddr operator()(int T) const {
    T = min(T, len - 1);
    const int page = shift >= 0 ? T >> shift : T / ps, row = T - page * ps;
    return {data + (size_t(bt[page]) * kv_heads + kvh) * block_bytes, uint32_t(row)};
  }
};

// Loading one tile into shared memory, by cache kind: fetch() starts the global reads of tile T0
// (into registers, or straight into shared memory for fp16/bf16), store() finishes them into
// buffer `buf` as 16-bit rows (Hopper's int8 S: TurboQuant keys as int8 rows). Between the two the
// block computes on the other buffer.
template <int D, Kind KIND, int KB, int VB, int T>
struct Fill;

// TurboQuant: a thread's units are (token, group of 32 codes) pairs; it loads the group's words
// of the key row and of the value row, and the norms when its group is the first. Trellis-coded
// rows (KB, VB kTcq widths: widths.h) also the branch bits carried into the group (tcq_carry),
// and store() reads their octets as union indices (tcq_octet).
template <int D, int KB, int VB, int T>
struct Fill<D, Kind::kTq, KB, VB, T> {
  static constexpr int kGroups = D / 32, kUnits = T * kGroups / kThreads;
  static constexpr int kSK = stored_bits(KB), kSV = stored_bits(VB);
  static_assert(T * kGroups % kThreads == 0, "whole units per thread");
  uint32_t k[kUnits][kSK], v[kUnits][kSV];
  uint32_t k_carry[kUnits], v_carry[kUnits];  // trellis-coded rows: the branch word before the group
  uint16_t kn[kUnits], vn[kUnits];
  __device__ static int token(int j) { return (int(threadIdx.x) + kThreads * j) / kGroups; }
  template <class SM>
  __device__ void fetch(const DecodeParams& p, const Pages& pages, int T0, SM&, int) {
    const BlockLayout& L = p.cache.layout;
    const int gi = int(threadIdx.x) % kGroups;
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      const decode::TokenAddr a = pages(T0 + token(j));
      const uint32_t* kw = reinterpret_cast<const uint32_t*>(a.block + L.k_codes + size_t(a.row) * L.k_row) + gi * kSK;
      const uint32_t* vw = reinterpret_cast<const uint32_t*>(a.block + L.v_codes + size_t(a.row) * L.v_row) + gi * kSV;
#pragma unroll
      for (int i = 0; i < kSK; ++i) k[j][i] = kw[i];
#pragma unroll
      for (int i = 0; i < kSV; ++i) v[j][i] = vw[i];
      k_carry[j] = v_carry[j] = 0;
      if constexpr (tcq_width(KB)) k_carry[j] = dev::tcq_carry<kSK, kGroups>(kw, 0, gi == 0);
      if constexpr (tcq_width(VB)) v_carry[j] = dev::tcq_carry<kSV, kGroups>(vw, 0, gi == 0);
      if (gi == 0) {
        kn[j] = reinterpret_cast<const uint16_t*>(a.block + L.k_norms)[a.row];
        vn[j] = reinterpret_cast<const uint16_t*>(a.block + L.v_norms)[a.row];
      }
    }
  }
  // The keys as 16-bit rows (lut_k: a dev::Lut8 of the fp16 centroids), or with S8 as rows of
  // int8 levels (the 1/32 grid: int8_keys; lut_k a dev::ByteLut8, or ByteLut16 for a 16-level
  // union), D bytes a row in the same chunk layout, for Hopper's int8 S (prefill_ws.cuh).
  template <bool S8 = false, class SM, class KLut>
  __device__ void store(SM& sm, int buf, const KLut& lut_k, const dev::Lut8& lut_v) const {
    const int gi = int(threadIdx.x) % kGroups;
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      const int r = token(j);
      uint32_t kc = k_carry[j], vc = v_carry[j];
#pragma unroll
      for (int og = 0; og < 4; ++og) {  // octet og of group gi: coordinates 32 gi + 8 og + 0..7
        uint32_t h[4];
        if constexpr (S8) {  // 8 bytes: half og % 2 of the row's 16-byte chunk 2 gi + og / 2
          uint32_t sel;
          if constexpr (tcq_width(KB))
            sel = dev::tcq_octet<kSK>(k[j], og, kc);
          else
            sel = dev::octet_selector<KB>(k[j], og);
          uint8_t* chunk = reinterpret_cast<uint8_t*>(&sm.k[buf][0][0][0] + tile_chunk<T>(r, 2 * gi + og / 2));
          *reinterpret_cast<uint2*>(chunk + 8 * (og % 2)) = make_uint2(dev::lookup_s8(lut_k, sel), dev::lookup_s8(lut_k, sel >> 16));
        } else {
          if constexpr (tcq_width(KB))
            decode::decode_selector<read_bits(KB)>(dev::tcq_octet<kSK>(k[j], og, kc), lut_k, sm.lut_k, h);
          else
            decode::decode_octet<KB>(k[j], og, lut_k, sm.lut_k, h);
          (&sm.k[buf][0][0][0])[tile_chunk<T>(r, 4 * gi + og)] = make_uint4(h[0], h[1], h[2], h[3]);
        }
        if constexpr (tcq_width(VB))
          decode::decode_selector<read_bits(VB)>(dev::tcq_octet<kSV>(v[j], og, vc), lut_v, sm.lut_v, h);
        else
          decode::decode_octet<VB>(v[j], og, lut_v, sm.lut_v, h);
        (&sm.v[buf][0][0][0])[tile_chunk<T>(r, 4 * gi + og)] = make_uint4(h[0], h[1], h[2], h[3]);
      }
      if (gi == 0) {
        sm.kn[buf][r] = __half2float(__ushort_as_half(kn[j]));
        sm.vn[buf][r] = __half2float(__ushort_as_half(vn[j]));
      }
    }
  }
};

// fp16 and bf16: the rows are already what the MMAs take; 16-byte chunks copied with cp.async.
template <int D, int T>
struct Fill16 {
  static constexpr int kChunks = D / 8, kUnits = T * kChunks / kThreads;
  template <class SM>
  __device__ void fetch(const DecodeParams& p, const Pages& pages, int T0, SM& sm, int buf) {
    const BlockLayout& L = p.cache.layout;
    const int c = int(threadIdx.x) % kChunks;  // kThreads is a multiple of kChunks: the same chunk every unit
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      const int r = (int(threadIdx.x) + kThreads * j) / kChunks;
      const decode::TokenAddr a = pages(T0 + r);
      decode::cp_async16(static_cast<uint32_t>(__cvta_generic_to_shared(&sm.k[buf][0][0][0] + tile_chunk<T>(r, c))),
                         a.block + L.k_codes + size_t(a.row) * L.k_row + 16 * c);
      decode::cp_async16(static_cast<uint32_t>(__cvta_generic_to_shared(&sm.v[buf][0][0][0] + tile_chunk<T>(r, c))),
                         a.block + L.v_codes + size_t(a.row) * L.v_row + 16 * c);
    }
    decode::cp_async_commit();
  }
  template <class SM>
  __device__ void store(SM&, int, const dev::Lut8&, const dev::Lut8&) const { decode::cp_async_wait<0>(); }
};
template <int D, int KB, int VB, int T>
struct Fill<D, Kind::kF16, KB, VB, T> : Fill16<D, T> {};
template <int D, int KB, int VB, int T>
struct Fill<D, Kind::kBf16, KB, VB, T> : Fill16<D, T> {};

// fp8 e4m3: 16-byte chunks of 16 elements loaded into registers, widened to fp16 (exact) on store.
template <int D, int KB, int VB, int T>
struct Fill<D, Kind::kFp8, KB, VB, T> {
  static constexpr int kChunks = D / 16, kUnits = T * kChunks / kThreads;
  static_assert(T * kChunks % kThreads == 0, "whole units per thread");
  uint4 k[kUnits], v[kUnits];
  template <class SM>
  __device__ void fetch(const DecodeParams& p, const Pages& pages, int T0, SM&, int) {
    const BlockLayout& L = p.cache.layout;
    const int c = int(threadIdx.x) % kChunks;
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      const int r = (int(threadIdx.x) + kThreads * j) / kChunks;
      const decode::TokenAddr a = pages(T0 + r);
      k[j] = *reinterpret_cast<const uint4*>(a.block + L.k_codes + size_t(a.row) * L.k_row + 16 * c);
      v[j] = *reinterpret_cast<const uint4*>(a.block + L.v_codes + size_t(a.row) * L.v_row + 16 * c);
    }
  }
  __device__ static uint4 widen(uint32_t a, uint32_t b) {
    uint4 h;
    decode::e4m3x4_to_half2x2(a, h.x, h.y);
    decode::e4m3x4_to_half2x2(b, h.z, h.w);
    return h;
  }
  template <class SM>
  __device__ void store(SM& sm, int buf, const dev::Lut8&, const dev::Lut8&) const {
    const int c = int(threadIdx.x) % kChunks;
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      const int r = (int(threadIdx.x) + kThreads * j) / kChunks;
      uint4* kd = &sm.k[buf][0][0][0];
      uint4* vd = &sm.v[buf][0][0][0];
      kd[tile_chunk<T>(r, 2 * c)] = widen(k[j].x, k[j].y);
      kd[tile_chunk<T>(r, 2 * c + 1)] = widen(k[j].z, k[j].w);
      vd[tile_chunk<T>(r, 2 * c)] = widen(v[j].x, v[j].y);
      vd[tile_chunk<T>(r, 2 * c + 1)] = widen(v[j].z, v[j].w);
    }
  }
};

// Whether prefill at head dim D has a compact variant (16-token tiles): where its tiles exceed the
// 99 KB a block of the smallest GPUs (variants.h).
template <int D>
constexpr bool kPrefillHasCompact = smem_bytes<D>() > kSmallSmem;

// ---- pieces of a block's work shared with Hopper's kernel (prefill_ws.cuh) ----

// R query rows of D (src: prepare_queries' [R][D] floats) into shared memory as 16-bit high and
// low parts (q_hi, q_lo: tile_chunk<R>), by threads tid = 0 .. nthreads - 1.
template <int D, int R, bool BF>
__device__ __forceinline__ void store_query_rows(uint4* q_hi, uint4* q_lo, const float* src, int tid, int nthreads) {
  for (int i = tid; i < R * D / 8; i += nthreads) {
    const int r = i / (D / 8), ch = i % (D / 8);
    const float4 a = reinterpret_cast<const float4*>(src)[2 * i], b = reinterpret_cast<const float4*>(src)[2 * i + 1];
    const float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    uint32_t hi[4], lo[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) dev::split_pair<BF>(x[2 * e], x[2 * e + 1], hi[e], lo[e]);
    q_hi[tile_chunk<R>(r, ch)] = make_uint4(hi[0], hi[1], hi[2], hi[3]);
    q_lo[tile_chunk<R>(r, ch)] = make_uint4(lo[0], lo[1], lo[2], lo[3]);
  }
}

// The R query rows of m-tiles mt0 .. mt0 + R / kRows - 1, loaded, rotated with the keys' Hadamard
// rotation and scaled in registers (decode's query_registers: 16 threads a row, kQE<D> coordinates
// each), straight into shared memory: as store_query_rows' 16-bit high and low parts, or with S8 as
// store_query_rows_s8's int16 fixed point per row (its step in q_scale) -- what prepare_queries and
// those two make of the same rows, without the fp32 rows' round trip through the workspace. By
// the block's `parts` groups of kThreads threads, this thread's being `part` (uniform: pass a
// warpgroup index ptxas knows is one, as the kernels compute theirs), each taking an m-tile in
// turn. Dense rotations go through prepare_queries (rotates_queries).
template <int D, Kind KIND, int R, bool S8, bool BF>
__device__ __forceinline__ void rotate_query_rows(const DecodeParams& p, int seq, int kvh, int mt0, uint4* q_hi, uint4* q_lo, float* q_scale,
                                                  int part, int parts) {
  constexpr int E = decode::kQE<D>;
  static_assert(E % 4 == 0 && R % decode::kRows == 0, "whole words of 4 coordinates, whole m-tiles");
  const int r = int(threadIdx.x % decode::kThreads / 16);
  const int c0 = decode::query_col<D>();
  for (int m = part; m < R / decode::kRows; m += parts) {  // uniform in a warp: its shuffles below
    float v[E];
    decode::load_query<D, KIND>(p, seq, kvh, mt0 + m, v, r);
    decode::finish_query<D, KIND>(p, v);
    const int row = m * decode::kRows + r;
    if constexpr (S8) {
      float mx = 0.0f;
#pragma unroll
      for (int e = 0; e < E; ++e) mx = fmaxf(mx, fabsf(v[e]));
#pragma unroll
      for (int o = 1; o < 16; o *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));  // the row's 16 lanes
      const float qstep = mx / dev::kQ16Max, inv = qstep > 0 ? 1.0f / qstep : 0.0f;
      if (c0 == 0) q_scale[row] = qstep * (1.0f / kCentroidGrid);
#pragma unroll
      for (int w = 0; w < E / 4; ++w) {  // 4 coordinates: a word of high bytes, a word of low ones
        uint32_t hi, lo;
        dev::split_i16x4(v + 4 * w, inv, hi, lo);
        const int col = c0 + 4 * w, at = tile_chunk<R>(row, col / 16), byte = col % 16;
        *reinterpret_cast<uint32_t*>(reinterpret_cast<uint8_t*>(q_hi + at) + byte) = hi;
        *reinterpret_cast<uint32_t*>(reinterpret_cast<uint8_t*>(q_lo + at) + byte) = lo;
      }
    } else {
#pragma unroll
      for (int w = 0; w < E / 4; ++w) {  // 4 coordinates: 8 bytes of high parts, 8 of low ones
        uint32_t hi[2], lo[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) dev::split_pair<BF>(v[4 * w + 2 * e], v[4 * w + 2 * e + 1], hi[e], lo[e]);
        const int col = c0 + 4 * w, at = tile_chunk<R>(row, col / 8), byte = 2 * (col % 8);
        *reinterpret_cast<uint2*>(reinterpret_cast<uint8_t*>(q_hi + at) + byte) = make_uint2(hi[0], hi[1]);
        *reinterpret_cast<uint2*>(reinterpret_cast<uint8_t*>(q_lo + at) + byte) = make_uint2(lo[0], lo[1]);
      }
    }
  }
}

// Whether a prefill launch needs prepare_queries' rotated rows in the workspace: a dense rotation
// (a D x D product a row); the kernels rotate the others themselves (rotate_query_rows).
TQ_HD bool rotates_queries(const DecodeParams& p, bool tq) { return tq && p.cache.kt.signs == nullptr; }

// TurboQuant's centroids in fp16 z-units x sqrt(D), keys and values, by threads 0 .. 15.
template <int D, int KB, int VB>
__device__ __forceinline__ void store_luts(const CacheView& c, __half* lut_k, __half* lut_v) {
  if (threadIdx.x < 16) {
    const int i = threadIdx.x;
    lut_k[i] = __float2half_rn(i < (1 << read_bits(KB)) ? c.kt.centroids[i] * sqrtf(float(D)) : 0.0f);  // trellis-coded: the union
    lut_v[i] = __float2half_rn(i < (1 << read_bits(VB)) ? c.vt.centroids[i] * sqrtf(float(D)) : 0.0f);
  }
}

// f folded over row i's 2 NT elements of a tile (x[nt][2i], x[nt][2i + 1]: row g, or g + 8) as a
// tree (dev::tree_fold): log2(2 NT) dependent steps where a running fold takes 2 NT.
template <int NT, typename F>
__device__ __forceinline__ float row_tree(const float (&x)[NT][4], int i, F f) {
  float r[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) r[nt] = f(x[nt][2 * i], x[nt][2 * i + 1]);
  return dev::tree_fold(r, f);
}

// What the masks of a tile compare with: its first token T0, the split's end, the side buffer's
// window (its positions are the side block's), and the thread's two rows' limits: each row
// reads [begin, visible - window) here (begin: the side buffer's sink, or in a sliding-window
// layer the row's window start where that is later).
struct TileMask {
  int T0, end, window;
  int begin[2], visible[2];
  // The rows' limits of query rows `rows` (rows past rows_total: the last position's).
  __device__ void set_rows(const DecodeParams& p, int len, const int (&rows)[2], int rows_total, int group) {
    const int nq = int(p.num_q_tokens), sink = int(p.side.sink), swa = int(p.sliding_window);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      visible[i] = rows[i] < rows_total ? len - nq + rows[i] / group + 1 : len;
      begin[i] = swa ? max(sink, visible[i] - swa) : sink;
    }
  }
};

// One tile's online-softmax step for this thread's rows g and g + 8 (elements 0-1 and 2-3 of each
// n-tile of s, tokens 8 nt + 2t, +1): S scaled by the key norms kn (TurboQuant) and masked unless
// `full`, the running (max, sum) updated in the log2 domain with S times each row's scale rs
// (> 0: int8 S's fixed point, applied with the max subtracted in one FFMA; 1 otherwise), and s
// replaced by P scaled by the value norms vn (fp8: the value scale) for P V. O is not touched:
// `alpha` says what to rescale it by (rescale_o), which may wait until P V of the previous tile
// has finished writing it.
template <Kind KIND, int NT>
__device__ __forceinline__ void softmax_p(float (&s)[NT][4], float (&m_run)[2], float (&l_run)[2], const float* kn, const float* vn,
                                          float v_scale, bool full, const TileMask& mk, int t, float (&alpha)[2],
                                          const float (&rs)[2]) {
  constexpr bool kTq = KIND == Kind::kTq;
  float mx[2];
  // Tiles wholly visible to every row (most of them) take a branch without the masks' compares,
  // which as predicated code would issue on every tile.
  const auto scale_and_mask = [&](auto masked) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int tok = 8 * nt + 2 * t;
      float kn0 = 1.0f, kn1 = 1.0f;
      if constexpr (kTq) {
        const float2 k2 = *reinterpret_cast<const float2*>(&kn[tok]);
        kn0 = k2.x;
        kn1 = k2.y;
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nt][e] * (e & 1 ? kn1 : kn0);
        if constexpr (decltype(masked)::value) {
          const int pos = mk.T0 + tok + (e & 1);
          if (pos < mk.begin[e >> 1] || pos >= mk.end || pos >= mk.visible[e >> 1] - mk.window) x = -INFINITY;
        }
        s[nt][e] = x;
      }
    }
  };
  if (full)
    scale_and_mask(std::false_type{});
  else
    scale_and_mask(std::true_type{});
  float m_use[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    mx[i] = row_tree(s, i, [](float a, float b) { return fmaxf(a, b); });
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2)) * rs[i];  // rs > 0 commutes with the max
    const SoftmaxState::Step st = SoftmaxState::update(m_run[i], l_run[i], mx[i], dev::FastExp2{});  // nothing visible yet: p = 0, not NaN
    alpha[i] = st.scale;
    m_use[i] = st.base;
  }
  float p[NT][4];  // P before the value norms: the row sums' terms
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    float vn0 = v_scale, vn1 = v_scale;
    if constexpr (kTq) {
      const float2 v2 = *reinterpret_cast<const float2*>(&vn[8 * nt + 2 * t]);
      vn0 = v2.x;
      vn1 = v2.y;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) p[nt][e] = dev::fast_exp2(fmaf(s[nt][e], rs[e >> 1], -m_use[e >> 1]));
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] = p[nt][e] * (e & 1 ? vn1 : vn0);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) l_run[i] += row_tree(p, i, [](float a, float b) { return a + b; });
}

// O's rows g and g + 8 scaled by softmax_p's alpha (skipped by the warp when no row's max moved).
template <int J>
__device__ __forceinline__ void rescale_o(float (&o)[J][4], const float (&alpha)[2]) {
  if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
    for (int i = 0; i < J; ++i) {
      o[i][0] *= alpha[0];
      o[i][1] *= alpha[0];
      o[i][2] *= alpha[1];
      o[i][3] *= alpha[1];
    }
  }
}

// P V takes P's high part only, except with bf16 operands: P in [0, 1] rounded to fp16 is off by
// at most 2^-11 of itself, independently per token, which averages out in O (the prefill tests'
// worst error went from 1.4e-4 to 2.9e-4 of the 1e-3 bound, for 25% fewer MMAs); bf16's 2^-8
// would not.
template <bool BF>
constexpr int kPParts = BF ? 2 : 1;

// P's A fragments for P V (k-step kk: 16 tokens, n-tiles 2kk and 2kk + 1 of S; a0: row g, n-tile
// 2kk; a1: row g + 8; a2, a3: n-tile 2kk + 1), all packed before the MMAs that read them: the
// warpgroup's MMAs must not wait on registers written between them (ptxas would insert a
// warpgroup arrive before each).
template <bool BF, int NT>
__device__ __forceinline__ void pack_p(const float (&s)[NT][4], uint32_t (&pa)[NT / 2][kPParts<BF>][4]) {
  using Op = dev::Operand<BF>;
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float* x = &s[2 * kk + q / 2][2 * (q % 2)];
      if constexpr (BF) {
        dev::split_pair<true>(x[0], x[1], pa[kk][0][q], pa[kk][1][q]);
      } else {
        pa[kk][0][q] = Op::pack(x[0], x[1]);
      }
    }
  }
}

// Whether a prefill launch's blocks write the output rows themselves (normalized, un-rotated, in
// the output's dtype) instead of partials for the merge: each row has one split and there is no
// side block (whose partial the merge adds, and whose buffer it appends to); the values' rotation,
// if any, is a Hadamard one (a dense rotation's D x D matrix is the merge's); and rows are whole
// (head_dim = D: no padded TurboQuant tail) in an output aligned for a store a pair. The launch
// skips the merge by the same rule (attention_launch.cuh).
TQ_HD bool writes_output(const DecodeParams& p, int D, int splits, bool tq) {
  const uintptr_t align = p.out_dtype == DType::kF32 ? 8 : 4;
  return splits == 1 && !p.side.active() && !(tq && p.cache.vt.signs == nullptr) && p.cache.head_dim == uint32_t(D) &&
         reinterpret_cast<uintptr_t>(p.out) % align == 0;
}

// The thread's rows (my_row: g and g + 8 of its warp's 16) to the workspace slot of `split`:
// unnormalized, with their (max, sum); merge_kernel normalizes, un-rotates and writes them. Or,
// where writes_output, to the output: normalized, un-rotated, stored.
// TurboQuant values are decoded in units of 1/sqrt(D) (the codebook's z-units): scaled once here.
template <int D, bool TQ, int J>
__device__ __forceinline__ void write_rows(const DecodeParams& p, float (&o)[J][4], const float (&m_run)[2], float (&l_run)[2],
                                           const int (&my_row)[2], int seq, int kvh, int split, int t, float* ws_o, float2* ws_ml) {
  static_assert(8 * J == D, "the fragments hold whole rows");
  const CacheView& c = p.cache;
  const int group = int(p.q_heads / c.kv_heads), nq = int(p.num_q_tokens), rows_total = group * nq;
  const float out_scale = TQ ? rsqrtf(float(D)) : 1.0f;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
  }
  if (writes_output(p, D, int(gridDim.x), TQ)) {  // uniform: every lane shuffles below
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float f = SoftmaxState::inv_sum(l_run[i]) * (TQ ? out_scale * c.fwht_scale : 1.0f);
#pragma unroll
      for (int nt = 0; nt < J; ++nt) o[nt][2 * i] *= f, o[nt][2 * i + 1] *= f;
    }
    if constexpr (TQ) {  // x = signs * H o (merge_kernel's un-rotation, its scale above)
      decode::fwht_fragment_rows(o, t);
#pragma unroll
      for (int nt = 0; nt < J; ++nt) {
        const float2 sg = *reinterpret_cast<const float2*>(&c.vt.signs[size_t(kvh) * D + 8 * nt + 2 * t]);
#pragma unroll
        for (int i = 0; i < 2; ++i) o[nt][2 * i] *= sg.x, o[nt][2 * i + 1] *= sg.y;
      }
    }
    size_t at[2];  // each row's first output element: [seq][token][query head][head_dim]
    bool valid[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = my_row[i], j = row / group, h = kvh * group + row % group;
      valid[i] = row < rows_total;
      at[i] = ((size_t(seq) * nq + j) * p.q_heads + h) * D;  // head_dim = D here
    }
    if (p.out_dtype == DType::kF32)
      decode::store_fragment_rows(static_cast<float*>(p.out), at, valid, o, t);
    else if (p.out_dtype == DType::kF16)
      decode::store_fragment_rows(static_cast<__half*>(p.out), at, valid, o, t);
    else
      decode::store_fragment_rows(static_cast<__nv_bfloat16*>(p.out), at, valid, o, t);
    return;
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = my_row[i];
    if (row >= rows_total) continue;
    const int j = row / group, h = kvh * group + row % group;
    const size_t slot = ((size_t(seq) * nq + j) * p.q_heads + h) * gridDim.x + split;
#pragma unroll
    for (int nt = 0; nt < J; ++nt)
      *reinterpret_cast<float2*>(&ws_o[slot * D + 8 * nt + 2 * t]) = make_float2(o[nt][2 * i] * out_scale, o[nt][2 * i + 1] * out_scale);
    if (t == 0) ws_ml[slot] = make_float2(m_run[i], l_run[i]);
  }
}

// A block's KV head and row tile from blockIdx.y (grid y = kv_heads x rtiles): every head's row tile
// rt before any head's rt - 1. A causal prompt's last row tiles see the most tokens; the GPU
// starts blocks in index order, so the longest start first and the short ones fill the last
// wave's gaps (longest-processing-time-first list scheduling), instead of the last ones starting
// alone at the end.
struct BlockRows {
  int kvh, rt;
};
__device__ __forceinline__ BlockRows block_rows(int y, int kv_heads, int rtiles) {
  return {y % kv_heads, rtiles - 1 - y / kv_heads};
}

// The body of prefill_kernel (below): a block of 4 warps, each warp's mma.sync on ldmatrix
// fragments of the shared tiles.
template <int D, Kind KIND, int KB, int VB, int T>
__device__ __forceinline__ void prefill_block(const DecodeParams& p, int tokens_per_split, int rtiles, float* __restrict__ ws_o,
                                              float2* __restrict__ ws_ml, const float* ws_q) {
  constexpr bool kBf = KIND == Kind::kBf16, kTq = KIND == Kind::kTq;
  constexpr int NT = T / 8;  // n-tiles of S
  using Op = dev::Operand<kBf>;
  extern __shared__ __align__(128) uint4 smem_raw[];
  // 1 KB-aligned (smem_bytes leaves room), as Hopper's kernel needs; the layouts are shared.
  const uint32_t raw_at = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  Smem<D, T>& sm = *reinterpret_cast<Smem<D, T>*>(reinterpret_cast<uint8_t*>(smem_raw) + ((1024 - (raw_at & 1023)) & 1023));
  dev::wait_prerequisites();  // the queries (or prepare_queries' ws_q) are written (a programmatic dependent launch)
  dev::allow_dependents();
  static_assert(sizeof(decode::SideSmem<D>) <= sizeof(Smem<D, T>), "the side block reuses the shared memory");
  if (p.side.active() && blockIdx.x == gridDim.x - 1) {  // the side buffer's block (decode_side.cuh), m-tile by m-tile
    const BlockRows br = block_rows(int(blockIdx.y), int(p.cache.kv_heads), rtiles);
    for (int i = 0; i < kBlockRows / decode::kRows; ++i)
      decode::side_attention<D>(p, blockIdx.z, br.kvh, br.rt * (kBlockRows / decode::kRows) + i, blockIdx.x, 0, INT_MAX, ws_o, ws_ml,
                                smem_raw);
    return;
  }

  const BlockRows br = block_rows(int(blockIdx.y), int(p.cache.kv_heads), rtiles);
  const int split = blockIdx.x, kvh = br.kvh, rt = br.rt, seq = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const CacheView& c = p.cache;
  const int group = int(p.q_heads / c.kv_heads), nq = int(p.num_q_tokens), rows_total = group * nq;
  const int len = p.seq_lens[seq];
  const int32_t* bt = p.block_tables + size_t(seq) * p.max_pages;
  // Query row r (0..rows_total) is query token r / group, at position len - nq + r / group: it sees
  // tokens below len - nq + r / group + 1. The block's rows see at most up to its last row's limit.
  const int row0 = rt * kBlockRows, last_row = min(row0 + kBlockRows, rows_total) - 1;
  const int visible_min = len - nq + row0 / group + 1, visible_max = len - nq + last_row / group + 1;
  // Positions below `sink`, and within `window` of a row's query, are the side block's.
  const int window = int(p.side.window), seen_by_all = begin_for_all(p, visible_max);
  const int begin = window_base(p, visible_min) + split * tokens_per_split;
  const int end = min(min(begin + tokens_per_split, len), visible_max - window);

  if (rotates_queries(p, kTq))
    store_query_rows<D, kBlockRows, kBf>(&sm.q[0][0][0][0], &sm.q[1][0][0][0],
                                         ws_q + ((size_t(seq) * c.kv_heads + kvh) * rtiles + rt) * kBlockRows * D, threadIdx.x, kThreads);
  else
    rotate_query_rows<D, KIND, kBlockRows, false, kBf>(p, seq, kvh, rt * (kBlockRows / decode::kRows), &sm.q[0][0][0][0], &sm.q[1][0][0][0],
                                                      nullptr, 0, 1);
  dev::Lut8 lut_k{}, lut_v{};
  if constexpr (kTq) {
    store_luts<D, KB, VB>(c, sm.lut_k, sm.lut_v);
    __syncthreads();
    if constexpr (read_bits(KB) <= 3) lut_k = dev::make_lut8(sm.lut_k);
    if constexpr (read_bits(VB) <= 3) lut_v = dev::make_lut8(sm.lut_v);
  }

  // This thread's rows: g and g + 8 of the warp's 16.
  const int my_row[2] = {row0 + warp * kWarpRows + g, row0 + warp * kWarpRows + g + 8};
  TileMask mk{0, end, window, {}, {}};
  mk.set_rows(p, len, my_row, rows_total, group);

  // O accumulators: n-tile nt holds coordinates 8 nt + 2t, +1 of rows g (o[nt][0..1]) and g + 8 ([2..3]).
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  // The online-softmax states (SoftmaxState) of rows g and g + 8, over this thread's tokens of
  // them (the quad holds the rest).
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

  // Shared-window addresses of this lane's ldmatrix rows. Q (A of S): rows warp*16 + (lane & 15),
  // chunk 2kt + (lane >> 4). K (B of S, two n-tiles): tokens (lane & 7) + 8 (lane >> 4), chunk
  // 2kt + ((lane >> 3) & 1). V (B of P V, transposed, two n-tiles of coordinates): tokens
  // (lane & 7) + 8 ((lane >> 3) & 1), chunk 2np + (lane >> 4). Every row index is = lane mod 8.
  const uint32_t q_smem = static_cast<uint32_t>(__cvta_generic_to_shared(&sm.q[0][0][0][0]));
  const uint32_t k_smem = static_cast<uint32_t>(__cvta_generic_to_shared(&sm.k[0][0][0][0]));
  const uint32_t v_smem = static_cast<uint32_t>(__cvta_generic_to_shared(&sm.v[0][0][0][0]));
  const LdsmLane<kBlockRows> q_at(q_smem, warp * kWarpRows + (lane & 15), lane >> 4);
  const LdsmLane<T> k_at0(k_smem, (lane & 7) + 8 * (lane >> 4), (lane >> 3) & 1);
  const LdsmLane<T> v_at0(v_smem, (lane & 7) + 8 * ((lane >> 3) & 1), lane >> 4);
  constexpr uint32_t kQPart = sizeof(sm.q[0]), kBuf = sizeof(sm.k[0]);  // bytes of a query part, of a K (V) buffer
  static_assert(sizeof(sm.v[0]) == kBuf, "K and V buffers alike");

  Fill<D, KIND, KB, VB, T> fill;
  const int tiles = begin < end ? (end - begin + T - 1) / T : 0;
  const Pages pages(p, bt, kvh, len);
  if (tiles > 0) {
    fill.fetch(p, pages, begin, sm, 0);
    fill.store(sm, 0, lut_k, lut_v);
  }
  __syncthreads();  // the query rows and the first tile

  for (int it = 0; it < tiles; ++it) {
    const int T0 = begin + it * T, buf = it & 1;
    LdsmLane<T> k_at = k_at0, v_at = v_at0;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      k_at.at[b] += buf * kBuf;
      v_at.at[b] += buf * kBuf;
    }
    if (it + 1 < tiles) fill.fetch(p, pages, T0 + T, sm, buf ^ 1);  // in flight during the MMAs

    // ---- S = Q K^T: s[nt] holds rows g, g + 8 x tokens 8 nt + 2t, +1 ----
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kt = 0; kt < D / 16; ++kt) {
      uint32_t qh[4], ql[4];
      ldsm_x4(q_at(0, kt), qh);
      ldsm_x4(q_at(0, kt) + kQPart, ql);
      uint32_t b[NT / 2][4];
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) ldsm_x4(k_at(16 * np, kt), b[np]);
      // the high parts into every n-tile, then the low parts: NT MMAs between two on one accumulator
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) Op::mma(s[nt], qh, b[nt / 2][2 * (nt % 2)], b[nt / 2][2 * (nt % 2) + 1]);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) Op::mma(s[nt], ql, b[nt / 2][2 * (nt % 2)], b[nt / 2][2 * (nt % 2) + 1]);
    }

    // ---- key norms, masks, online softmax; then O += P V (B = V rows transposed) ----
    mk.T0 = T0;
    const bool full = T0 >= seen_by_all && T0 + T <= end && T0 + T <= visible_min - window;
    float alpha[2];
    constexpr float kUnitScale[2] = {1.0f, 1.0f};  // S in floats already
    softmax_p<KIND>(s, m_run, l_run, sm.kn[buf], sm.vn[buf], KIND == Kind::kFp8 ? c.v_scale : 1.0f, full, mk, t, alpha, kUnitScale);
    rescale_o(o, alpha);
    uint32_t pa[T / 16][kPParts<kBf>][4];
    pack_p<kBf>(s, pa);
#pragma unroll
    for (int kk = 0; kk < T / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t b[4];
        ldsm_x4_trans(v_at(16 * kk, np), b);
#pragma unroll
        for (int part = 0; part < kPParts<kBf>; ++part) {
          Op::mma(o[2 * np], pa[kk][part], b[0], b[1]);
          Op::mma(o[2 * np + 1], pa[kk][part], b[2], b[3]);
        }
      }
    }

    if (it + 1 < tiles) fill.store(sm, buf ^ 1, lut_k, lut_v);
    __syncthreads();  // the next tile is in place and every warp is done with this one
  }

  write_rows<D, kTq>(p, o, m_run, l_run, my_row, seq, kvh, split, t, ws_o, ws_ml);
}

// Grid: (splits, kv_heads * row tiles, seqs). Query rows are rotated and scaled by the block
// (rotate_query_rows), or for dense rotations come so from prepare_queries (ws_q: [seq][kv head]
// [8-row m-tile][8][D] floats, m-tiles rounded up to 64 rows).
// A build for an architecture that never runs this variant (variants.h), or on sm_90a (where
// Hopper's kernel, prefill_ws.cuh, runs) unless the build carries it for TQ_CUDA_PORTABLE=1
// (kPortableOnHopper), compiles it empty, trapping if launched.
template <int D, Kind KIND, int KB, int VB, int T = tile_tokens(D)>
__global__ void __launch_bounds__(kThreads, (resident_blocks<D, T>()))
    prefill_kernel(const DecodeParams p, int tokens_per_split, int rtiles, float* __restrict__ ws_o, float2* __restrict__ ws_ml,
                   const float* ws_q) {  // ws_q: prepare_queries' output, read after the wait (no __restrict__: see merge_kernel)
#ifdef __CUDA_ARCH__
  constexpr bool kHopperMmaSync = __CUDA_ARCH__ / 10 == 90 && T == tile_tokens(D);
  if constexpr (variant_carried(__CUDA_ARCH__ / 10, kPrefillHasCompact<D>, T != tile_tokens(D)) && (!kHopperMmaSync || kPortableOnHopper))
    prefill_block<D, KIND, KB, VB, T>(p, tokens_per_split, rtiles, ws_o, ws_ml, ws_q);
  else
    __trap();
#endif
}

}  // namespace tq::cuda::prefill
