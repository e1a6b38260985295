// quantize_store: new K and V rows -> (rotate, quantize, pack) -> their slots of the paged cache.
//
// One warp per (token, KV head, K or V); lane l holds coordinates [l E, (l+1) E) of the padded row,
// E = padded_dim / 32. The arithmetic repeats the CPU reference operation for operation (the same
// float butterflies of the Hadamard transform, the dense product summed in the same order without
// FMA, the same float boundaries; the unit row's division by a multiplication where that is
// provably the same float), so the codes are the reference's bit for bit. The one
// difference: the sums of the norm (squares) and of its correction (nc: c^2, ip: c y) are added
// in double in another order (a tree over the row's lanes), which can move the norm or the stored
// norm by one double ulp and, astronomically rarely, a coordinate across a boundary or a stored
// half across a rounding boundary.
// Trellis-coded rows (kTqTcq) take the same Viterbi search as the CPU's (tcq_codes).
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <type_traits>

#include "device_common.cuh"
#include "launch_common.h"
#include "tq/check.h"
#include "tq/codec/trellis_steps.h"
#include "tq/cuda/kernels.h"
#include "tq/numeric.h"

namespace tq::cuda {
namespace {

constexpr int kWarps = 4;

__device__ __forceinline__ float load_elem(const void* base, DType t, size_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(base)[i];
    case DType::kF16: return __half2float(static_cast<const __half*>(base)[i]);
    default: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  }
}

// Bits that coordinate i (0..31) with `code` contributes to word `wg` of its group: the plane
// layout of format.h (plane_word0, plane_word, plane_bit), with `bits` a compile-time constant
// at every call, so all of it folds into constants and shifts.
__device__ __forceinline__ uint32_t word_bits(uint32_t code, uint32_t i, uint32_t bits, uint32_t wg) {
  if (bits == 8) return plane_word(8, i) == wg ? code << plane_bit(8, i) : 0u;  // codes < 256: no mask
  uint32_t out = 0, word0 = 0;  // the plane's first word in the group, also its first code bit (plane_word0)
  for (uint32_t w = 4; w >= 1; w >>= 1) {  // the planes, widest first (plane_width)
    if (!(bits & w)) continue;
    if (wg == word0 + plane_word(w, i)) out |= ((code >> word0) & ((1u << w) - 1u)) << plane_bit(w, i);
    word0 += w;
  }
  return out;
}

// The bits a lane's E codes put in the W-bit plane whose first code bit is word0 (plane_word0),
// where 8 % E == 0: the lane's coordinates [i0, i0 + E) of their group of 32 (i0 a multiple of E)
// then sit in one word of the plane, i0 / (32 / W), at consecutive nibbles: plane_bit(W, i0 + e)
// = 4 e + plane_bit(W, i0). So the fields are placed by shifts known at compile time and the lane's
// share moved once by the lane's own.
constexpr bool nibble_runs(uint32_t E, uint32_t W) {  // that premise, for every lane's i0
  for (uint32_t i0 = 0; i0 < 32; i0 += E)
    for (uint32_t e = 0; e < E; ++e)
      if (plane_word(W, i0 + e) != plane_word(W, i0) || plane_bit(W, i0 + e) != 4 * e + plane_bit(W, i0)) return false;
  return true;
}
template <int E, int W>
__device__ __forceinline__ uint32_t plane_share(const uint32_t (&codes)[E], uint32_t word0, uint32_t i0) {
  static_assert(8 % E == 0 && W <= 4 && nibble_runs(E, W), "plane_share: a lane's coordinates within one nibble run of one word");
  uint32_t v = 0;
#pragma unroll
  for (int e = 0; e < E; ++e) v |= ((codes[e] >> word0) & ((1u << W) - 1u)) << (4 * e);
  return v << plane_bit(W, i0);
}

// One W-bit plane of a group held by G = 32 / E lanes (8 % E == 0): the plane's W words take
// G / W neighbouring lanes each (the word of lane i0 / E is i0 / (32 / W)), which OR their shares
// by log2(G / W) shuffles; the first of them stores the word where `write`.
template <int E, int W>
__device__ __forceinline__ void pack_plane(const uint32_t (&codes)[E], uint32_t word0, int sub, uint32_t* group_words, bool write) {
  constexpr int G = 32 / E, N = G / W;  // lanes a group, lanes a word
  const uint32_t i0 = uint32_t(sub % G) * E;
  uint32_t v = plane_share<E, W>(codes, word0, i0);
#pragma unroll
  for (int o = 1; o < N; o *= 2) v |= __shfl_xor_sync(0xffffffffu, v, o);
  if (write && sub % N == 0) group_words[word0 + plane_word(W, i0)] = v;
}

// Packs a row's codes into its words (E codes a lane, coordinates [sub E, (sub+1) E) of the row
// its L lanes hold; sub: the lane within them) with the width B known at compile time: the
// planes of widths 4, 2, 1 of B (widest first, as plane_width orders them) by pack_plane where a
// lane's codes sit in one nibble run (8 % E == 0, B < 8). Else, when E divides 32, a group of 32
// coordinates is G = 32 / E neighbouring lanes: each lane builds its share of the group's B
// words, the group ORs them with log2(G) shuffles, and its first lane stores them where `write`.
// (At padded dim 96 a lane's coordinates may straddle two groups: every word is then the OR over
// the warp, a row a warp.) Every lane of the warp calls it.
template <int E, int B, int L>
__device__ __forceinline__ void pack_row(const uint32_t (&codes)[E], int sub, uint32_t* words, bool write) {
  if constexpr (8 % E == 0 && B < 8) {
    static_assert(L % (32 / E) == 0, "pack_row: a group's lanes within the row's");
    uint32_t* group = words + (sub / (32 / E)) * B;
    if constexpr ((B & 4) != 0) pack_plane<E, 4>(codes, 0, sub, group, write);
    if constexpr ((B & 2) != 0) pack_plane<E, 2>(codes, B & 4, sub, group, write);
    if constexpr ((B & 1) != 0) pack_plane<E, 1>(codes, B & 6, sub, group, write);
  } else if constexpr (32 % E == 0) {
    constexpr int G = 32 / E;
    static_assert(L % G == 0, "pack_row: a group's lanes within the row's");
    const int grp = sub / G, i0 = (sub % G) * E;
#pragma unroll
    for (int wg = 0; wg < B; ++wg) {
      uint32_t v = 0;
#pragma unroll
      for (int e = 0; e < E; ++e) v |= word_bits(codes[e], i0 + e, B, wg);
#pragma unroll
      for (int o = 1; o < G; o *= 2) v |= __shfl_xor_sync(0xffffffffu, v, o);
      if (write && sub % G == 0) words[grp * B + wg] = v;
    }
  } else {
    static_assert(L == 32, "pack_row: rows straddling groups take the whole warp");
    for (int grp = 0; grp < E; ++grp)  // E = PD / 32 groups
#pragma unroll
      for (int wg = 0; wg < B; ++wg) {
        uint32_t v = 0;
#pragma unroll
        for (int e = 0; e < E; ++e)
          if ((sub * E + e) / 32 == grp) v |= word_bits(codes[e], (sub * E + e) % 32, B, wg);
        v = __reduce_or_sync(0xffffffffu, v);
        if (write && sub == 0) words[grp * B + wg] = v;
      }
  }
}

// Trellis-coded rows (format.h kTqTcq): the codes of the rotated unit row y (E coordinates a lane)
// by tcq_encode's search, from the same steps (tq/codec/trellis_steps.h: once-rounded arithmetic,
// the same candidates, order and strict comparisons), so the codes are the CPU's bit for bit: each
// lane finds its coordinates' nearest level in each of the four subsets, then lanes 0-3 walk the
// 4-state trellis along the row, lane s from start state s (tail-biting: four searches, in
// parallel), and lane 0 traces back the path of the one whose return to its start costs least.
// cc as the plain path's (nc: sum c^2, ip: sum c y, c the levels).
template <int PD>
__device__ void tcq_codes(const float (&y)[PD / 32], int lane, int warp, const CodecTables& tab, bool want_cc, bool ip,
                          uint32_t (&codes)[PD / 32], double& cc) {
  constexpr int E = PD / 32;
  __shared__ float err[kWarps][PD][4];        // per coordinate and subset: the nearest level's squared error
  __shared__ uint8_t nearest[kWarps][PD][4];  // and its index within the subset
  __shared__ uint8_t back[kWarps][4][PD + 4];  // per start state, the coordinate's back bits (tcq_step; + 4: the 4 searches' rows in 4 banks)
  __shared__ uint8_t code_s[kWarps][PD];      // the path's codes
  const uint32_t bits = tab.bits, L = 2u << bits;
  const float* lev = tab.centroids;  // the union, ascending
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int i = lane * E + e;
    uint32_t u = 0;  // levels below y: std::lower_bound's index
    for (uint32_t m = 0; m < L; ++m) u += lev[m] < y[e] ? 1u : 0u;
    tcq_nearest(y[e], lev, L, u, err[warp][i], nearest[warp][i]);
  }
  __syncwarp();
  float end = INFINITY;  // lane s < 4: the cost of search s's path back in state s
  if (lane < 4) {
    float cost[4];  // (indexed by constants only: a lane-indexed array would live in local memory)
#pragma unroll
    for (int k = 0; k < 4; ++k) cost[k] = k == lane ? 0.0f : INFINITY;
    for (int i = 0; i < PD; ++i) back[warp][lane][i] = uint8_t(tcq_step(cost, err[warp][i]));
#pragma unroll
    for (int k = 0; k < 4; ++k) end = k == lane ? cost[k] : end;
  }
  const float e1 = __shfl_sync(0xffffffffu, end, 1), e2 = __shfl_sync(0xffffffffu, end, 2), e3 = __shfl_sync(0xffffffffu, end, 3);
  __syncwarp();
  if (lane == 0) {
    const uint32_t s = tcq_best_start(end, e1, e2, e3);
    tcq_traceback(PD, s, back[warp][s], nearest[warp], bits, code_s[warp]);
  }
  __syncwarp();
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int i = lane * E + e;
    codes[e] = code_s[warp][i];
    if (want_cc) {
      const uint32_t p1 = uint32_t(code_s[warp][(i + PD - 1) % PD]) >> (bits - 1);  // around the row: tail-biting
      const uint32_t p2 = uint32_t(code_s[warp][(i + PD - 2) % PD]) >> (bits - 1);
      const float cv = lev[tcq_level_index(codes[e], p1, p2, bits)];
      cc += double(cv) * double(ip ? y[e] : cv);
    }
  }
}

// kernels.h's error_flag: 1 a row the cache cannot hold, 2 a slot past its pages.
__device__ __forceinline__ void flag_error(const QuantizeStoreParams& p, int32_t what = 1) {
  if (p.error_flag) atomicExch(p.error_flag, what);
}

// x / d and x % d (both below 2^32 where used): a shift and a mask where d is a power of two, as
// page sizes and KV head counts usually are, else the division's few dozen instructions.
template <typename T>
__device__ __forceinline__ void div_mod(T x, uint32_t d, uint32_t& q, uint32_t& r) {
  if ((d & (d - 1)) == 0) {
    q = uint32_t(x >> (__ffs(int(d)) - 1));
    r = uint32_t(x) & (d - 1);
  } else {
    q = uint32_t(x / d);
    r = uint32_t(x % d);
  }
}

// The number of the 2^SB - 1 ascending boundaries strictly below y (what the search in memory
// finds) by SB comparisons down a tree: each step's boundary is selected among registers by the
// comparisons before it (no indexed load, no comparison per boundary).
template <int SB>
__device__ __forceinline__ uint32_t count_below(const float (&bnd)[(1 << SB) - 1], float y) {
  static_assert(SB == 2 || SB == 3, "count_below: widths 2 and 3");
  if constexpr (SB == 2) {
    const bool c1 = bnd[1] < y;
    const bool c0 = (c1 ? bnd[2] : bnd[0]) < y;
    return (c1 ? 2u : 0u) + (c0 ? 1u : 0u);
  } else {
    const bool c2 = bnd[3] < y;
    const bool c1 = (c2 ? bnd[5] : bnd[1]) < y;
    const bool c0 = (c2 ? (c1 ? bnd[6] : bnd[4]) : (c1 ? bnd[2] : bnd[0])) < y;
    return (c2 ? 4u : 0u) + (c1 ? 2u : 0u) + (c0 ? 1u : 0u);
  }
}

// A lane's E coordinates of a row, [lane E, (lane + 1) E): one vector load where the row is
// whole (head dim = PD) and its start aligned (E of 1, 2, 4 or 8), else one element at a time.
template <int E, typename T>
__device__ __forceinline__ bool load_lane_vector(const void* base, size_t at, float (&x)[E]) {
  if constexpr (E == 1 || E == 2 || E == 4 || E == 8) {
    struct alignas(sizeof(T) * E) Lane {
      T v[E];
    };
    const T* s = static_cast<const T*>(base) + at;
    if (reinterpret_cast<uintptr_t>(s) % sizeof(Lane) != 0) return false;
    const Lane l = *reinterpret_cast<const Lane*>(s);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if constexpr (std::is_same_v<T, __half>) x[e] = __half2float(l.v[e]);
      else if constexpr (std::is_same_v<T, __nv_bfloat16>) x[e] = __bfloat162float(l.v[e]);
      else x[e] = l.v[e];
    }
    return true;
  }
  return false;
}

template <int PD, int E>
__device__ __forceinline__ void load_lane(const QuantizeStoreParams& p, const void* src, size_t src0, int sub, float (&x)[E]) {
  const uint32_t d = p.cache.head_dim;
  const size_t at = src0 + size_t(sub) * E;
  if (d == PD) {
    const bool done = p.dtype == DType::kBf16  ? load_lane_vector<E, __nv_bfloat16>(src, at, x)
                      : p.dtype == DType::kF16 ? load_lane_vector<E, __half>(src, at, x)
                                               : load_lane_vector<E, float>(src, at, x);
    if (done) return;
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const uint32_t col = sub * E + e;
    x[e] = col < d ? load_elem(src, p.dtype, src0 + col) : 0.0f;
  }
}

// Whether any lane of a row (the warp's lanes in `row_lanes`) has `pred`; every lane of the warp calls it.
__device__ __forceinline__ bool row_any(uint32_t row_lanes, bool pred) { return (__ballot_sync(0xffffffffu, pred) & row_lanes) != 0; }

// One row: the (token, head) of K or V that item `item` names, held by L = 32 / ROWS lanes of a
// warp (ROWS = 1: the whole warp; ROWS = 2: lanes [0, 16) row `item`, [16, 32) row `item + 1`,
// which halves what a row pays once: its reductions, square root, reciprocal, slot and
// indices). SB, when not 0, is the row's width known at compile time, for plain TurboQuant rows
// of widths 2 and 3 (k3v2, the default, and k2v2): their boundaries sit in as many registers as
// they have, each coordinate's centroid comes from a lane by one shuffle, and the packing is
// unrolled for them. SB = 0 takes every row (any width, trellis-coded rows, float encodings)
// with the width read at run time and the boundaries searched in memory. (A width-4 instance, its
// 15 boundaries in registers, raised the whole kernel's register count, and so lowered its
// occupancy, at every padded dim.) Both make the same comparisons and sums in the same order: the
// same bytes. Every lane of the warp runs it to the end or returns with the whole warp (the
// shuffles span the warp): a row that is not written (past the tokens, a skipped slot, an error)
// computes beside the other with `write` false. ys: the warp's [ROWS][PD] floats of shared
// memory (the dense rotation's input).
template <int PD, bool TCQ, int SB, int ROWS>
__device__ __forceinline__ void store_row(const QuantizeStoreParams& p, uint32_t item, bool is_v, int warp, int lane, float* ys) {
  constexpr int L = 32 / ROWS, E = PD / L;
  constexpr bool kSmall = SB > 0;
  static_assert(ROWS == 1 || (kSmall && !TCQ), "store_row: two rows a warp for widths 2 and 3 only");
  constexpr int kNb = kSmall ? (1 << SB) - 1 : 1;  // boundaries held in registers (kSmall)
  const int sub = lane % L;                         // the lane within its row
  const uint32_t row_lanes = ROWS == 1 ? 0xffffffffu : 0xffffu << (lane / L * L);
  item += lane / L;
  ys += lane / L * PD;
  const CacheView& c = p.cache;
  uint32_t tok, head;
  div_mod(item, c.kv_heads, tok, head);
  const bool live = tok < p.num_tokens;
  // The loads a warp needs do not depend on each other: the row, the slot, the Hadamard signs and
  // (kSmall) the codebook are all issued before the first is used, which is what a
  // one-token-per-sequence call costs (latency, not work).
  const TensorCode code = is_v ? c.v : c.k;
  const CodecTables tab = is_v ? c.vt : c.kt;  // a copy: the fields read once, not through an index per use
  const size_t src0 = (size_t(tok) * c.kv_heads + head) * c.head_dim;
  float x[E];
  if (live) {
    load_lane<PD, E>(p, is_v ? p.v : p.k, src0, sub, x);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = 0.0f;
  }
  float bnd[kNb], sg[E];
  float lane_cent = 0.0f;  // kSmall: lane i <= kNb of the row holds centroid i, read by a shuffle
  const bool nc = is_tq(code.enc) && tab.norm_correction;  // the centroids matter only for nc and ip
  const bool ip = is_tq(code.enc) && tab.norm_unbiased;
  if constexpr (kSmall) {
#pragma unroll
    for (int i = 0; i < kNb; ++i) bnd[i] = tab.boundaries[i];
    if ((nc || ip) && sub <= kNb) lane_cent = tab.centroids[sub];
  }
  const bool hadamard = is_tq(code.enc) && tab.signs;
  if (!hadamard || !load_lane_vector<E, float>(tab.signs, size_t(head) * PD + size_t(sub) * E, sg)) {
#pragma unroll
    for (int e = 0; e < E; ++e) sg[e] = hadamard ? tab.signs[size_t(head) * PD + sub * E + e] : 1.0f;
  }
  const int64_t slot = live ? p.slot_mapping[tok] : -1;
  bool write = slot >= 0;
  if (slot >= int64_t(c.num_pages) * c.page_size) {
    if (sub == 0) flag_error(p, 2);
    write = false;
  }
  if (!__any_sync(0xffffffffu, write)) return;
  uint32_t page = 0, off = 0;
  if (write) div_mod(uint64_t(slot), c.page_size, page, off);
  uint8_t* block = c.data + (size_t(page) * c.kv_heads + head) * c.layout.bytes;
  const uint32_t row_bytes = is_v ? c.layout.v_row : c.layout.k_row;
  uint8_t* row = block + (is_v ? c.layout.v_codes : c.layout.k_codes) + size_t(off) * row_bytes;
  if constexpr (!kSmall) {
    if (!is_tq(code.enc)) {  // float encodings: store the elements (a row a warp: ROWS is 1 here)
      bool storable = true;  // finite, and fp16 and bf16 caches refuse what they would turn into inf, as the CPU does
#pragma unroll
      for (int e = 0; e < E; ++e)
        storable &= isfinite(x[e]) && (code.enc != Encoding::kFp16 || fabsf(x[e]) <= kF16Max) &&
                    (code.enc != Encoding::kBf16 || (f32_to_bf16(x[e]) & 0x7FFFu) != 0x7F80u);
      if (row_any(row_lanes, !storable) && write) {
        if (sub == 0) flag_error(p);
        write = false;
      }
      if (!write) return;  // (the warp's one row)
      const void* src = is_v ? p.v : p.k;
      for (uint32_t col = lane; col < c.head_dim; col += 32) {
        const float v = load_elem(src, p.dtype, src0 + col);
        switch (code.enc) {
          case Encoding::kFp32: reinterpret_cast<float*>(row)[col] = v; break;
          case Encoding::kFp16: reinterpret_cast<uint16_t*>(row)[col] = f32_to_f16(v); break;
          case Encoding::kBf16: reinterpret_cast<uint16_t*>(row)[col] = f32_to_bf16(v); break;
          default: row[col] = f32_to_e4m3(v / (is_v ? c.v_scale : c.k_scale)); break;
        }
      }
      return;
    }
  }

  double ss = 0;
#pragma unroll
  for (int e = 0; e < E; ++e) ss += double(x[e]) * double(x[e]);
#pragma unroll
  for (int o = L / 2; o >= 1; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  // Not storable: a NaN or infinite coordinate (the sum is then NaN or infinite: squares of floats
  // cannot overflow a double, so this is the rows' finiteness test) or a norm past fp16's.
  const double norm = sqrt(ss);
  if (!(norm <= double(kF16Max)) && write) {
    if (sub == 0) flag_error(p);
    write = false;
  }
  if (!__any_sync(0xffffffffu, write)) return;
  // The unit row float(x / norm), as the CPU divides, by one reciprocal and a multiplication a
  // coordinate (numeric.h's unit_coord_by_inverse: the same floats); a lane with a coordinate
  // the multiplication cannot decide (near a float rounding boundary, about 1 in 2^25) divides.
  float y[E];
  if (norm > 0) {
    const double inv = 1.0 / norm;
    bool decided = true;
#pragma unroll
    for (int e = 0; e < E; ++e) decided &= unit_coord_by_inverse(x[e], inv, y[e]);
    if (!decided) {
#pragma unroll
      for (int e = 0; e < E; ++e) y[e] = float(double(x[e]) / norm);
    }
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) y[e] = 0.0f;
  }

  if (hadamard) {  // Hadamard: signs, then the butterflies of fwht_scalar in the same order
#pragma unroll
    for (int e = 0; e < E; ++e) y[e] *= sg[e];
#pragma unroll
    for (int h = 1; h < E; h *= 2)
#pragma unroll
      for (int i = 0; i < E; ++i)
        if ((i / h) % 2 == 0) {
          const float a = y[i], b = y[i + h];
          y[i] = a + b;
          y[i + h] = a - b;
        }
#pragma unroll
    for (int h = E; h < PD; h *= 2) {
      const int mask = h / E;  // < L: the partner is in the same row
      // upper: x[j+h] = a - b with a the lower element (other), b its own; lower: a + b. One fma
      // either way, exactly the addition: y * (+-1) is exact, so the fma rounds once, as it does.
      const float sign = sub & mask ? -1.0f : 1.0f;
#pragma unroll
      for (int e = 0; e < E; ++e) y[e] = __fmaf_rn(y[e], sign, __shfl_xor_sync(0xffffffffu, y[e], mask));
    }
#pragma unroll
    for (int e = 0; e < E; ++e) y[e] *= c.fwht_scale;
  } else {  // dense: y_i = sum_k R_ik y_k, summed in order without FMA, as Rotation::forward
#pragma unroll
    for (int e = 0; e < E; ++e) ys[sub * E + e] = y[e];
    __syncwarp();
    const float* R = tab.matrix + size_t(head) * PD * PD;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float* r = R + size_t(sub * E + e) * PD;
      float s = 0.0f;
      for (int k = 0; k < PD; ++k) s = __fadd_rn(s, __fmul_rn(r[k], ys[k]));
      y[e] = s;
    }
  }

  // Codes: the number of boundaries strictly below y (Codebook::encode).
  const uint32_t bits = kSmall ? uint32_t(SB) : tab.bits, nb = (1u << bits) - 1u;
  uint32_t codes[E];
  double cc = 0;  // nc: sum of c_i^2; ip: sum of c_i y_i (float products, exact in double, as the CPU sums them)
  bool coded = false;
  if constexpr (TCQ && !kSmall) {
    if (tab.tcq) {  // warp-uniform: a warp writes one row
      tcq_codes<PD>(y, lane, warp, tab, nc || ip, ip, codes, cc);
      coded = true;
    }
  }
#pragma unroll
  for (int e = 0; e < E && !coded; ++e) {
    uint32_t lo = 0;
    if constexpr (kSmall) {  // the same count as the search below, from registers
      lo = count_below<SB>(bnd, y[e]);
    } else {
      uint32_t n = nb;
      while (n > 0) {
        const uint32_t half = n / 2;
        if (tab.boundaries[lo + half] < y[e]) {
          lo += half + 1;
          n -= half + 1;
        } else {
          n = half;
        }
      }
    }
    codes[e] = lo;
  }
  if ((nc || ip) && !coded) {  // (a loop apart from the codes': one branch, not one a coordinate)
#pragma unroll
    for (int e = 0; e < E; ++e) {
      float cv = 0.0f;
      if constexpr (kSmall) {  // from lane codes[e] of the row (the warp is whole here: every return above is the warp's)
        cv = __shfl_sync(0xffffffffu, lane_cent, int(codes[e]), L);
      } else {
        cv = tab.centroids[codes[e]];
      }
      cc += double(cv) * double(ip ? y[e] : cv);
    }
  }
  double stored = norm;
  if (nc || ip) {  // (block-uniform; not `norm > 0`, which is a row's: both rows of a warp shuffle)
#pragma unroll
    for (int o = L / 2; o >= 1; o >>= 1) cc += __shfl_xor_sync(0xffffffffu, cc, o);
  }
  if ((nc || ip) && norm > 0) {
    if (cc > 0) stored = ip ? norm / cc : norm / sqrt(cc);
    if (stored > double(kF16Max) && write) {
      if (sub == 0) flag_error(p);
      write = false;
    }
  }

  // Pack: every word of the row is the OR of its coordinates' bits (pack_row, width as a constant).
  uint32_t* words = reinterpret_cast<uint32_t*>(row);
  if constexpr (kSmall) {
    pack_row<E, SB, L>(codes, sub, words, write);
  } else {
    switch (bits) {
      case 1: pack_row<E, 1, L>(codes, sub, words, write); break;
      case 2: pack_row<E, 2, L>(codes, sub, words, write); break;
      case 3: pack_row<E, 3, L>(codes, sub, words, write); break;
      case 4: pack_row<E, 4, L>(codes, sub, words, write); break;
      case 5: pack_row<E, 5, L>(codes, sub, words, write); break;
      case 6: pack_row<E, 6, L>(codes, sub, words, write); break;
      case 7: pack_row<E, 7, L>(codes, sub, words, write); break;
      default: pack_row<E, 8, L>(codes, sub, words, write); break;
    }
  }
  // (stored is finite and at most kF16Max here, where the hardware's rounding to half is f32_to_f16's)
  if (write && sub == 0)
    reinterpret_cast<uint16_t*>(block + (is_v ? c.layout.v_norms : c.layout.k_norms))[off] = __half_as_ushort(__float2half_rn(float(stored)));
}

// Two rows a warp (store_row's ROWS = 2) where both K and V rows are plain TurboQuant of width 2
// or 3 and a half-warp's coordinates fill whole packing groups (padded dims 32, 64, 128).
constexpr bool halves_fit_dim(uint32_t pd) { return pd == 32 || pd == 64 || pd == 128; }

// Blocks alternate K and V, so a block's rows share one width and codebook. A warp takes the
// items (token, head) ROWS w to ROWS w + ROWS - 1 of its kind (w: the warp's index among its
// kind's), ROWS = 2 when HALVES (both kinds of width 2 or 3, as the launch checked), else 1.
// TCQ: the instance that also writes trellis-coded rows (tcq_codes' shared memory is only its);
// it takes every row through the run-time width (store_row<.., 0, 1>).
template <int PD, bool TCQ, bool HALVES>
__device__ __forceinline__ void store_block(const QuantizeStoreParams& p) {
  constexpr int kRows = HALVES ? 2 : 1;
  __shared__ float ys[kWarps][kRows * PD];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const CacheView& c = p.cache;
  // The decode kernel that usually follows may be scheduled now: it waits for this grid's end
  // before it reads the cache (griddepcontrol, attention_launch.cuh).
  dev::allow_dependents();
  const bool is_v = blockIdx.x & 1;
  const uint32_t item = ((blockIdx.x >> 1) * kWarps + warp) * kRows;  // < 2^32, as the rows are: the launch checked
  if (item >= p.num_tokens * c.kv_heads) return;
  const CodecTables& tab = is_v ? c.vt : c.kt;
  if constexpr (HALVES) {
    static_assert(!TCQ && halves_fit_dim(PD), "quantize_store_kernel_pairs: two rows a warp at padded dims 32, 64, 128");
    if (tab.bits == 2) {
      store_row<PD, false, 2, 2>(p, item, is_v, warp, lane, ys[warp]);
    } else {
      store_row<PD, false, 3, 2>(p, item, is_v, warp, lane, ys[warp]);
    }
  } else {
    const uint32_t small = !TCQ && is_tq((is_v ? c.v : c.k).enc) && !tab.tcq ? tab.bits : 0u;  // block-uniform
    switch (small) {
      case 2: store_row<PD, TCQ, 2, 1>(p, item, is_v, warp, lane, ys[warp]); break;
      case 3: store_row<PD, TCQ, 3, 1>(p, item, is_v, warp, lane, ys[warp]); break;
      default: store_row<PD, TCQ, 0, 1>(p, item, is_v, warp, lane, ys[warp]); break;
    }
  }
}

// The kernels: a row a warp, its registers as ptxas chooses (naming a minimum of 1 block an SM
// let it take 143 at padded dim 64); two rows a warp, held to 8 blocks an SM (64 registers).
template <int PD, bool TCQ>
__global__ void __launch_bounds__(32 * kWarps) quantize_store_kernel(const QuantizeStoreParams p) {
  store_block<PD, TCQ, false>(p);
}
template <int PD>
__global__ void __launch_bounds__(32 * kWarps, 8) quantize_store_kernel_pairs(const QuantizeStoreParams p) {
  store_block<PD, false, true>(p);
}

// Whether both kinds' rows are plain TurboQuant of width 2 or 3 (the HALVES instance's rows).
bool halves_fit(const CacheView& c) {
  const auto small = [](const TensorCode& code, const CodecTables& t) { return is_tq(code.enc) && !t.tcq && (t.bits == 2 || t.bits == 3); };
  return small(c.k, c.kt) && small(c.v, c.vt);
}

}  // namespace

void validate(const QuantizeStoreParams& p) {
  validate_cache(p.cache);
  const CacheView& c = p.cache;
  TQ_CHECK(c.k.enc != Encoding::kTqProd, "quantize_store: prod keys have no GPU kernel yet (use MSE keys, e.g. k3v2)");
  TQ_CHECK(c.k.enc != Encoding::kTqSplit && c.v.enc != Encoding::kTqSplit,
           "quantize_store: fractional widths (the outlier split, e.g. k2.5v2) have no GPU kernel yet; run them on the CPU");
  TQ_CHECK(p.k && p.v && p.slot_mapping, "quantize_store: k, v and slot_mapping must be set");
  TQ_CHECK(p.dtype == DType::kF32 || p.dtype == DType::kF16 || p.dtype == DType::kBf16, "quantize_store: dtype {} unknown (0 = fp32, 1 = "
           "fp16, 2 = bf16)", int(p.dtype));
  const uint32_t pd = padded_dim(c.head_dim);
  TQ_CHECK(pd == 32 || pd == 64 || pd == 96 || pd == 128 || pd == 256,
           "quantize_store: head dim {} (padded {}) has no kernel; supported padded dims: 32, 64, 96, 128, 256", c.head_dim, pd);
}

void quantize_store(const QuantizeStoreParams& p, Stream stream) {
  validate(p);
  if (p.num_tokens == 0) return;
  // A warp one or two (token, KV head) rows (halves: both kinds of width 2 or 3 at padded dims 32,
  // 64, 128), its blocks twice, for K and for V; counted in 64 bits (in 32 a product past 2^32
  // wrapped, and the tokens past the wrap were not stored); the kernel numbers rows in 32 bits and
  // a grid's x holds 2^31 - 1 blocks.
  const uint32_t pd = padded_dim(p.cache.head_dim);
  const bool halves = halves_fit_dim(pd) && halves_fit(p.cache);
  const uint64_t rows = uint64_t(p.num_tokens) * p.cache.kv_heads, per_block = kWarps * (halves ? 2 : 1);
  const uint64_t blocks64 = 2 * ((rows + per_block - 1) / per_block);
  TQ_CHECK(rows + per_block <= uint64_t(UINT32_MAX) && blocks64 <= uint64_t(INT32_MAX),
           "quantize_store: {} tokens x {} KV heads are more rows than one launch takes", p.num_tokens, p.cache.kv_heads);
  const uint32_t blocks = uint32_t(blocks64);
  // A plain launch (not a programmatic dependent): everything before it in the stream has finished
  // when it starts, which quantize_store_and_decode relies on.
  const auto launch = [&](auto tcq) {
    constexpr bool T = decltype(tcq)::value;
    switch (pd) {
      case 32: quantize_store_kernel<32, T><<<blocks, 32 * kWarps, 0, stream>>>(p); break;
      case 96: quantize_store_kernel<96, T><<<blocks, 32 * kWarps, 0, stream>>>(p); break;
      case 64: quantize_store_kernel<64, T><<<blocks, 32 * kWarps, 0, stream>>>(p); break;
      case 128: quantize_store_kernel<128, T><<<blocks, 32 * kWarps, 0, stream>>>(p); break;
      case 256: quantize_store_kernel<256, T><<<blocks, 32 * kWarps, 0, stream>>>(p); break;
    }
  };
  if (halves) {
    switch (pd) {
      case 32: quantize_store_kernel_pairs<32><<<blocks, 32 * kWarps, 0, stream>>>(p); break;
      case 64: quantize_store_kernel_pairs<64><<<blocks, 32 * kWarps, 0, stream>>>(p); break;
      default: quantize_store_kernel_pairs<128><<<blocks, 32 * kWarps, 0, stream>>>(p); break;
    }
  } else if (p.cache.kt.tcq || p.cache.vt.tcq) {
    launch(std::true_type{});
  } else {
    launch(std::false_type{});
  }
  check_launch("quantize_store");
}

}  // namespace tq::cuda
