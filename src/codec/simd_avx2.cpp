// AVX2 + FMA kernels; this file alone is compiled with -mavx2 -mfma and is only called after
// has_avx2() said yes.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "simd.h"
#include "tq/format.h"

namespace tq::simd {

void fwht_avx2(float* x, uint32_t n) {
  // Stages h = 1, 2, 4 inside each 8-float register, then h >= 8 across registers. Every output
  // is the same single add or subtract of the same two inputs as in the scalar loop, so the
  // result is bit-identical.
  if (n < 8) {
    for (uint32_t h = 1; h < n; h *= 2)
      for (uint32_t i = 0; i < n; i += 2 * h)
        for (uint32_t j = i; j < i + h; ++j) {
          const float a = x[j], b = x[j + h];
          x[j] = a + b;
          x[j + h] = a - b;
        }
  } else {
    const __m256 neg1 = _mm256_castsi256_ps(_mm256_setr_epi32(0, INT32_MIN, 0, INT32_MIN, 0, INT32_MIN, 0, INT32_MIN));
    const __m256 neg2 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, INT32_MIN, INT32_MIN, 0, 0, INT32_MIN, INT32_MIN));
    const __m256 neg4 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, 0, 0, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN));
    for (uint32_t i = 0; i < n; i += 8) {
      __m256 v = _mm256_loadu_ps(x + i);
      // h = 1: (a, b) -> (a + b, a - b): lanes swapped pairwise, the odd lanes negated.
      __m256 s = _mm256_permute_ps(v, 0xB1);                         // b a d c ...
      v = _mm256_add_ps(_mm256_xor_ps(v, neg1), s);                  // a+b, b'... see below
      // For odd lanes the above gives (-b) + a = a - b: exact, same rounding as a - b.
      s = _mm256_permute_ps(v, 0x4E);                                // h = 2
      v = _mm256_add_ps(_mm256_xor_ps(v, neg2), s);
      s = _mm256_permute2f128_ps(v, v, 0x01);                        // h = 4
      v = _mm256_add_ps(_mm256_xor_ps(v, neg4), s);
      _mm256_storeu_ps(x + i, v);
    }
    for (uint32_t h = 8; h < n; h *= 2)
      for (uint32_t i = 0; i < n; i += 2 * h)
        for (uint32_t j = i; j < i + h; j += 8) {
          const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
          _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
          _mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
        }
  }
  const float s = float(1.0 / std::sqrt(double(n)));
  const __m256 sv = _mm256_set1_ps(s);
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), sv));
  for (; i < n; ++i) x[i] *= s;
}

namespace {

// Codes of octet `og` (coordinates 8og..8og+7) of one 32-coordinate group, one per 32-bit lane.
inline __m256i octet_codes(const uint32_t* g, uint32_t bits, uint32_t og) {
  if (bits == 8) return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(g + 2 * og)));
  const __m256i k4 = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  __m256i idx = _mm256_setzero_si256();
  uint32_t word0 = 0, shift = 0;
  for (uint32_t w = 4; w >= 1; w >>= 1) {
    if (!(bits & w)) continue;
    const uint32_t word = word0 + og * w / 4, o = og % (4 / w);
    const __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(int(g[word])), _mm256_add_epi32(k4, _mm256_set1_epi32(int(w * o))));
    const __m256i field = _mm256_and_si256(v, _mm256_set1_epi32((1 << w) - 1));
    idx = _mm256_or_si256(idx, _mm256_slli_epi32(field, int(shift)));
    word0 += w;
    shift += w;
  }
  return idx;
}

// Centroids of a row's codes, one octet at a time: a lane permute of one register for <= 3 bits,
// two permutes blended on the top bit for 4, a gather beyond. Every value is a table entry as it is.
class CentroidLookup {
 public:
  CentroidLookup(uint32_t bits, const float* centroids) : bits_(bits), centroids_(centroids) {
    if (bits <= 3) {
      alignas(32) float t[8] = {0};
      for (uint32_t j = 0; j < (1u << bits); ++j) t[j] = centroids[j];
      lo_ = _mm256_load_ps(t);
    } else if (bits == 4) {
      lo_ = _mm256_loadu_ps(centroids);
      hi_ = _mm256_loadu_ps(centroids + 8);
    }
  }
  // Coordinates 8og..8og+7 of the 32-coordinate group whose packed words start at g.
  __m256 operator()(const uint32_t* g, uint32_t og) const { return at(octet_codes(g, bits_, og)); }
  // The entries of 8 indices, one per lane.
  __m256 at(__m256i idx) const {
    if (bits_ <= 3) return _mm256_permutevar8x32_ps(lo_, idx);
    if (bits_ == 4) {
      const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3 -> sign bit
      return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo_, idx), _mm256_permutevar8x32_ps(hi_, idx), sel);
    }
    return _mm256_i32gather_ps(centroids_, idx, 4);
  }

 private:
  uint32_t bits_;
  const float* centroids_;
  __m256 lo_ = _mm256_setzero_ps(), hi_ = _mm256_setzero_ps();
};

inline float hsum(__m256 acc) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
  return _mm_cvtss_f32(s);
}

// A group of 32 codes of 1..4 bits, its four octets at once: lane o holds octet o's codes as
// nibbles (coordinate 8o + k's in nibble k), from one shift and one AND a plane (format.h's
// layout: octet o of a plane of width w is word o w / 4, shifted by w (o mod 4 / w)).
inline __m128i group_codes(const uint32_t* w, uint32_t bits) {
  if (bits == 4) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  __m128i c = _mm_setzero_si128();
  uint32_t word0 = 0, shift = 0;
  for (uint32_t pw = 2; pw >= 1; pw >>= 1) {  // planes of 2 and 1 bits (widths 1..3)
    if (!(bits & pw)) continue;
    const __m128i words = pw == 2 ? _mm_setr_epi32(int(w[word0]), int(w[word0]), int(w[word0 + 1]), int(w[word0 + 1]))
                                  : _mm_set1_epi32(int(w[word0]));
    const __m128i sh = pw == 2 ? _mm_setr_epi32(0, 2, 0, 2) : _mm_setr_epi32(0, 1, 2, 3);
    const __m128i field = _mm_and_si128(_mm_srlv_epi32(words, sh), _mm_set1_epi32(pw == 2 ? 0x33333333 : 0x11111111));
    c = _mm_or_si128(c, _mm_sll_epi32(field, _mm_cvtsi32_si128(int(shift))));
    word0 += pw;
    shift += pw;
  }
  return c;
}

// Lane o of idx (8 nibbles) as 8 lanes.
template <int O>
inline __m256i nibble_lanes(__m128i idx) {
  const __m256i k4 = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(_mm_extract_epi32(idx, O)), k4), _mm256_set1_epi32(0xf));
}

// A group's 32 table entries from its four octets of nibble indices (lane o: octet o), into out.
inline void store_group(const CentroidLookup& lookup, __m128i idx, float* out) {
  _mm256_storeu_ps(out, lookup.at(nibble_lanes<0>(idx)));
  _mm256_storeu_ps(out + 8, lookup.at(nibble_lanes<1>(idx)));
  _mm256_storeu_ps(out + 16, lookup.at(nibble_lanes<2>(idx)));
  _mm256_storeu_ps(out + 24, lookup.at(nibble_lanes<3>(idx)));
}

// The products of q[0..32) with those entries, added in octet order: octets 0 and 2 into even,
// 1 and 3 into odd (dot_decoded_avx2's two accumulators; `odd` may be `even` itself, one accumulator).
inline void fma_group(const CentroidLookup& lookup, __m128i idx, const float* q, __m256& even, __m256& odd) {
  even = _mm256_fmadd_ps(_mm256_loadu_ps(q), lookup.at(nibble_lanes<0>(idx)), even);
  odd = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8), lookup.at(nibble_lanes<1>(idx)), odd);
  even = _mm256_fmadd_ps(_mm256_loadu_ps(q + 16), lookup.at(nibble_lanes<2>(idx)), even);
  odd = _mm256_fmadd_ps(_mm256_loadu_ps(q + 24), lookup.at(nibble_lanes<3>(idx)), odd);
}

}  // namespace

float dot_codes_avx2(const float* q, const uint32_t* codes, uint32_t pd, uint32_t bits, const float* centroids) {
  const CentroidLookup lookup(bits, centroids);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (uint32_t g = 0; g < pd / kGroup; ++g) {
    const uint32_t* w = codes + g * bits;
    // 3 bits and fewer: two accumulators (even octets, odd); 4: one. (Two calls, not one with the
    // accumulator chosen at run time: that kept them in memory, a quarter slower.)
    if (bits <= 3) {
      fma_group(lookup, group_codes(w, bits), q + g * 32, acc0, acc1);
    } else if (bits == 4) {
      fma_group(lookup, group_codes(w, bits), q + g * 32, acc0, acc0);
    } else {
      for (uint32_t og = 0; og < 4; ++og) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * 32 + og * 8), lookup(w, og), acc0);
    }
  }
  return hsum(_mm256_add_ps(acc0, acc1));
}

namespace {

// A group of 2- or 3-bit trellis codes as union indices, its four octets at once (lane o: octet
// o as format.h's tcq_octet_index gives it, coordinate 8o + k's index in nibble k: the formula of
// tcq_index_nibbles, lane-wise). carry: the branch word of the octet before the group (at the
// row's start: tcq_row_carry), replaced by octet 3's. Callers keep to 2 and 3 bits.
inline __m128i tcq_group_indices(const uint32_t* w, uint32_t bits, uint32_t& carry) {
  const __m128i ones = _mm_set1_epi32(0x11111111), one = _mm_set1_epi32(1);
  const __m128i c = group_codes(w, bits);  // branch bit t on top of the subset index j
  const __m128i t = _mm_and_si128(bits == 3 ? _mm_srli_epi32(c, 2) : _mm_srli_epi32(c, 1), ones);
  const __m128i j = _mm_and_si128(c, bits == 3 ? _mm_set1_epi32(0x33333333) : ones);
  // Lane o's carries are octet o - 1's branch bits 28 and 24; lane 0's the group's carry.
  const __m128i prev = _mm_or_si128(_mm_slli_si128(t, 4), _mm_cvtsi32_si128(int(carry)));
  const __m128i last = _mm_and_si128(_mm_srli_epi32(prev, 28), one), before = _mm_and_si128(_mm_srli_epi32(prev, 24), one);
  const __m128i p1 = _mm_or_si128(_mm_slli_epi32(t, 4), last);
  const __m128i p2 = _mm_or_si128(_mm_or_si128(_mm_slli_epi32(t, 8), _mm_slli_epi32(last, 4)), before);
  carry = uint32_t(_mm_extract_epi32(t, 3));
  return _mm_or_si128(_mm_or_si128(p1, _mm_slli_epi32(_mm_xor_si128(p2, t), 1)), _mm_slli_epi32(j, 2));
}

}  // namespace

float tcq_dot_avx2(const float* q, const uint32_t* codes, uint32_t pd, uint32_t bits, const float* levels) {
  // tcq_decode_avx2's levels in dot_decoded_avx2's order (two accumulators: even octets, odd), so
  // the same bits as scoring the decoded row, without storing it.
  const CentroidLookup lookup(bits + 1, levels);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  uint32_t carry = tcq_row_carry(codes, pd / kGroup, bits);  // tail-biting: the row's last branch bits
  for (uint32_t g = 0; g < pd / kGroup; ++g) {
    fma_group(lookup, tcq_group_indices(codes + g * bits, bits, carry), q + g * 32, acc0, acc1);
  }
  return hsum(_mm256_add_ps(acc0, acc1));
}

void tcq_decode_avx2(const uint32_t* codes, uint32_t pd, uint32_t bits, const float* levels, float* out) {
  const CentroidLookup lookup(bits + 1, levels);
  if (bits == 2 || bits == 3) {  // each group's union indices at once (tcq_group_indices), then looked up
    uint32_t carry = tcq_row_carry(codes, pd / kGroup, bits);  // tail-biting: the row's last branch bits
    for (uint32_t g = 0; g < pd / kGroup; ++g) store_group(lookup, tcq_group_indices(codes + g * bits, bits, carry), out + g * 32);
    return;
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), one = _mm256_set1_epi32(1);
  const __m256i low = _mm256_set1_epi32((1 << (bits - 1)) - 1);
  // Expands the low 8 bits of m to lanes 0..7 (bit k -> lane k, 0 or 1).
  const auto lanes_of = [&](uint32_t m) { return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(m)), lane), one); };
  // branch bits of the coordinates before the octet, the newest in bit 0 (at the row's start, its
  // last two: tail-biting)
  const uint32_t* last = codes + (pd / kGroup - 1) * bits;
  uint32_t hist = tcq_last_branch(last, bits, 0) | tcq_last_branch(last, bits, 1) << 1;
  for (uint32_t g = 0; g < pd / kGroup; ++g)
    for (uint32_t og = 0; og < 4; ++og) {
      const __m256i c = octet_codes(codes + g * bits, bits, og);
      const __m256i t = _mm256_srli_epi32(c, int(bits - 1));
      const uint32_t m = uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(t, 31))));  // lane k's branch bit -> bit k
      // Lane k's two previous branch bits: lanes k-1 and k-2, or before the octet from hist.
      const __m256i p1 = lanes_of((m << 1) | (hist & 1u)), p2 = lanes_of((m << 2) | ((hist & 1u) << 1) | ((hist >> 1) & 1u));
      const __m256i idx = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(_mm256_and_si256(c, low), 2), p1),
                                           _mm256_slli_epi32(_mm256_xor_si256(p2, t), 1));
      _mm256_storeu_ps(out + g * 32 + og * 8, lookup.at(idx));
      hist = ((m >> 7) & 1u) | (((m >> 6) & 1u) << 1);
    }
}

void tcq_forward_avx2(const float* y, uint32_t n, const float* levels, uint32_t bits, float (*cost)[4], uint16_t* back,
                      uint8_t (*near)[4]) {
  // tq/codec/trellis_steps.h's tcq_nearest with the four subsets in the lanes of one register, then
  // tcq_step with the four states, for two searches (start states) in the two halves of a 256-bit
  // register: the same operations on the same values, so the same bits.
  const uint32_t L = 2u << bits;  // the union's levels, <= 16
  // The levels padded with +inf, 4 before and after: a candidate outside the union then has error
  // +inf and never wins, as tcq_nearest skips it, and the gathers need no bounds.
  float pad[24];
  std::fill(pad, pad + 24, INFINITY);
  std::copy(levels, levels + L, pad + 4);
  const __m256 lev_lo = _mm256_loadu_ps(pad + 4), lev_hi = _mm256_loadu_ps(pad + 12);
  const __m128i lane = _mm_setr_epi32(0, 1, 2, 3), four = _mm_set1_epi32(4), three = _mm_set1_epi32(3);
  const __m128 inf = _mm_set1_ps(INFINITY);
  const __m256 inf8 = _mm256_set1_ps(INFINITY);
  // State ns is entered from state ns >> 1 ("lo") or (ns >> 1) | 2 ("hi") by branch ns & 1, which
  // draw on subsets {0, 2, 1, 3} and {2, 0, 3, 1} (tcq_subset); tcq_step visits lo first. The
  // permutes act within each half.
  const __m256i from_lo = _mm256_setr_epi32(0, 0, 1, 1, 0, 0, 1, 1), from_hi = _mm256_setr_epi32(2, 2, 3, 3, 2, 2, 3, 3);
  const __m256i sub_lo = _mm256_setr_epi32(0, 2, 1, 3, 0, 2, 1, 3), sub_hi = _mm256_setr_epi32(2, 0, 3, 1, 2, 0, 3, 1);
  const __m128i first_bytes = _mm_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  __m256 c[2] = {_mm256_loadu_ps(cost[0]), _mm256_loadu_ps(cost[2])};  // searches 0, 1 and 2, 3
  for (uint32_t i = 0; i < n; ++i) {
    const __m256 x8 = _mm256_set1_ps(y[i]);
    const __m128 x = _mm256_castps256_ps128(x8);
    // u, the levels below y[i]: lower_bound's index (the +inf padding is never below)
    const uint32_t below = uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(lev_lo, x8, _CMP_LT_OQ))) |
                           uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(lev_hi, x8, _CMP_LT_OQ))) << 8;
    const __m128i u = _mm_set1_epi32(__builtin_popcount(below));
    // lane k: subset k's first index >= u (up) and the one before it in the subset (up - 4)
    const __m128i up = _mm_add_epi32(u, _mm_and_si128(_mm_sub_epi32(_mm_add_epi32(lane, four), _mm_and_si128(u, three)), three));
    const __m128i dn = _mm_sub_epi32(up, four);
    const __m128 d0 = _mm_sub_ps(x, _mm_i32gather_ps(pad + 4, dn, 4)), d1 = _mm_sub_ps(x, _mm_i32gather_ps(pad + 4, up, 4));
    const __m128 e0 = _mm_mul_ps(d0, d0), e1 = _mm_mul_ps(d1, d1);
    const __m128 take0 = _mm_cmplt_ps(e0, inf);
    __m128 err = _mm_blendv_ps(inf, e0, take0);
    __m128i arg = _mm_and_si128(_mm_castps_si128(take0), _mm_srai_epi32(dn, 2));
    const __m128 take1 = _mm_cmplt_ps(e1, err);
    err = _mm_blendv_ps(err, e1, take1);
    arg = _mm_blendv_epi8(arg, _mm_srai_epi32(up, 2), _mm_castps_si128(take1));
    const uint32_t idx = uint32_t(_mm_cvtsi128_si32(_mm_shuffle_epi8(arg, first_bytes)));  // near[i][k] in byte k
    std::memcpy(near[i], &idx, 4);
    // tcq_step, for the four searches
    const __m256 err8 = _mm256_insertf128_ps(_mm256_castps128_ps256(err), err, 1);
    const __m256 e_lo = _mm256_permutevar_ps(err8, sub_lo), e_hi = _mm256_permutevar_ps(err8, sub_hi);
    uint32_t bk = 0;
    for (int h = 0; h < 2; ++h) {
      const __m256 c_lo = _mm256_add_ps(_mm256_permutevar_ps(c[h], from_lo), e_lo);
      const __m256 c_hi = _mm256_add_ps(_mm256_permutevar_ps(c[h], from_hi), e_hi);
      const __m256 lo = _mm256_blendv_ps(inf8, c_lo, _mm256_cmp_ps(c_lo, inf8, _CMP_LT_OQ));
      const __m256 hi_wins = _mm256_cmp_ps(c_hi, lo, _CMP_LT_OQ);
      c[h] = _mm256_blendv_ps(lo, c_hi, hi_wins);
      bk |= uint32_t(_mm256_movemask_ps(hi_wins)) << (8 * h);  // bit ns of each nibble: the older branch bit of the state before
    }
    back[i] = uint16_t(bk);
  }
  _mm256_storeu_ps(cost[0], c[0]);
  _mm256_storeu_ps(cost[2], c[1]);
}

void decode_codes_avx2(const uint32_t* codes, uint32_t pd, uint32_t bits, const float* centroids, float* out) {
  const CentroidLookup lookup(bits, centroids);
  if (bits <= 4) {  // a group's four octets of codes at once (group_codes), then looked up
    for (uint32_t g = 0; g < pd / kGroup; ++g) store_group(lookup, group_codes(codes + g * bits, bits), out + g * 32);
    return;
  }
  for (uint32_t g = 0; g < pd / kGroup; ++g)
    for (uint32_t og = 0; og < 4; ++og) _mm256_storeu_ps(out + g * 32 + og * 8, lookup(codes + g * bits, og));
}

float dot_decoded_avx2(const float* q, const float* v, uint32_t pd, uint32_t bits) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const uint32_t groups = pd / kGroup;
  for (uint32_t g = 0; g < groups; ++g)
    if (bits <= 3) {  // dot_codes_avx2's two accumulators: even octets in acc0, odd in acc1
      for (uint32_t og = 0; og < 4; og += 2) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * 32 + og * 8), _mm256_loadu_ps(v + g * 32 + og * 8), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * 32 + og * 8 + 8), _mm256_loadu_ps(v + g * 32 + og * 8 + 8), acc1);
      }
    } else {
      for (uint32_t og = 0; og < 4; ++og)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * 32 + og * 8), _mm256_loadu_ps(v + g * 32 + og * 8), acc0);
    }
  return hsum(_mm256_add_ps(acc0, acc1));
}

void axpy_avx2(float w, const float* x, float* y, uint32_t n) {
  const __m256 wv = _mm256_set1_ps(w);
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(wv, _mm256_loadu_ps(x + i))));
  for (; i < n; ++i) y[i] += w * x[i];
}

namespace {

// 8 values of a float row at p, converted to fp32 in a register (exact for each encoding).
template <Encoding E>
inline __m256 load8(const uint8_t* p) {
  if constexpr (E == Encoding::kFp32) return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (E == Encoding::kFp16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));  // bf16: the high half of an fp32
}

template <Encoding E>
inline float load1(const uint8_t* p) {
  uint32_t u = 0;
  std::memcpy(&u, p, E == Encoding::kFp32 ? 4 : 2);
  if constexpr (E == Encoding::kFp16) return _cvtsh_ss(uint16_t(u));
  if constexpr (E == Encoding::kBf16) u <<= 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// hsum (above) of each of v[0..7] at once: the same pairs added in the same tree, so lane r is
// hsum(v[r]) bit for bit.
inline __m256 hsum8(const __m256* v) {
  __m256 u[4];  // u[j]: [l0+l4, l1+l5, l2+l6, l3+l7] of v[2j] | the same of v[2j + 1]
  for (int j = 0; j < 4; ++j)
    u[j] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * j], v[2 * j + 1], 0x20), _mm256_permute2f128_ps(v[2 * j], v[2 * j + 1], 0x31));
  __m256 w[2];  // w[k]: [t0, t1] of v[4k], v[4k + 2] | of v[4k + 1], v[4k + 3], t0 = (l0+l4)+(l2+l6), t1 = (l1+l5)+(l3+l7)
  for (int k = 0; k < 2; ++k)
    w[k] = _mm256_add_ps(_mm256_shuffle_ps(u[2 * k], u[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(u[2 * k], u[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 r =
      _mm256_add_ps(_mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));  // r holds v0 v2 v4 v6 v1 v3 v5 v7
}

// GN queries (1..4) against 8 rows (rp[0..7]; the caller repeats a row to fill the 8, keeping the
// first nr results). Each row is converted once per 16 values and meets every query in registers.
template <Encoding E, uint32_t GN>
void dot_rows8(const float* q, size_t q_stride, const uint8_t* const* rp, uint32_t n, float scale, float* out, size_t out_stride,
               uint32_t nr) {
  constexpr size_t es = E == Encoding::kFp32 ? 4 : 2;
  __m256 v[GN][8];
  for (uint32_t r = 0; r < 8; ++r) {
    __m256 a0[GN], a1[GN];
    for (uint32_t g = 0; g < GN; ++g) a0[g] = a1[g] = _mm256_setzero_ps();
    const uint8_t* x = rp[r];
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m256 k0 = load8<E>(x + i * es), k1 = load8<E>(x + (i + 8) * es);
      for (uint32_t g = 0; g < GN; ++g) {
        a0[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * q_stride + i), k0, a0[g]);
        a1[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * q_stride + i + 8), k1, a1[g]);
      }
    }
    if (i < n) {  // n % 16 == 8: dot_f32_avx2 puts the last chunk in acc0
      const __m256 k0 = load8<E>(x + i * es);
      for (uint32_t g = 0; g < GN; ++g) a0[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * q_stride + i), k0, a0[g]);
    }
    for (uint32_t g = 0; g < GN; ++g) v[g][r] = _mm256_add_ps(a0[g], a1[g]);
  }
  const __m256 sv = _mm256_set1_ps(scale);
  for (uint32_t g = 0; g < GN; ++g) {
    const __m256 s = _mm256_mul_ps(hsum8(v[g]), sv);
    if (nr == 8) {
      _mm256_storeu_ps(out + g * out_stride, s);
    } else {
      alignas(32) float t[8];
      _mm256_store_ps(t, s);
      for (uint32_t r = 0; r < nr; ++r) out[g * out_stride + r] = t[r];
    }
  }
}

// GN outputs (1..4) over 8 values at i: accumulators in registers across the rows, each row's 8
// values converted once for all GN.
template <Encoding E, uint32_t GN>
void axpy_rows8(const float* w, size_t w_stride, const uint8_t* x, size_t x_stride, uint32_t rows, float* y, size_t y_stride) {
  __m256 acc[GN];
  for (uint32_t g = 0; g < GN; ++g) acc[g] = _mm256_loadu_ps(y + g * y_stride);
  for (uint32_t r = 0; r < rows; ++r) {
    const __m256 xv = load8<E>(x + r * x_stride);
    for (uint32_t g = 0; g < GN; ++g) acc[g] = _mm256_add_ps(acc[g], _mm256_mul_ps(_mm256_set1_ps(w[g * w_stride + r]), xv));
  }
  for (uint32_t g = 0; g < GN; ++g) _mm256_storeu_ps(y + g * y_stride, acc[g]);
}

template <Encoding E>
void axpy_rows(uint32_t G, const float* w, size_t w_stride, const uint8_t* x, size_t x_stride, uint32_t rows, float* y, size_t y_stride,
               uint32_t n) {
  if (rows == 0) return;  // nothing to add (and x may be null: no pointer arithmetic on it)
  constexpr size_t es = E == Encoding::kFp32 ? 4 : 2;
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (uint32_t g0 = 0; g0 < G; g0 += 4) {
      const float* wg = w + g0 * w_stride;
      float* yg = y + g0 * y_stride + i;
      switch (G - g0) {
        case 1: axpy_rows8<E, 1>(wg, w_stride, x + i * es, x_stride, rows, yg, y_stride); break;
        case 2: axpy_rows8<E, 2>(wg, w_stride, x + i * es, x_stride, rows, yg, y_stride); break;
        case 3: axpy_rows8<E, 3>(wg, w_stride, x + i * es, x_stride, rows, yg, y_stride); break;
        default: axpy_rows8<E, 4>(wg, w_stride, x + i * es, x_stride, rows, yg, y_stride); break;
      }
    }
  }
  for (; i < n; ++i)
    for (uint32_t g = 0; g < G; ++g)
      for (uint32_t r = 0; r < rows; ++r) y[g * y_stride + i] += w[g * w_stride + r] * load1<E>(x + r * x_stride + i * es);
}

template <Encoding E>
void dot_rows(uint32_t G, const float* q, size_t q_stride, const uint8_t* x, size_t x_stride, uint32_t rows, uint32_t n, float scale,
              float* out, size_t out_stride) {
  for (uint32_t r0 = 0; r0 < rows; r0 += 8) {
    const uint32_t nr = std::min(8u, rows - r0);
    const uint8_t* rp[8];
    for (uint32_t r = 0; r < 8; ++r) rp[r] = x + (r0 + std::min(r, nr - 1)) * x_stride;
    for (uint32_t g0 = 0; g0 < G; g0 += 4) {
      const float* qg = q + g0 * q_stride;
      float* og = out + g0 * out_stride + r0;
      switch (G - g0) {
        case 1: dot_rows8<E, 1>(qg, q_stride, rp, n, scale, og, out_stride, nr); break;
        case 2: dot_rows8<E, 2>(qg, q_stride, rp, n, scale, og, out_stride, nr); break;
        case 3: dot_rows8<E, 3>(qg, q_stride, rp, n, scale, og, out_stride, nr); break;
        default: dot_rows8<E, 4>(qg, q_stride, rp, n, scale, og, out_stride, nr); break;
      }
    }
  }
}

}  // namespace

void axpy_rows_avx2(uint32_t G, const float* w, size_t w_stride, const float* x, size_t x_stride, uint32_t rows, float* y, size_t y_stride,
                    uint32_t n) {
  axpy_rows<Encoding::kFp32>(G, w, w_stride, reinterpret_cast<const uint8_t*>(x), x_stride * sizeof(float), rows, y, y_stride, n);
}

void axpy_rows_avx2(uint32_t G, const float* w, size_t w_stride, const uint8_t* x, size_t x_stride, Encoding enc, uint32_t rows, float* y,
                    size_t y_stride, uint32_t n) {
  switch (enc) {
    case Encoding::kFp32: return axpy_rows<Encoding::kFp32>(G, w, w_stride, x, x_stride, rows, y, y_stride, n);
    case Encoding::kFp16: return axpy_rows<Encoding::kFp16>(G, w, w_stride, x, x_stride, rows, y, y_stride, n);
    case Encoding::kBf16: return axpy_rows<Encoding::kBf16>(G, w, w_stride, x, x_stride, rows, y, y_stride, n);
    default: return;
  }
}

void dot_rows_avx2(uint32_t G, const float* q, size_t q_stride, const uint8_t* x, size_t x_stride, Encoding enc, uint32_t rows, uint32_t n,
                   float scale, float* out, size_t out_stride) {
  switch (enc) {
    case Encoding::kFp32: return dot_rows<Encoding::kFp32>(G, q, q_stride, x, x_stride, rows, n, scale, out, out_stride);
    case Encoding::kFp16: return dot_rows<Encoding::kFp16>(G, q, q_stride, x, x_stride, rows, n, scale, out, out_stride);
    case Encoding::kBf16: return dot_rows<Encoding::kBf16>(G, q, q_stride, x, x_stride, rows, n, scale, out, out_stride);
    default: return;
  }
}

void encode_avx2(const float* y, uint32_t n, const float* boundaries, uint32_t bits, uint8_t* codes) {
  const uint32_t nb = (1u << bits) - 1;
  uint32_t i = 0;
  if (bits <= 4) {
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(y + i);
      __m256i cnt = _mm256_setzero_si256();
      for (uint32_t j = 0; j < nb; ++j)  // compare gives -1 where boundary < y: subtract to count
        cnt = _mm256_sub_epi32(cnt, _mm256_castps_si256(_mm256_cmp_ps(_mm256_set1_ps(boundaries[j]), v, _CMP_LT_OQ)));
      alignas(32) int32_t c[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(c), cnt);
      for (int k = 0; k < 8; ++k) codes[i + k] = uint8_t(c[k]);
    }
  }
  for (; i < n; ++i) {
    uint32_t c = 0;
    for (uint32_t j = 0; j < nb; ++j) c += boundaries[j] < y[i];
    codes[i] = uint8_t(c);
  }
}

void load_f16_avx2(const uint8_t* src, uint32_t n, float* out) {
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i))));
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    out[i] = _cvtsh_ss(h);
  }
}

}  // namespace tq::simd
