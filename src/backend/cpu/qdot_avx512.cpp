// AVX-512 kernels of the quantized dot products (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl; the K-quants
// q2_K to q6_K at the end of the file; qdot_avx512.h). iq4_xs has none: two of its sub-blocks a zmm
// measured slower than the AVX2 kernel on Zen 4 (bench/results/2026-12-06-cpu-weight-types.md).
// This file alone is compiled with the AVX-512 flags and is only called after cpu::has_avx512()
// said yes, so the binary still runs on AVX2-only CPUs. Every result is the AVX2 kernel's bits: the integer
// block sums are exact either way (maddubs cannot saturate for these types; VNNI's vpdpbusd adds
// the same four products per int32 lane), and the float steps are the same, lane for lane.
//
// One token (decode): two blocks per 512-bit register, block b in the low half and b + 1 in the
// high half. The AVX2 kernel keeps even blocks in one 8-lane accumulator and odd ones in another
// and ends with hsum(even + odd); here the low half is the even accumulator and the high half the
// odd one, and the halves are added and summed the same way.
// Four tokens (prompts, verification): the AVX2 kernel's shape with vpdpbusd on ymm registers, only
// where the CPU has VNNI; without it the AVX2 kernel runs. Why these forms and not the others: the
// measurements in bench/results/2026-11-30-cpu-vs-llama-cpp.md (the 512-bit four-token form was
// slower than AVX2 on Zen 4, which splits 512-bit operations in halves).
// GCC 12 warns that `__Y` "may be used uninitialized" inside its own AVX-512 header (the
// _mm512_undefined_* operands of _mm512_inserti64x4 and kin: GCC bug 105593, fixed in GCC 13),
// some 80 times a build of this file; the pragma precedes every include so that it covers them.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "qdot_avx512.h"

#include <immintrin.h>

#include <cstring>

#include "avx2_common.h"
#include "tq/model/ggml_quants.h"

namespace tq::cpu::detail {
namespace {

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
inline __m256i load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m512i pair(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
// AVX-512F only (insertf32x8 would need DQ, which has_avx512() does not ask for).
inline __m512 halves(__m256 lo, __m256 hi) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}
// 16 bytes of nibble pairs -> 32 codes (byte j's low nibble is element j, its high nibble j + 16).
inline __m256i nibbles16(const uint8_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
}

// Sum over each 4 bytes of u8 x s8 products, in 16 int32 lanes.
template <bool kVnni>
inline __m512i dot_u8s8(__m512i u, __m512i s) {
  if constexpr (kVnni) return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s);
  return _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
}

// a with w's sign: there is no 512-bit sign_epi8. (Where w is 0 this keeps a, which sign_epi8
// zeroes; |w| = 0 makes the product 0 either way. Activation codes are never -128.)
inline __m512i signed_like(__m512i a, __m512i w) { return _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(w), _mm512_setzero_si512(), a); }
// Signed codes (q8_0, iq4's levels) times signed activation codes: |w| * (a with w's sign).
template <bool kVnni>
inline __m512i dot_s8s8(__m512i w, __m512i a) {
  return dot_u8s8<kVnni>(_mm512_abs_epi8(w), signed_like(a, w));
}
inline __m256i dot_s8s8_ymm(__m256i w, __m256i a) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
}
// iq4's 16 levels (model::kIq4Levels) in each 128-bit lane, for a byte shuffle by nibble.
inline __m512i iq4_table() { return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(model::kIq4Levels))); }

struct BlockQ8_0 {
  static constexpr size_t kBytes = 34;
  static __m512i prep(const uint8_t* b0, const uint8_t* b1) { return pair(load(b0 + 2), load(b1 + 2)); }
  static __m256i prep1(const uint8_t* b) { return load(b + 2); }
  template <bool kVnni>
  static __m512i dot(__m512i w, __m512i a) {
    return dot_s8s8<kVnni>(w, a);
  }
  static __m256i dot_ymm(__m256i w, __m256i a) { return dot_s8s8_ymm(w, a); }
  static float offset(const uint8_t*, float, const ActQ8x32&) { return 0; }
};
struct BlockQ4_0 {  // x = d * (q - 8)
  static constexpr size_t kBytes = 18;
  static __m512i prep(const uint8_t* b0, const uint8_t* b1) {
    return _mm512_and_si512(pair(nibbles16(b0 + 2), nibbles16(b1 + 2)), _mm512_set1_epi8(0x0F));
  }
  static __m256i prep1(const uint8_t* b) { return _mm256_and_si256(nibbles16(b + 2), _mm256_set1_epi8(0x0F)); }
  template <bool kVnni>
  static __m512i dot(__m512i w, __m512i a) {
    return dot_u8s8<kVnni>(w, a);
  }
  static __m256i dot_ymm(__m256i w, __m256i a) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a); }
  static float offset(const uint8_t*, float d, const ActQ8x32& a) { return d * a.d * float(-8 * a.sum); }
};
struct BlockQ4_1 {  // x = d * q + m
  static constexpr size_t kBytes = 20;
  static __m512i prep(const uint8_t* b0, const uint8_t* b1) {
    return _mm512_and_si512(pair(nibbles16(b0 + 4), nibbles16(b1 + 4)), _mm512_set1_epi8(0x0F));
  }
  static __m256i prep1(const uint8_t* b) { return _mm256_and_si256(nibbles16(b + 4), _mm256_set1_epi8(0x0F)); }
  template <bool kVnni>
  static __m512i dot(__m512i w, __m512i a) {
    return dot_u8s8<kVnni>(w, a);
  }
  static __m256i dot_ymm(__m256i w, __m256i a) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a); }
  static float offset(const uint8_t* b, float, const ActQ8x32& a) { return f16(b + 2) * a.d * float(a.sum); }
};

// q5_0 and q5_1: the low nibbles at b + kQs, the fifth bits (a little-endian uint32) at b + kQh.
template <size_t kQh, size_t kQs>
struct FiveBitCodes {
  static uint32_t bits(const uint8_t* b) {
    uint32_t h;
    std::memcpy(&h, b + kQh, 4);
    return h;
  }
  // Byte j of the codes gets 0x10 where bit j of the mask is set: the fifth bits go straight from
  // the block into a mask register.
  static __m512i prep(const uint8_t* b0, const uint8_t* b1) {
    const __m512i low = _mm512_and_si512(pair(nibbles16(b0 + kQs), nibbles16(b1 + kQs)), _mm512_set1_epi8(0x0F));
    const __mmask64 fifth = _cvtu64_mask64(uint64_t(bits(b0)) | uint64_t(bits(b1)) << 32);
    return _mm512_or_si512(low, _mm512_maskz_mov_epi8(fifth, _mm512_set1_epi8(0x10)));
  }
  static __m256i prep1(const uint8_t* b) {
    const __m256i low = _mm256_and_si256(nibbles16(b + kQs), _mm256_set1_epi8(0x0F));
    return _mm256_or_si256(low, _mm256_maskz_mov_epi8(_cvtu32_mask32(bits(b)), _mm256_set1_epi8(0x10)));
  }
  template <bool kVnni>
  static __m512i dot(__m512i w, __m512i a) {
    return dot_u8s8<kVnni>(w, a);
  }
  static __m256i dot_ymm(__m256i w, __m256i a) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a); }
};
struct BlockQ5_0 : FiveBitCodes<2, 6> {  // x = d * (q - 16)
  static constexpr size_t kBytes = 22;
  static float offset(const uint8_t*, float d, const ActQ8x32& a) { return d * a.d * float(-16 * a.sum); }
};
struct BlockQ5_1 : FiveBitCodes<4, 8> {  // x = d * q + m
  static constexpr size_t kBytes = 24;
  static float offset(const uint8_t* b, float, const ActQ8x32& a) { return f16(b + 2) * a.d * float(a.sum); }
};
struct BlockIQ4_NL {  // x = d * level[q]: the levels looked up by a byte shuffle
  static constexpr size_t kBytes = 18;
  static __m512i prep(const uint8_t* b0, const uint8_t* b1) {
    return _mm512_shuffle_epi8(iq4_table(), _mm512_and_si512(pair(nibbles16(b0 + 2), nibbles16(b1 + 2)), _mm512_set1_epi8(0x0F)));
  }
  static __m256i prep1(const uint8_t* b) {
    return _mm256_shuffle_epi8(_mm512_castsi512_si256(iq4_table()), _mm256_and_si256(nibbles16(b + 2), _mm256_set1_epi8(0x0F)));
  }
  template <bool kVnni>
  static __m512i dot(__m512i w, __m512i a) {
    return dot_s8s8<kVnni>(w, a);
  }
  static __m256i dot_ymm(__m256i w, __m256i a) { return dot_s8s8_ymm(w, a); }
  static float offset(const uint8_t*, float, const ActQ8x32&) { return 0; }
};

// K tokens' activation rows against one weight row, two blocks per step; an odd last block goes
// into the low (even) half alone, the high half kept by the mask.
template <class B, int K, bool kVnni>
void dot_rows(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) {
  __m512 acc[K];
  float off[K];
  for (int j = 0; j < K; ++j) acc[j] = _mm512_setzero_ps(), off[j] = 0;
  size_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const uint8_t* b0 = w + b * B::kBytes;
    const uint8_t* b1 = b0 + B::kBytes;
    const __m512i q = B::prep(b0, b1);
    const float d0 = f16(b0), d1 = f16(b1);
    for (int j = 0; j < K; ++j) {
      const ActQ8x32& a0 = a[j][b];
      const ActQ8x32& a1 = a[j][b + 1];
      const __m512i isum = B::template dot<kVnni>(q, pair(load(a0.q), load(a1.q)));
      const __m512 scale = halves(_mm256_set1_ps(d0 * a0.d), _mm256_set1_ps(d1 * a1.d));
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[j]);
      off[j] += B::offset(b0, d0, a0);
      off[j] += B::offset(b1, d1, a1);
    }
  }
  if (b < nb) {
    const uint8_t* b0 = w + b * B::kBytes;
    const __m512i q = _mm512_castsi256_si512(B::prep1(b0));
    const float d0 = f16(b0);
    for (int j = 0; j < K; ++j) {
      const ActQ8x32& a0 = a[j][b];
      const __m512i isum = B::template dot<kVnni>(q, _mm512_castsi256_si512(load(a0.q)));
      acc[j] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d0 * a0.d), acc[j], 0x00FF);
      off[j] += B::offset(b0, d0, a0);
    }
  }
  for (int j = 0; j < K; ++j) {
    const __m256 even = _mm512_castps512_ps256(acc[j]), odd = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[j]), 1));
    out[j] = hsum(_mm256_add_ps(even, odd)) + off[j];
  }
}

// The AVX2 kernel's shape (one block per 256-bit register, even and odd accumulators) with VNNI's
// vpdpbusd on ymm registers (AVX-512 VL) in place of maddubs + madd.
template <class B, int K>
void dot_rows_ymm(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) {
  __m256 acc[K][2];
  float off[K];
  for (int j = 0; j < K; ++j) acc[j][0] = acc[j][1] = _mm256_setzero_ps(), off[j] = 0;
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * B::kBytes;
    const __m256i q = B::prep1(blk);
    const float d = f16(blk);
    for (int j = 0; j < K; ++j) {
      const ActQ8x32& ab = a[j][b];
      acc[j][b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(B::dot_ymm(q, load(ab.q))), _mm256_set1_ps(d * ab.d), acc[j][b & 1]);
      off[j] += B::offset(blk, d, ab);
    }
  }
  for (int j = 0; j < K; ++j) out[j] = hsum(_mm256_add_ps(acc[j][0], acc[j][1])) + off[j];
}

template <class B>
float dot_one(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni) {
  float out;
  if (vnni)
    dot_rows<B, 1, true>(w, &a, nb, &out);
  else
    dot_rows<B, 1, false>(w, &a, nb, &out);
  return out;
}

}  // namespace

float dot_q8_0_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni) { return dot_one<BlockQ8_0>(w, a, nb, vnni); }
float dot_q4_0_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni) { return dot_one<BlockQ4_0>(w, a, nb, vnni); }
float dot_q4_1_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni) { return dot_one<BlockQ4_1>(w, a, nb, vnni); }
float dot_q5_0_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni) { return dot_one<BlockQ5_0>(w, a, nb, vnni); }
void dot4_q8_0_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows_ymm<BlockQ8_0, 4>(w, a, nb, out); }
void dot4_q4_0_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows_ymm<BlockQ4_0, 4>(w, a, nb, out); }
void dot4_q4_1_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows_ymm<BlockQ4_1, 4>(w, a, nb, out); }
void dot4_q5_0_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows_ymm<BlockQ5_0, 4>(w, a, nb, out); }
float dot_q5_1_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni) { return dot_one<BlockQ5_1>(w, a, nb, vnni); }
float dot_iq4_nl_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni) { return dot_one<BlockIQ4_NL>(w, a, nb, vnni); }
void dot4_q5_1_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows_ymm<BlockQ5_1, 4>(w, a, nb, out); }
void dot4_iq4_nl_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows_ymm<BlockIQ4_NL, 4>(w, a, nb, out); }

// The K-quants (q4_K, q5_K, q6_K), one token: each 64 codes of a 256-element block in one zmm, the
// two 32-code halves the AVX2 kernel handles in two ymm registers side by side (low half: the
// AVX2 kernel's first register, high half: its second). The int32 lanes of the two halves are
// added at the end of the block, which gives the AVX2 kernel's eight block sums exactly (integer
// sums: the order does not matter), and from there the float steps are the AVX2 kernel's. The
// sub-block scales multiply the int16 pair sums as there (madd), or in VNNI's vpdpwssd, which
// adds the same products to the int32 lanes.
namespace {

inline __m256i halves_added(__m512i v) { return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)); }

// acc + the int16 pair sums of u x s (u8 x s8), each times its lane's int16 scale.
template <bool kVnni>
inline __m512i add_scaled(__m512i acc, __m512i u, __m512i s, __m512i scale) {
  const __m512i pairs = _mm512_maddubs_epi16(u, s);
  if constexpr (kVnni) return _mm512_dpwssd_epi32(acc, pairs, scale);
  return _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, scale));
}

// The permutations that spread a block's int16 scales over the int16 lanes of its four zmm of 64
// codes: lane e of zmm j holds codes 64j + 2e and 64j + 2e + 1, so it takes scale (64j + 2e) / per
// for `per` codes per scale (32: q4_K, q5_K; 16: q6_K).
struct ScaleIndex {
  alignas(64) int16_t v[4][32];
};
constexpr ScaleIndex scale_index(int per) {
  ScaleIndex t{};
  for (int j = 0; j < 4; ++j)
    for (int e = 0; e < 32; ++e) t.v[j][e] = int16_t((64 * j + 2 * e) / per);
  return t;
}
constexpr ScaleIndex kScaleIndexK4 = scale_index(32), kScaleIndexQ6 = scale_index(16);
inline __m512i load_index(const ScaleIndex& t, int j) { return _mm512_load_si512(t.v[j]); }

template <bool kFive, bool kVnni>
float dot_qk_45(const uint8_t* w, const ActQ8x256* a, size_t nb) {
  constexpr size_t kBytes = kFive ? 176 : 144;
  const __m512i low4 = _mm512_set1_epi8(0x0F), bit = _mm512_set1_epi8(1);
  const __m512i nibble_shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);  // low half: low nibbles, high half: high nibbles
    __m256 acc = _mm256_setzero_ps();
  float off = 0;
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * kBytes;
    const uint8_t* qs = blk + (kFive ? 48 : 16);
    const __m128i sm = scales_mins_k4(blk + 4);  // bytes [0..8) scales, [8..16) mins
    const int msum = sum16(mins_k4_pairs(sm), a[b].bsums);
    const __m512i scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(sm));
    // q5_K: bit 2g of qh[l] is the fifth bit of group g's low codes, bit 2g + 1 of its high codes:
    // the high half holds qh >> 1, and both halves move on by 2 per group.
    __m512i qh = kFive ? _mm512_srlv_epi64(_mm512_broadcast_i64x4(load(blk + 16)), _mm512_setr_epi64(0, 0, 0, 0, 1, 1, 1, 1))
                       : _mm512_setzero_si512();
    __m512i isum = _mm512_setzero_si512();
    for (int g = 0; g < 4; ++g) {  // codes 64g .. 64g + 64: qs[32g + l] holds 64g + l (low nibble) and 64g + 32 + l (high)
      __m512i q = _mm512_and_si512(_mm512_srlv_epi64(_mm512_broadcast_i64x4(load(qs + 32 * g)), nibble_shift), low4);
      if constexpr (kFive) {
        q = _mm512_or_si512(q, _mm512_slli_epi16(_mm512_and_si512(qh, bit), 4));
        qh = _mm512_srli_epi16(qh, 2);
      }
      isum = add_scaled<kVnni>(isum, q, _mm512_loadu_si512(a[b].q + 64 * g), _mm512_permutexvar_epi16(load_index(kScaleIndexK4, g), scales));
    }
    const float d = f16(blk) * a[b].d;
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(halves_added(isum)), _mm256_set1_ps(d), acc);
    off -= f16(blk + 2) * a[b].d * float(msum);
  }
  return hsum(acc) + off;
}

template <bool kVnni>
float dot_q6_K(const uint8_t* w, const ActQ8x256* a, size_t nb) {
  const __m512i low4 = _mm512_set1_epi8(0x0F), two = _mm512_set1_epi8(3);
  const __m512i qh_shift = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);  // the high half's codes take qh's next two bits
    __m256 acc = _mm256_setzero_ps();
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * 210;
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
    int osum = 0;
    for (int i = 0; i < 16; ++i) osum += sc[i] * a[b].bsums[i];
    const __m512i scales = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc))));
    __m512i isum = _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {  // codes 128h .. 128h + 128
      const __m512i ql = _mm512_loadu_si512(blk + 64 * h);  // the AVX2 kernel's ql0 | ql1
      const __m512i qh = _mm512_srlv_epi64(_mm512_broadcast_i64x4(load(blk + 128 + 32 * h)), qh_shift);
      // codes 128h + [0, 64) (the AVX2 kernel's q[0] | q[1]) and 128h + [64, 128) (q[2] | q[3])
      const __m512i q01 = _mm512_or_si512(_mm512_and_si512(ql, low4), _mm512_slli_epi16(_mm512_and_si512(qh, two), 4));
      const __m512i q23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
                                          _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 4), two), 4));
      isum = add_scaled<kVnni>(isum, q01, _mm512_loadu_si512(a[b].q + 128 * h), _mm512_permutexvar_epi16(load_index(kScaleIndexQ6, 2 * h), scales));
      isum = add_scaled<kVnni>(isum, q23, _mm512_loadu_si512(a[b].q + 128 * h + 64), _mm512_permutexvar_epi16(load_index(kScaleIndexQ6, 2 * h + 1), scales));
    }
    const __m256i sum = _mm256_sub_epi32(halves_added(isum), _mm256_setr_epi32(32 * osum, 0, 0, 0, 0, 0, 0, 0));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(f16(blk + 208) * a[b].d), acc);
  }
  return hsum(acc);
}

// q2_K and q3_K (the AVX2 kernel's dot_q23_rows, whose comment has the layout): each zmm holds the
// AVX2 kernel's groups g = 2gp (low half) and 2gp + 1 (high half) of a 128-code half h, the codes
// being the 2-bit fields at bits 2g (and q3_K's high bit at 4h + g of hmask, plus 4: q in 0..7), so
// its int16 lane e covers codes 64(2h + gp) + 2e, 16 to a scale: q6_K's scale index.
template <bool kThree, bool kVnni>
float dot_q23(const uint8_t* w, const ActQ8x256* a, size_t nb) {
  constexpr size_t kBytes = kThree ? 110 : 84;
  const __m512i two = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
  const __m512i half1 = _mm512_setr_epi64(0, 0, 0, 0, 1, 1, 1, 1), half2 = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
  __m256 acc = _mm256_setzero_ps();
  float off = 0;
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * kBytes;
    const __m256i sc = q23_scales<kThree>(blk);
    const int osum = sum16(q23_offset_weights<kThree>(blk, sc), a[b].bsums);
    const __m512i scales = _mm512_castsi256_si512(sc);
    // the high half one bit (hmask) or field (qs) on, so that immediate shifts serve both halves
    const __m512i hm = kThree ? _mm512_srlv_epi64(_mm512_broadcast_i64x4(load(blk)), half1) : _mm512_setzero_si512();
    __m512i isum = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i raw = _mm512_srlv_epi64(_mm512_broadcast_i64x4(load(blk + (kThree ? 32 : 16) + 32 * h)), half2);
#pragma GCC unroll 2
      for (int gp = 0; gp < 2; ++gp) {  // (64-bit lanes shifted by <= 7, then a mask within each byte)
        __m512i u = _mm512_and_si512(_mm512_srli_epi64(raw, 4 * gp), two);
        if constexpr (kThree) u = _mm512_or_si512(u, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi64(hm, 4 * h + 2 * gp), one), 2));
        isum = add_scaled<kVnni>(isum, u, _mm512_loadu_si512(a[b].q + 128 * h + 64 * gp), _mm512_permutexvar_epi16(load_index(kScaleIndexQ6, 2 * h + gp), scales));
      }
    }
    __m256i sum = halves_added(isum);
    if constexpr (kThree) sum = _mm256_sub_epi32(sum, _mm256_setr_epi32(4 * osum, 0, 0, 0, 0, 0, 0, 0));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(f16(blk + (kThree ? 108 : 80)) * a[b].d), acc);
    if constexpr (!kThree) off -= f16(blk + 82) * a[b].d * float(osum);
  }
  return hsum(acc) + off;
}

}  // namespace

float dot_q4_K_avx512(const uint8_t* w, const ActQ8x256* a, size_t nb, bool vnni) {
  return vnni ? dot_qk_45<false, true>(w, a, nb) : dot_qk_45<false, false>(w, a, nb);
}
float dot_q5_K_avx512(const uint8_t* w, const ActQ8x256* a, size_t nb, bool vnni) {
  return vnni ? dot_qk_45<true, true>(w, a, nb) : dot_qk_45<true, false>(w, a, nb);
}
float dot_q6_K_avx512(const uint8_t* w, const ActQ8x256* a, size_t nb, bool vnni) {
  return vnni ? dot_q6_K<true>(w, a, nb) : dot_q6_K<false>(w, a, nb);
}

float dot_q2_K_avx512(const uint8_t* w, const ActQ8x256* a, size_t nb, bool vnni) {
  return vnni ? dot_q23<false, true>(w, a, nb) : dot_q23<false, false>(w, a, nb);
}
float dot_q3_K_avx512(const uint8_t* w, const ActQ8x256* a, size_t nb, bool vnni) {
  return vnni ? dot_q23<true, true>(w, a, nb) : dot_q23<true, false>(w, a, nb);
}

}  // namespace tq::cpu::detail
