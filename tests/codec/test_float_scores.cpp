// The float-row kernels of the CPU attention over pages of fp32/fp16/bf16 rows. dot_rows_avx2 (a
// GQA group's scores) against a scalar loop that performs its operations in the order it documents
// (so the bits must agree), and against a double sum within the bound that order gives;
// axpy_rows_avx2 on encoded rows against the same on the rows converted first.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "simd.h"
#include "test_util.h"
#include "tq/cpu_features.h"
#include "tq/numeric.h"

namespace tq {
namespace {

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Stores row x [n] in `enc` at dst and returns the values as stored (what the kernel reads).
std::vector<float> store(Encoding enc, const float* x, uint32_t n, uint8_t* dst) {
  std::vector<float> v(n);
  for (uint32_t i = 0; i < n; ++i) {
    if (enc == Encoding::kFp32) {
      std::memcpy(dst + 4 * i, x + i, 4);
      v[i] = x[i];
    } else {
      const uint16_t h = enc == Encoding::kFp16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
      std::memcpy(dst + 2 * i, &h, 2);
      v[i] = enc == Encoding::kFp16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
  }
  return v;
}

// The documented order, one lane at a time: lane l of acc0 takes the 8-value chunks 0, 2, 4, ...
// (and the last one when n % 16 == 8), of acc1 the chunks 1, 3, ..., each a fused multiply-add;
// then acc0 + acc1 and ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), times scale.
float ordered_dot(const float* q, const float* k, uint32_t n, float scale) {
  float a0[8] = {}, a1[8] = {};
  uint32_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 8; ++l) {
      a0[l] = std::fma(q[i + l], k[i + l], a0[l]);
      a1[l] = std::fma(q[i + 8 + l], k[i + 8 + l], a1[l]);
    }
  if (i < n)
    for (int l = 0; l < 8; ++l) a0[l] = std::fma(q[i + l], k[i + l], a0[l]);
  float s[8];
  for (int l = 0; l < 8; ++l) s[l] = a0[l] + a1[l];
  return (((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]))) * scale;
}

// Rows of every kind the cache can hold: Gaussian, outlier channels, zeros, values near the fp16
// limit, fp16 subnormals, and a row that cancels the query's products exactly.
std::vector<float> hostile_rows(uint32_t rows, uint32_t n, const float* q0, uint64_t seed) {
  std::vector<float> x = test::outlier_rows(rows, n, seed);
  const auto g = test::gaussian(rows, n, seed + 1);
  for (uint32_t r = 0; r < rows; ++r) {
    float* row = &x[size_t(r) * n];
    switch (r % 6) {
      case 0:
        std::copy_n(&g[size_t(r) * n], n, row);
        break;
      case 1:
        break;  // outlier channels
      case 2:
        std::fill_n(row, n, 0.0f);
        break;
      case 3:
        for (uint32_t i = 0; i < n; ++i)
          row[i] = (i % 2 ? -1 : 1) * 60000.0f * std::abs(g[size_t(r) * n + i]) / (1 + std::abs(g[size_t(r) * n + i]));
        break;
      case 4:
        for (uint32_t i = 0; i < n; ++i) row[i] = g[size_t(r) * n + i] * 3e-6f;  // fp16: subnormal
        break;
      case 5:  // k[2j] = 1, k[2j + 1] = -q0[2j] / q0[2j + 1] (clamped): the first query's products cancel in pairs
        for (uint32_t i = 0; i + 1 < n; i += 2) row[i] = 1.0f, row[i + 1] = std::clamp(-q0[i] / q0[i + 1], -1000.0f, 1000.0f);
        break;
    }
  }
  return x;
}

TEST(FloatKeyScores, KernelIsTheOrderedLoopBitForBit) {
  if (!cpu::has_avx2_fma()) GTEST_SKIP() << "no AVX2 on this CPU";
  const float scale = 0.125f * 1.1f;  // not a power of two: the final multiply rounds
  for (Encoding enc : {Encoding::kFp32, Encoding::kFp16, Encoding::kBf16})
    for (uint32_t n : {8u, 16u, 24u, 64u, 80u, 128u})
      for (uint32_t G : {1u, 2u, 3u, 4u, 5u, 8u})
        for (uint32_t rows : {0u, 1u, 7u, 8u, 9u, 23u}) {
          const size_t es = enc == Encoding::kFp32 ? 4 : 2, x_stride = n * es + 6, q_stride = n + 3, out_stride = rows + 5;
          const auto q = test::gaussian(G, q_stride, 100 + n + G, 0.7f);
          const auto x = hostile_rows(rows, n, q.data(), 200 + n + rows);
          std::vector<uint8_t> bytes(rows * x_stride);
          std::vector<std::vector<float>> stored;
          for (uint32_t r = 0; r < rows; ++r) stored.push_back(store(enc, &x[size_t(r) * n], n, &bytes[r * x_stride]));
          std::vector<float> out(G * out_stride, -7.0f);
          simd::dot_rows_avx2(G, q.data(), q_stride, bytes.data(), x_stride, enc, rows, n, scale, out.data(), out_stride);
          for (uint32_t g = 0; g < G; ++g) {
            for (uint32_t r = 0; r < rows; ++r) {
              const float* qg = &q[g * q_stride];
              const float want = ordered_dot(qg, stored[r].data(), n, scale);
              ASSERT_EQ(f32_bits(out[g * out_stride + r]), f32_bits(want))
                  << "enc " << int(enc) << " n " << n << " G " << G << " rows " << rows << " query " << g << " row " << r;
              // Against the exact sum: each product passes through at most m = n / 16 + 1 lane
              // FMAs and 4 adds, then the scale: |error| <= gamma(m + 5) * scale * sum |q k|.
              double exact = 0, mag = 0;
              for (uint32_t i = 0; i < n; ++i) exact += double(qg[i]) * stored[r][i], mag += std::abs(double(qg[i]) * stored[r][i]);
              const double u = std::ldexp(1.0, -24), m = n / 16 + 1 + 5, gamma = m * u / (1 - m * u);
              ASSERT_LE(std::abs(out[g * out_stride + r] - exact * scale), gamma * mag * scale + 1e-45)
                  << "enc " << int(enc) << " n " << n << " G " << G << " row " << r;
            }
            for (uint32_t r = rows; r < out_stride; ++r) ASSERT_EQ(out[g * out_stride + r], -7.0f) << "wrote past the rows";
          }
        }
}

// The value side: axpy_rows_avx2 over rows in their stored encoding gives the bits of the same
// call over the rows converted to fp32 first (itself pinned to the plain loops in test_turboquant).
TEST(FloatValueRows, EncodedRowsGiveTheConvertedRowsBits) {
  if (!cpu::has_avx2_fma()) GTEST_SKIP() << "no AVX2 on this CPU";
  for (Encoding enc : {Encoding::kFp32, Encoding::kFp16, Encoding::kBf16})
    for (uint32_t n : {8u, 64u, 67u})
      for (uint32_t G : {1u, 3u, 4u, 6u})
        for (uint32_t rows : {0u, 1u, 9u, 17u}) {
          const size_t es = enc == Encoding::kFp32 ? 4 : 2, x_stride = n * es + 10, ws = rows + 3, ys = n + 2;
          const auto w = test::gaussian(G, ws, 31), y0 = test::gaussian(G, ys, 32);
          const auto q = test::gaussian(1, n, 33);
          const auto x = hostile_rows(rows, n, q.data(), 34 + n);
          std::vector<uint8_t> bytes(rows * x_stride + 16);
          std::vector<float> converted(size_t(rows) * n);
          for (uint32_t r = 0; r < rows; ++r) {
            const auto v = store(enc, &x[size_t(r) * n], n, &bytes[r * x_stride]);
            std::copy(v.begin(), v.end(), &converted[size_t(r) * n]);
          }
          std::vector<float> y1 = y0, y2 = y0;
          simd::axpy_rows_avx2(G, w.data(), ws, bytes.data(), x_stride, enc, rows, y1.data(), ys, n);
          simd::axpy_rows_avx2(G, w.data(), ws, converted.data(), n, rows, y2.data(), ys, n);
          for (size_t i = 0; i < y1.size(); ++i)
            ASSERT_EQ(f32_bits(y1[i]), f32_bits(y2[i]))
                << "enc " << int(enc) << " n " << n << " G " << G << " rows " << rows << " at " << i;
        }
}

}  // namespace
}  // namespace tq
