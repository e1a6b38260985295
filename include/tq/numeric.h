// Bit-exact conversions between float and the narrow types the cache stores (fp16, bf16, fp8 e4m3),
// round-to-nearest-even, written with integer operations so that the CPU and the GPU agree bit for bit.
#pragma once

#include <cstdint>
#include <cstring>

#include "tq/common.h"

namespace tq {

TQ_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
TQ_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// float -> IEEE binary16, round to nearest even; overflow gives +-inf, NaN stays NaN.
TQ_HD uint16_t f32_to_f16(float f) {
  const uint32_t x = f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: overflow
  if (ax < 0x38800000u) {                                  // subnormal or zero in half
    if (ax < 0x33000000u) return uint16_t(sign);           // < 2^-25 rounds to zero
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14 + (127 - e - 15) ... places the value in units of 2^-24
    const uint32_t half = m >> shift, rem = m & ((1u << shift) - 1u), mid = 1u << (shift - 1);
    const uint32_t r = half + ((rem > mid || (rem == mid && (half & 1u))) ? 1u : 0u);
    return uint16_t(sign | r);
  }
  const uint32_t r = ax - 0x38000000u;  // rebias exponent 127 -> 15
  const uint32_t half = r >> 13, rem = r & 0x1fffu;
  return uint16_t(sign | (half + ((rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ? 1u : 0u)));
}

TQ_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
  if (e != 0) return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
  if (m == 0) return bits_f32(sign);
  // subnormal: m * 2^-24
  const float v = float(m) * 5.9604644775390625e-8f;
  return sign ? -v : v;
}

TQ_HD uint16_t f32_to_bf16(float f) {
  const uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return uint16_t((x + rounding) >> 16);
}
TQ_HD float bf16_to_f32(uint16_t b) { return bits_f32(uint32_t(b) << 16); }

// fp8 e4m3 (OCP "fn" variant: no infinities, max 448, S.1111.111 is NaN). Values beyond +-448
// saturate to +-448, as the usual fp8 KV caches do after their scale.
TQ_HD uint8_t f32_to_e4m3(float f) {
  const uint32_t x = f32_bits(f);
  const uint8_t sign = uint8_t((x >> 24) & 0x80u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return uint8_t(sign | 0x7fu);
  if (ax >= 0x43e00000u) return uint8_t(sign | 0x7eu);  // >= 448 (and inf): saturate
  if (ax < 0x3c800000u) {                               // below 2^-6: subnormal range, units of 2^-9
    const float a = bits_f32(ax) * 512.0f;              // exact scaling by a power of two
    uint32_t q = uint32_t(a);
    const float rem = a - float(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;
    return uint8_t(sign | q);  // q <= 8 = smallest normal, encoded correctly as 0x08
  }
  const uint32_t r = ax - ((127u - 7u) << 23);  // rebias 127 -> 7
  const uint32_t v = r >> 20, rem = r & 0xfffffu;
  uint32_t out = v + ((rem > 0x80000u || (rem == 0x80000u && (v & 1u))) ? 1u : 0u);
  if (out > 0x7eu) out = 0x7eu;
  return uint8_t(sign | out);
}
TQ_HD float e4m3_to_f32(uint8_t b) {
  const uint32_t sign = uint32_t(b & 0x80u) << 24;
  const uint32_t e = (b >> 3) & 0xfu, m = b & 7u;
  if (e == 0xf && m == 7) return bits_f32(0x7fc00000u);
  if (e == 0) {
    const float v = float(m) * 0.001953125f;  // m * 2^-9
    return sign ? -v : v;
  }
  return bits_f32(sign | ((e + 120u) << 23) | (m << 20));
}

// float(x / n) for a float x and a double n > 0 with |x| <= n (a coordinate of the unit row:
// TurboQuant::encode divides in double, then rounds to float), from inv = 1.0 / n by one
// multiplication instead of a division, where that gives the same float; false where it might
// not, and the caller divides. Why it is exact: q = RN(x * RN(1/n)) is within (2u + u^2)|x/n| of
// x/n (u = 2^-53), i.e. within 3 double ulps of the rounded quotient RN(x/n); rounding to float
// gives the same value for both unless a float rounding boundary lies between them, i.e. unless
// q's 29 low significand bits (those rounding to float drops) are within 3 of the midpoint
// pattern 2^28 (checked with 8; where the two straddle a binade's edge those bits are near 0 or
// all ones, far from it), or q is below float's normal range (rounded at a coarser bit).
// tests/codec/test_numeric.cpp checks it against the division on random and near-tie inputs.
TQ_HD bool unit_coord_by_inverse(float x, double inv, float& y) {
  const double q = double(x) * inv;
  y = float(q);
#if defined(__CUDA_ARCH__)
  const uint32_t low = uint32_t(__double2loint(q)) & 0x1FFFFFFFu;
#else
  uint64_t b;
  std::memcpy(&b, &q, 8);
  const uint32_t low = uint32_t(b) & 0x1FFFFFFFu;
#endif
  const bool near_midpoint = low - (0x10000000u - 8u) <= 16u;
  const bool below_normal = x != 0.0f && !(y >= 0x1p-125f || y <= -0x1p-125f);
  return !near_midpoint && !below_normal;
}

inline constexpr float kF16Max = 65504.0f;
inline constexpr float kE4M3Max = 448.0f;

}  // namespace tq
