#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"
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

// unit_coord_by_inverse (the GPU store's float(x / n) by a multiplication) against the division:
// where it says its float is right, it is, on unit rows of every scale and on quotients placed
// within 24 double ulps of a float midpoint (where a multiplication alone goes wrong: the check
// must catch each of those, and those outside its window must be right).
TEST(UnitCoord, InverseAgreesWithTheDivisionWhereItClaimsTo) {
  Rng r(59);
  const auto check = [](float x, double n, uint64_t& fast, uint64_t& slow) {
    const float want = float(double(x) / n);
    float got = 0;
    if (unit_coord_by_inverse(x, 1.0 / n, got)) {
      ++fast;
      EXPECT_EQ(f32_bits(got), f32_bits(want)) << std::hexfloat << x << " / " << n;
    } else {
      ++slow;
    }
  };
  uint64_t fast = 0, slow = 0;
  float row[256];
  for (int t = 0; t < 4000; ++t) {  // rows as the store sees them, scales from subnormal to fp16's range
    const double scale = std::pow(2.0, r.uniform() * 160 - 150);
    double nn = 0;
    for (float& v : row) {
      v = r.uniform() < 0.05 ? 0.0f : float(r.normal() * scale);
      nn += double(v) * v;
    }
    const double n = std::sqrt(nn);
    if (!(n > 0) || n > kF16Max) continue;
    for (float v : row) check(v, n, fast, slow);
  }
  EXPECT_GT(fast, 990u * (fast + slow) / 1000);  // the multiplication almost always decides
  uint64_t near_fast = 0, near_slow = 0, trusted_wrong = 0;
  for (int t = 0; t < 200000; ++t) {  // x / n within 24 double ulps of a float midpoint
    float x = 0;
    double n = 0;
    if (!test::near_midpoint_quotient(r, x, n)) continue;
    trusted_wrong += float(double(x) * (1.0 / n)) != float(double(x) / n);
    check(x, n, near_fast, near_slow);
  }
  EXPECT_GT(trusted_wrong, 0u);  // the inputs reach the cases the check exists for
  EXPECT_GT(near_slow, 0u);
  EXPECT_GT(near_fast, 0u);  // and those just outside the checked window take the multiplication, right
  uint64_t tiny_fast = 0, tiny_slow = 0;  // quotients below float's normal range: the division decides
  for (float x : {0x1p-149f, -0x1p-149f, 0x1p-130f, 1e-38f, -3e-39f}) check(x, 65504.0, tiny_fast, tiny_slow);
  EXPECT_EQ(tiny_fast, 0u);
  float zero = 1;
  EXPECT_TRUE(unit_coord_by_inverse(0.0f, 1.0 / 3.0, zero));
  EXPECT_EQ(zero, 0.0f);
}

}  // namespace
}  // namespace tq
