// AVX2 kernels of the quantized dot products (qdot_avx2.h). Per block: the weight codes are
// unpacked to unsigned bytes, _mm256_maddubs_epi16 multiplies them with the signed activation
// codes and adds pairs (at most 2 * 63 * 127 in magnitude: no int16 saturation for any type here),
// _mm256_madd_epi16 widens to int32 (times the sub-block scales of the K-quants), and one fp32
// multiply-add per block applies d_weight * d_activation. Offsets (q4_0's -8, q5_0's -16, q4_1's and
// q5_1's m, the K-quants' mins, q3_K's -4 and q6_K's -32) go through the activation code sums, also
// in integers. Signed weight codes (q8_0, iq4's levels) go in as |w| against a with w's sign.
#include "qdot_avx2.h"

#include "avx2_common.h"

#include <immintrin.h>

#include <cmath>
#include <cstring>

namespace tq::cpu::detail {
namespace {

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
inline __m256i load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
// 16 bytes of nibble pairs -> 32 codes: byte j's low nibble is element j, its high nibble j + 16.
inline __m256i nibbles16(const uint8_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}
// sum over pairs of u8 x s8 products, widened to 8 int32 lanes.
inline __m256i dot_u8s8(__m256i u, __m256i s) { return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)); }
// The same, each int16 pair sum multiplied by the int16 in `scale` of its lane.
inline __m256i dot_u8s8_scaled(__m256i u, __m256i s, __m256i scale) { return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale); }

// 4 bytes of q5_0's fifth bits -> 32 bytes, byte j 0x10 where bit j is set (the fifth bit of element
// j, in place): byte j gets byte j/8 of the word, OR-ed with a mask clearing bit j%8, so it is 0xFF
// exactly when that bit is set (ggml's bytes_from_bits_32).
inline __m256i fifth_bits(const uint8_t* p) {
  uint32_t x;
  std::memcpy(&x, p, 4);
  const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  const __m256i bytes = _mm256_or_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(int(x)), spread), _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_and_si256(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
}
// Signed codes (|w| <= 127 or w = -128) times signed activation codes, pairs summed to 8 int32
// lanes: |w| * (a with w's sign), as maddubs takes its first operand unsigned.
inline __m256i dot_s8s8(__m256i w, __m256i a) { return dot_u8s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)); }
// 32 nibbles (0..15, one a byte) -> iq4's levels (model::kIq4Levels), in both 128-bit halves.
inline __m256i iq4_levels(__m256i nib) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(model::kIq4Levels));
  return _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nib);
}

}  // namespace

float quantize_block_avx2(const float* x, size_t n, int8_t* q) {
  const __m256 sign = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(INFINITY);
  __m256 amax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  for (size_t i = 0; i < n; i += 8) {
    const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i));
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));  // inf or NaN
    amax = _mm256_max_ps(amax, a);
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  const float am = _mm_cvtss_f32(m);
  if (!_mm256_testz_ps(bad, bad) || am == 0) {
    std::memset(q, 0, n);
    return am == 0 ? 0.0f : NAN;
  }
  const __m256 inv = _mm256_set1_ps(127.0f / am);
  for (size_t i = 0; i < n; i += 8) {
    // x * inv rounded to nearest even (lrintf's rounding), |.| <= 127: packs to bytes unclamped.
    const __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_packs_epi16(w, w));
  }
  return am / 127.0f;
}

namespace {
// The 32-element block types: their bytes, the weight codes as bytes (prep), the integer dot of
// prepared codes with activation codes, the scale and the offset term of a block.
struct BlockQ8_0 {
  static constexpr size_t kBytes = 34;
  static __m256i prep(const uint8_t* b) { return load(b + 2); }
  static __m256i dot(__m256i w, __m256i a) { return dot_s8s8(w, a); }
  static float offset(const uint8_t*, float, const ActQ8x32&) { return 0; }
};
struct BlockQ4_0 {  // x = d * (q - 8)
  static constexpr size_t kBytes = 18;
  static __m256i prep(const uint8_t* b) { return nibbles16(b + 2); }
  static __m256i dot(__m256i w, __m256i a) { return dot_u8s8(w, a); }
  static float offset(const uint8_t*, float d, const ActQ8x32& a) { return d * a.d * float(-8 * a.sum); }
};
struct BlockQ4_1 {  // x = d * q + m
  static constexpr size_t kBytes = 20;
  static __m256i prep(const uint8_t* b) { return nibbles16(b + 4); }
  static __m256i dot(__m256i w, __m256i a) { return dot_u8s8(w, a); }
  static float offset(const uint8_t* b, float, const ActQ8x32& a) { return f16(b + 2) * a.d * float(a.sum); }
};
struct BlockQ5_0 {  // x = d * (q - 16): q's low nibbles at b + 6, fifth bits at b + 2
  static constexpr size_t kBytes = 22;
  static __m256i prep(const uint8_t* b) { return _mm256_or_si256(nibbles16(b + 6), fifth_bits(b + 2)); }
  static __m256i dot(__m256i w, __m256i a) { return dot_u8s8(w, a); }  // codes <= 31: 2 * 31 * 127 fits int16
  static float offset(const uint8_t*, float d, const ActQ8x32& a) { return d * a.d * float(-16 * a.sum); }
};

struct BlockQ5_1 {  // x = d * q + m: q's low nibbles at b + 8, fifth bits at b + 4
  static constexpr size_t kBytes = 24;
  static __m256i prep(const uint8_t* b) { return _mm256_or_si256(nibbles16(b + 8), fifth_bits(b + 4)); }
  static __m256i dot(__m256i w, __m256i a) { return dot_u8s8(w, a); }
  static float offset(const uint8_t* b, float, const ActQ8x32& a) { return f16(b + 2) * a.d * float(a.sum); }
};
struct BlockIQ4_NL {  // x = d * level[q]: the levels looked up 16 bytes at a time
  static constexpr size_t kBytes = 18;
  static __m256i prep(const uint8_t* b) { return iq4_levels(nibbles16(b + 2)); }
  static __m256i dot(__m256i w, __m256i a) { return dot_s8s8(w, a); }
  static float offset(const uint8_t*, float, const ActQ8x32&) { return 0; }
};

// K tokens' activation rows against one weight row. Each token's sums are formed exactly as with
// K = 1 (even blocks in one accumulator, odd in the other, offsets in order), so a product does
// not depend on how many tokens share the pass.
template <class B, int K>
void dot_rows(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) {
  __m256 acc[K][2];
  float off[K];
  for (int j = 0; j < K; ++j) acc[j][0] = acc[j][1] = _mm256_setzero_ps(), off[j] = 0;
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * B::kBytes;
    const __m256i q = B::prep(blk);
    const float d = f16(blk);
    for (int j = 0; j < K; ++j) {
      const ActQ8x32& ab = a[j][b];
      acc[j][b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(B::dot(q, load(ab.q))), _mm256_set1_ps(d * ab.d), acc[j][b & 1]);
      off[j] += B::offset(blk, d, ab);
    }
  }
  for (int j = 0; j < K; ++j) out[j] = hsum(_mm256_add_ps(acc[j][0], acc[j][1])) + off[j];
}
template <class B>
float dot_one(const uint8_t* w, const ActQ8x32* a, size_t nb) {
  float out;
  dot_rows<B, 1>(w, &a, nb, &out);
  return out;
}
}  // namespace

float dot_q8_0_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb) { return dot_one<BlockQ8_0>(w, a, nb); }
float dot_q4_0_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb) { return dot_one<BlockQ4_0>(w, a, nb); }
float dot_q4_1_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb) { return dot_one<BlockQ4_1>(w, a, nb); }
float dot_q5_0_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb) { return dot_one<BlockQ5_0>(w, a, nb); }
void dot4_q8_0_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows<BlockQ8_0, 4>(w, a, nb, out); }
void dot4_q4_0_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows<BlockQ4_0, 4>(w, a, nb, out); }
void dot4_q4_1_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows<BlockQ4_1, 4>(w, a, nb, out); }
void dot4_q5_0_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows<BlockQ5_0, 4>(w, a, nb, out); }
float dot_q5_1_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb) { return dot_one<BlockQ5_1>(w, a, nb); }
float dot_iq4_nl_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb) { return dot_one<BlockIQ4_NL>(w, a, nb); }
void dot4_q5_1_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows<BlockQ5_1, 4>(w, a, nb, out); }
void dot4_iq4_nl_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows<BlockIQ4_NL, 4>(w, a, nb, out); }

namespace {
// q4_K and q5_K share everything but the fifth bit (qh, null for q4_K). K tokens' activation rows
// against one weight row, the codes unpacked once for all of them; each token's sums are formed as
// with K = 1, so a product does not depend on how many tokens share the pass.
template <bool kFive, int K>
void dot_qk_45(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out) {
  constexpr size_t kBytes = kFive ? 176 : 144;
  __m256 acc[K];
  float off[K];
  for (int j = 0; j < K; ++j) acc[j] = _mm256_setzero_ps(), off[j] = 0;
  const __m256i low4 = _mm256_set1_epi8(0x0F), bit = _mm256_set1_epi8(1);
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * kBytes;
    const uint8_t* qs = blk + (kFive ? 48 : 16);
    const __m128i sm = scales_mins_k4(blk + 4);  // bytes [0..8) scales, [8..16) mins
    const __m256i mins = mins_k4_pairs(sm);
    // scale 2g and 2g + 1 in every int16 lane: dword g of the sixteen, its low or its high half
    const __m256i sc = _mm256_cvtepu8_epi16(sm);
    __m256i qh = kFive ? load(blk + 16) : _mm256_setzero_si256();
    __m256i isum[K];
    for (int j = 0; j < K; ++j) isum[j] = _mm256_setzero_si256();
    for (int g = 0; g < 4; ++g) {
      const __m256i raw = load(qs + 32 * g);
      __m256i lo = _mm256_and_si256(raw, low4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
      if constexpr (kFive) {  // bit 2g of qh[l] is the fifth bit of the low half, bit 2g+1 of the high
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(qh, bit), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), bit), 4));
        qh = _mm256_srli_epi16(qh, 2);
      }
      const __m256i pair = _mm256_permutevar8x32_epi32(sc, _mm256_set1_epi32(g));
      const __m256i s_lo = _mm256_shufflelo_epi16(_mm256_shufflehi_epi16(pair, 0x00), 0x00);
      const __m256i s_hi = _mm256_shufflelo_epi16(_mm256_shufflehi_epi16(pair, 0x55), 0x55);
      for (int j = 0; j < K; ++j) {
        isum[j] = _mm256_add_epi32(isum[j], dot_u8s8_scaled(lo, load(a[j][b].q + 64 * g), s_lo));
        isum[j] = _mm256_add_epi32(isum[j], dot_u8s8_scaled(hi, load(a[j][b].q + 64 * g + 32), s_hi));
      }
    }
    const float dw = f16(blk), mw = f16(blk + 2);
    for (int j = 0; j < K; ++j) {
      const ActQ8x256& ab = a[j][b];
      const int msum = sum16(mins, ab.bsums);
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), _mm256_set1_ps(dw * ab.d), acc[j]);
      off[j] -= mw * ab.d * float(msum);
    }
  }
  for (int j = 0; j < K; ++j) out[j] = hsum(acc[j]) + off[j];
}

// q6_K, K tokens as above.
template <int K>
void dot_q6_K_rows(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out) {
  __m256 acc[K];
  for (int j = 0; j < K; ++j) acc[j] = _mm256_setzero_ps();
  const __m256i low4 = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(3);
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * 210;
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
    __m256i isum[K];
    for (int j = 0; j < K; ++j) isum[j] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = load(blk + 64 * h), ql1 = load(blk + 64 * h + 32), qh = load(blk + 128 + 32 * h);
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, two), 4)),
          _mm256_or_si256(_mm256_and_si256(ql1, low4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two), 4)),
      };
      for (int k = 0; k < 4; ++k) {  // elements 128h + 32k + [0, 32): scales sc[8h + 2k] (first 16), sc[8h + 2k + 1]
        const int s = 8 * h + 2 * k;
        const __m256i scale = _mm256_set_m128i(_mm_set1_epi16(sc[s + 1]), _mm_set1_epi16(sc[s]));
        for (int j = 0; j < K; ++j) isum[j] = _mm256_add_epi32(isum[j], dot_u8s8_scaled(q[k], load(a[j][b].q + 128 * h + 32 * k), scale));
      }
    }
    const float dw = f16(blk + 208);
    for (int j = 0; j < K; ++j) {
      int osum = 0;
      for (int i = 0; i < 16; ++i) osum += sc[i] * a[j][b].bsums[i];
      const __m256i sum = _mm256_sub_epi32(isum[j], _mm256_setr_epi32(32 * osum, 0, 0, 0, 0, 0, 0, 0));
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(dw * a[j][b].d), acc[j]);
    }
  }
  for (int j = 0; j < K; ++j) out[j] = hsum(acc[j]);
}

// q2_K and q3_K, K tokens as above. Element 128h + 32j + l is bits 2j..2j+1 of qs[32h + l] (q3_K: plus
// 4 where bit 4h + j of hmask[l] is set, its stored value less 4), in sub-block 8h + 2j + l / 16.
// The codes go to maddubs unsigned (q3_K: q + 4 in 0..7), the 4 comes off through the activation
// sums: q3_K's isum - 4 * sum_s scale_s * bsums_s; q2_K's minimums -dmin * sum_s m_s * bsums_s.
// The sixteen scales stay in a register, each group's pair spread by a vpermd and a vpshufb (two
// broadcasts from scalars and an insert a group cost more: bench/results/2026-12-06-cpu-weight-types.md).
template <bool kThree, int K>
void dot_q23_rows(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out) {
  constexpr size_t kBytes = kThree ? 110 : 84;
  __m256 acc[K];
  float off[K];
  for (int j = 0; j < K; ++j) acc[j] = _mm256_setzero_ps(), off[j] = 0;
  const __m256i two = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
  // int16 scale s to the low 128-bit lane, s + 1 to the high one, from the dword holding both (s even)
  const __m256i spread = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * kBytes;
    const __m256i sc = q23_scales<kThree>(blk), osum_w = q23_offset_weights<kThree>(blk, sc);
    const __m256i hm = kThree ? load(blk) : _mm256_setzero_si256();
    __m256i isum[K];
    for (int j = 0; j < K; ++j) isum[j] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i raw = load(blk + (kThree ? 32 : 16) + 32 * h);
      for (int g = 0; g < 4; ++g) {  // (shifts of 16-bit lanes by <= 7, then a mask within each byte)
        __m256i u = _mm256_and_si256(_mm256_srli_epi16(raw, 2 * g), two);
        if constexpr (kThree) u = _mm256_or_si256(u, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + g), one), 2));
        const int s = 8 * h + 2 * g;
        const __m256i scale = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(sc, _mm256_set1_epi32(s / 2)), spread);
        for (int j = 0; j < K; ++j) isum[j] = _mm256_add_epi32(isum[j], dot_u8s8_scaled(u, load(a[j][b].q + 128 * h + 32 * g), scale));
      }
    }
    const float dw = f16(blk + (kThree ? 108 : 80));
    for (int j = 0; j < K; ++j) {
      const ActQ8x256& ab = a[j][b];
      const int osum = sum16(osum_w, ab.bsums);
      __m256i sum = isum[j];
      if constexpr (kThree) sum = _mm256_sub_epi32(sum, _mm256_setr_epi32(4 * osum, 0, 0, 0, 0, 0, 0, 0));
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(dw * ab.d), acc[j]);
      if constexpr (!kThree) off[j] -= f16(blk + 82) * ab.d * float(osum);
    }
  }
  for (int j = 0; j < K; ++j) out[j] = hsum(acc[j]) + off[j];
}

// iq4_xs, K tokens as above: eight sub-blocks of iq4_nl's nibbles, each with its 6-bit scale.
template <int K>
void dot_iq4_xs_rows(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out) {
  __m256 acc[K];
  for (int j = 0; j < K; ++j) acc[j] = _mm256_setzero_ps();
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * 136;
    __m256i isum[K];
    for (int j = 0; j < K; ++j) isum[j] = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib) {
      const __m256i q = iq4_levels(nibbles16(blk + 8 + 16 * ib));
      const __m256i scale = _mm256_set1_epi16(int16_t(model::ggml_iq4xs_scale(size_t(ib), blk)));
      const __m256i qa = _mm256_sign_epi8(q, q);
      for (int j = 0; j < K; ++j)
        isum[j] = _mm256_add_epi32(isum[j], dot_u8s8_scaled(qa, _mm256_sign_epi8(load(a[j][b].q + 32 * ib), q), scale));
    }
    const float dw = f16(blk);
    for (int j = 0; j < K; ++j) acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), _mm256_set1_ps(dw * a[j][b].d), acc[j]);
  }
  for (int j = 0; j < K; ++j) out[j] = hsum(acc[j]);
}

template <void (*F)(const uint8_t*, const ActQ8x256* const*, size_t, float*)>
float one_k(const uint8_t* w, const ActQ8x256* a, size_t nb) {
  float out;
  F(w, &a, nb, &out);
  return out;
}
}  // namespace

float dot_q4_K_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb) { return one_k<dot_qk_45<false, 1>>(w, a, nb); }
float dot_q5_K_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb) { return one_k<dot_qk_45<true, 1>>(w, a, nb); }
float dot_q6_K_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb) { return one_k<dot_q6_K_rows<1>>(w, a, nb); }
void dot4_q4_K_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out) { dot_qk_45<false, 4>(w, a, nb, out); }
void dot4_q5_K_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out) { dot_qk_45<true, 4>(w, a, nb, out); }
void dot4_q6_K_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out) { dot_q6_K_rows<4>(w, a, nb, out); }
float dot_q2_K_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb) { return one_k<dot_q23_rows<false, 1>>(w, a, nb); }
float dot_q3_K_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb) { return one_k<dot_q23_rows<true, 1>>(w, a, nb); }
float dot_iq4_xs_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb) { return one_k<dot_iq4_xs_rows<1>>(w, a, nb); }
void dot4_q2_K_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out) { dot_q23_rows<false, 4>(w, a, nb, out); }
void dot4_q3_K_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out) { dot_q23_rows<true, 4>(w, a, nb, out); }
void dot4_iq4_xs_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out) { dot_iq4_xs_rows<4>(w, a, nb, out); }

}  // namespace tq::cpu::detail
