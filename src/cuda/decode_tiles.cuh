// The pieces of the decode kernel that describe data, not control: the block's shared memory,
// the shared-memory staging ring and the map of its copies, a thread's share of a 16-token tile
// and how it is loaded, and the octet decode of packed codes. Used only by the decode kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "device_common.cuh"
#include "tq/cuda/kernels.h"

namespace tq::cuda::decode {

constexpr int kWarps = 4, kThreads = 32 * kWarps, kRows = 8, kTile = 16;
constexpr float kLog2e = 1.4426950408889634f;

enum class Kind { kTq, kF16, kBf16, kFp8 };

// Packed caches whose pages hold whole 16-token tiles are streamed through shared memory: each warp
// keeps a ring of kStages tiles, filled by cp.async kStages - 1 tiles ahead of its compute, so the
// loads of a tile are in flight for the whole of the tiles before it. A stage is the tile's slice
// of the (page, kv head) block: K codes, V codes, K norms, V norms, kChunks 16-byte pieces that
// the warp's lanes copy kRounds at a time.
template <int D, int KB, int VB>
struct Staging {
  static constexpr int kRowK = D / 32 * KB * 4, kRowV = D / 32 * VB * 4;
  static constexpr int kBytes = kTile * (kRowK + kRowV) + 2 * 2 * kTile;  // [K codes][V codes][K norms][V norms]
  static constexpr int kChunks = kBytes / 16, kRounds = (kChunks + 31) / 32;
  static constexpr int kFree = 44 * 1024 - 32 * D - 1300;  // smem left beside the Q fragments, LUTs, m and l
  static constexpr int kStages = KB == 0 ? 0 : (kFree / (kWarps * kBytes) >= 4 ? 4 : kFree / (kWarps * kBytes) >= 3 ? 3 : 2);
  static constexpr int kRing = kWarps * kStages * kBytes;
};

// Where one lane's 16-byte pieces of every stage come from: piece r of a tile in page-block
// `block` whose first row in its page is row0 is at src[r] + block + row0 * per_row[r], and goes to
// byte 16 (lane + 32 r) of the stage. Fixed for the whole loop (and kept in registers: the
// compiler would otherwise rebuild them every tile), so a tile's copies cost little but the copies.
template <int D, int KB, int VB>
struct StageMap {
  using St = Staging<D, KB, VB>;
  const uint8_t* src[St::kRounds];
  uint32_t per_row[St::kRounds];
  __device__ StageMap(const uint8_t* data, const BlockLayout& L, int lane) {
    constexpr int nk = St::kRowK, nv = St::kRowV;  // 16 rows of kRow bytes = kRow pieces
#pragma unroll
    for (int r = 0; r < St::kRounds; ++r) {
      const int i = min(lane + 32 * r, St::kChunks - 1);  // lanes without a piece r never copy it
      src[r] = data + (i < nk ? L.k_codes + 16 * i
                       : i < nk + nv ? L.v_codes + 16 * (i - nk)
                       : i < nk + nv + 2 ? L.k_norms + 16 * (i - nk - nv)
                                         : L.v_norms + 16 * (i - nk - nv - 2));
      per_row[r] = i < nk ? nk : i < nk + nv ? nv : 2;
      asm volatile("" : "+l"(src[r]), "+r"(per_row[r]));
    }
  }
  __device__ static bool has(int lane, int r) { return (r + 1) * 32 <= St::kChunks || lane + 32 * r < St::kChunks; }
};

// Shared memory of one block.
template <int D, int KB, int VB>
struct Smem {
  uint4 qa[D / 16][32];  // A fragments of the query (per k-tile, per lane): read each tile, not held in registers
  __half lut_k[256], lut_v[256];
  float m[kWarps][kRows], l[kWarps][kRows];
  float qrs[kRows];  // int8 keys: a query row's fixed-point step (its max |q| / kQ16Max)
  union {
    float q[kRows][D];  // the prologue: query rows, rotated and scaled
    alignas(16) uint8_t ring[Staging<D, KB, VB>::kRing > 0 ? Staging<D, KB, VB>::kRing : 16];  // the loop
    float o[kWarps][kRows][D];  // the epilogue: the warps' outputs
  };
};

__device__ __forceinline__ void cp_async16(uint32_t smem, const void* gmem) {  // smem: a shared-window address
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem), "l"(gmem));
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

// Four half2 (8 consecutive coordinates) of octet og of a group of packed codes w (its B words).
template <int B>
__device__ __forceinline__ void decode_octet(const uint32_t (&w)[B], int og, const dev::Lut8& lut, const __half* lut_s,
                                             uint32_t (&h)[4]) {
  if constexpr (B <= 3) {
    dev::lookup8(dev::octet_selector<B>(w, og), lut, h);
  } else {
    uint32_t c[8];
    dev::octet_codes<B>(w, og, c);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = dev::pack_half2(lut_s[c[2 * i]], lut_s[c[2 * i + 1]]);
  }
}

// A thread's value coordinates [g D/8, (g+1) D/8) are kOct octets of one group of 32 codes,
// starting at octet og0 = (g D/64) mod 4. Per token the thread keeps only the words that hold them,
// shifted at load time so that octet j is then at a compile-time shift (no run-time word picks).
// Planes as in docs/format.md: 4-bit words first, then 2-bit, then 1-bit.
template <int D, int VB>
struct ValueWords {
  static_assert(VB >= 2 && VB <= 4, "decode kernels take value widths 2..4");
  static constexpr int kOct = D >= 64 ? D / 64 : 1;
  static constexpr int kW4 = (VB & 4) ? kOct : 0, kW2 = (VB & 2) ? (kOct + 1) / 2 : 0, kW1 = VB & 1;
  static constexpr int kWords = kW4 + kW2 + kW1;
  __device__ static void load(const uint32_t* group, int og0, uint32_t (&x)[kWords]) {
    int i = 0, plane = 0;
    if constexpr ((VB & 4) != 0) {
#pragma unroll
      for (int j = 0; j < kW4; ++j) x[i++] = group[og0 + j];
      plane += 4;
    }
    if constexpr ((VB & 2) != 0) {
      const int sh = kOct == 1 ? 2 * (og0 & 1) : 0;
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

// The bytes one thread needs from a 16-token tile: keys of tokens g and g + 8 (its D/4 coordinates),
// values of tokens 2t, 2t+1, 2t+8, 2t+9 (its D/8 coordinates) and, for TurboQuant, their norms.
// Tokens 2t and 2t+1 (and 2t+8, 2t+9) are the k = token pair of one register of the P V MMA.
template <int D, Kind KIND, int KB, int VB>
struct Tile;
template <int D, int KB, int VB>
struct Tile<D, Kind::kTq, KB, VB> {
  static constexpr int kGroups = D >= 128 ? D / 128 : 1;
  uint32_t k[2][kGroups][KB];  // the groups of packed words holding the thread's key coordinates
  // Key row nn's groups, from the thread's first word w of that row (global or shared memory).
  __device__ void load_key_words(int nn, const uint32_t* w) {
#pragma unroll
    for (int gi = 0; gi < kGroups; ++gi)
#pragma unroll
      for (int i = 0; i < KB; ++i) k[nn][gi][i] = w[gi * KB + i];
  }
  uint32_t v[4][ValueWords<D, VB>::kWords];  // per token, the words of the thread's value coordinates
  uint32_t kn[2], vn[2];       // fp16 norms of tokens (2t, 2t+1) and (2t+8, 2t+9), two to a register
};
template <int D, int KB, int VB>
struct Tile<D, Kind::kF16, KB, VB> {
  uint4 k[2][D / 32];  // D/4 fp16 = D/2 bytes
  uint4 v[4][D / 64];  // D/8 fp16 = D/4 bytes
};
template <int D, int KB, int VB>
struct Tile<D, Kind::kBf16, KB, VB> : Tile<D, Kind::kF16, KB, VB> {};
template <int D, int KB, int VB>
struct Tile<D, Kind::kFp8, KB, VB> {
  uint32_t k[2][D / 16];  // D/4 bytes
  uint32_t v[4][D / 32];  // D/8 bytes
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
      tile.load_key_words(nn, reinterpret_cast<const uint32_t*>(row) + (t * D / 128) * KB);
    } else if constexpr (KIND == Kind::kFp8) {
      const uint32_t* src = reinterpret_cast<const uint32_t*>(row + t * (D / 4));
#pragma unroll
      for (int i = 0; i < D / 16; ++i) tile.k[nn][i] = src[i];
    } else {
      const uint4* src = reinterpret_cast<const uint4*>(row + t * (D / 2));
#pragma unroll
      for (int i = 0; i < D / 32; ++i) tile.k[nn][i] = src[i];
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
      ValueWords<D, VB>::load(reinterpret_cast<const uint32_t*>(row) + (g * D / 256) * VB, (g * D / 64) % 4, tile.v[e]);
      const uint32_t kn = reinterpret_cast<const uint16_t*>(a.block + L.k_norms)[a.row];
      const uint32_t vn = reinterpret_cast<const uint16_t*>(a.block + L.v_norms)[a.row];
      if (e & 1) {
        tile.kn[e >> 1] |= kn << 16;
        tile.vn[e >> 1] |= vn << 16;
      } else {
        tile.kn[e >> 1] = kn;
        tile.vn[e >> 1] = vn;
      }
    } else if constexpr (KIND == Kind::kFp8) {
      const uint32_t* src = reinterpret_cast<const uint32_t*>(row + g * (D / 8));
#pragma unroll
      for (int i = 0; i < D / 32; ++i) tile.v[e][i] = src[i];
    } else {
      const uint4* src = reinterpret_cast<const uint4*>(row + g * (D / 4));
#pragma unroll
      for (int i = 0; i < D / 64; ++i) tile.v[e][i] = src[i];
    }
  }
}

}  // namespace tq::cuda::decode
