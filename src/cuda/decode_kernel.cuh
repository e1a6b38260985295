// The decode kernel: paged attention of up to 8 query rows over one split of a sequence's packed
// pages, on tensor cores. Used only by attention_launch.cuh.
//
// One thread block of 4 warps handles (sequence, KV head, m-tile, split): up to 8 query rows (the
// GQA group times the query tokens) against a range of the sequence's tokens, so every query head
// that shares a KV head reads each packed page once. Packed caches with more rows than 8 (several
// query tokens: speculative verification) may take R = 2 m-tiles a block (make_plan decides): 16
// rows share each tile's copy and decode, and only the MMAs, the softmax and the accumulators are
// per m-tile, each in the 8-row block's order (the same bits). Each warp takes 16-token tiles in
// turn (two a step, which share one online-softmax update, at D = 64 and for 2- and 3-bit keys at
// D = 128: kStepTiles):
//   S = Q K^T      the 8 query rows are M (rows 8-15 carry the query's low part, free: the tile
//                  has 16 rows); keys of 2-3 bits as int8 operands (m16n8k32, the centroids'
//                  1/32 grid), others as fp16/bf16 (m16n8k16); looked up by byte-permute
//                  (PRMT) from tables in registers; per encoding in KeyOps (decode_ops.cuh).
//   online softmax in the log2 domain; key norms scale S, value norms scale P (fp16; bf16 caches:
//                  bf16 high + low parts).
//   O^T += V^T P^T the values are A (16 coordinates x 16 tokens, a register holding two tokens
//                  at one coordinate), P^T is B, which is the layout the scores are already in.
// Blocks of at most 4 rows with 2- and 3-bit keys compute S^T = K Q^T instead (KM, below), then
// shuffle the exponents to that layout.
// The k index of S = Q K^T may map to the stored coordinates in any order as long as Q uses the
// same map; thread t of a quad owns coordinates [t D/4, (t+1) D/4) of a key, which is one group of
// 32 codes at D = 128 (its `bits` words). Thread g owns output coordinates [g D/8, (g+1) D/8)
// (float caches interleave both maps by 16-byte units instead: FloatUnits in decode_tiles.cuh):
// m-tile i rows g and g + 8 are its coordinates 2i and 2i + 1.
// Trellis-coded rows (KB, VB kTcq widths: widths.h) are transcoded as a tile is loaded, each octet
// of codes into the octet of its union indices (trellis_read.cuh), and then take the paths of
// plain codes one bit wider, with the union codebook as their table.
// Warps merge in shared memory; splits merge in merge_kernel (decode_merge.cuh). With a side buffer
// (SideView: sink, window) the tiles mask each row's side positions, and the grid's last splits
// are side blocks (decode_side.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <type_traits>

#include "decode_ops.cuh"
#include "decode_query.cuh"
#include "decode_side.cuh"
#include "decode_tiles.cuh"
#include "device_common.cuh"
#include "tq/codec/codebook.h"
#include "tq/cuda/kernels.h"
#include "tq/kv/online_softmax.h"
#include "variants.h"

namespace tq::cuda::decode {

// Blocks of decode_kernel resident per SM, which its register budget is compiled for (make_plan
// counts its waves in what the GPU holds, decode_residency; packed kernels are launched with the
// shared memory that holds an SM to this count, decode_smem). Packed caches: 4 at D <= 128, 2
// at D = 256 (5 for k3v2 at D = 128 forced 96 registers and was 4% slower at (16, 32K) on the
// H200; 5 at D = 64, 96 registers too, was slower even where it left the plan as it was:
// bench/results/2026-12-07-h100-session64.md). Float caches: as many as their staging rings fit
// in an SM's 228 KB (bf16: 2 at D = 128, 1 at D = 256).
// R = 2 m-tiles: twice the accumulators, so 3 blocks an SM (168 registers).
// C: the compact kernel of a float cache (unstaged), compiled for the 100 KB an SM of the GPUs
// that run it (sm_86, 89, 120): 2 blocks at D = 256, 4 at D = 128.
template <int D, Kind KIND, int KB, int VB, int R = 1, bool C = false>
constexpr int resident_blocks() {
  if constexpr (KIND == Kind::kTq) return packed_resident_blocks(D, R);
  constexpr int n = attention::blocks_fitting(size_t(C ? 100 : 227) * 1024, sizeof(Smem<D, KIND, KB, VB, 1, C>));
  return n < 1 ? 1 : n > 4 ? 4 : n;
}

// Whether a float cache's decode has a compact variant (C): where its staging ring exceeds the
// 99 KB a block of the smallest GPUs (variants.h).
template <int D, Kind KIND>
constexpr bool kDecodeHasCompact = KIND != Kind::kTq && sizeof(Smem<D, KIND, 0, 0>) > kSmallSmem;

// The sum of p[n][rr][0..3] over n < N as a tree (dev::tree_fold): its depth is log2(4N)
// additions where a running sum's is 4N.
template <int N, int R>
__device__ __forceinline__ float tree_sum(const float (&p)[N][R][4], int rr) {
  float s[2 * N];
#pragma unroll
  for (int n = 0; n < N; ++n) s[2 * n] = p[n][rr][0] + p[n][rr][1], s[2 * n + 1] = p[n][rr][2] + p[n][rr][3];
  return dev::tree_fold(s, [](float a, float b) { return a + b; });
}

// Keys as M (KM): blocks of at most 4 query rows (the GQA group times the query tokens; e.g. 32
// query / 8 KV heads at one token) compute S^T = K Q^T, the tile's 16 tokens as the MMA's M and
// the 4 rows' high and low parts as its 8 columns, where the 8-row blocks spend half of every
// score's work (and of the score MMAs) on padding rows: one MMA a k-tile instead of two, and a
// thread's 2 scores a tile of row t (tokens g, g + 8) instead of 4 of row g. The exponents are
// the same floats (the same integers S, norms, max and base); four shuffles a tile then bring
// them to the layout the P V MMA takes (row g's tokens 2t, 2t + 1, 2t + 8, 2t + 9), where the
// sums, value norms and MMAs are the 8-row block's, in its order: a row gets the same bits from
// both (DecodeRows tests it). Plain int8 keys (2 and 3 bits), packed caches up to D = 128: the
// instances of split_plan.h's keys_as_m, which make_plan asks.
template <int D, Kind KIND, int KB>
constexpr bool kDecodeKeysAsM = KIND == Kind::kTq && attention::keys_as_m(true, KB, D, attention::kKeysAsMRows, 0);

// The body of decode_kernel (below).
template <int D, Kind KIND, int KB, int VB, int R, bool C, bool KM>
__device__ __forceinline__ void decode_block(const DecodeParams& p, int tokens_per_split, int mtiles, float* __restrict__ ws_o,
                                             float2* __restrict__ ws_ml, const float* ws_q, bool inputs_ready) {
  static_assert(R == 1 || (R == 2 && KIND == Kind::kTq && D <= 128), "two m-tiles a block: packed caches up to D = 128");
  static_assert(!KM || (kDecodeKeysAsM<D, KIND, KB> && R == 1), "keys as M: plain int8 keys up to D = 128, one m-tile");
  constexpr bool kBf = KIND == Kind::kBf16;
  using Op = dev::Operand<kBf>;
  extern __shared__ __align__(128) uint4 smem_raw[];  // the ring inside is 128-byte aligned (Smem)
  using Sm = Smem<D, KIND, KB, VB, R, C>;
  Sm& sm = *reinterpret_cast<Sm*>(smem_raw);
  static_assert(sizeof(SideSmem<D>) <= sizeof(Sm), "the side block reuses the shared memory");
  static_assert(!C || KIND != Kind::kTq, "compact kernels: float caches (packed caches fit 99 KB as they are)");
  if constexpr (KIND == Kind::kTq && R == 1)
    static_assert(blocks_held_agrees<D, KB, VB>(), "Staging::blocks_held must count a block as Smem's size does");
  const int side_blocks = side_decode_blocks(p);
  if (side_blocks && int(blockIdx.x) >= int(gridDim.x) - side_blocks) {  // a side block: one chunk of the side positions
    dev::wait_prerequisites();
    dev::allow_dependents();
    const int b = int(blockIdx.x) - (int(gridDim.x) - side_blocks);
    for (int rr = 0; rr < R; ++rr)  // the 8-row m-tiles in turn (side_attention waits for the block before it reuses smem)
      side_attention<D>(p, blockIdx.z, blockIdx.y / mtiles, blockIdx.y % mtiles * R + rr, blockIdx.x, b * kSideChunk,
                        (b + 1) * kSideChunk, ws_o, ws_ml, smem_raw);
    return;
  }

  // Launched as a programmatic dependent (attention_launch.cuh): nothing is read before the
  // previous kernel in the stream has finished, except when inputs_ready says that only the
  // cache is being written by it (quantize_store_and_decode): then the prologue reads the
  // queries, the sequence length and the codebook first, and a warp waits only before it copies
  // a tile that may hold the new rows (see the staged loop; unstaged: before any page). The
  // merge kernel may be scheduled as soon as every block has started; it waits for our results.
  if (!inputs_ready) dev::wait_prerequisites();
  dev::allow_dependents();
  const int split = blockIdx.x, kvh = blockIdx.y / mtiles, mt = blockIdx.y % mtiles, seq = blockIdx.z;
  // The warp index through a shuffle from lane 0: ptxas then knows it is the same in every lane
  // and keeps what derives from it (the warp's tiles, its shared-memory offsets) in uniform
  // registers, off the vector ALU (CUTLASS's canonical_warp_idx_sync habit).
  const int warp = __shfl_sync(0xffffffffu, int(threadIdx.x / 32), 0), lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int group = int(p.q_heads / p.cache.kv_heads), rows_total = group * int(p.num_q_tokens);
  const int len = p.seq_lens[seq];
  // Positions below `sink`, and within `window` of a row's query, are the side block's: a row
  // reads [sink, visible - window) here (no side buffer: sink = window = 0). A sliding-window
  // layer's row reads from visible - sliding_window on: the splits start at the block's first
  // row's window, tile-aligned (fixed cuts keep their positions: those before it are empty).
  // That shift needs the length, so it is applied after the query loads (`if (swa)` below):
  // the page ids are first loaded for the unshifted start, which needs no length, and a window
  // loads them again. (Applied here, under an `if`, the compiler predicated it, and a predicated
  // instruction waits for its operands: every layer's page-id loads then waited for the length,
  // bench/results/2026-12-03-h200-sliding-window.md.)
  const int sink = int(p.side.sink), window = int(p.side.window), swa = int(p.sliding_window);
  int begin = split * tokens_per_split, end = min(begin + tokens_per_split, len - window);
  const int32_t* bt = p.block_tables + size_t(seq) * p.max_pages;
  const CacheView& c = p.cache;
  constexpr int step = kTile * kWarps;
  int first = begin + kTile * warp;  // the warp's first tile; its stride is `step`

  // Loads that nothing below depends on are issued before the query work, so that their latency
  // hides behind it (a batch-1 step is a chain of such latencies): the codebook, and the page ids
  // of the warp's first kStages tiles (entries past the sequence's pages are never used).
  // (One unsigned division by the page size for all of them: `step` tokens on is step_pages
  // pages and step_rows rows on. Signed divisions cost twice the instructions of the prologue's
  // index work, which is the head of a batch-1 step.)
  using SP = StagePlan<D, KIND, KB, VB, C>;
  constexpr int kPre = SP::kStages > 0 ? SP::kStages : 1;
  const int ps = int(c.page_size), step_pages = int(uint32_t(step) / c.page_size), step_rows = int(uint32_t(step) % c.page_size);
  int page0 = int(uint32_t(first) / c.page_size), row0 = int(uint32_t(first) % c.page_size);  // the warp's first tile
  int32_t pre_page[kPre];
  // (page, row) of the tile `step` tokens on (row < ps before and after).
  const auto step_on = [=](int& page, int& row) {
    page += step_pages;
    row += step_rows;
    if (row >= ps) {
      row -= ps;
      ++page;
    }
  };
  // ids: bt, or bt as volatile for the window's reload (below), which must stay a load of its own
  // after the length: merged with this one into a load of a selected address, it waits for it.
  auto load_page_ids = [&](auto ids) {
    int page = page0, row = row0;
#pragma unroll
    for (int i = 0; i < kPre; ++i) {  // tile i is at page (first + i step) / ps
      pre_page[i] = page < int(p.max_pages) ? ids[page] : 0;
      step_on(page, row);
    }
  };
  load_page_ids(bt);
  float cent_k = 0.0f, cent_v = 0.0f;  // centroid threadIdx.x of K and V
  if constexpr (KIND == Kind::kTq) {
    if (threadIdx.x < (1u << read_bits(KB))) cent_k = c.kt.centroids[threadIdx.x];  // trellis-coded: the union
    if (VB != 2 && threadIdx.x < (1u << read_bits(VB))) cent_v = c.vt.centroids[threadIdx.x];  // 2-bit values: no table
  }

  // ---- the staged loop's copies (packed caches whose pages hold whole tiles; float caches' ring):
  // each warp streams its tiles through a ring of kStages stages, kAhead tiles ahead ----
  // After a store (inputs_ready), a page is read only once the store is complete if it may hold
  // a row of this step: quantize_store_and_decode's store writes positions [len - num_q_tokens,
  // len) only. The staged loop waits per warp, before its first such tile; unstaged, below.
  constexpr bool kStaged = SP::kStages > 0;
  const bool staged = kStaged && c.page_size % kTile == 0;
  constexpr int S = kStaged ? SP::kStages : 1;
  // Tiles a step of the staged loop takes at most (kStepTiles), and how many tiles are in flight
  // ahead of a step's: the ring holds both.
  constexpr int kStep = KIND == Kind::kTq && kStaged ? kStepTiles<D, KB> : 1;
  constexpr int kAhead = S - kStep;
  static_assert(!kStaged || (kAhead >= 1 && S % kStep == 0), "a step's tiles in consecutive stages, copies in flight ahead of them");
  const uint32_t ring_at = warp * S * SP::kStride;  // the warp's ring, from the block's
  const std::conditional_t<kStaged, Stager<D, KIND, KB, VB>, NoStager> stager(
      c.data, c.layout, static_cast<uint32_t>(__cvta_generic_to_shared(sm.ring)) + ring_at, ring_at, lane, kvh * c.layout.bytes);
  uint32_t page_stride = c.kv_heads * c.layout.bytes;  // < 4 GiB (validate_cache)
  asm volatile("" : "+r"(page_stride));  // kept in a register: rebuilt from the parameters, it cost a copy three instructions
  // The issue cursor: the tile kAhead ahead of the compute, as (page index, first row);
  // it moves by `step` tokens a tile, so no division in the loop. The page id it needs is
  // loaded one tile ahead of its use, which hides that load's latency behind a tile.
  // Pages of one tile (one_page: page_size = kTile, the default) keep the row at 0 and move the
  // page by kWarps a tile: the loop below is compiled for them apart, without the row's
  // arithmetic (its multiplies, the wrap test and the page-id index it moves), and where a page
  // block is laid out as a stage (TqStager::copy_page), with one source address a tile.
  int cur_T = first, cur_page = page0, cur_row = row0;
  const int32_t* ids_at = nullptr;  // one_page: &bt[cur_page], moved in its place
  auto advance = [&](auto one_page) {
    cur_T += step;
    if constexpr (one_page) {
      ids_at += step / kTile;
    } else {
      step_on(cur_page, cur_row);
    }
  };
  // After a store, a warp waits for it just before it copies each tile that reaches the
  // store's rows (positions >= len - num_q_tokens: the sequence's last tiles); warps whose
  // tiles all end before them never wait, so the store's latency stays off their path.
  const int wait_after = inputs_ready ? len - int(p.num_q_tokens) - kTile : INT_MAX;  // a tile start
  // Copies the tile at the cursor (in page `page`) into the next stage in turn, then closes a
  // commit group; past the end the group is empty, which keeps the wait count uniform. The
  // staged loop waits once a step instead (wait = false: see wait_from).
  uint32_t issue_at = 0;  // byte offset of that stage in the warp's ring
  auto issue = [&](int32_t page, auto one_page, auto wait) {
    if (cur_T < end) {
      if constexpr (wait) dev::wait_prerequisites_if_greater(cur_T, wait_after);
      if constexpr (one_page)
        stager.copy_page(issue_at, uint32_t(page), page_stride);
      else
        stager.copy(issue_at, uint32_t(page), page_stride, cur_row);
      advance(one_page);
    }
    issue_at = issue_at == (S - 1) * SP::kStride ? 0 : issue_at + SP::kStride;
    cp_async_commit();
  };
  // The query rows as given (ws_q: rotated already), loaded before the copies below wait for the
  // page ids, so that both loads are in flight together.
  float qv[R][kQE<D>];  // [m-tile rr of the block][the thread's coordinates of its row]
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    if (ws_q == nullptr) {
      load_query<D, KIND>(p, seq, kvh, mt * R + rr, qv[rr]);
    } else {  // [seq][kv head][8-row m-tile][kRows][D]: m-tile (seq gridDim.y + blockIdx.y) R + rr
      const float* src = ws_q + (((size_t(seq) * gridDim.y + blockIdx.y) * R + rr) * kRows + query_row()) * D + query_col<D>();
#pragma unroll
      for (int e = 0; e < kQE<D>; ++e) qv[rr][e] = src[e];
    }
  }
  // A sliding-window layer's splits start at the block's first row's window (above): the range,
  // the warp's first tile, the issue cursor and the page ids move there. Fixed cuts (batch
  // invariance) keep their positions, and within a cut the start moves by whole rounds of the
  // warps' loop (kStep tiles a warp), so that every tile keeps its warp and its place in a step
  // whatever the step's first query: the tiles skipped are before every row's window, and the
  // position's sums are the same bits in any step (the window start itself moves with the step).
  if (swa) {
    static_assert(kTile == 16, "window_base rounds to a tile");
    const int lo_tile = window_base(p, len - int(p.num_q_tokens) + 1);
    const int begin0 = (p.split_tokens ? 0 : lo_tile) + begin;
    constexpr int kRound = kStep * step;
    begin = p.split_tokens ? begin0 + max(0, lo_tile - begin0) / kRound * kRound : begin0;
    end = min(begin0 + tokens_per_split, len - window);
    first = begin + kTile * warp;
    page0 = int(uint32_t(first) / c.page_size);
    row0 = int(uint32_t(first) % c.page_size);
    cur_T = first;
    cur_page = page0;
    cur_row = row0;
    load_page_ids(static_cast<const volatile int32_t*>(bt));
  }
  // Packed caches never hold the query rows in the ring's space (below), so their first tiles
  // are copied now, before the query work, which then hides those copies' latency (at batch 1
  // and a few thousand tokens, a warp's every tile). Not a tile that must wait for a store: the
  // copies from there on are issued after the query work, in the same order.
  int early = 0;  // tiles issued here: tile i is at page (first + i step) / ps
  if constexpr (KIND == Kind::kTq && kStaged) {
    if (staged) {
#pragma unroll
      for (int i = 0; i < kAhead; ++i)
        if (early == i && (cur_T >= end || cur_T <= wait_after)) {
          issue(pre_page[i], std::false_type{}, std::true_type{});
          ++early;
        }
    }
  }

  // ---- query rows, rotated and scaled: here, in registers (Hadamard, float caches), or for dense
  // rotations (a D x D product per row) once by prepare_queries into ws_q; 16 threads a row ----
  // Keys of 2 and 3 bits go through int8 tensor cores (below): each row's max |q| is found here.
  // The query's A fragments, as the keys' MMAs take them (KeyOps, decode_ops.cuh): for keys of 2
  // and 3 bits (int8 m16n8k32) int16 fixed point per row (step = max|q| / kQ16Max), high bytes in
  // rows 0-7 of A and low bytes in rows 8-15; otherwise fp16 (bf16) high and low parts. Every warp
  // uses the same fragments: built once into shared memory (one LDS.128 per k-tile later), which
  // keeps 4 * KT registers free for occupancy.
  // Packed caches build them straight from the registers that hold the rows: lane (g, t) of
  // k-tile j holds coordinates c0 + 0..7 of row g (int8: c0 = t D/4 + 8j; fp16: c0 = t D/4 + 4j,
  // four of them), which lie within one thread's coordinates (at D = 64 an int8 octet spans two
  // neighbours). Float caches map the k index by FloatUnits: their rows pass through sm.q.
  constexpr bool kInt8K = KIND == Kind::kTq && int8_keys(KB);
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {  // m-tile rr of the block: its rows rr * kRows + [0, kRows)
    float(&v)[kQE<D>] = qv[rr];
    const int r = rr * kRows + query_row(), c0 = query_col<D>();
    if (ws_q == nullptr) finish_query<D, KIND>(p, v);
    if constexpr (KIND != Kind::kTq) {
#pragma unroll
      for (int e = 0; e < kQE<D>; ++e) sm.q[r][c0 + e] = v[e];
    } else if constexpr (kInt8K) {
      float mx = 0.0f;
#pragma unroll
      for (int e = 0; e < kQE<D>; ++e) mx = fmaxf(mx, fabsf(v[e]));
#pragma unroll
      for (int m = 1; m < 16; m *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, m));
      const float qstep = mx / dev::kQ16Max, inv = qstep > 0 ? 1.0f / qstep : 0.0f;
      if (threadIdx.x % 16 == 0) sm.qrs[r] = qstep;
      constexpr int kOcts = kQE<D> >= 8 ? kQE<D> / 8 : 1;  // whole octets a thread writes
      float w[8 * kOcts];
      if constexpr (kQE<D> >= 8) {
#pragma unroll
        for (int e = 0; e < kQE<D>; ++e) w[e] = v[e];
      } else {  // kQE = 4: the even thread of a pair writes its 4 and the odd one's 4
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          w[e] = v[e];
          w[4 + e] = __shfl_xor_sync(0xffffffffu, v[e], 1);
        }
      }
      if (kQE<D> >= 8 || threadIdx.x % 2 == 0) {
#pragma unroll
        for (int o8 = 0; o8 < kOcts; ++o8) {
          const int cc = c0 + 8 * o8;
          // |q| * inv <= 32639 (1 + 2^-22) < 32639.5, so q16 stays in [-32639, 32639] and the high
          // byte never wraps to -128 (which would flip the sign of the row's largest element)
          uint32_t hi[2], lo[2];
          dev::split_i16x4(w + 8 * o8, inv, hi[0], lo[0]);
          dev::split_i16x4(w + 8 * o8 + 4, inv, hi[1], lo[1]);
          sm.qa[rr][(cc % (D / 4)) / 8][query_row() * 4 + cc / (D / 4)] = make_uint4(hi[0], lo[0], hi[1], lo[1]);
        }
      }
    } else {  // packed keys of 4 bits: quads of fp16 high and low parts
#pragma unroll
      for (int u = 0; u < kQE<D> / 4; ++u) {
        const int cc = c0 + 4 * u;
        uint32_t hi[2], lo[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) dev::split_pair<kBf>(v[4 * u + 2 * e], v[4 * u + 2 * e + 1], hi[e], lo[e]);
        sm.qa[rr][(cc % (D / 4)) / 4][query_row() * 4 + cc / (D / 4)] = make_uint4(hi[0], lo[0], hi[1], lo[1]);
      }
    }
  }
  if constexpr (KIND == Kind::kTq) {
    for (int i = threadIdx.x; i < 256; i += kThreads) {
      sm.lut_k[i] = __float2half_rn(i < (1 << read_bits(KB)) ? cent_k * sqrtf(float(D)) : 0.0f);  // i = threadIdx.x below 128
      if constexpr (VB != 2) sm.lut_v[i] = __float2half_rn(i < (1 << read_bits(VB)) ? cent_v * sqrtf(float(D)) : 0.0f);
    }
  }
  __syncthreads();
  constexpr int KT = D / 16;
  if constexpr (KIND != Kind::kTq) {
    // k-tile kt covers the thread's coordinates 4kt.. of the FloatUnits key map
#pragma unroll
    for (int rr = 0; rr < R; ++rr)  // m-tile rr
      for (int i = threadIdx.x; i < KT * 32; i += kThreads) {
        const int kt = i / 32, ln = i % 32, c0 = FloatUnits<D, KIND>::key_coord(ln % 4, 4 * kt);
        const float* x = &sm.q[rr * kRows + ln / 4][c0];
        uint32_t hi[2], lo[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) dev::split_pair<kBf>(x[2 * e], x[2 * e + 1], hi[e], lo[e]);
        sm.qa[rr][kt][ln] = make_uint4(hi[0], lo[0], hi[1], lo[1]);
      }
    __syncthreads();  // sm.q is dead from here: its space becomes the staging ring
  }
  if (inputs_ready && !staged) dev::wait_prerequisites();
  // The keys' operations (KeyOps, decode_ops.cuh) with their table in registers, from the fp16
  // one in shared memory; int8 keys' S is in the query's fixed point until the softmax scales it
  // by this thread's query row's step (s_scale: with the max subtracted, one FFMA). The table is
  // built here, in the kernel's body: built in a function (even an inlined one), the int8 table
  // made the compiler order the prologue differently (other SASS; so did dev::int8_key_table, the
  // same table for Hopper's prefill, when tried here). The values' tables follow.
  // int8 keys: step / kCentroidGrid (the table's fixed point), of row g of each m-tile. Kept above 0
  // (a zero query row has step 0) so that a masked score stays -inf: -inf * 0 would be NaN.
  // (KM: row t's.)
  float s_scale[R];
#pragma unroll
  for (int rr = 0; rr < R; ++rr) s_scale[rr] = kInt8K ? fmaxf(sm.qrs[rr * kRows + (KM ? t : g)] * (1.0f / kCentroidGrid), dev::kMinScoreScale) : 1.0f;
  // KM: the query as B fragments, in registers: column g of k-tile j is row g / 2's high (g even)
  // or low bytes, which the A fragments above hold for lane 4 (g / 2) + t (as a0, a2 or a1, a3).
  [[maybe_unused]] uint32_t qb[KM ? D / 32 : 1][2];
  if constexpr (KM) {
#pragma unroll
    for (int j = 0; j < D / 32; ++j) {
      const uint4 v = sm.qa[0][j][(g >> 1) * 4 + t];
      qb[j][0] = g & 1 ? v.y : v.x;
      qb[j][1] = g & 1 ? v.w : v.z;
    }
  }
  constexpr bool kInt8K16 = kInt8K && read_bits(KB) == 4;  // a 16-level union (trellis-coded 3-bit keys)
  std::conditional_t<kInt8K, std::conditional_t<kInt8K16, dev::ByteLut16, dev::ByteLut8>, dev::Lut8> lut_k{};
  if constexpr (kInt8K) {  // the int8 centroids (z-units x 32, exact: the format's grid), 8 to a register pair
    uint32_t b[kInt8K16 ? 16 : 8];
#pragma unroll
    for (int c8 = 0; c8 < (kInt8K16 ? 16 : 8); ++c8) b[c8] = uint32_t(__float2int_rn(__half2float(sm.lut_k[c8]) * float(kCentroidGrid))) & 0xffu;
    if constexpr (kInt8K16) {
      const uint32_t lo[8] = {b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]}, hi[8] = {b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]};
      lut_k = dev::ByteLut16{dev::byte_lut8(lo), dev::byte_lut8(hi)};
    } else {
      lut_k = dev::byte_lut8(b);
    }
  } else if constexpr (KIND == Kind::kTq) {
    lut_k = dev::make_lut8(sm.lut_k);
  }
  const KeyOps<D, KIND, KB, R> keys(lut_k);
  dev::Lut8 lut_v{};
  if constexpr (KIND == Kind::kTq && VB != 2) lut_v = dev::make_lut8(sm.lut_v);  // 2-bit values need no table

  // The packed range [b, e) of the block's query row `row`: query token j sees positions < len -
  // ntok + j + 1; in a sliding-window layer, from visible - swa on.
  const auto packed_range = [&](int row, int& b, int& e) {
    const int visible = row < rows_total ? len - int(p.num_q_tokens) + int(uint32_t(row) / uint32_t(group)) + 1 : len;
    b = swa ? max(sink, visible - swa) : sink;
    e = visible - window;
  };
  int packed_begin[R], packed_end[R];  // this thread's row g of each m-tile
#pragma unroll
  for (int rr = 0; rr < R; ++rr) packed_range((mt * R + rr) * kRows + g, packed_begin[rr], packed_end[rr]);
  // KM: row t's, whose scores this thread computes (the range above masks row g's P).
  int packed_begin_t = 0, packed_end_t = 0;
  if constexpr (KM) packed_range(t, packed_begin_t, packed_end_t);
  const int visible_min = len - int(p.num_q_tokens) + 1;  // of every row of the block: the first query token's
  const int packed_end_min = visible_min - window;
  const int packed_begin_max = swa ? max(sink, len - swa) : sink;  // the last query token's

  // O^T = V^T P^T: the accumulators are m-tiles of 16 value coordinates by the 8 query rows.
  // Thread g owns coordinates [g D/8, (g+1) D/8) of the output (cb below; float caches: the
  // FloatUnits map); m-tile i row g is coordinate cb + 2i, row g + 8 is cb + 2i + 1; column
  // n = query row n. So o[i] holds
  //   O[2t][cb+2i], O[2t+1][cb+2i], O[2t][cb+2i+1], O[2t+1][cb+2i+1].
  // 2-bit values: one more m-tile, o[rr][MT], whose A is all ones: the sums of P (as the MMAs
  // read it) that the values' offset is taken off with at the end (dev::subnormal2_pair).
  constexpr int MT = D / 16, MTO = MT + (KIND == Kind::kTq && VB == 2 ? 1 : 0);
  // 2-bit values of one octet a thread (ValueWords::kInPlace: D = 64) are masked where they lie,
  // 2 places higher where og0 = g mod 4 is odd; the end takes that 2^2 off with the rest (exact).
  constexpr bool kVInPlace = KIND == Kind::kTq && VB == 2 && ValueWords<D, 2>::kInPlace;
  const int vp = kVInPlace ? 2 * (g & 1) : 0;
  [[maybe_unused]] const float vp_unplace = vp ? 0.25f : 1.0f;
  float o[R][MTO][4];  // [the block's m-tile]
#pragma unroll
  for (int rr = 0; rr < R; ++rr)
#pragma unroll
    for (int i = 0; i < MTO; ++i) o[rr][i][0] = o[rr][i][1] = o[rr][i][2] = o[rr][i][3] = 0.0f;
  SoftmaxState sstate[R];  // query row g of each m-tile, over this thread's tokens of it (its quad holds the rest)
  // (KM: m is row t's, over every token of the warp's tiles; d is row g's, as above.)

  // One step: N 16-token tiles (1, or kStepTiles), their bytes already in `cur`, except the values
  // of float caches and of a two-tile step, which late_values() loads after the softmax (keeping
  // their registers out of the score phase). The tiles of a step share one online-softmax update.
  auto process = [&](auto& cur, const auto& T0, auto&& late_values) {  // Tile cur[N], int T0[N]
    constexpr int N = int(std::extent_v<std::remove_reference_t<decltype(cur)>>);
    bool full[N];
    // Whether token e of tile n is visible to row g of m-tile rr; asked only of tiles that are not
    // full, and computed where it is asked: kept in registers between the two masks below, the
    // flags cost a move each on every tile, masked or not (SASS).
    auto in_range = [&](int tok, int b, int e) { return tok >= b && tok < end && tok < e; };  // within the split and [b, e)
    auto live = [&](int n, int rr, int e) { return in_range(T0[n] + 2 * t + (e & 1) + 8 * (e >> 1), packed_begin[rr], packed_end[rr]); };
    // Tokens past the split's end or the row's causal limit are masked; most tiles have none
    // (a warp-uniform test), which saves the per-token compares.
    // (& rather than &&: the compiler keeps this test predicated, as it did before R existed)
    auto is_full = [&](int n) { return (T0[n] >= packed_begin_max) & (T0[n] + kTile <= end) & (T0[n] + kTile <= packed_end_min); };
    float pv[N][R][4];  // row g's P (of each m-tile) for tokens 2t, 2t+1, 2t+8, 2t+9 of tile n
    // P's value norms (the fp8 scale), and zeros where masked: rows past the end may hold anything,
    // never let them reach the MMA.
    auto finish_p = [&](int rr) {
#pragma unroll
      for (int n = 0; n < N; ++n) {
        if constexpr (KIND == Kind::kTq) scale_by_norms(cur[n].vn, pv[n][rr]);  // their 1/sqrt(D) is applied once, at the end
        if constexpr (KIND == Kind::kFp8)
#pragma unroll
          for (int e = 0; e < 4; ++e) pv[n][rr][e] *= c.v_scale;
        if (!full[n]) {
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (!live(n, rr, e)) pv[n][rr][e] = 0.0f;
        }
      }
    };
    // The accumulators are query rows 2t, 2t+1: their rows' scales.
    auto rescale = [&](int rr, float a_even, float a_odd) {
#pragma unroll
      for (int i = 0; i < MTO; ++i) {
        o[rr][i][0] *= a_even;
        o[rr][i][1] *= a_odd;
        o[rr][i][2] *= a_even;
        o[rr][i][3] *= a_odd;
      }
    };
    if constexpr (KM) {
      // ---- S^T = K Q^T: row t's scores of tokens g and g + 8 of tile n ----
      float x[N][2];
#pragma unroll
      for (int n = 0; n < N; ++n) {
        keys.scores_km(cur[n], qb, t, x[n]);
        full[n] = is_full(n);
        keys.scale_km(cur[n], x[n]);  // key norms
        if (!full[n]) {
#pragma unroll
          for (int e = 0; e < 2; ++e)
            if (!in_range(T0[n] + g + 8 * e, packed_begin_t, packed_end_t)) x[n][e] = -INFINITY;
        }
      }
      float mx = fmaxf(x[0][0], x[0][1]);
#pragma unroll
      for (int n = 1; n < N; ++n) mx = fmaxf(mx, fmaxf(x[n][0], x[n][1]));
#pragma unroll
      for (int m = 4; m < 32; m *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, m));
      mx *= s_scale[0];
      const SoftmaxState::Step sstep = sstate[0].advance(mx, dev::FastExp2{});  // (row t's max; the sum, row g's, below)
      const float alpha = sstep.scale;  // row t's
      float alpha_g = 1.0f;             // row g's: exactly 1 where no row's scale differs from it
      if (__any_sync(0xffffffffu, alpha != 1.0f)) {  // row t's scale sits in lanes 4g' + t (rows 4-7 are no row's)
        alpha_g = __shfl_sync(0xffffffffu, alpha, g & 3);
        rescale(0, __shfl_sync(0xffffffffu, alpha, 2 * t), __shfl_sync(0xffffffffu, alpha, 2 * t + 1));
      }
      // Row g's P of tokens 2t, 2t + 8 from lane 4 (2t) + g, of 2t + 1, 2t + 9 from lane 4 (2t + 1) + g
      // (rows 4-7, which no output reads, take rows 0-3's).
      const int from_even = 8 * t + (g & 3), from_odd = from_even + 4;
#pragma unroll
      for (int n = 0; n < N; ++n) {
        float pt[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) pt[e] = dev::fast_exp2(fmaf(x[n][e], s_scale[0], -sstep.base));
        pv[n][0][0] = __shfl_sync(0xffffffffu, pt[0], from_even);
        pv[n][0][1] = __shfl_sync(0xffffffffu, pt[0], from_odd);
        pv[n][0][2] = __shfl_sync(0xffffffffu, pt[1], from_even);
        pv[n][0][3] = __shfl_sync(0xffffffffu, pt[1], from_odd);
      }
      sstate[0].add_scaled(alpha_g, tree_sum<N>(pv, 0));  // (as the 8-row block's, below)
      finish_p(0);
    } else {
      // ---- S = Q K^T for tokens T0[n] + [0, 16): n-tile nn holds token g + 8nn ----
      float x[N][R][4];  // row g's scores (of each m-tile) for tokens 2t, 2t+1, 2t+8, 2t+9 of tile n (int8 keys: / s_scale)
#pragma unroll
      for (int n = 0; n < N; ++n) {
        keys.scores(cur[n], sm.qa, lane, t, sm.lut_k, x[n]);
        full[n] = is_full(n);
        keys.scale(cur[n], x[n]);  // key norms
        if (!full[n]) {
#pragma unroll
          for (int rr = 0; rr < R; ++rr)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              if (!live(n, rr, e)) x[n][rr][e] = -INFINITY;
        }
      }
#pragma unroll
      for (int rr = 0; rr < R; ++rr) {
        float mx = fmaxf(fmaxf(x[0][rr][0], x[0][rr][1]), fmaxf(x[0][rr][2], x[0][rr][3]));
#pragma unroll
        for (int n = 1; n < N; ++n) mx = fmaxf(mx, fmaxf(fmaxf(x[n][rr][0], x[n][rr][1]), fmaxf(x[n][rr][2], x[n][rr][3])));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        mx *= s_scale[rr];  // S's scale (> 0) commutes with the max
        // A row with nothing visible yet keeps m = -inf and p = 0 (SoftmaxState::base_of). (No early
        // exit: the MMAs below need the whole warp.)
        const SoftmaxState::Step sstep = sstate[rr].advance(mx, dev::FastExp2{});  // (the sum is rescaled below)
        const float alpha = sstep.scale;
#pragma unroll
        for (int n = 0; n < N; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) pv[n][rr][e] = dev::fast_exp2(fmaf(x[n][rr][e], s_scale[rr], -sstep.base));
        // The sum rescaled and the step's added in one rounding (add_scaled): left to the compiler
        // (d *= scale, then d += sum), it was fused or not depending on the code around it, and
        // blocks of 4 rows (which rescale only when some row's scale is not 1) got other bits.
        // A tree: a chain of 4N dependent FADDs was the tile's longest wait.
        sstate[rr].add_scaled(alpha, tree_sum<N>(pv, rr));
        finish_p(rr);
        if (__any_sync(0xffffffffu, alpha != 1.0f))
          rescale(rr, __shfl_sync(0xffffffffu, alpha, 8 * t), __shfl_sync(0xffffffffu, alpha, 8 * t + 4));
      }
    }
    uint32_t pb_hi[N][R][2];
    [[maybe_unused]] uint32_t pb_lo[N][R][2];
#pragma unroll
    for (int n = 0; n < N; ++n) late_values(n, cur[n]);
    // B = P^T (k = token, n = query row g): exactly this thread's P entries. fp16 P alone (relative
    // error <= 2^-11 a weight; worst test error unchanged at 2.9e-4) saves half of the P V MMAs:
    // 217 -> 203 us at (16, 32K) on the H200. bf16's 8-bit mantissa needs the low half too.
#pragma unroll
    for (int n = 0; n < N; ++n)
#pragma unroll
      for (int rr = 0; rr < R; ++rr)
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
          if constexpr (kBf) {
            dev::split_pair<true>(pv[n][rr][2 * e2], pv[n][rr][2 * e2 + 1], pb_hi[n][rr][e2], pb_lo[n][rr][e2]);
          } else {  // packed straight from fp32: rounded there once, not rounded, widened and packed again
            pb_hi[n][rr][e2] = Op::pack(pv[n][rr][2 * e2], pv[n][rr][2 * e2 + 1]);
          }
        }
    // ---- O^T += V^T P^T: A fragment of m-tile i = {(2t, 2t+1) at cb+2i, at cb+2i+1, (2t+8, 2t+9) at cb+2i, at cb+2i+1};
    // one A (values decoded once) for the R query m-tiles' B ----
    auto pv_mma = [&](int n, int i, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3) {
      const uint32_t a[4] = {a0, a1, a2, a3};
#pragma unroll
      for (int rr = 0; rr < R; ++rr) {
        Op::mma(o[rr][i], a, pb_hi[n][rr][0], pb_hi[n][rr][1]);
        if constexpr (kBf) Op::mma(o[rr][i], a, pb_lo[n][rr][0], pb_lo[n][rr][1]);
      }
    };
#pragma unroll
    for (int n = 0; n < N; ++n) {
      if constexpr (KIND == Kind::kTq && VB == 2) {
        // 2-bit values (uniform levels, c - 1.5 in z-units: the format's 2-bit value codebook) with
        // no table: a code at bits p, p + 1 of each 16-bit half, masked in place, is the fp16
        // subnormal c 2^(p - 24) (dev::subnormal2_pair: one AND a register). The 2^(p - 24) and
        // the offset 1.5 are taken out of the thread's output coordinates once, at the end, the
        // offset as 1.5 times the sum of P from the all-ones m-tile (dev::subnormal2_unplace). A
        // register holds tokens (A, B) at one coordinate: PRMT puts A's and B's same 16 bits in
        // one word's halves; each byte of a token's word holds coordinates 2m, 2m + 8, 2m + 1,
        // 2m + 9 at bits 0, 2, 4, 6 (docs/format.md): the odd bytes' codes move there by >> 8.
        constexpr int kW = ValueWords<D, VB>::kWords;
        constexpr uint32_t kOnes[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};  // fp16 1.0 pairs
#pragma unroll
        for (int rr = 0; rr < R; ++rr) Op::mma(o[rr][MT], kOnes, pb_hi[n][rr][0], pb_hi[n][rr][1]);
#pragma unroll
        for (int w = 0; w < kW; ++w) {
          uint32_t Y[2][4];  // [token pair][byte m of the tokens' words]: its codes at places 0, 2, 4, 6 of each half
#pragma unroll
          for (int pr = 0; pr < 2; ++pr) {
            const uint32_t lo = dev::prmt(cur[n].v[2 * pr][w], cur[n].v[2 * pr + 1][w], 0x5410);  // bytes 0-1 of A, of B
            const uint32_t hi = dev::prmt(cur[n].v[2 * pr][w], cur[n].v[2 * pr + 1][w], 0x7632);  // bytes 2-3
            Y[pr][0] = lo, Y[pr][1] = lo >> 8, Y[pr][2] = hi, Y[pr][3] = hi >> 8;
          }
#pragma unroll
          for (int jj = 0; jj < (D >= 128 ? 2 : 1); ++jj) {
            const int j = 2 * w + jj;  // octet of the thread's coordinates: m-tiles 4j .. 4j+3
            uint32_t ev[2][4], od[2][4];
#pragma unroll
            for (int pr = 0; pr < 2; ++pr)
#pragma unroll
              for (int i = 0; i < 4; ++i) {  // byte i: coordinates 8j + 2i (even) and + 1 (odd)
                ev[pr][i] = dev::subnormal2_pair(Y[pr][i], 2 * jj + vp);
                od[pr][i] = dev::subnormal2_pair(Y[pr][i], 2 * (jj + 2) + vp);
              }
#pragma unroll
            for (int i = 0; i < 4; ++i) pv_mma(n, 4 * j + i, ev[0][i], od[0][i], ev[1][i], od[1][i]);
          }
        }
      } else if constexpr (KIND == Kind::kTq) {
#pragma unroll
        for (int j = 0; j < D / 64; ++j) {  // octets of the thread's coordinates: m-tiles 4j .. 4j+3
          using VW = ValueWordsOf<D, VB>;
          uint32_t ev[2][4], od[2][4];  // [token pair][i]: (A, B) at coordinate cb + 8j + 2i (+1 for od)
#pragma unroll
          for (int pr = 0; pr < 2; ++pr) {
            if constexpr (read_bits(VB) <= 3) {
              uint32_t even, odd;
              dev::mix_tokens(VW::selector(cur[n].v[2 * pr], j), VW::selector(cur[n].v[2 * pr + 1], j), even, odd);
              dev::lookup8(even, lut_v, ev[pr]);
              dev::lookup8(odd, lut_v, od[pr]);
            } else {
              uint32_t ca[8], cb8[8];
              VW::codes(cur[n].v[2 * pr], j, ca);
              VW::codes(cur[n].v[2 * pr + 1], j, cb8);
#pragma unroll
              for (int i = 0; i < 4; ++i) {
                ev[pr][i] = dev::pack_half2(sm.lut_v[ca[2 * i]], sm.lut_v[cb8[2 * i]]);
                od[pr][i] = dev::pack_half2(sm.lut_v[ca[2 * i + 1]], sm.lut_v[cb8[2 * i + 1]]);
              }
            }
          }
#pragma unroll
          for (int i = 0; i < 4; ++i) pv_mma(n, 4 * j + i, ev[0][i], od[0][i], ev[1][i], od[1][i]);
        }
      } else {
        // hv[e][i]: the thread's value coordinates 2i, 2i + 1 of token e, as the cache stores them
        uint32_t hv[4][MT];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if constexpr (KIND == Kind::kFp8) {
#pragma unroll
            for (int i = 0; i < MT; ++i) hv[e][i] = dev::e4m3x2_to_half2(uint16_t(cur[n].v[e][i / 2] >> (16 * (i % 2))));
          } else {
#pragma unroll
            for (int i = 0; i < MT / 4; ++i) {
              hv[e][4 * i] = cur[n].v[e][i].x;
              hv[e][4 * i + 1] = cur[n].v[e][i].y;
              hv[e][4 * i + 2] = cur[n].v[e][i].z;
              hv[e][4 * i + 3] = cur[n].v[e][i].w;
            }
          }
        }
#pragma unroll
        for (int i = 0; i < MT; ++i)
          pv_mma(n, i, dev::prmt(hv[0][i], hv[1][i], 0x5410), dev::prmt(hv[0][i], hv[1][i], 0x7632), dev::prmt(hv[2][i], hv[3][i], 0x5410),
                 dev::prmt(hv[2][i], hv[3][i], 0x7632));
      }
    }
  };

  if constexpr (kStaged) {
    if (staged) {
#pragma unroll
      for (int i = 0; i < kAhead; ++i)
        if (i >= early) issue(pre_page[i], std::false_type{}, std::true_type{});
      int32_t next_page[kStep];  // the page ids of the next step's copies, loaded a step ahead of their use
#pragma unroll
      for (int n = 0; n < kStep; ++n) next_page[n] = pre_page[kAhead + n];
      // A step's copies wait for the store (above) once, before the first of them, if any of them
      // reaches its rows: when the cursor is at or past wait_from, the first of the warp's tiles
      // that does (and is < end), less the step's other tiles. Fixed for the loop, and kept in a
      // register (opaque): a test a copy, from the length, cost six instructions a tile (SASS).
      int step_wait_after = INT_MAX;  // wait_from - 1
      if (wait_after < end) {
        const int k = cur_T > wait_after ? 0 : (wait_after - cur_T) / step + 1;  // the first such tile, k tiles on
        if (cur_T + k * step < end) step_wait_after = cur_T + k * step - (kStep - 1) * step - 1;
      }
      asm volatile("" : "+r"(step_wait_after));
      auto loop = [&](auto one_page) {
        int st = 0;
        if constexpr (one_page) ids_at = bt + cur_page;
        for (int T0 = first; T0 < end; T0 += kStep * step) {
          dev::wait_prerequisites_if_greater(cur_T, step_wait_after);
#pragma unroll
          for (int n = 0; n < kStep; ++n) issue(next_page[n], one_page, std::false_type{});  // into stages (st + kAhead + n) % S
          if constexpr (one_page) {
            if (cur_T < end) next_page[0] = ids_at[0];
            if constexpr (kStep == 2)  // the tile after the cursor's
              if (cur_T + step < end) next_page[1] = ids_at[step / kTile];
          } else {
            if (cur_T < end) next_page[0] = bt[cur_page];
            if constexpr (kStep == 2) {  // the tile after the cursor's
              if (cur_T + step < end) next_page[1] = bt[cur_page + step_pages + (cur_row + step_rows >= ps)];  // step_on's page
            }
          }
          cp_async_wait<kAhead>();  // the step's tiles have landed
          __syncwarp();
          const uint8_t* stage = sm.ring + st * SP::kStride;  // the step's tiles: consecutive stages (S is a multiple of kStep)
          if constexpr (kStep == 1) {
            Tile<D, KIND, KB, VB> cur[1];
            stager.load(stage, cur[0]);
            const int T[1] = {T0};
            process(cur, T, [&](int, auto& tile) { stager.load_values(stage, tile); });
          } else if (T0 + step < end) {  // two tiles: their value words after the softmax (load_keys)
            Tile<D, KIND, KB, VB> cur[2];
            stager.load_keys(stage, cur[0]);
            stager.load_keys(stage + SP::kStride, cur[1]);
            const int T[2] = {T0, T0 + step};
            process(cur, T, [&](int n, auto& tile) { stager.load_value_words(stage + n * SP::kStride, tile); });
          } else {  // the warp's last tile, alone
            Tile<D, KIND, KB, VB> cur[1];
            stager.load(stage, cur[0]);
            const int T[1] = {T0};
            process(cur, T, [&](int, auto& tile) { stager.load_values(stage, tile); });
          }
          __syncwarp();  // every lane has read the stages before the next issues overwrite them
          st = st + kStep == S ? 0 : st + kStep;
        }
      };
      if (ps == kTile && stager.page_is_stage)
        loop(std::true_type{});
      else
        loop(std::false_type{});
      cp_async_wait<0>();
      __syncthreads();  // the ring becomes sm.o below
    }
  }
  if (!staged) {
    for (int T0 = first; T0 < end; T0 += step) {
      Tile<D, KIND, KB, VB> cur[1];
      const int T[1] = {T0};
      const TileRows rows = tile_rows(p, bt, kvh, T0);
      load_keys(p, bt, kvh, rows, T0, len, g, t, cur[0]);
      if constexpr (KIND == Kind::kTq) {
        load_values(p, bt, kvh, rows, T0, len, g, t, cur[0]);
        process(cur, T, [](int, auto&) {});
      } else {
        process(cur, T, [&](int, auto& tile) { load_values(p, bt, kvh, rows, T0, len, g, t, tile); });
      }
    }
    __syncthreads();
  }

  // ---- merge the warps ----
  // The quad's threads share the row's max; their sums are the row's in parts.
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    sstate[rr].d += __shfl_xor_sync(0xffffffffu, sstate[rr].d, 1);
    sstate[rr].d += __shfl_xor_sync(0xffffffffu, sstate[rr].d, 2);
    if constexpr (KM) {  // m is row t's (rows 4-7, which no one reads, keep none)
      if (g == 0) sm.m[warp][t] = sstate[rr].m;
      if (t == 0) sm.l[warp][g] = sstate[rr].d;
    } else if (t == 0) {
      sm.m[warp][rr * kRows + g] = sstate[rr].m;
      sm.l[warp][rr * kRows + g] = sstate[rr].d;
    }
#pragma unroll
    for (int i = 0; i < MT; ++i) {  // the thread's value coordinates 2i, 2i + 1 (FloatUnits' map for float caches)
      const int c0 = KIND == Kind::kTq ? g * (D / 8) + 2 * i : FloatUnits<D, KIND>::value_coord(g, 2 * i);
      float e[4] = {o[rr][i][0], o[rr][i][1], o[rr][i][2], o[rr][i][3]};
      if constexpr (KIND == Kind::kTq && VB == 2) {  // 2-bit values: sum P (c 2^(p - 24)) to sum P (c - 1.5)
        const float s0 = dev::subnormal2_unplace(2 * i) * vp_unplace, s1 = dev::subnormal2_unplace(2 * i + 1) * vp_unplace;
        e[0] = fmaf(e[0], s0, -1.5f * o[rr][MT][0]);
        e[1] = fmaf(e[1], s0, -1.5f * o[rr][MT][1]);
        e[2] = fmaf(e[2], s1, -1.5f * o[rr][MT][2]);
        e[3] = fmaf(e[3], s1, -1.5f * o[rr][MT][3]);
      }
      sm.o[warp][rr * kRows + 2 * t][c0] = e[0];
      sm.o[warp][rr * kRows + 2 * t + 1][c0] = e[1];
      sm.o[warp][rr * kRows + 2 * t][c0 + 1] = e[2];
      sm.o[warp][rr * kRows + 2 * t + 1][c0 + 1] = e[3];
    }
  }
  __syncthreads();
  // TurboQuant values are decoded in units of 1/sqrt(D) (the codebook's z-units): scaled once here.
  // 16 threads a row, as the query: the warps' weights are computed once per row, not per element.
  const float out_scale = KIND == Kind::kTq ? rsqrtf(float(D)) : 1.0f;
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    const int r = rr * kRows + query_row(), c0 = query_col<D>(), row = mt * R * kRows + r;
    if (row < rows_total) {
      float M = -INFINITY;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) M = softmax_max(M, sm.m[w][r]);
      float f[kWarps], lsum = 0.0f;  // warp w's weight; 0 for a warp that saw no token of the row
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        f[w] = SoftmaxState::weight(sm.m[w][r], M, dev::Exp2{});
        lsum += sm.l[w][r] * f[w];
      }
      const int j = int(uint32_t(row) / uint32_t(group)), h = kvh * group + int(uint32_t(row) % uint32_t(group));
      const size_t slot = ((size_t(seq) * p.num_q_tokens + j) * p.q_heads + h) * gridDim.x + split;
      float* dst = ws_o + slot * D + c0;
#pragma unroll
      for (int e = 0; e < kQE<D>; ++e) {
        float acc = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w)
          if (sm.m[w][r] != -INFINITY) acc += sm.o[w][r][c0 + e] * f[w];
        dst[e] = acc * out_scale;
      }
      if (c0 == 0) ws_ml[slot] = make_float2(M, lsum);
    }
  }
}


// mtiles: the blocks' m-tiles (of R * 8 rows) per KV head; grid (splits + side blocks, kv_heads * mtiles, seqs).
// C: the compact kernel of a float cache (FloatStaging). A build for an architecture that never
// runs this variant (variants.h) compiles it empty, trapping if launched.
template <int D, Kind KIND, int KB, int VB, int R = 1, bool C = false, bool KM = false>
__global__ void __launch_bounds__(kThreads, (resident_blocks<D, KIND, KB, VB, R, C>()))
    decode_kernel(const DecodeParams p, int tokens_per_split, int mtiles, float* __restrict__ ws_o, float2* __restrict__ ws_ml,
                  const float* ws_q, bool inputs_ready) {  // ws_q: prepare_queries' output (no __restrict__: see merge_kernel)
#ifdef __CUDA_ARCH__
  if constexpr (variant_carried(__CUDA_ARCH__ / 10, kDecodeHasCompact<D, KIND>, C))
    decode_block<D, KIND, KB, VB, R, C, KM>(p, tokens_per_split, mtiles, ws_o, ws_ml, ws_q, inputs_ready);
  else
    __trap();
#endif
}

}  // namespace tq::cuda::decode
