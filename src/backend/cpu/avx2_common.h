// AVX2-level helpers of the CPU backend's SIMD files, which are compiled with different target
// flags (matmul_avx2.cpp and qdot_avx2.cpp with -mavx2, qdot_avx512.cpp with the AVX-512 flags too).
// Internal linkage (the unnamed namespace): an inline function with external linkage would be one
// symbol for all of them, and the linker could keep the copy compiled for AVX-512 for the AVX2
// files' calls too, which an AVX2-only CPU cannot run wherever the compiler does not inline it.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace tq::cpu::detail {
namespace {

// The horizontal sum of 8 floats: ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)).
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// The sixteen scales of a q3_K block, less their bias (ggml_q3k_scale for all of them), from its 12
// packed bytes q: byte i % 8 holds scale i's low 4 bits (the high nibble for i >= 8), byte 8 + i % 4
// its high 2 at bits 2 (i / 4). In registers: built in a stack array, the 16-byte load of two
// 8-byte stores missed the store forwarding once a block.
inline __m128i q3k_scales(const uint8_t* q) {
  uint32_t hi;
  std::memcpy(&hi, q + 8, 4);
  const __m128i x = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)), low4 = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_unpacklo_epi64(_mm_and_si128(x, low4), _mm_and_si128(_mm_srli_epi16(x, 4), low4));  // byte i: scale i's low 4
  const __m128i h2 = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32(int(hi)), _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));  // its high 2
  return _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(h2, 4)), _mm_set1_epi8(32));
}

// q2_K / q3_K: the sixteen sub-block scales of block blk as int16 (q2_K's 4-bit 0..15; q3_K's less
// their bias, -32..31), and what each sub-block's activation sum is multiplied by for the block's
// offset term (q3_K: its scale, for the codes' -4; q2_K: its 4-bit minimum).
template <bool kThree>
inline __m256i q23_scales(const uint8_t* blk) {
  return _mm256_cvtepi8_epi16(kThree ? q3k_scales(blk + 96) : _mm_and_si128(load128(blk), _mm_set1_epi8(0x0F)));
}
template <bool kThree>
inline __m256i q23_offset_weights(const uint8_t* blk, __m256i scales) {
  return kThree ? scales : _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(load128(blk), 4), _mm_set1_epi8(0x0F)));
}

// The 8 six-bit scales (bytes 0..7) and mins (bytes 8..15) of a q4_K / q5_K block from its 12
// packed bytes q (ggml_scale_min_k4 for all 8 sub-blocks), in a register: scales 0..3 are
// q[0..4) & 63, 4..7 (q[8..12) & 15) | (q[0..4) >> 6) << 4; mins 0..3 q[4..8) & 63, 4..7
// (q[8..12) >> 4) | (q[4..8) >> 6) << 4 (four bytes a dword).
inline __m128i scales_mins_k4(const uint8_t* q) {
  uint32_t u2;
  std::memcpy(&u2, q + 8, 4);
  const __m128i u01 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q));  // dwords q[0..4), q[4..8)
  const __m128i low = _mm_and_si128(u01, _mm_set1_epi8(0x3F));               // scales 0..3, mins 0..3
  const __m128i top = _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(u01, 6), _mm_set1_epi8(0x03)), 4);
  const __m128i nib = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32(int(u2)), _mm_setr_epi32(0, 4, 0, 0)), _mm_set1_epi8(0x0F));
  return _mm_unpacklo_epi32(low, _mm_or_si128(nib, top));  // scales 0..3, 4..7, mins 0..3, 4..7
}
// The mins of scales_mins_k4's register, each twice (sub-block i's 32 elements are two of the
// activations' 16-element sums), as 16 int16: sum16 of it and bsums is the block's min term.
inline __m256i mins_k4_pairs(__m128i sm) {
  const __m128i m = _mm_unpackhi_epi64(sm, sm);  // the mins in bytes 0..7
  return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m));
}

// sum_i v[i] * bsums[i] over 16 int16 lanes (exact in int32).
inline int sum16(__m256i v, const int16_t* bsums) {
  const __m256i p = _mm256_madd_epi16(v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums)));
  __m128i x = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4E));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0xB1));
  return _mm_cvtsi128_si32(x);
}

}  // namespace
}  // namespace tq::cpu::detail
