#include <gtest/gtest.h>

#include <cmath>

#include "tq/numeric.h"
#include "tq/rng.h"

namespace tq {
namespace {

// Reference rounding in double: the representable value nearest to x, ties to even mantissa.
double nearest(double x, const std::vector<double>& grid) {
  // grid ascending, all finite representable values
  auto it = std::lower_bound(grid.begin(), grid.end(), x);
  if (it == grid.begin()) return *it;
  if (it == grid.end()) return grid.back();
  const double hi = *it, lo = *(it - 1);
  return (x - lo < hi - x) ? lo : (hi - x < x - lo) ? hi : NAN;  // NAN: a tie, checked separately
}

TEST(Fp16, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    EXPECT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
}

TEST(Fp16, RoundsToNearest) {
  std::vector<double> grid;
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    grid.push_back(f16_to_f32(uint16_t(h)));
    grid.push_back(-double(f16_to_f32(uint16_t(h))));
  }
  std::sort(grid.begin(), grid.end());
  grid.erase(std::unique(grid.begin(), grid.end()), grid.end());
  Rng r(1);
  for (int i = 0; i < 200000; ++i) {
    const float x = float((r.uniform() * 2 - 1) * std::pow(2.0, r.uniform() * 40 - 26));
    const double want = nearest(x, grid);
    if (std::isnan(want)) continue;
    EXPECT_EQ(double(f16_to_f32(f32_to_f16(x))), want) << x;
  }
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(70000.0f))));
  EXPECT_EQ(f16_to_f32(f32_to_f16(65504.0f)), 65504.0f);
}

TEST(Bf16, RoundTripAndNearest) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_f32(uint16_t(h));
    if (!std::isnan(f)) {
      EXPECT_EQ(f32_to_bf16(f), h);
    }
  }
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.00390625f)), 1.0f);     // tie -> even
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.01171875f)), 1.015625f);  // tie -> even (up)
}

TEST(E4m3, AllCodesRoundTripAndSaturate) {
  std::vector<double> grid;
  for (uint32_t b = 0; b < 256; ++b) {
    const float f = e4m3_to_f32(uint8_t(b));
    if (std::isnan(f)) continue;
    if (b != 0x80) {
      EXPECT_EQ(f32_to_e4m3(f), b) << b;  // -0 is checked below
    }
    grid.push_back(f);
  }
  EXPECT_EQ(f32_to_e4m3(-0.0f), 0x80);
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_f32(f32_to_e4m3(1e6f)), 448.0f);
  EXPECT_EQ(e4m3_to_f32(f32_to_e4m3(-1e6f)), -448.0f);
  EXPECT_TRUE(std::isnan(e4m3_to_f32(f32_to_e4m3(NAN))));
  std::sort(grid.begin(), grid.end());
  grid.erase(std::unique(grid.begin(), grid.end()), grid.end());
  Rng r(2);
  for (int i = 0; i < 100000; ++i) {
    const float x = float((r.uniform() * 2 - 1) * std::pow(2.0, r.uniform() * 20 - 11));
    const double want = nearest(x, grid);
    if (std::isnan(want)) continue;
    EXPECT_EQ(double(e4m3_to_f32(f32_to_e4m3(x))), want) << x;
  }
}

}  // namespace
}  // namespace tq
