// Hopper's chunked-prefill kernel (sm_90a): prefill_kernel.cuh's work, 128 query rows a block,
// with FlashAttention-3's division of labour between warpgroups (warp specialization):
//   producer   warpgroup 0 loads the tiles of keys and values of the block's split into a ring of
//              stages in shared memory, decoding packed rows to 16-bit rows (prefill_kernel.cuh's
//              Fill), and signals each stage `full` on an mbarrier;
//   consumers  warpgroups 1 and 2 own 64 query rows each: S = Q K^T and O += P V as warpgroup
//              MMAs (the query in two 16-bit parts, as everywhere; with keys on the 1/32 grid,
//              int8 MMAs as in decode: below), the online softmax between; each signals the
//              stage `empty` once its MMAs have read it.
// Against prefill_kernel's 4 warps that fill, multiply and wait at one barrier a tile, the decode
// of a tile is done once per 128 rows and off the MMAs' path, and the two consumers' softmax and
// MMAs interleave freely.
// With 2- and 3-bit keys (and the trellis unions: int8_keys) at D >= 128, S = Q K^T takes int8
// MMAs, as decode's does: the producer writes the keys' int8 levels (z-units x 32, exact), the
// query is int16 fixed point per row (step max|q| / 32639) held as its high and low bytes, and S =
// 2^8 (q_hi . k) + (q_lo . k) is exact in int32. Two int8 MMAs cost one fp16 MMA's tensor time and
// shared-memory reads, where the two fp16 parts of the query cost two.
// Output as prefill_kernel's: normalized rows written by the block itself where
// prefill::writes_output allows, else unnormalized rows with (max, sum) in the workspace, merged
// by merge_kernel.
#pragma once

#include <climits>
#include <cstdint>

#include "prefill_kernel.cuh"
#include "wgmma.cuh"

namespace tq::cuda::prefill {

constexpr int kWsConsumers = 2, kWsThreads = 128 * (1 + kWsConsumers), kWsRows = 64 * kWsConsumers;
// Whether S = Q K^T takes int8 MMAs (above): TurboQuant keys on the 1/32 grid (kb: their width
// parameter), rows of 128 bytes or more (the swizzle's). The host's plan asks too (its tiles).
constexpr bool ws_s8(int D, bool tq, int kb) { return tq && int8_keys(kb) && D >= 128; }
template <int D, Kind KIND, int KB>
constexpr bool ws_s8() {
  return ws_s8(D, KIND == Kind::kTq, KB);
}
// Tokens a tile: 96 at D = 128 where prefill_kernel takes 64. Each S = Q K^T wgmma reads its A
// (64 query rows x 16) from shared memory for N tokens' columns, and at N = 64 the two consumers'
// S reads alone ask for shared memory's whole bandwidth; the per-tile work (row maxima, O's
// rescale, the ring's barriers) is spread over more tokens too. 128 would leave room for 2 stages
// only, and the producer's decode then waits on the consumers (bench/results has the three).
// D = 64 and 256 keep prefill_kernel's tiles. int8 S at D = 128 takes 64: its two int32
// accumulators of S are 96 registers at 96 tokens, and its S reads half the shared memory.
constexpr int ws_tile_tokens(int D, bool s8 = false) { return D == 128 ? (s8 ? 64 : 96) : tile_tokens(D); }
// Registers a thread where the consumers need more than the 168 a thread the launch gives
// (65536 / 384): at D = 256 and with tiles over 64 tokens. The producer releases what the
// consumers take from the block's pool (setmaxnreg; 128 x (168 - 88) = 256 x (208 - 168)).
constexpr int kProducerRegs = 88, kConsumerRegs = 208;
constexpr bool ws_moves_regs(int D, bool s8 = false) { return D >= 256 || ws_tile_tokens(D, s8) > 64 || s8; }
// Stages of the ring: as many as keep a block within the H200's 227 KB, at most 3 (96-token
// tiles at D = 128: 64 KB of query rows, 48 KB a stage; D = 256: 128 KB of query rows, 32 KB a
// stage; int8 S halves the query rows and a stage's keys). A third stage keeps the producer's
// decode off the consumers' path.
constexpr int ws_stages(int D, bool s8 = false) {
  const int T = ws_tile_tokens(D, s8), e = s8 ? 1 : 2;  // bytes of a query or key element
  const int free = 226 * 1024 - 2 * 128 * D * e - 128 - (s8 ? 4 * 128 : 0), stage = T * D * e + T * D * 2 + 2 * T * 4;
  return free / stage < 3 ? free / stage : 3;
}

// S8: int8 S (ws_s8), whose query parts and key tiles are rows of D int8 (D / 128 blocks of 128
// bytes, tile_chunk's layout with 16 elements a chunk).
template <int D, bool S8 = false, int T = ws_tile_tokens(D, S8), int S = ws_stages(D, S8)>
struct WsSmem {
  static constexpr int kQB = S8 ? D / 128 : D / 64;  // 128-byte blocks of a query or key row
  uint4 q[2][kQB][kWsRows][8];  // query rows: 16-bit high and low parts, or int16's high and low bytes (tile_chunk<kWsRows>)
  uint4 k[S][kQB][T][8];        // decoded key tiles, a stage each (tile_chunk<T>)
  uint4 v[S][D / 64][T][8];     // decoded value tiles
  float kn[S][T], vn[S][T];     // TurboQuant norms of the tiles' tokens
  float q_scale[S8 ? kWsRows : 1];  // int8 S: each query row's step / kCentroidGrid (S's scale)
  __half lut_k[16], lut_v[16];  // TurboQuant centroids in fp16 z-units x sqrt(D)
  uint64_t full[S], empty[S];   // mbarriers: stage written (128 producer arrivals), read (256 consumer arrivals)
};

template <int D, bool S8 = false>
constexpr size_t ws_smem_bytes() {
  return sizeof(WsSmem<D, S8>) + 1024;
}
static_assert(ws_smem_bytes<64>() <= 227 * 1024 && ws_smem_bytes<128>() <= 227 * 1024 && ws_smem_bytes<256>() <= 227 * 1024 &&
                  ws_smem_bytes<128, true>() <= 227 * 1024 && ws_smem_bytes<256, true>() <= 227 * 1024,
              "one block an SM on Hopper");
static_assert(ws_smem_bytes<128, true>() <= ws_smem_bytes<128>() && ws_smem_bytes<256, true>() <= ws_smem_bytes<256>(),
              "int8 S fits where the 16-bit kernel does (prefill_ws_here)");

// R query rows of D (src: prepare_queries' [R][D] floats) into shared memory as int16 fixed point
// per row, its high bytes in q_hi and its low bytes in q_lo (int8 rows of D: tile_chunk<R>, 16
// elements a chunk), each row's step / kCentroidGrid in q_scale: decode's split (decode_kernel.cuh),
// the same roundings. By threads tid = 0 .. nthreads - 1, nthreads a multiple of 32; a row's D / 8
// units of 8 elements are consecutive lanes of one warp (D <= 256), which reduce its max |q|.
template <int D, int R>
__device__ __forceinline__ void store_query_rows_s8(uint4* q_hi, uint4* q_lo, float* q_scale, const float* src, int tid, int nthreads) {
  constexpr int kUnits = D / 8;  // a row's units
  static_assert(kUnits <= 32 && R * kUnits % 32 == 0, "a row's units within one warp");
  for (int base = 0; base < R * kUnits; base += nthreads) {
    const int i = base + tid;
    if (base + (tid & ~31) >= R * kUnits) break;  // warp-uniform: R * kUnits is a multiple of 32
    const int r = i / kUnits, u = i % kUnits;
    const float4 a = reinterpret_cast<const float4*>(src)[2 * i], b = reinterpret_cast<const float4*>(src)[2 * i + 1];
    const float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    float mx = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) mx = fmaxf(mx, fabsf(x[e]));
#pragma unroll
    for (int m = 1; m < kUnits; m *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, m));
    const float qstep = mx / dev::kQ16Max, inv = qstep > 0 ? 1.0f / qstep : 0.0f;
    if (u == 0) q_scale[r] = qstep * (1.0f / kCentroidGrid);
    uint32_t hi[2], lo[2];  // |x| inv <= 32639 (1 + 2^-22) < 32639.5: in range (decode_kernel.cuh)
    dev::split_i16x4(x, inv, hi[0], lo[0]);
    dev::split_i16x4(x + 4, inv, hi[1], lo[1]);
    const int at = tile_chunk<R>(r, u / 2);  // the 16-byte chunk of elements 16 (u / 2) .., half u % 2
    *reinterpret_cast<uint2*>(reinterpret_cast<uint8_t*>(q_hi + at) + 8 * (u % 2)) = make_uint2(hi[0], hi[1]);
    *reinterpret_cast<uint2*>(reinterpret_cast<uint8_t*>(q_lo + at) + 8 * (u % 2)) = make_uint2(lo[0], lo[1]);
  }
}

// mbarrier operations on shared-memory barriers (sm_90).
__device__ __forceinline__ uint32_t smem_u32(const void* ptr) { return static_cast<uint32_t>(__cvta_generic_to_shared(ptr)); }
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
// Waits until the barrier's phase of parity `parity` has completed (acquire).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(smem_u32(bar)), "r"(parity)
                 : "memory");
  } while (!done);
}
template <int N>
__device__ __forceinline__ void regs_dec() {
#if TQ_WGMMA
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void regs_inc() {
#if TQ_WGMMA
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// The producer: tile `it` of the split goes to stage it % S once the consumers have released the
// stage's previous tile. Register fills (TurboQuant, fp8) load tile it + 1 while waiting; the
// cp.async fills (fp16, bf16) copy into the stage and publish it at the next tile's start.
template <int D, Kind KIND, int KB, int VB, bool S8, int T, int S>
__device__ __forceinline__ void ws_produce(const DecodeParams& p, WsSmem<D, S8, T, S>& sm, const Pages& pages, int begin, int tiles) {
  constexpr bool kAsync = KIND == Kind::kF16 || KIND == Kind::kBf16;
  constexpr bool k16 = read_bits(KB) == 4;  // int8 S: a 16-level union (trellis-coded 3-bit keys)
  // The keys' table: fp16 centroids, or for int8 S their int8 levels (z-units x 32, exact).
  std::conditional_t<S8, std::conditional_t<k16, dev::ByteLut16, dev::ByteLut8>, dev::Lut8> lut_k{};
  dev::Lut8 lut_v{};
  if constexpr (S8) {
    lut_k = dev::int8_key_table<k16>(sm.lut_k);
  } else if constexpr (KIND == Kind::kTq) {
    if constexpr (read_bits(KB) <= 3) lut_k = dev::make_lut8(sm.lut_k);
  }
  if constexpr (KIND == Kind::kTq) {
    if constexpr (read_bits(VB) <= 3) lut_v = dev::make_lut8(sm.lut_v);
  }
  const auto publish = [&](int st) {  // this thread's writes of stage st, to the consumers' MMAs
    wg::fence_proxy_async();
    mbar_arrive(&sm.full[st]);
  };
  Fill<D, KIND, KB, VB, T> fill;
  if (!kAsync && tiles > 0) fill.fetch(p, pages, begin, sm, 0);
  for (int it = 0; it < tiles; ++it) {
    const int st = it % S;
    if constexpr (kAsync) {  // tile it - 1 published before the wait for tile it's stage
      if (it > 0) {
        decode::cp_async_wait<0>();
        publish((it - 1) % S);
      }
      if (it >= S) mbar_wait(&sm.empty[st], (it / S - 1) & 1);
      fill.fetch(p, pages, begin + it * T, sm, st);
    } else {
      if (it >= S) mbar_wait(&sm.empty[st], (it / S - 1) & 1);
      if constexpr (S8)
        fill.template store<true>(sm, st, lut_k, lut_v);
      else
        fill.store(sm, st, lut_k, lut_v);
      publish(st);
      if (it + 1 < tiles) fill.fetch(p, pages, begin + (it + 1) * T, sm, 0);
    }
  }
  if constexpr (kAsync) {
    if (tiles > 0) {
      decode::cp_async_wait<0>();
      publish((tiles - 1) % S);
    }
  }
}

// Grid: (splits [+ the side block], kv_heads * 128-row tiles, seqs), kWsThreads threads. Query rows
// as prefill_kernel's (ws_q's m-tiles, for dense rotations, rounded up to 128 rows). Compiled empty,
// trapping, outside sm_90a.
template <int D, Kind KIND, int KB, int VB>
__global__ void __launch_bounds__(kWsThreads, 1)
    prefill_ws_kernel(const DecodeParams p, int tokens_per_split, int rtiles, float* __restrict__ ws_o, float2* __restrict__ ws_ml,
                      const float* ws_q) {  // ws_q: read after the wait (no __restrict__: see merge_kernel)
#if TQ_WGMMA
  constexpr bool S8 = ws_s8<D, KIND, KB>();
  constexpr int T = ws_tile_tokens(D, S8), S = ws_stages(D, S8), NT = T / 8;
  constexpr bool kBf = KIND == Kind::kBf16, kTq = KIND == Kind::kTq;
  using Sm = WsSmem<D, S8, T, S>;
  extern __shared__ __align__(128) uint4 smem_raw[];
  // 1 KB-aligned (ws_smem_bytes leaves room): wgmma's swizzle is a function of the address bits.
  const uint32_t raw_at = smem_u32(smem_raw);
  Sm& sm = *reinterpret_cast<Sm*>(reinterpret_cast<uint8_t*>(smem_raw) + ((1024 - (raw_at & 1023)) & 1023));
  dev::wait_prerequisites();  // the queries (or prepare_queries' ws_q) are written (a programmatic dependent launch)
  dev::allow_dependents();
  constexpr int kGroups = kWsThreads / decode::kThreads;  // the block's warpgroups
  static_assert(kGroups * sizeof(decode::SideSmem<D>) <= sizeof(Sm), "the side block reuses the shared memory");
  if (p.side.active() && blockIdx.x == gridDim.x - 1) {  // the side buffer's block: each warpgroup takes every kGroups-th m-tile
    const int wg = threadIdx.x / decode::kThreads;
    const BlockRows br = block_rows(int(blockIdx.y), int(p.cache.kv_heads), rtiles);
    for (int i = wg; i < kWsRows / decode::kRows; i += kGroups)
      decode::side_attention<D>(p, blockIdx.z, br.kvh, br.rt * (kWsRows / decode::kRows) + i, blockIdx.x, 0, INT_MAX, ws_o, ws_ml,
                                reinterpret_cast<decode::SideSmem<D>*>(smem_raw) + wg, wg);
    return;
  }

  const BlockRows br = block_rows(int(blockIdx.y), int(p.cache.kv_heads), rtiles);
  const int split = blockIdx.x, kvh = br.kvh, rt = br.rt, seq = blockIdx.z;
  // The warpgroup's and the warp's index through shuffles from lane 0: ptxas then knows they are
  // the same in every lane and keeps the wgmma descriptors derived from them in uniform registers
  // (else each MMA's two descriptors are moved there with R2URs: CUTLASS's canonical_warp_group_idx).
  const int wgi = __shfl_sync(0xffffffffu, int(threadIdx.x / 128), 0), warp = __shfl_sync(0xffffffffu, int(threadIdx.x / 32 % 4), 0);
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const CacheView& c = p.cache;
  const int group = int(p.q_heads / c.kv_heads), nq = int(p.num_q_tokens), rows_total = group * nq;
  const int len = p.seq_lens[seq];
  // The block's rows (as prefill_block's) bound its split's tokens; each consumer masks by its own.
  const int row0 = rt * kWsRows, last_row = min(row0 + kWsRows, rows_total) - 1;
  const int visible_max = len - nq + last_row / group + 1;
  const int window = int(p.side.window);
  const int begin = window_base(p, len - nq + row0 / group + 1) + split * tokens_per_split;
  const int end = min(min(begin + tokens_per_split, len), visible_max - window);
  const int tiles = begin < end ? (end - begin + T - 1) / T : 0;

  if (rotates_queries(p, kTq)) {  // a dense rotation: prepare_queries' rows
    const float* q_rows = ws_q + ((size_t(seq) * c.kv_heads + kvh) * rtiles + rt) * kWsRows * D;
    if constexpr (S8)
      store_query_rows_s8<D, kWsRows>(&sm.q[0][0][0][0], &sm.q[1][0][0][0], sm.q_scale, q_rows, threadIdx.x, kWsThreads);
    else
      store_query_rows<D, kWsRows, kBf>(&sm.q[0][0][0][0], &sm.q[1][0][0][0], q_rows, threadIdx.x, kWsThreads);
  } else {
    rotate_query_rows<D, KIND, kWsRows, S8, kBf>(p, seq, kvh, rt * (kWsRows / decode::kRows), &sm.q[0][0][0][0], &sm.q[1][0][0][0],
                                                 sm.q_scale, wgi, kWsThreads / decode::kThreads);
  }
  if constexpr (kTq) store_luts<D, KB, VB>(c, sm.lut_k, sm.lut_v);
  if (threadIdx.x == 0) {
    for (int st = 0; st < S; ++st) {
      mbar_init(&sm.full[st], 128);
      mbar_init(&sm.empty[st], 128 * kWsConsumers);
    }
  }
  wg::fence_proxy_async();  // the query rows, for the consumers' MMAs
  __syncthreads();

  if (wgi == 0) {
    if constexpr (ws_moves_regs(D, S8)) regs_dec<kProducerRegs>();
    ws_produce<D, KIND, KB, VB>(p, sm, Pages(p, p.block_tables + size_t(seq) * p.max_pages, kvh, len), begin, tiles);
    return;
  }
  if constexpr (ws_moves_regs(D, S8)) regs_inc<kConsumerRegs>();

  // ---- a consumer: rows wrow0 .. wrow0 + 63; this thread's are g and g + 8 of its warp's 16 ----
  const int wrow0 = row0 + 64 * (wgi - 1);
  const int my_row[2] = {wrow0 + 16 * warp + g, wrow0 + 16 * warp + g + 8};
  const int visible_min = len - nq + min(wrow0, rows_total - 1) / group + 1;
  const int seen_by_all = begin_for_all(p, len - nq + min(wrow0 + 63, rows_total - 1) / group + 1);  // by the consumer's rows
  TileMask mk{0, end, window, {}, {}};
  mk.set_rows(p, len, my_row, rows_total, group);
  const bool idle = wrow0 >= rows_total;

  float o[D / 8][4];  // O: n-tile nt holds coordinates 8 nt + 2t, +1 of rows g ([0..1]) and g + 8 ([2..3])
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

  // Descriptors of this consumer's query rows (high part) and of stage 0's key and value tiles
  // (wgmma.cuh): every operand of the loop is one of them plus a constant.
  const wg::Desc q_desc = wg::desc_sw128(smem_u32(&sm.q[0][0][64 * (wgi - 1)][0]));
  const wg::Desc k_desc = wg::desc_sw128(smem_u32(&sm.k[0][0][0][0])), v_desc = wg::desc_sw128(smem_u32(&sm.v[0][0][0][0]));
  constexpr uint32_t kQPart = sizeof(sm.q[0]), kBuf = sizeof(sm.k[0]);            // bytes of a query part, of a key stage
  constexpr uint32_t kQBlock = sizeof(sm.q[0][0]), kTBlock = sizeof(sm.k[0][0]);  // bytes of a 128-byte block of Q, of a key tile
  constexpr uint32_t kVBuf = sizeof(sm.v[0]), kVBlock = sizeof(sm.v[0][0]);        // of a value stage, of its 64-element block

  if (idle) {  // a consumer without rows (the last block's) still releases every stage
    for (int it = 0; it < tiles; ++it) {
      mbar_wait(&sm.full[it % S], (it / S) & 1);
      mbar_arrive(&sm.empty[it % S]);
    }
    return;
  }

  // S = Q K^T of the tile in stage st (the two parts of Q) into acc, issued and committed, not
  // awaited: acc[nt] holds rows g, g + 8 x tokens 8 nt + 2t, +1. A k-step reads 32 bytes of each
  // row: 16 elements, or 32 with int8 S.
  float s[NT][4];
  [[maybe_unused]] int s_hi[NT][4], s_lo[NT][4];  // int8 S: the query's high and low bytes' products
  const auto issue_s = [&](int st) {
    const wg::Desc kb = k_desc + st * kBuf;
    constexpr int kSteps = S8 ? D / 32 : D / 16;
    const auto at = [](int kt) { return (kt / 4) * kQBlock + (kt % 4) * 32; };
    const auto kat = [](int kt) { return (kt / 4) * kTBlock + (kt % 4) * 32; };
    wg::arrive();
    if constexpr (S8) {
      wg::mma_ss_s8<T, true>(s_hi, q_desc, kb);  // s_hi = Q_hi K_0^T: no zeroing
#pragma unroll
      for (int kt = 1; kt < kSteps; ++kt) wg::mma_ss_s8<T>(s_hi, q_desc + at(kt), kb + kat(kt));
      wg::mma_ss_s8<T, true>(s_lo, q_desc + kQPart, kb);
#pragma unroll
      for (int kt = 1; kt < kSteps; ++kt) wg::mma_ss_s8<T>(s_lo, q_desc + (kQPart + at(kt)), kb + kat(kt));
    } else {
      wg::mma_ss<T, kBf, true>(s, q_desc, kb);  // s = Q_hi K_0^T: no zeroing
#pragma unroll
      for (int kt = 1; kt < kSteps; ++kt) wg::mma_ss<T, kBf>(s, q_desc + at(kt), kb + kat(kt));
#pragma unroll
      for (int kt = 0; kt < kSteps; ++kt) wg::mma_ss<T, kBf>(s, q_desc + (kQPart + at(kt)), kb + kat(kt));
    }
    wg::commit();
  };
  // After the wait for issue_s's MMAs: S as floats in s (int8 S: 2^8 s_hi + s_lo, exact in int32;
  // the key norms, and the row's step / kCentroidGrid, follow in softmax_p: q_scale, kept above 0
  // as decode's s_scale is, since a masked score's -inf times a zero row's 0 would be NaN).
  float q_scale[2] = {1.0f, 1.0f};
  if constexpr (S8) {
    q_scale[0] = fmaxf(sm.q_scale[64 * (wgi - 1) + 16 * warp + g], dev::kMinScoreScale);
    q_scale[1] = fmaxf(sm.q_scale[64 * (wgi - 1) + 16 * warp + g + 8], dev::kMinScoreScale);
  }
  const auto s_ready = [&]() {
    if constexpr (S8) {
      wg::fence_regs(s_hi);
      wg::fence_regs(s_lo);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = float(s_hi[nt][e] * 256 + s_lo[nt][e]);
    } else {
      wg::fence_regs(s);
    }
  };

  // Software-pipelined as FlashAttention-3's consumers: the softmax of tile it + 1 runs while the
  // tensor cores compute P V of tile it. An iteration: O rescaled for tile it; S of it + 1 issued;
  // P V of it issued; S of it + 1 awaited and its softmax; P V of it awaited, its stage released.
  const float v_scale = KIND == Kind::kFp8 ? c.v_scale : 1.0f;
  float alpha[2];
  uint32_t pa[T / 16][kPParts<kBf>][4];
  // The softmax of tile it (its S in s): P into s, the rescale factors into alpha.
  const auto softmax = [&](int it) {
    const int T0 = begin + it * T, st = it % S;
    mk.T0 = T0;
    const bool full = T0 >= seen_by_all && T0 + T <= end && T0 + T <= visible_min - window;
    softmax_p<KIND>(s, m_run, l_run, sm.kn[st], sm.vn[st], v_scale, full, mk, t, alpha, q_scale);
  };
  if (tiles > 0) {
    mbar_wait(&sm.full[0], 0);
    issue_s(0);
    wg::wait<0>();
    s_ready();
    softmax(0);
    pack_p<kBf>(s, pa);
  }
  // P V of tile it (P in pa, V in stage it % S), issued and committed.
  const auto issue_pv = [&](int it) {
    const int st = it % S;
    wg::fence_regs(o);
    wg::arrive();
#pragma unroll
    for (int kk = 0; kk < T / 16; ++kk) {
      dev::static_for<D / 64>([&](auto block) {  // 16 tokens x a 64-coordinate block of V (o's n-tiles 8 db .. 8 db + 7)
        constexpr int db = decltype(block)::value;
        const wg::Desc vd = v_desc + (st * kVBuf + db * kVBlock + kk * 16 * 128);
#pragma unroll
        for (int part = 0; part < kPParts<kBf>; ++part) wg::mma_rs<kBf, 8 * db>(o, pa[kk][part], vd);
      });
    }
    wg::commit();
  };
  // Every tile but the last: a wait for one group exactly (ptxas serializes the MMAs when it
  // cannot tell which group a wait retires, as in a conditional).
  for (int it = 0; it + 1 < tiles; ++it) {
    rescale_o(o, alpha);  // before S is issued: no other access to accumulators while MMAs are in flight
    mbar_wait(&sm.full[(it + 1) % S], ((it + 1) / S) & 1);
    issue_s((it + 1) % S);
    issue_pv(it);
    wg::wait<1>();  // S of it + 1 (older than P V of it) done: its softmax while P V runs
    s_ready();
    softmax(it + 1);
    wg::wait<0>();  // P V of it done: its stage goes back to the producer, P's registers are free
    wg::fence_regs(o);
    mbar_arrive(&sm.empty[it % S]);
    pack_p<kBf>(s, pa);
  }
  if (tiles > 0) {
    rescale_o(o, alpha);
    issue_pv(tiles - 1);
    wg::wait<0>();
    wg::fence_regs(o);
  }
  write_rows<D, kTq>(p, o, m_run, l_run, my_row, seq, kvh, split, t, ws_o, ws_ml);
#else
  __trap();
#endif
}

}  // namespace tq::cuda::prefill
