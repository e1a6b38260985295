#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"
#include "tq/common.h"
#include "tq/codec/float_rows.h"
#include "tq/codec/quantizer.h"
#include "tq/numeric.h"

namespace tq {
namespace {

struct BaseCase {
  std::string name;
  double tol;             // worst |x - x~| ...
  bool relative_to_value;  // ... relative to |x| (float formats) or to the row's range (integer formats)
};
class Baseline : public ::testing::TestWithParam<BaseCase> {};

TEST_P(Baseline, RoundTripWithinItsStepAndDotMatchesDequantize) {
  const auto& [name, tol, relative_to_value] = GetParam();
  const uint32_t d = 128;
  auto q = make_baseline(name, d, 32, 0.25f);
  EXPECT_EQ(q->name(), name);
  const size_t n = 70;  // two full KIVI groups and a partial one
  const auto x = test::outlier_rows(n, d, 12);
  std::vector<uint8_t> packed(q->bytes(n));
  std::vector<float> out(n * d, NAN);
  q->quantize(x.data(), n, packed.data());
  q->dequantize(packed.data(), n, out.data());
  for (size_t r = 0; r < n; ++r) {
    float lo = x[r * d], hi = x[r * d];
    for (uint32_t i = 0; i < d; ++i) {
      lo = std::min(lo, x[r * d + i]);
      hi = std::max(hi, x[r * d + i]);
    }
    for (uint32_t i = 0; i < d; ++i) {
      ASSERT_TRUE(std::isfinite(out[r * d + i]));
      // per-element error relative to the row's range (or to the value for float formats)
      const double ref = relative_to_value ? std::abs(x[r * d + i]) : double(hi) - lo;
      EXPECT_LE(std::abs(out[r * d + i] - x[r * d + i]), tol * ref) << name << " row " << r << " col " << i;
    }
  }
  const auto y = test::gaussian(1, d, 3);
  std::vector<float> dots(n);
  q->dot(y.data(), packed.data(), n, dots.data());
  for (size_t r = 0; r < n; ++r) {
    double want = 0, mag = 0;
    for (uint32_t i = 0; i < d; ++i) {
      want += double(y[i]) * out[r * d + i];
      mag += std::abs(double(y[i]) * out[r * d + i]);
    }
    EXPECT_NEAR(dots[r], want, 1e-5 * mag + 1e-6) << name << " row " << r;
  }
}

// Tolerances: float formats relative to the value (half an ulp: fp16 2^-11, bf16 2^-8, fp8 2^-4
// plus its subnormal floor); integer formats half a step of the range (plus fp16 rounding of the
// scale and zero point); q4_0 half a step of 2 max|x| / 16. KIVI has its own test below.
INSTANTIATE_TEST_SUITE_P(All, Baseline,
                         ::testing::Values(BaseCase{"fp32", 0.0, true}, BaseCase{"fp16", 0.00049, true}, BaseCase{"bf16", 0.0040, true},
                                           BaseCase{"int8", 0.5 / 255 + 0.002, false}, BaseCase{"int4", 0.5 / 15 + 0.002, false},
                                           BaseCase{"int2", 0.5 / 3 + 0.002, false}, BaseCase{"q4_0", 1.0 / 16 + 0.002, false}),
                         [](const auto& i) { return i.param.name; });

TEST(Baseline, Fp8RelativeErrorAndScale) {
  auto q = make_baseline("fp8", 64, 32, 0.5f);
  const auto x = test::gaussian(10, 64, 2, 8.0f);
  std::vector<uint8_t> p(q->bytes(10));
  std::vector<float> out(640);
  q->quantize(x.data(), 10, p.data());
  q->dequantize(p.data(), 10, out.data());
  for (size_t i = 0; i < x.size(); ++i)  // e4m3: 3 mantissa bits -> 2^-4 relative; subnormal step 2^-9 * scale
    EXPECT_LE(std::abs(out[i] - x[i]), std::abs(x[i]) / 16 + 0.5f * 0x1p-9f * 0.5f) << i;
}

TEST(Baseline, KiviQuantizesEachChannelOverItsGroup) {
  const uint32_t d = 64, g = 16;
  auto q = make_baseline("kivi2", d, g);
  const size_t n = 40;  // 2 full groups + 8 rows
  const auto x = test::outlier_rows(n, d, 5);
  std::vector<uint8_t> p(q->bytes(n));
  EXPECT_EQ(p.size(), 3 * (g * d * 2 / 8 + 4 * d));
  std::vector<float> out(n * d);
  q->quantize(x.data(), n, p.data());
  q->dequantize(p.data(), n, out.data());
  for (size_t r0 = 0; r0 < n; r0 += g)
    for (uint32_t c = 0; c < d; ++c) {
      float lo = INFINITY, hi = -INFINITY;
      for (size_t r = r0; r < std::min(n, r0 + g); ++r) {
        lo = std::min(lo, x[r * d + c]);
        hi = std::max(hi, x[r * d + c]);
      }
      for (size_t r = r0; r < std::min(n, r0 + g); ++r)
        EXPECT_LE(std::abs(out[r * d + c] - x[r * d + c]), (hi - lo) * (0.5 / 3 + 0.002) + 1e-3 * std::abs(lo)) << r << "," << c;
    }
}

TEST(Baseline, BadInput) {
  EXPECT_THROW(make_baseline("int3", 128), Error);
  EXPECT_THROW(make_baseline("q4_0", 100), Error);
  EXPECT_THROW(make_baseline("fp8", 128, 32, -1.0f), Error);
  auto q = make_baseline("int4", 32);
  auto x = test::gaussian(1, 32, 1);
  x[5] = NAN;
  std::vector<uint8_t> p(q->bytes(1));
  try {
    q->quantize(x.data(), 1, p.data());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("element 5"), std::string::npos) << e.what();
  }
  auto h = make_baseline("fp16", 32);
  x[5] = 1e6f;
  EXPECT_THROW(h->quantize(x.data(), 1, p.data()), Error);
}

// q4_0 of a block whose scale is an fp16 subnormal that rounds down: ggml takes the inverse of the
// unrounded scale; from the rounded one, codes fell below 0 and wrapped into the other nibble (the
// largest value came back with its sign flipped, its neighbour 16 positions on corrupted).
TEST(Baseline, Q40OfTinyBlocksKeepsSignsAndNeighbours) {
  auto q = make_baseline("q4_0", 32);
  for (const float big : {1.1e-6f, 3.3e-7f, 1e-7f, 2e-6f, 1.0f}) {
    std::vector<float> x(32, 0.0f), out(32);
    x[0] = big, x[16] = -big / 2, x[3] = big / 3;
    std::vector<uint8_t> p(q->bytes(1));
    q->quantize(x.data(), 1, p.data());
    q->dequantize(p.data(), 1, out.data());
    for (int i = 0; i < 32; ++i) {
      EXPECT_FALSE(std::signbit(out[i]) && x[i] > 0) << big << " element " << i << ": " << out[i];
      // half a step of d = big/8, plus 8 steps' worth of d's fp16 rounding (relative 2^-11, or half
      // the subnormal spacing 2^-24)
      EXPECT_LE(std::abs(out[i] - x[i]), big / 16 + 8 * std::max(big / 8 * 0x1p-11f, 0x1p-25f) + 1e-12f) << big << " element " << i << ": "
                                                                                                       << out[i];
    }
  }
}

TEST(Baseline, ConstantRowsAreExact) {
  for (const char* name : {"int8", "int4", "int2", "q4_0"}) {
    auto q = make_baseline(name, 32);
    std::vector<float> x(32, 0.0f), out(32, 1.0f);
    std::vector<uint8_t> p(q->bytes(1));
    q->quantize(x.data(), 1, p.data());
    q->dequantize(p.data(), 1, out.data());
    for (float v : out) EXPECT_EQ(v, 0.0f) << name;
  }
}

}  // namespace
}  // namespace tq

namespace tq {
namespace {

// load_float_row's fp16 path (F16C where the CPU has it) against the scalar conversion, for every
// half (odd row lengths exercise the tail): bit-identical, NaN for NaN (F16C quiets signaling NaNs).
TEST(FloatRows, Fp16LoadIsTheScalarConversionForEveryHalf) {
  for (uint32_t n : {65536u, 13u}) {
    std::vector<uint8_t> src(2 * size_t(n));
    for (uint32_t h = 0; h < n; ++h) src[2 * h] = uint8_t(h & 0xFF), src[2 * h + 1] = uint8_t(h >> 8);
    std::vector<float> out(n);
    load_float_row(Encoding::kFp16, src.data(), n, 1.0f, out.data());
    for (uint32_t h = 0; h < n; ++h) {
      const float want = f16_to_f32(uint16_t(h));
      if (std::isnan(want))
        ASSERT_TRUE(std::isnan(out[h])) << "half 0x" << std::hex << h;
      else
        ASSERT_EQ(f32_bits(out[h]), f32_bits(want)) << "half 0x" << std::hex << h;
    }
  }
}

}  // namespace
}  // namespace tq
