// The pieces of the decode kernel that describe data, not control: the block's shared memory,
// the shared-memory staging ring and the map of its copies, a thread's share of a 16-token tile
// and how it is loaded, and the octet decode of packed codes. Used only by the decode kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "device_common.cuh"
#include "split_plan.h"
#include "tq/cuda/kernels.h"
#include "trellis_read.cuh"
#include "widths.h"

namespace tq::cuda::decode {

constexpr int kWarps = 4, kThreads = 32 * kWarps, kRows = 8, kTile = 16;
constexpr float kLog2e = 1.4426950408889634f;

enum class Kind { kTq, kF16, kBf16, kFp8 };

// Blocks an SM of a packed cache's decode kernel, which its register budget is compiled for
// (resident_blocks in decode_kernel.cuh, whose comment says why; Staging's padding keeps them).
constexpr int packed_resident_blocks(int D, int R) { return D >= 256 ? 2 : R == 2 ? 3 : 4; }

// A block's shared memory outside the union of the query rows, the staging ring and the warps'
// outputs (Smem below): what the ring's stage count is budgeted around.
// R: the 8-row m-tiles a block holds (decode_kernel.cuh: 2 share each packed tile's decode).
template <int D, int R = 1>
struct SmemFixed {
  uint4 qa[R][D / 16][32];  // A fragments of the query (per m-tile, k-tile, lane): read each tile, not held in registers
  __half lut_k[256], lut_v[256];
  float m[kWarps][R * kRows], l[kWarps][R * kRows];
  float qrs[R * kRows];  // int8 keys: a query row's fixed-point step (its max |q| / kQ16Max)
};

// 16-token tiles a warp takes per step of the decode loop over a packed cache (decode_kernel.cuh):
// two at D = 64, and with 2- or 3-bit keys at D = 128, which share one online-softmax update (row
// max, shuffles, rescale test), one wait and the loop's bookkeeping, work a tile pays whatever its
// D. They keep the ring of 4 stages, one step in flight ahead (6 stages, two steps ahead, were
// slower at batch 1 and 1-4K tokens: bench/results/2026-12-02-h200-decode-d64-steps.md). Blocks of
// one and of two m-tiles (R) must take the same steps, since each row must get the same bits from
// both (DecodeRows); 4-bit keys at D = 128 and D = 256 hold two tiles only with spills (ptxas).
// (KB: a width parameter, widths.h; its read bits count, as they set the registers a tile holds.)
template <int D, int KB>
inline constexpr int kStepTiles = D <= 64 || (D == 128 && read_bits(KB) <= 3) ? 2 : 1;

// Packed caches whose pages hold whole 16-token tiles are streamed through shared memory: each warp
// keeps a ring of kStages tiles, filled by cp.async kStages - kStepTiles tiles ahead of its compute,
// so the loads of a tile are in flight for the whole of the tiles before it. A stage is the tile's slice
// of the (page, kv head) block: K codes, V codes, K norms, V norms, kChunks 16-byte pieces that
// the warp's lanes copy kRounds at a time. Sizes from format.h: a row of codes is
// code_row_bytes, a norm kNormBytes, and every section of a page block starts on 16 bytes, so
// a 16-row slice of each is whole 16-byte pieces. (KB, VB: width parameters, widths.h.)
template <int D, int KB, int VB>
struct Staging {
  static constexpr int kRowK = int(code_row_bytes(D, stored_bits(KB))), kRowV = int(code_row_bytes(D, stored_bits(VB)));
  static constexpr int kNormChunks = kTile * int(kNormBytes) / 16;  // 16-byte pieces of a tile's K (V) norms
  static_assert(kTile * kRowK % 16 == 0 && kTile * kRowV % 16 == 0 && kTile * int(kNormBytes) % 16 == 0, "whole pieces");
  static constexpr int kBytes = kTile * (kRowK + kRowV + 2 * int(kNormBytes));  // [K codes][V codes][K norms][V norms]
  static constexpr int kChunks = kBytes / 16, kRounds = (kChunks + 31) / 32;
  // The shared memory a block of a packed cache is given (resident_blocks: 4 a SM at D <= 128),
  // and what is left of it for the warps' rings.
  static constexpr int kBudget = 44 * 1024;
  static constexpr int kFree = kBudget - int(sizeof(SmemFixed<D>));
  static constexpr int stages_of(int stride) {
    return KB == 0 ? 0 : kFree / (kWarps * stride) >= 4 ? 4 : kFree / (kWarps * stride) >= 3 ? 3 : 2;
  }
  // A stage is padded to whole rounds of 32 pieces where that keeps the stage count and the blocks
  // an SM holds: the lanes that have no piece in the last round then copy one anyway (their own
  // clamped source, the tile's last piece) into the padding, so that every copy is unconditional
  // (a conditional one costs a branch and its padding instructions a tile: SASS). The blocks are
  // counted up to packed_resident_blocks on SMs of 228 KB (sm_90, sm_100) and 100 KB (sm_86, 89,
  // 120), whose 3 or 4 blocks of k2v2 or k3v3 at D = 128 padding would cost a block.
  static constexpr int kPadded = kRounds * 32 * 16;
  static constexpr int held_by(int sm_kb, size_t bytes) {  // blocks of `bytes` an SM of sm_kb KB holds, up to the cap
    const int fit = attention::blocks_fitting(size_t(sm_kb) * 1024, bytes), cap = packed_resident_blocks(D, 1);
    return fit < cap ? fit : cap;
  }
  static constexpr int blocks_held(int sm_kb, int stride) {  // a block: the fixed part, the ring's union with sm.o
    const int ring = kWarps * stages_of(stride) * stride, o = kWarps * kRows * D * int(sizeof(float));
    return held_by(sm_kb, sizeof(SmemFixed<D>) + size_t(ring > o ? ring : o));
  }
  static constexpr bool kPad = stages_of(kPadded) == stages_of(kBytes) && blocks_held(228, kPadded) == blocks_held(228, kBytes) &&
                               blocks_held(100, kPadded) == blocks_held(100, kBytes);
  static constexpr int kStride = kPad ? kPadded : kBytes;  // bytes from a stage to the next (a multiple of 32: see Smem)
  static constexpr int kStages = stages_of(kStride);
  static constexpr int kRing = kWarps * kStages * kStride;
};

// Float caches (fp16, bf16, fp8 e4m3): a thread's share of a tile is a few 16-byte units of each
// row, interleaved with its neighbours' rather than contiguous, so that the quad's key units (and
// the 8 groups' value units) fall in different shared-memory banks once swizzled (FloatStaging):
//   keys:   thread t of a quad owns units t + 4j of rows g and g + 8 (its D/4 coordinates);
//   values: thread g owns units g + 8j of rows 2t, 2t+1, 2t+8, 2t+9 (its D/8 coordinates;
//           units of 8 bytes when a row's eighth is smaller than 16: fp8 at D = 64).
// The k index of S = Q K^T follows the key map (the query fragments use key_coord); the output
// coordinates follow the value map (value_coord).
template <int D, Kind KIND>
struct FloatUnits {
  static constexpr int kEB = KIND == Kind::kFp8 ? 1 : 2;  // bytes per element
  static constexpr int kRow = D * kEB;                     // bytes of one K (or V) row
  static constexpr int kKeyUnits = kRow / 64;              // a thread's key units per row
  static constexpr int kValBytes = kRow / 8 < 16 ? kRow / 8 : 16, kValUnits = kRow / 8 / kValBytes;
  // Stored coordinate of the thread's u-th key (value) coordinate.
  __device__ static int key_coord(int t, int u) {
    constexpr int c = 16 / kEB;
    return c * (t + 4 * (u / c)) + u % c;
  }
  __device__ static int value_coord(int g, int u) {
    constexpr int c = kValBytes / kEB;
    return c * (g + 8 * (u / c)) + u % c;
  }
};

// Float caches stream whole tiles as they lie in the page (16 K rows, then 16 V rows) through a
// per-warp ring of kStages tiles, as the packed caches do. A row's 16-byte units are stored
// swizzled so that the reads of FloatUnits are free of bank conflicts: unit c of key row r at
// c ^ 4 (r & 1) (the quad's 4 units and rows g, g + 1 of an 8-lane phase hit 8 different bank
// groups), of value row r at c ^ 2 ((r >> 1) & 3) (groups g, g + 1 and the 4 rows 2t).
// Rows need >= 8 units (fp8 at D = 64 has 4: it takes the unstaged loads). The compact kernels
// (C: GPUs with 99 KB of shared memory a block, where a ring of 3 tiles a warp does not fit at
// D >= 128 in 16 bits or D = 256 in fp8) take the unstaged loads too.
template <int D, Kind KIND, bool C = false>
struct FloatStaging {
  static constexpr int kRow = FloatUnits<D, KIND>::kRow;
  static constexpr int kBytes = 2 * kTile * kRow;         // [16 K rows][16 V rows]
  static constexpr int kRounds = kTile * kRow / 16 / 32;  // 16-byte copies per lane, of K and of V
  static constexpr int kStages = kRow >= 128 && !C ? 3 : 0;
  static constexpr int kStride = kBytes;  // bytes from a stage to the next
  static constexpr int kRing = kWarps * kStages * kStride;
  __device__ static int k_pos(int r, int c) { return r * kRow + 16 * (c ^ 4 * (r & 1)); }
  __device__ static int v_pos(int r, int c) { return (kTile + r) * kRow + 16 * (c ^ 2 * ((r >> 1) & 3)); }
};

template <int D, Kind KIND, int KB, int VB, bool C = false>
using StagePlan = std::conditional_t<KIND == Kind::kTq, Staging<D, KB, VB>, FloatStaging<D, KIND, C>>;

// Shared memory of one block (dynamic: the float caches' rings exceed the 48 KB of static memory).
// (The staging ring is budgeted around one m-tile's SmemFixed: a block of 2 m-tiles is larger.)
// C: the compact kernel of a float cache (FloatStaging).
template <int D, Kind KIND, int KB, int VB, int R = 1, bool C = false>
struct Smem : SmemFixed<D, R> {
  // The ring's 16-byte pieces must keep the alignment of their global 32-byte sectors: a ring
  // 16 bytes off a 32-byte boundary made every cp.async read two L2 sectors for one (Nsight
  // Compute: twice the L2 reads, our bf16 path 25% slower), so it starts on 128 bytes.
  union {
    float q[R * kRows][D];  // the prologue of float caches: query rows, rotated and scaled
    alignas(128) uint8_t ring[StagePlan<D, KIND, KB, VB, C>::kRing > 0 ? StagePlan<D, KIND, KB, VB, C>::kRing : 16];  // the loop
    float o[kWarps][R * kRows][D];  // the epilogue: the warps' outputs
  };
};

// Staging::blocks_held counts a block's bytes from Smem's parts (Smem is built from Staging, so
// it cannot read its size): for the stride it chose, its counts on SMs of 228 and 100 KB must be
// those of Smem's own size (decode_kernel asserts it), or a change to Smem's union went uncounted.
template <int D, int KB, int VB>
constexpr bool blocks_held_agrees() {
  using S = Staging<D, KB, VB>;
  for (const int kb : {228, 100})
    if (S::held_by(kb, sizeof(Smem<D, Kind::kTq, KB, VB>)) != S::blocks_held(kb, S::kStride)) return false;
  return true;
}

__device__ __forceinline__ void cp_async16(uint32_t smem, const void* gmem) {  // smem: a shared-window address
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem), "l"(gmem));
}
// The same, reading nothing when `skip` (PTX's ignore-src: the 16 bytes become zeros), so that a
// lane may name a source past the cache's end without touching it.
__device__ __forceinline__ void cp_async16_unless(uint32_t smem, const void* gmem, bool skip) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n cp.async.cg.shared.global [%0], [%1], 16, p;\n}\n" ::"r"(smem), "l"(gmem),
      "r"(uint32_t(skip)));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Where token T of a sequence lives: the start of its (page, kv head) block and its row.
struct TokenAddr {
  const uint8_t* block;
  uint32_t row;
};
__device__ __forceinline__ TokenAddr token_addr(const DecodeParams& p, const int32_t* bt, int T, int kvh) {
  const int ps = int(p.cache.page_size);
  const int page = bt[T / ps];
  return {p.cache.data + (size_t(page) * p.cache.kv_heads + kvh) * p.cache.layout.bytes, uint32_t(T % ps)};
}

// A thread's value coordinates [g D/8, (g+1) D/8) are kOct octets of one group of 32 codes,
// starting at octet og0 = (g D/64) mod 4. Per token the thread keeps only the words that hold them,
// shifted at load time so that octet j is then at a compile-time shift (no run-time word picks).
// Except 2-bit values of one octet a thread (kInPlace: D = 64), which the kernel masks in place,
// its octet 2 places higher where og0 is odd (decode_kernel.cuh: `vp`), so no token's word is shifted.
// Planes as in docs/format.md: 4-bit words first, then 2-bit, then 1-bit.
template <int D, int VB>
struct ValueWords {
  static_assert(VB >= 2 && VB <= 4, "decode kernels take value widths 2..4");
  static constexpr int kOct = D >= 64 ? D / 64 : 1;
  static constexpr int kW4 = (VB & 4) ? kOct : 0, kW2 = (VB & 2) ? (kOct + 1) / 2 : 0, kW1 = VB & 1;
  static constexpr int kWords = kW4 + kW2 + kW1;
  static constexpr bool kInPlace = VB == 2 && kOct == 1;
  __device__ static void load(const uint32_t* group, int og0, uint32_t (&x)[kWords]) {
    int i = 0, plane = 0;
    if constexpr ((VB & 4) != 0) {
#pragma unroll
      for (int j = 0; j < kW4; ++j) x[i++] = group[og0 + j];
      plane += 4;
    }
    if constexpr ((VB & 2) != 0) {
      const int sh = kOct == 1 && !kInPlace ? 2 * (og0 & 1) : 0;
#pragma unroll
      for (int j = 0; j < kW2; ++j) x[i++] = group[plane + og0 / 2 + j] >> sh;
      plane += 2;
    }
    if constexpr ((VB & 1) != 0) x[i++] = group[plane] >> og0;
  }
  // Octet j of the thread's coordinates as 8 nibbles (codes < 8: PRMT selectors).
  __device__ static uint32_t selector(const uint32_t (&x)[kWords], int j) {
    static_assert(VB <= 3);
    const uint32_t two = (x[j / 2] >> (2 * (j % 2))) & 0x33333333u;
    if constexpr (VB == 2) return two;
    else return two | (((x[kW2] >> j) & 0x11111111u) << 2);
  }
  // Octet j of 4-bit codes as 8 codes (looked up in shared memory: 16 entries are too many for PRMT).
  __device__ static void codes(const uint32_t (&x)[kWords], int j, uint32_t (&c)[8]) {
    static_assert(VB == 4);
#pragma unroll
    for (int k = 0; k < 8; ++k) c[k] = (x[j] >> (4 * k)) & 0xfu;
  }
};

// The same for trellis-coded values (VB a kTcq width, widths.h): the thread's kOct octets read as
// union indices when loaded, one word an octet in the selector format (nibble k: coordinate k's
// index), which the (b + 1)-bit value paths take as they take plain codes.
template <int D, int VB>
struct TcqValueWords {
  static constexpr int kB = stored_bits(VB);
  static_assert(tcq_width(VB) && kB >= 2 && kB <= 3, "decode kernels take trellis-coded value widths 2 and 3");
  static constexpr int kOct = ValueWords<D, 2>::kOct, kWords = kOct;
  // group: the group of the thread's octets; og0: its first octet there; first: the row's first
  // octet (its carries from the row's last group).
  __device__ static void load(const uint32_t* group, int og0, bool first, uint32_t (&x)[kWords]) {
    uint32_t w[kB];
#pragma unroll
    for (int i = 0; i < kB; ++i) w[i] = group[i];
    uint32_t prev = dev::tcq_carry<kB, D / 32>(group, og0, first);
#pragma unroll
    for (int j = 0; j < kOct; ++j) x[j] = dev::tcq_octet<kB>(w, og0 + j, prev);
  }
  __device__ static uint32_t selector(const uint32_t (&x)[kWords], int j) {
    static_assert(read_bits(VB) <= 3);
    return x[j];
  }
  __device__ static void codes(const uint32_t (&x)[kWords], int j, uint32_t (&c)[8]) {
#pragma unroll
    for (int k = 0; k < 8; ++k) c[k] = (x[j] >> (4 * k)) & 0xfu;
  }
};
template <int D, int VB>
using ValueWordsOf = std::conditional_t<tcq_width(VB), TcqValueWords<D, VB>, ValueWords<D, VB>>;

// The bytes one thread needs from a 16-token tile: keys of tokens g and g + 8 (its D/4 coordinates),
// values of tokens 2t, 2t+1, 2t+8, 2t+9 (its D/8 coordinates) and, for TurboQuant, their norms.
// Tokens 2t and 2t+1 (and 2t+8, 2t+9) are the k = token pair of one register of the P V MMA.
template <int D, Kind KIND, int KB, int VB>
struct Tile;
template <int D, int KB, int VB>
struct Tile<D, Kind::kTq, KB, VB> {
  static constexpr int kGroups = D >= 128 ? D / 128 : 1, kSB = stored_bits(KB);
  // Words a group: its packed codes; trellis-coded, its 4 octets of union indices (tcq_octet).
  static constexpr int kKW = tcq_width(KB) ? 4 : kSB;
  // At D = 64 the quad's threads share a group, two octets each (2h and 2h + 1, h = t & 1). Plain
  // codes of up to 3 bits keep only the words that hold the thread's two, shifted as they are
  // loaded so that those are octets 0 and 1 of a group (the 2-bit plane's word h as its word 0,
  // the 1-bit plane's word >> 2h): the loop's octet picks are then compile-time, where they took
  // a select and a run-time shift an octet (ValueWords does the same for the values).
  static constexpr bool kHalfGroup = D == 64 && !tcq_width(KB) && KB <= 3;
  uint32_t k[2][kGroups][kKW];  // the groups holding the thread's key coordinates
  // Key row nn's groups, from the thread's first word w of that row (global or shared memory);
  // first: they start the row (trellis codes: carries from the row's last group); h: the thread's
  // half of its group (kHalfGroup).
  __device__ void load_key_words(int nn, const uint32_t* w, bool first, int h) {
    if constexpr (tcq_width(KB)) {
      uint32_t prev = dev::tcq_carry<kSB, D / 32>(w, 0, first);
#pragma unroll
      for (int gi = 0; gi < kGroups; ++gi) {
        uint32_t c[kSB];
#pragma unroll
        for (int i = 0; i < kSB; ++i) c[i] = w[gi * kSB + i];
#pragma unroll
        for (int o = 0; o < 4; ++o) k[nn][gi][o] = dev::tcq_octet<kSB>(c, o, prev);
      }
    } else if constexpr (kHalfGroup) {
      if constexpr (KB >= 2) {
        k[nn][0][0] = w[h];
        k[nn][0][1] = 0;  // the plane's other word: octets the thread never reads
      }
      if constexpr (KB % 2 == 1) k[nn][0][KB - 1] = w[KB - 1] >> (2 * h);
    } else {
#pragma unroll
      for (int gi = 0; gi < kGroups; ++gi)
#pragma unroll
        for (int i = 0; i < KB; ++i) k[nn][gi][i] = w[gi * KB + i];
    }
  }
  // Octet og of group gi of key row nn as 8 selector nibbles (read widths up to 4 bits).
  __device__ uint32_t key_selector(int nn, int gi, int og) const {
    if constexpr (tcq_width(KB)) return dev::pick(k[nn][gi], og);
    else return dev::octet_selector<KB>(k[nn][gi], og);
  }
  uint32_t v[4][ValueWordsOf<D, VB>::kWords];  // per token, the words of the thread's value coordinates
  uint32_t kn[2], vn[2];       // fp16 norms of tokens (2t, 2t+1) and (2t+8, 2t+9), two to a register
  // Keys as M (decode_kernel.cuh's KM): the fp16 key norms of tokens g and g + 8, in the low halves.
  // Loaded for every kernel; those that never read them (the others) lose the loads to the compiler.
  uint32_t kng[2];
};
template <int D, int KB, int VB>
struct Tile<D, Kind::kF16, KB, VB> {
  uint4 k[2][D / 32];  // D/4 fp16 = D/2 bytes: FloatUnits key units in order
  uint4 v[4][D / 64];  // D/8 fp16 = D/4 bytes: value units in order
  __device__ void set_key_unit(int nn, int j, uint4 x) { k[nn][j] = x; }
  __device__ uint32_t& v_word(int e, int w) { return (&v[e][w / 4].x)[w % 4]; }
};
template <int D, int KB, int VB>
struct Tile<D, Kind::kBf16, KB, VB> : Tile<D, Kind::kF16, KB, VB> {};
template <int D, int KB, int VB>
struct Tile<D, Kind::kFp8, KB, VB> {
  uint32_t k[2][D / 16];  // D/4 bytes: FloatUnits key units in order
  uint32_t v[4][D / 32];  // D/8 bytes: value units in order
  __device__ void set_key_unit(int nn, int j, uint4 x) {
    k[nn][4 * j] = x.x;
    k[nn][4 * j + 1] = x.y;
    k[nn][4 * j + 2] = x.z;
    k[nn][4 * j + 3] = x.w;
  }
  __device__ uint32_t& v_word(int e, int w) { return v[e][w]; }
};

// Addresses of the rows of one tile. When pages hold whole tiles (page_size % 16 == 0) the page
// lookup is one warp-uniform load; otherwise each token finds its own page. Rows past the end of
// the sequence are clamped to its last token, so every load reads written bytes.
struct TileRows {
  const uint8_t* block = nullptr;  // uniform case
  int row0 = 0;
  __device__ TokenAddr operator()(const DecodeParams& p, const int32_t* bt, int kvh, int T0, int local, int len) const {
    const int T = min(T0 + local, len - 1);
    if (block) return {block, uint32_t(row0 + T - T0)};
    return token_addr(p, bt, T, kvh);
  }
};

__device__ __forceinline__ TileRows tile_rows(const DecodeParams& p, const int32_t* bt, int kvh, int T0) {
  TileRows rows;
  if (p.cache.page_size % kTile == 0) {
    rows.block = p.cache.data + (size_t(bt[T0 / int(p.cache.page_size)]) * p.cache.kv_heads + kvh) * p.cache.layout.bytes;
    rows.row0 = T0 % int(p.cache.page_size);
  }
  return rows;
}

template <int D, Kind KIND, int KB, int VB>
__device__ __forceinline__ void load_keys(const DecodeParams& p, const int32_t* bt, int kvh, const TileRows& rows, int T0, int len,
                                          int g, int t, Tile<D, KIND, KB, VB>& tile) {
  const BlockLayout& L = p.cache.layout;
#pragma unroll
  for (int nn = 0; nn < 2; ++nn) {
    const TokenAddr a = rows(p, bt, kvh, T0, g + 8 * nn, len);
    const uint8_t* row = a.block + L.k_codes + size_t(a.row) * L.k_row;
    if constexpr (KIND == Kind::kTq) {
      const int gk = t * D / 128;  // its (first) group
      tile.load_key_words(nn, reinterpret_cast<const uint32_t*>(row) + gk * stored_bits(KB), gk == 0, t & 1);
      tile.kng[nn] = reinterpret_cast<const uint16_t*>(a.block + L.k_norms)[a.row];
    } else {  // units t + 4j (FloatUnits)
      const uint4* src = reinterpret_cast<const uint4*>(row);
#pragma unroll
      for (int j = 0; j < FloatUnits<D, KIND>::kKeyUnits; ++j) tile.set_key_unit(nn, j, src[t + 4 * j]);
    }
  }
}

template <int D, Kind KIND, int KB, int VB>
__device__ __forceinline__ void load_values(const DecodeParams& p, const int32_t* bt, int kvh, const TileRows& rows, int T0, int len,
                                            int g, int t, Tile<D, KIND, KB, VB>& tile) {
  const BlockLayout& L = p.cache.layout;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const TokenAddr a = rows(p, bt, kvh, T0, 2 * t + (e & 1) + 8 * (e >> 1), len);
    const uint8_t* row = a.block + L.v_codes + size_t(a.row) * L.v_row;
    if constexpr (KIND == Kind::kTq) {
      const uint32_t* group = reinterpret_cast<const uint32_t*>(row) + (g * D / 256) * stored_bits(VB);
      if constexpr (tcq_width(VB))
        TcqValueWords<D, VB>::load(group, (g * D / 64) % 4, g == 0, tile.v[e]);
      else
        ValueWords<D, VB>::load(group, (g * D / 64) % 4, tile.v[e]);
      const uint32_t kn = reinterpret_cast<const uint16_t*>(a.block + L.k_norms)[a.row];
      const uint32_t vn = reinterpret_cast<const uint16_t*>(a.block + L.v_norms)[a.row];
      if (e & 1) {
        tile.kn[e >> 1] |= kn << 16;
        tile.vn[e >> 1] |= vn << 16;
      } else {
        tile.kn[e >> 1] = kn;
        tile.vn[e >> 1] = vn;
      }
    } else {  // units g + 8j (FloatUnits), of 8 bytes for fp8 at D = 64
      using FU = FloatUnits<D, KIND>;
      constexpr int kW = FU::kValBytes / 4;  // words per unit
      const uint32_t* src = reinterpret_cast<const uint32_t*>(row);
#pragma unroll
      for (int w = 0; w < FU::kValUnits * kW; ++w) tile.v_word(e, w) = src[kW * (g + 8 * (w / kW)) + w % kW];
    }
  }
}

// One lane's share of the streaming of a packed cache (Staging): its copies into a stage and its
// reads of a staged tile. Where its 16-byte pieces come from: piece r of a tile in page `block`
// bytes into the cache (the KV head's block within it is in src) whose first row in its page is
// row0 is at src[r] + block + row0 * per_row[r], and goes to byte 16 (lane + 32 r) of the stage.
// Fixed for the whole loop (and kept in registers: the compiler would otherwise rebuild them from
// the thread index every tile), so a tile's copies cost little but the copies.
template <int D, int KB, int VB>
struct TqStager {
  using St = Staging<D, KB, VB>;
  const uint8_t* src[St::kRounds];
  uint32_t per_row[St::kRounds];
  const uint8_t* whole;       // this lane's first piece when a page block is laid out as a stage (copy_page)
  bool page_is_stage;         // a page block of kTile rows is laid out as a stage: [K codes][V codes][K norms][V norms]
  uint32_t dst;               // shared-window address of this lane's first piece in the warp's ring
  uint32_t last;              // nonzero: this lane copies a piece in the last round (which has fewer than 32)
  uint32_t k_at, v_at, n_at;  // this thread's words in a stage, as byte offsets from the block's ring:
  int og0;                    // key rows g, g+8 at its k-slice, value rows 2t (+1, +8, +9) at its v-slice, norm pairs
  uint32_t kg_at;             // the key norm of token g (Tile::kng)
  int k_half;                 // its half of its key group (D = 64: Tile::kHalfGroup)
  bool k_first, v_first;      // its key (value) coordinates start the row (trellis codes: carries from its last group)
  // head_at: the KV head's block within a page (kvh x the block's bytes).
  __device__ TqStager(const uint8_t* data, const BlockLayout& L, uint32_t ring_s, uint32_t ring_at, int lane, uint32_t head_at) {
    constexpr int nk = St::kRowK, nv = St::kRowV;  // 16 rows of kRow bytes = kRow pieces
#pragma unroll
    for (int r = 0; r < St::kRounds; ++r) {
      const int i = min(lane + 32 * r, St::kChunks - 1);  // lanes without a piece r never copy it
      src[r] = data + head_at + (i < nk ? L.k_codes + 16 * i
                       : i < nk + nv ? L.v_codes + 16 * (i - nk)
                       : i < nk + nv + St::kNormChunks ? L.k_norms + 16 * (i - nk - nv)
                                                      : L.v_norms + 16 * (i - nk - nv - St::kNormChunks));
      per_row[r] = i < nk ? nk : i < nk + nv ? nv : kNormBytes;
      asm volatile("" : "+l"(src[r]), "+r"(per_row[r]));
    }
    whole = data + head_at + 16 * lane;
    page_is_stage = L.k_codes == 0 && L.v_codes == uint32_t(kTile * nk) && L.k_norms == uint32_t(kTile * (nk + nv)) &&
                    L.v_norms == L.k_norms + kTile * kNormBytes;
    asm volatile("" : "+l"(whole));
    const int g = lane / 4, t = lane % 4;
    dst = ring_s + 16 * lane;
    last = lane + 32 * (St::kRounds - 1) < St::kChunks;
    asm volatile("" : "+r"(dst), "+r"(last));
    k_at = ring_at + g * St::kRowK + (t * D / 128) * int(group_bytes(stored_bits(KB)));
    v_at = ring_at + kTile * St::kRowK + 2 * t * St::kRowV + (g * D / 256) * int(group_bytes(stored_bits(VB)));
    k_first = t * D / 128 == 0;
    v_first = g == 0;
    n_at = ring_at + kTile * (St::kRowK + St::kRowV) + 2 * int(kNormBytes) * t;
    kg_at = ring_at + kTile * (St::kRowK + St::kRowV) + int(kNormBytes) * g;
    og0 = (g * D / 64) % 4;
    k_half = t & 1;
    asm volatile("" : "+r"(k_at), "+r"(v_at), "+r"(n_at));
  }
  // Copies the tile at row row0 of page `page` (page_stride bytes each) of the cache into the
  // stage at byte stage_at of the warp's ring.
  __device__ void copy(uint32_t stage_at, uint32_t page, uint32_t page_stride, int row0) const {
#pragma unroll
    for (int r = 0; r < St::kRounds; ++r)
      if (r + 1 < St::kRounds || St::kPad || last)
        cp_async16(dst + stage_at + 32 * 16 * r, dev::mad_wide(page, page_stride, src[r]) + uint32_t(row0) * per_row[r]);
  }
  // copy for a page of one tile laid out as a stage (page_is_stage): a lane's pieces are 512 bytes
  // apart in the page as in the stage, so one address a tile serves them all (copy computes one a
  // piece). The lanes with no piece in a padded last round read nothing: their address is past the
  // tile, possibly past the cache.
  __device__ void copy_page(uint32_t stage_at, uint32_t page, uint32_t page_stride) const {
    const uint8_t* at = dev::mad_wide(page, page_stride, whole);
#pragma unroll
    for (int r = 0; r < St::kRounds; ++r) {
      if (r + 1 < St::kRounds)
        cp_async16(dst + stage_at + 32 * 16 * r, at + 32 * 16 * r);
      else if (St::kPad)
        cp_async16_unless(dst + stage_at + 32 * 16 * r, at + 32 * 16 * r, last == 0);
      else if (last)
        cp_async16(dst + stage_at + 32 * 16 * r, at + 32 * 16 * r);
    }
  }
  // A tile's key words, value words and norms. A step of two tiles (kStepTiles) reads them in two
  // parts: load_keys (key words and both norms) before the scores, load_value_words after the
  // softmax, so that neither tile's value words are held through the scores.
  template <Kind KIND>
  __device__ void load(const uint8_t* stage, Tile<D, KIND, KB, VB>& cur) const {
    load_key_codes(stage, cur);
    load_value_words(stage, cur);
    load_norms(stage, cur);
  }
  template <class TileT>
  __device__ void load_values(const uint8_t*, TileT&) const {}  // loaded with the keys
  template <Kind KIND>
  __device__ void load_keys(const uint8_t* stage, Tile<D, KIND, KB, VB>& cur) const {
    load_key_codes(stage, cur);
    load_norms(stage, cur);
  }
  template <Kind KIND>
  __device__ void load_value_words(const uint8_t* stage, Tile<D, KIND, KB, VB>& cur) const {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint32_t* group = reinterpret_cast<const uint32_t*>(stage + v_at + ((e & 1) + 8 * (e >> 1)) * St::kRowV);
      if constexpr (tcq_width(VB))
        TcqValueWords<D, VB>::load(group, og0, v_first, cur.v[e]);
      else
        ValueWords<D, VB>::load(group, og0, cur.v[e]);
    }
  }

 private:
  template <Kind KIND>
  __device__ void load_key_codes(const uint8_t* stage, Tile<D, KIND, KB, VB>& cur) const {
#pragma unroll
    for (int nn = 0; nn < 2; ++nn)
      cur.load_key_words(nn, reinterpret_cast<const uint32_t*>(stage + k_at + 8 * nn * St::kRowK), k_first, k_half);
  }
  template <Kind KIND>
  __device__ void load_norms(const uint8_t* stage, Tile<D, KIND, KB, VB>& cur) const {
    const uint32_t* norms = reinterpret_cast<const uint32_t*>(stage + n_at);  // fp16 pairs of tokens (2t, 2t+1)
    constexpr int k8 = 8 * int(kNormBytes) / 4, kV = kTile * int(kNormBytes) / 4;  // in words: 8 tokens on, the V norms
    cur.kn[0] = norms[0];
    cur.kn[1] = norms[k8];
    cur.vn[0] = norms[kV];
    cur.vn[1] = norms[kV + k8];
    const uint16_t* kg = reinterpret_cast<const uint16_t*>(stage + kg_at);  // tokens g, g + 8 (kNormBytes each)
    cur.kng[0] = kg[0];
    cur.kng[1] = kg[8 * int(kNormBytes) / int(sizeof(uint16_t))];
  }
};

// The same for float caches (FloatStaging): a tile's K rows and V rows are contiguous in the page
// block, so piece r of a lane is at byte 16 (lane + 32 r) from the tile's first K (V) row, and goes
// to its swizzled place. A round of 32 pieces covers 32 / kPerRow rows (1, 2 or 4), so piece
// r + P lands 512 P bytes after piece r, swizzled alike, for P = 2 (keys: the swizzle depends on
// row & 1) and P = 8 (values: on row & 7): P destinations per lane are kept in registers.
template <int D, Kind KIND>
struct FloatStager {
  using FS = FloatStaging<D, KIND>;
  static constexpr int kRow = FS::kRow, kPerRow = kRow / 16;
  static constexpr int kPK = FS::kRounds < 2 ? FS::kRounds : 2, kPV = FS::kRounds < 8 ? FS::kRounds : 8;
  const uint8_t *k_src, *v_src;  // this lane's first piece of the K and V sections of page block 0, row 0
  uint32_t k_dst[kPK], v_dst[kPV];  // shared-window addresses of this lane's pieces 0..P-1 in stage 0
  uint32_t k_rd[2], v_rd;           // this thread's reads, byte offsets from the block's ring (see load)
  __device__ FloatStager(const uint8_t* data, const BlockLayout& L, uint32_t ring_s, uint32_t ring_at, int lane, uint32_t head_at)
      : k_src(data + head_at + L.k_codes + 16 * lane), v_src(data + head_at + L.v_codes + 16 * lane) {
#pragma unroll
    for (int r = 0; r < kPV; ++r) {
      const int q = lane + 32 * r, row = q / kPerRow, c = q % kPerRow;
      if (r < kPK) k_dst[r] = ring_s + FS::k_pos(row, c);
      v_dst[r] = ring_s + FS::v_pos(row, c);
    }
    asm volatile("" : "+r"(k_dst[0]), "+r"(k_dst[kPK - 1]));  // kept, not rebuilt every tile
#pragma unroll
    for (int r = 0; r < kPV; ++r) asm volatile("" : "+r"(v_dst[r]));
    const int g = lane / 4, t = lane % 4, p = g & 1;
    // key unit t + 4j of row g sits at 16 ((t + 4j) ^ 4p) = 16 t + 64 j + (j even ? 64 p : -64 p)
    k_rd[0] = ring_at + g * kRow + 16 * t + 64 * p;
    k_rd[1] = ring_at + g * kRow + 16 * t - 64 * p;
    // value unit g + 8j of row 2t (+1, +8, +9) sits at 16 ((g + 8j) ^ 2t) = 16 (g ^ 2t) + 128 j
    v_rd = ring_at + (kTile + 2 * t) * kRow + 16 * (g ^ (2 * t));
  }
  static constexpr bool page_is_stage = true;  // copy_page is copy from row 0
  __device__ void copy_page(uint32_t at, uint32_t page, uint32_t page_stride) const { copy(at, page, page_stride, 0); }
  __device__ void copy(uint32_t at, uint32_t page, uint32_t page_stride, int row0) const {  // as TqStager::copy
    const uint8_t* k = dev::mad_wide(page, page_stride, k_src) + uint32_t(row0) * kRow;
    const uint8_t* v = dev::mad_wide(page, page_stride, v_src) + uint32_t(row0) * kRow;
#pragma unroll
    for (int r = 0; r < FS::kRounds; ++r) {
      cp_async16(k_dst[r % kPK] + at + 512 * kPK * (r / kPK), k + 512 * r);
      cp_async16(v_dst[r % kPV] + at + 512 * kPV * (r / kPV), v + 512 * r);
    }
  }
  template <int KB, int VB>
  __device__ void load(const uint8_t* stage, Tile<D, KIND, KB, VB>& cur) const {  // keys: before the scores
#pragma unroll
    for (int nn = 0; nn < 2; ++nn)
#pragma unroll
      for (int j = 0; j < FloatUnits<D, KIND>::kKeyUnits; ++j)
        cur.set_key_unit(nn, j, *reinterpret_cast<const uint4*>(stage + k_rd[j & 1] + 64 * j + 8 * nn * kRow));
  }
  template <int KB, int VB>
  __device__ void load_values(const uint8_t* stage, Tile<D, KIND, KB, VB>& cur) const {  // after them
#pragma unroll
    for (int e = 0; e < 4; ++e)
#pragma unroll
      for (int j = 0; j < FloatUnits<D, KIND>::kValUnits; ++j) {
        const uint4 x = *reinterpret_cast<const uint4*>(stage + v_rd + ((e & 1) + 8 * (e >> 1)) * kRow + 128 * j);
        cur.v_word(e, 4 * j) = x.x;
        cur.v_word(e, 4 * j + 1) = x.y;
        cur.v_word(e, 4 * j + 2) = x.z;
        cur.v_word(e, 4 * j + 3) = x.w;
      }
  }
};

template <int D, Kind KIND, int KB, int VB>
using Stager = std::conditional_t<KIND == Kind::kTq, TqStager<D, KB, VB>, FloatStager<D, KIND>>;

// The stager of a kernel without a staged loop (the compact float kernels): copies nothing.
struct NoStager {
  __device__ NoStager(const uint8_t*, const BlockLayout&, uint32_t, uint32_t, int, uint32_t) {}
  static constexpr bool page_is_stage = false;
  __device__ void copy(uint32_t, uint32_t, uint32_t, int) const {}
  __device__ void copy_page(uint32_t, uint32_t, uint32_t) const {}
};

}  // namespace tq::cuda::decode
