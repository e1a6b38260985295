// Per-encoding operations of the attention kernels, as small traits (in the spirit of
// llama.cpp's get_vec_dot_KQ<type>): what a cache encoding does to a tile's keys for S = Q K^T
// (KeyOps), and the pieces the decode and prefill kernels share (the octet decode of packed
// codes, the fp8 widening, the norm scalings). The kernels keep the control (tiles, masks,
// online softmax, the accumulators' layout); decode_kernel.cuh's tile step reads
//   load tile -> KeyOps::scores -> KeyOps::scale -> online softmax -> value norms -> O^T += V^T P^T
//
//   keys: TurboQuant 2-3 bits   int8 MMAs (m16n8k32), centroids as int8 fixed point (1/32 z-units)
//         trellis-coded 2-3     the same on their union indices (8 and 16 int8 levels)
//         TurboQuant 4 bits     fp16 MMAs, codes looked up in the shared fp16 table
//         fp16 / bf16 / fp8     fp16 (bf16) MMAs on the stored elements (fp8 widened, exact)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <array>
#include <type_traits>

#include "decode_tiles.cuh"
#include "device_common.cuh"

namespace tq::cuda::decode {

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

// The same for an octet given as 8 selector nibbles of codes < 2^RB (trellis-coded rows' union
// indices, tcq_octet).
template <int RB>
__device__ __forceinline__ void decode_selector(uint32_t sel, const dev::Lut8& lut, const __half* lut_s, uint32_t (&h)[4]) {
  if constexpr (RB <= 3) {
    dev::lookup8(sel, lut, h);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = dev::pack_half2(lut_s[(sel >> (8 * i)) & 0xfu], lut_s[(sel >> (8 * i + 4)) & 0xfu]);
  }
}

// Four e4m3 bytes (a word) as two half2: bytes 0-1 in lo, 2-3 in hi (exact).
__device__ __forceinline__ void e4m3x4_to_half2x2(uint32_t x, uint32_t& lo, uint32_t& hi) {
  lo = dev::e4m3x2_to_half2(uint16_t(x));
  hi = dev::e4m3x2_to_half2(uint16_t(x >> 16));
}

// A-fragment k-tile kt of the query for this lane (built once per block in shared memory, one
// LDS.128 per k-tile: qa[D/16][32] of an m-tile).
template <int D>
__device__ __forceinline__ std::array<uint32_t, 4> query_frag(const uint4 (&qa)[D / 16][32], int kt, int lane) {
  const uint4 v = qa[kt][lane];
  return std::array<uint32_t, 4>{v.x, v.y, v.z, v.w};
}

// ---- Keys: S = Q K^T of a 16-token tile, n-tile nn holding token g + 8 nn, for R m-tiles of
// query rows: each key fragment is decoded once and fed to the R m-tiles' MMAs. scores() gives
// row g of each m-tile its scores for tokens 2t, 2t+1, 2t+8, 2t+9 (this thread's accumulator
// entries), scale() applies what the encoding stores beside the codes (the key norms).

// The thread's key coordinates of k-tile j (j-th octet of its D/4): which group of the tile's key
// words and which octet in it (at D = 64 the quad's threads share a group, two octets each).
template <int D>
struct KeyOctet {
  static constexpr int kGroups = D >= 128 ? D / 128 : 1;
  __device__ __forceinline__ static int group(int j) { return j / 4 % kGroups; }
  __device__ __forceinline__ static int octet(int j, int t) { return D == 64 ? 2 * (t & 1) + j : j % 4; }
};

// KB: a width parameter (widths.h).
template <int D, Kind KIND, int KB, int R = 1, bool kInt8 = KIND == Kind::kTq && int8_keys(KB)>
struct KeyOps;

// Scales x (scores or P V terms of tokens 2t, 2t+1, 2t+8, 2t+9) by those tokens' fp16 norms,
// two to a register: a tile's key norms (TurboQuant; the 1/sqrt(D) of the codebook is in the
// query's scale) or value norms (their 1/sqrt(D) is applied once, at the end).
__device__ __forceinline__ void scale_by_norms(const uint32_t (&norms)[2], float (&x)[4]) {
#pragma unroll
  for (int e2 = 0; e2 < 2; ++e2) {
    const float2 n = __half22float2(*reinterpret_cast<const __half2*>(&norms[e2]));
    x[2 * e2] *= n.x;
    x[2 * e2 + 1] *= n.y;
  }
}

// TurboQuant keys of 2 and 3 bits: int8 tensor cores (m16n8k32 s8). Their centroids are exact
// int8 fixed point (z-units x 32: the format's 1/32 grid, checked by test_codebook), one PRMT
// lookup from one table yields four int8 operands, with no interleaving. The query is int16 fixed
// point per row (step = max|q| / kQ16Max), high bytes in rows 0-7 of A and low bytes in rows 8-15,
// so one MMA gives both parts and S = 2^8 (q_hi . k) + (q_lo . k) is exact in int32. The row's
// step and the table's 1/32 are the kernel's (s_scale): one FFMA with the softmax's max.
// Trellis-coded keys: their union indices (Tile::key_selector), a 16-level union in two 8-byte
// tables (dev::lookup16_s8).
template <int D, int KB, int R>
struct KeyOps<D, Kind::kTq, KB, R, true> {
  static constexpr bool k16 = read_bits(KB) == 4;
  using Lut = std::conditional_t<k16, dev::ByteLut16, dev::ByteLut8>;
  Lut lut;  // the int8 centroids
  // table: built by the kernel from its fp16 centroids
  __device__ __forceinline__ explicit KeyOps(const Lut& table) : lut(table) {}
  template <class TileT>
  __device__ __forceinline__ void scores(const TileT& cur, const uint4 (&qa)[R][D / 16][32], int lane, int t, const __half*,
                                         float (&x)[R][4]) const {
    int acc[R][2][4] = {};  // [m-tile][n-tile]: d[c] = row g (query high bytes), d[c + 2] = row g + 8 (low)
#pragma unroll
    for (int j = 0; j < D / 32; ++j) {  // octet j of the thread's key coordinates = int8 k-tile j
      uint32_t a[R][4];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const auto q = query_frag<D>(qa[r], j, lane);
        a[r][0] = q[0], a[r][1] = q[1], a[r][2] = q[2], a[r][3] = q[3];
      }
#pragma unroll
      for (int nn = 0; nn < 2; ++nn) {
        // (a tile that keeps only the thread's half of its group holds its octet j as octet j)
        const int og = TileT::kHalfGroup ? j : KeyOctet<D>::octet(j, t);
        const uint32_t sel = cur.key_selector(nn, KeyOctet<D>::group(j), og);
        const uint32_t k0 = dev::lookup_s8(lut, sel), k1 = dev::lookup_s8(lut, sel >> 16);
#pragma unroll
        for (int r = 0; r < R; ++r) dev::mma_s8(acc[r][nn], a[r], k0, k1);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int nn = e / 2, c = e % 2;
        x[r][e] = float(acc[r][nn][c] * 256 + acc[r][nn][c + 2]);
      }
  }
  template <class TileT>
  __device__ __forceinline__ static void scale(const TileT& cur, float (&x)[R][4]) {
#pragma unroll
    for (int r = 0; r < R; ++r) scale_by_norms(cur.kn, x[r]);
  }
  // Keys as M (S^T = K Q^T, blocks of at most 4 query rows: decode_kernel.cuh's KM): the tile's
  // 16 tokens are A's rows, and the key operands above are exactly A's fragments (token g's octet
  // halves a0, a2; token g + 8's a1, a3); the query is B, column n = row n / 2's high (n even) or
  // low bytes (qb[j]: this thread's column g, k-tile j). One MMA a k-tile gives thread (g, t) row
  // t's two parts for tokens g and g + 8, S = 2^8 hi + lo: the same integers as scores() (exact).
  template <class TileT>
  __device__ __forceinline__ void scores_km(const TileT& cur, const uint32_t (&qb)[D / 32][2], int t, float (&x)[2]) const {
    static_assert(TileT::kHalfGroup || D != 64, "keys as M at D = 64: tiles of the thread's half group");
    int acc[4] = {};  // (token g: row t's high, low part), (token g + 8: high, low)
#pragma unroll
    for (int j = 0; j < D / 32; ++j) {
      const int og = TileT::kHalfGroup ? j : KeyOctet<D>::octet(j, t);  // as scores()
      uint32_t a[4];
#pragma unroll
      for (int nn = 0; nn < 2; ++nn) {
        const uint32_t sel = cur.key_selector(nn, KeyOctet<D>::group(j), og);
        a[nn] = dev::lookup_s8(lut, sel);
        a[nn + 2] = dev::lookup_s8(lut, sel >> 16);
      }
      dev::mma_s8(acc, a, qb[j][0], qb[j][1]);
    }
    x[0] = float(acc[0] * 256 + acc[1]);
    x[1] = float(acc[2] * 256 + acc[3]);
  }
  // Their key norms: of tokens g and g + 8 (the tile's kng).
  template <class TileT>
  __device__ __forceinline__ static void scale_km(const TileT& cur, float (&x)[2]) {
#pragma unroll
    for (int e = 0; e < 2; ++e) x[e] *= __half2float(__ushort_as_half(uint16_t(cur.kng[e])));
  }
};

// Keys as fp16 (bf16) B operands of m16n8k16 MMAs: TurboQuant 4-bit codes looked up in the
// shared fp16 table, fp8 widened (exact), fp16/bf16 as stored. The query's A fragments hold its
// high and low parts (rows 0-7, 8-15), so S keeps ~22 bits.
template <int D, Kind KIND, int KB, int R>
struct KeyOps<D, KIND, KB, R, false> {
  using Op = dev::Operand<KIND == Kind::kBf16>;
  // TurboQuant: the 8-entry PRMT table, built for every width as the int8 path's is (4-bit codes
  // read the shared table instead; not building it is a separate change, to be measured).
  dev::Lut8 lut{};
  __device__ __forceinline__ explicit KeyOps(const dev::Lut8& table) : lut(table) {}
  // The B fragments of k-tiles 2j (h[0..1]) and 2j + 1 (h[2..3]) of n-tile nn.
  template <class TileT>
  __device__ __forceinline__ void key_frags(const TileT& cur, int nn, int j, int t, const __half* lut_s, uint32_t (&h)[4]) const {
    if constexpr (KIND == Kind::kTq) {
      static_assert(!tcq_width(KB), "trellis-coded keys take the int8 path");
      decode_octet<KB>(cur.k[nn][KeyOctet<D>::group(j)], KeyOctet<D>::octet(j, t), lut, lut_s, h);
    } else if constexpr (KIND == Kind::kFp8) {
      e4m3x4_to_half2x2(cur.k[nn][2 * j], h[0], h[1]);
      e4m3x4_to_half2x2(cur.k[nn][2 * j + 1], h[2], h[3]);
    } else {
      const uint4 x = cur.k[nn][j];
      h[0] = x.x;
      h[1] = x.y;
      h[2] = x.z;
      h[3] = x.w;
    }
  }
  template <class TileT>
  __device__ __forceinline__ void scores(const TileT& cur, const uint4 (&qa)[R][D / 16][32], int lane, int t, const __half* lut_s,
                                         float (&x)[R][4]) const {
    constexpr int KT = D / 16;
    // Two accumulators per n-tile (even and odd k-tiles) halve the chain of dependent MMAs.
    float s[R][2][4] = {}, s2[R][2][4] = {};
#pragma unroll
    for (int j = 0; j < KT / 2; ++j) {  // k-tiles 2j and 2j + 1, both n-tiles
      uint32_t a0[R][4], a1[R][4];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const auto qa0 = query_frag<D>(qa[r], 2 * j, lane), qa1 = query_frag<D>(qa[r], 2 * j + 1, lane);
        a0[r][0] = qa0[0], a0[r][1] = qa0[1], a0[r][2] = qa0[2], a0[r][3] = qa0[3];
        a1[r][0] = qa1[0], a1[r][1] = qa1[1], a1[r][2] = qa1[2], a1[r][3] = qa1[3];
      }
#pragma unroll
      for (int nn = 0; nn < 2; ++nn) {
        uint32_t h[4];
        key_frags(cur, nn, j, t, lut_s, h);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          Op::mma(s[r][nn], a0[r], h[0], h[1]);
          Op::mma(s2[r][nn], a1[r], h[2], h[3]);
        }
      }
    }
    // high + low halves of the query
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        x[r][e] = (s[r][e / 2][e % 2] + s2[r][e / 2][e % 2]) + (s[r][e / 2][e % 2 + 2] + s2[r][e / 2][e % 2 + 2]);
  }
  template <class TileT>
  __device__ __forceinline__ static void scale(const TileT& cur, float (&x)[R][4]) {
    if constexpr (KIND == Kind::kTq) {  // float caches store no norms
#pragma unroll
      for (int r = 0; r < R; ++r) scale_by_norms(cur.kn, x[r]);
    }
  }
};

// ---- Values: the O^T += V^T P^T paths (TurboQuant 2 bits: pairs of tokens from one PRMT; 3
// bits: token-interleaved selectors; 4 bits and float caches: per token, then paired) stay in
// the kernel (decode_kernel.cuh): moved into functions, even inlined ones, they changed the
// kernel's register allocation, which this refactor was not to touch. What the encoding stores
// beside the value codes:


}  // namespace tq::cuda::decode
