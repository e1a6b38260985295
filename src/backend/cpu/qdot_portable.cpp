// The portable quantized dot products (qdot_portable.h): what vec_dot runs without AVX2. Per block
// (or K-quant sub-block) the weight codes are unpacked to bytes and meet the activation codes in an
// int32 sum, a plain loop the compiler vectorizes for the build's target (pmaddwd on x86-64's SSE2,
// sdot/smlal on arm64); one float multiply-add per block applies the scales, as the AVX2 kernels
// do, in place of the reference's per-element scale decode and double sums.
//
// Integer ranges: a 32-code sum is at most 32 * 255 * 127 (q8_0: 32 * 128 * 127); a K-quant block's
// scaled sum at most 8 * 63 * 63 * 32 * 127 (q5_K) or 16 * 128 * 63 * 16 * 127 (q6_K), iq4_xs's
// 8 * 32 * 127 * 32 * 127, all < 2^31.
#include "qdot_portable.h"

#include <cstring>

#include "tq/model/ggml_quants.h"
#include "tq/numeric.h"

namespace tq::cpu::detail {
namespace {

inline float f16(const uint8_t* p) { return f16_to_f32(uint16_t(p[0] | (p[1] << 8))); }

// sum_j w[j] * a[j] over n codes: the loop the compiler vectorizes.
template <class W>
inline int32_t idot(const W* w, const int8_t* a, int n) {
  int32_t s = 0;
  for (int j = 0; j < n; ++j) s += int32_t(w[j]) * int32_t(a[j]);
  return s;
}

// 16 bytes of nibble pairs -> 32 codes: byte j's low nibble is element j, its high nibble j + 16.
inline void nibbles(const uint8_t* p, uint8_t* q) {
  for (int j = 0; j < 16; ++j) q[j] = p[j] & 15, q[j + 16] = p[j] >> 4;
}
// q5_0 / q5_1: the nibbles at qs with their fifth bits from the little-endian word at qh -> 32 codes.
inline void codes5(const uint8_t* qs, const uint8_t* qh, uint8_t* q) {
  const uint32_t h = uint32_t(qh[0]) | uint32_t(qh[1]) << 8 | uint32_t(qh[2]) << 16 | uint32_t(qh[3]) << 24;
  nibbles(qs, q);
  for (int j = 0; j < 32; ++j) q[j] = uint8_t(q[j] | ((h >> j) & 1) << 4);
}
// The same nibbles as iq4's levels.
inline void iq4_levels(const uint8_t* p, int8_t* q) {
  for (int j = 0; j < 16; ++j) q[j] = model::kIq4Levels[p[j] & 15], q[j + 16] = model::kIq4Levels[p[j] >> 4];
}

}  // namespace

float dot_q8x32_portable(model::GgmlType t, const uint8_t* w, const ActQ8x32* a, size_t nb) {
  const size_t bytes = model::ggml_type_info(t).block_bytes;
  float acc = 0;
  for (size_t b = 0; b < nb; ++b, w += bytes, ++a) {
    const float d = f16(w);
    if (t == model::GgmlType::Q8_0) {
      acc += float(idot(reinterpret_cast<const int8_t*>(w + 2), a->q, 32)) * (d * a->d);
    } else if (t == model::GgmlType::Q4_0) {  // x = d * (q - 8)
      uint8_t q[32];
      nibbles(w + 2, q);
      acc += float(idot(q, a->q, 32) - 8 * a->sum) * (d * a->d);
    } else if (t == model::GgmlType::Q5_0) {  // x = d * (q - 16), the 5th bits in a little-endian uint32 at w + 2
      uint8_t q[32];
      codes5(w + 6, w + 2, q);
      acc += float(idot(q, a->q, 32) - 16 * a->sum) * (d * a->d);
    } else if (t == model::GgmlType::Q5_1) {  // x = d * q + m, q in 0..31 (the 5th bits at w + 4)
      uint8_t q[32];
      codes5(w + 8, w + 4, q);
      acc += float(idot(q, a->q, 32)) * (d * a->d);
      acc += float(a->sum) * (f16(w + 2) * a->d);
    } else if (t == model::GgmlType::IQ4_NL) {  // x = d * level[q]
      int8_t q[32];
      iq4_levels(w + 2, q);
      acc += float(idot(q, a->q, 32)) * (d * a->d);
    } else {  // q4_1: x = d * q + m
      uint8_t q[32];
      nibbles(w + 4, q);
      acc += float(idot(q, a->q, 32)) * (d * a->d);
      acc += float(a->sum) * (f16(w + 2) * a->d);
    }
  }
  return acc;
}

float dot_q8x256_portable(model::GgmlType t, const uint8_t* w, const ActQ8x256* a, size_t nb) {
  const size_t bytes = model::ggml_type_info(t).block_bytes;
  float acc = 0;
  for (size_t b = 0; b < nb; ++b, w += bytes, ++a) {
    if (t == model::GgmlType::Q6_K) {  // x = d * sc[i/16] * (q - 32)
      const uint8_t* ql = w;
      const uint8_t* qh = w + 128;
      const int8_t* sc = reinterpret_cast<const int8_t*>(w + 192);
      uint8_t q[256];
      for (int h = 0; h < 2; ++h)
        for (int l = 0; l < 32; ++l) {  // elements 128h + 32k + l, k = 0..3
          const uint8_t lo0 = ql[64 * h + l], lo1 = ql[64 * h + 32 + l], hi = qh[32 * h + l];
          q[128 * h + l] = uint8_t((lo0 & 15) | ((hi & 3) << 4));
          q[128 * h + 32 + l] = uint8_t((lo1 & 15) | (((hi >> 2) & 3) << 4));
          q[128 * h + 64 + l] = uint8_t((lo0 >> 4) | (((hi >> 4) & 3) << 4));
          q[128 * h + 96 + l] = uint8_t((lo1 >> 4) | (((hi >> 6) & 3) << 4));
        }
      int32_t isum = 0, osum = 0;
      for (int s = 0; s < 16; ++s) isum += sc[s] * idot(q + 16 * s, a->q + 16 * s, 16), osum += sc[s] * a->bsums[s];
      acc += float(isum - 32 * osum) * (f16(w + 208) * a->d);
    } else if (t == model::GgmlType::Q2_K || t == model::GgmlType::Q3_K) {
      // Element 128h + 32j + l: bits 2j..2j+1 of qs[32h + l], sub-block of 16 (i / 16). q2_K: x =
      // d*(sc & 15)*q - dmin*(sc >> 4); q3_K: x = d*scale*(q - 4 unless hmask bit 4h + j of byte l).
      const bool three = t == model::GgmlType::Q3_K;
      const uint8_t* qs = w + (three ? 32 : 16);
      int8_t q[256];
      for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 4; ++j)
          for (int l = 0; l < 32; ++l) {
            int v = (qs[32 * h + l] >> (2 * j)) & 3;
            if (three && !((w[l] >> (4 * h + j)) & 1)) v -= 4;
            q[128 * h + 32 * j + l] = int8_t(v);
          }
      int32_t isum = 0, osum = 0;
      for (int s = 0; s < 16; ++s) {
        const int sc = three ? model::ggml_q3k_scale(size_t(s), w + 96) : w[s] & 15;
        isum += sc * idot(q + 16 * s, a->q + 16 * s, 16);
        if (!three) osum += (w[s] >> 4) * a->bsums[s];
      }
      acc += float(isum) * (f16(w + (three ? 108 : 80)) * a->d);
      if (!three) acc -= float(osum) * (f16(w + 82) * a->d);
    } else if (t == model::GgmlType::IQ4_XS) {  // x = d * scale[i / 32] * level[q]
      int8_t q[32];
      int32_t isum = 0;
      for (int ib = 0; ib < 8; ++ib) {
        iq4_levels(w + 8 + 16 * ib, q);
        isum += model::ggml_iq4xs_scale(size_t(ib), w) * idot(q, a->q + 32 * ib, 32);
      }
      acc += float(isum) * (f16(w) * a->d);
    } else {  // q4_K, q5_K: x = d * sc[s] * q - dmin * m[s], s = i / 32
      const bool five = t == model::GgmlType::Q5_K;
      const uint8_t* qh = w + 16;
      const uint8_t* qs = w + (five ? 48 : 16);  // byte l of group g: elements 64g + l, 64g + 32 + l
      uint8_t q[256];
      for (int g = 0; g < 4; ++g)
        for (int l = 0; l < 32; ++l) {
          q[64 * g + l] = uint8_t((qs[32 * g + l] & 15) | (five ? ((qh[l] >> (2 * g)) & 1) << 4 : 0));
          q[64 * g + 32 + l] = uint8_t((qs[32 * g + l] >> 4) | (five ? ((qh[l] >> (2 * g + 1)) & 1) << 4 : 0));
        }
      int32_t isum = 0, osum = 0;
      for (int s = 0; s < 8; ++s) {
        int sc, m;
        model::ggml_scale_min_k4(size_t(s), w + 4, sc, m);
        isum += sc * idot(q + 32 * s, a->q + 32 * s, 32);
        osum += m * (a->bsums[2 * s] + a->bsums[2 * s + 1]);
      }
      acc += float(isum) * (f16(w) * a->d);
      acc -= float(osum) * (f16(w + 2) * a->d);
    }
  }
  return acc;
}

}  // namespace tq::cpu::detail
