// AVX-512 kernels of the 32-element quantized dot products (q8_0, q4_0, q4_1; qdot_avx512.h). This
// file alone is compiled with the AVX-512 flags and is only called after cpu::has_avx512() said yes,
// so the binary still runs on AVX2-only CPUs. Every result is the AVX2 kernel's bits: the integer
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
#include "qdot_avx512.h"

#include <immintrin.h>

#include <cstring>

#include "avx2_hsum.h"

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

struct BlockQ8_0 {
  static constexpr size_t kBytes = 34;
  static __m512i prep(const uint8_t* b0, const uint8_t* b1) { return pair(load(b0 + 2), load(b1 + 2)); }
  static __m256i prep1(const uint8_t* b) { return load(b + 2); }
  template <bool kVnni>
  static __m512i dot(__m512i w, __m512i a) {  // |w| * (a with w's sign): there is no 512-bit sign_epi8
    const __m512i sa = _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(w), _mm512_setzero_si512(), a);
    return dot_u8s8<kVnni>(_mm512_abs_epi8(w), sa);
  }
  static __m256i dot_ymm(__m256i w, __m256i a) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
  }
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
void dot4_q8_0_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows_ymm<BlockQ8_0, 4>(w, a, nb, out); }
void dot4_q4_0_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows_ymm<BlockQ4_0, 4>(w, a, nb, out); }
void dot4_q4_1_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out) { dot_rows_ymm<BlockQ4_1, 4>(w, a, nb, out); }

}  // namespace tq::cpu::detail
