#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "tq/cpu_features.h"
#include "simd.h"
#include "test_util.h"
#include "tq/common.h"
#include "tq/codec/rotation.h"

namespace tq {
namespace {

struct RotCase {
  RotationKind kind;
  uint32_t dim;
};
class RotationTest : public ::testing::TestWithParam<RotCase> {};

TEST_P(RotationTest, OrthogonalAndInverse) {
  const auto [kind, d] = GetParam();
  const Rotation r(kind, d, 42);
  // Columns of R: images of the basis vectors; their Gram matrix must be the identity.
  std::vector<float> cols(size_t(d) * d);
  for (uint32_t j = 0; j < d; ++j) {
    std::vector<float> e(d, 0.0f);
    e[j] = 1.0f;
    r.forward(e.data(), &cols[size_t(j) * d]);
  }
  // Every pair up to d = 128; above, 32 columns spread over the matrix (the first and the last
  // among them) against every column: the whole Gram matrix of d = 1024 is 1e9 multiply-adds, the
  // sanitized suite's slowest test (bench/results/2026-12-03-ci-time.md).
  std::vector<uint32_t> picked;
  const uint32_t step = d <= 128 ? 1 : (d - 1) / 31;
  for (uint32_t i = 0; i < d; i += step) picked.push_back(i);
  if (picked.back() != d - 1) picked.push_back(d - 1);
  double worst = 0;
  for (const uint32_t i : picked)
    for (uint32_t j = 0; j < d; ++j) {
      double s = 0;
      for (uint32_t k = 0; k < d; ++k) s += double(cols[size_t(i) * d + k]) * cols[size_t(j) * d + k];
      worst = std::max(worst, std::abs(s - (i == j ? 1.0 : 0.0)));
    }
  // float entries: each inner product of d terms carries ~d * 2^-24 rounding
  EXPECT_LT(worst, 4.0 * d * 6e-8) << "Gram matrix off the identity";

  const auto x = test::gaussian(1, d, 9);
  std::vector<float> y(d), back(d);
  r.forward(x.data(), y.data());
  r.inverse(y.data(), back.data());
  EXPECT_NEAR(test::sq_norm(y.data(), d), test::sq_norm(x.data(), d), 1e-4 * test::sq_norm(x.data(), d));
  for (uint32_t i = 0; i < d; ++i) EXPECT_NEAR(back[i], x[i], 1e-5) << i;
  // In place gives the same as out of place.
  std::vector<float> z = x;
  r.forward(z.data(), z.data());
  for (uint32_t i = 0; i < d; ++i) EXPECT_EQ(z[i], y[i]);
}

TEST_P(RotationTest, SeedsGiveDifferentRotations) {
  const auto [kind, d] = GetParam();
  if (d < 4) GTEST_SKIP() << "too small to tell apart";
  const Rotation a(kind, d, 1), b(kind, d, 2), a2(kind, d, 1);
  const auto x = test::gaussian(1, d, 3);
  std::vector<float> ya(d), yb(d), ya2(d);
  a.forward(x.data(), ya.data());
  b.forward(x.data(), yb.data());
  a2.forward(x.data(), ya2.data());
  EXPECT_EQ(ya, ya2);
  EXPECT_GT(test::sq_dist(ya.data(), yb.data(), d), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(All, RotationTest,
                         ::testing::Values(RotCase{RotationKind::kHadamard, 1}, RotCase{RotationKind::kHadamard, 8},
                                           RotCase{RotationKind::kHadamard, 32}, RotCase{RotationKind::kHadamard, 128},
                                           RotCase{RotationKind::kHadamard, 1024}, RotCase{RotationKind::kDense, 8},
                                           RotCase{RotationKind::kDense, 80}, RotCase{RotationKind::kDense, 96},
                                           RotCase{RotationKind::kDense, 112}, RotCase{RotationKind::kDense, 128}),
                         [](const auto& i) {
                           return std::string(rotation_name(i.param.kind)) + std::to_string(i.param.dim);
                         });

TEST(Rotation, HadamardNeedsPowerOfTwo) {
  try {
    Rotation r(RotationKind::kHadamard, 96, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("96"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Rotation(RotationKind::kDense, 0, 1), Error);
  EXPECT_THROW(parse_rotation("givens"), Error);
}

TEST(Rotation, HadamardSpreadsAnOutlier) {
  // A single huge channel becomes a flat vector: every coordinate +-1/sqrt(d).
  const uint32_t d = 128;
  const Rotation r(RotationKind::kHadamard, d, 5);
  std::vector<float> x(d, 0.0f), y(d);
  x[17] = 1.0f;
  r.forward(x.data(), y.data());
  for (float v : y) EXPECT_NEAR(std::abs(v), 1.0f / std::sqrt(float(d)), 1e-6f);
}

class FwhtSimd : public ::testing::TestWithParam<uint32_t> {};
TEST_P(FwhtSimd, BitIdenticalToScalar) {
  if (!cpu::has_avx2_fma()) GTEST_SKIP() << "CPU without AVX2";
  const uint32_t n = GetParam();
  for (uint64_t seed : {1u, 2u, 3u}) {
    auto x = test::gaussian(1, n, seed, seed == 3 ? 1e30f : 1.0f);  // huge values too
    if (seed == 2) x[n / 2] = 1e4f;                                   // an outlier
    std::vector<float> a = x, b = x;
    fwht_scalar(a.data(), n);
    simd::fwht_avx2(b.data(), n);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), n * sizeof(float))) << "n = " << n << " seed " << seed;
  }
}
INSTANTIATE_TEST_SUITE_P(Sizes, FwhtSimd, ::testing::Values(1u, 2u, 4u, 8u, 16u, 32u, 64u, 128u, 256u, 1024u));

}  // namespace
}  // namespace tq
