#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tq/codec/codebook.h"
#include "tq/common.h"
#include "tq/numeric.h"

namespace tq {
namespace {

// Gaussian-limit Lloyd-Max centroids (positive half), from the landscape doc / Max (1960).
const std::vector<std::vector<double>> kGaussianPositive = {
    {0.7979},
    {0.4528, 1.5104},
    {0.2451, 0.7560, 1.3440, 2.1520},
    {0.1284, 0.3880, 0.6568, 0.9423, 1.2562, 1.6180, 2.0690, 2.7326}};
const double kGaussianMse[] = {0.3634, 0.1175, 0.0345, 0.0095};

class GaussianCodebook : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GaussianCodebook, MatchesKnownCentroids) {
  const uint32_t b = GetParam();
  const Codebook& cb = gaussian_codebook(b);
  const auto& want = kGaussianPositive[b - 1];
  const size_t n = cb.centroids.size();
  ASSERT_EQ(n, size_t(1) << b);
  for (size_t j = 0; j < want.size(); ++j) {
    EXPECT_NEAR(cb.centroids[n / 2 + j], want[j], 1e-3) << "centroid " << j;
    EXPECT_NEAR(cb.centroids[n / 2 - 1 - j], -want[j], 1e-3) << "centroid -" << j;
  }
  // The table's MSE figures are given to 4 digits.
  EXPECT_NEAR(cb.expected_mse, kGaussianMse[b - 1], 1e-4 + 1e-3 * kGaussianMse[b - 1]);
}
INSTANTIATE_TEST_SUITE_P(Bits, GaussianCodebook, ::testing::Values(1u, 2u, 3u, 4u));

struct DimBits {
  uint32_t dim, bits;
};
class ExactCodebook : public ::testing::TestWithParam<DimBits> {};

TEST_P(ExactCodebook, SymmetricOrderedAndBetterThanUpperBound) {
  const auto [d, b] = GetParam();
  const Codebook& cb = codebook(d, b);
  const size_t n = size_t(1) << b;
  ASSERT_EQ(cb.centroids.size(), n);
  ASSERT_EQ(cb.boundaries.size(), n - 1);
  for (size_t j = 0; j < n; ++j) EXPECT_EQ(cb.centroids[j], -cb.centroids[n - 1 - j]) << "symmetry at " << j;
  for (size_t j = 1; j < n; ++j) EXPECT_LT(cb.centroids[j - 1], cb.centroids[j]) << "order at " << j;
  for (size_t j = 0; j + 1 < n; ++j) {
    EXPECT_GT(cb.boundaries[j], cb.centroids[j]);
    EXPECT_LT(cb.boundaries[j], cb.centroids[j + 1]);
  }
  EXPECT_LE(cb.centroids[n - 1], 1.0f);  // coordinates of a unit vector
  // TurboQuant's guarantee sqrt(3) pi / 2 * 4^-b and the universal lower bound 4^-b.
  EXPECT_LT(cb.expected_mse, std::sqrt(3.0) * M_PI / 2 * std::pow(4.0, -double(b)));
  // (d = 3 is the uniform density, where the uniform quantizer meets the bound exactly.)
  EXPECT_GE(cb.expected_mse, std::pow(4.0, -double(b)) * (1 - 1e-6));
}
std::vector<DimBits> all_dim_bits() {
  std::vector<DimBits> v;
  for (uint32_t d : {3u, 8u, 32u, 64u, 96u, 128u, 256u, 1024u})
    for (uint32_t b = 1; b <= 8; ++b) v.push_back({d, b});
  return v;
}
INSTANTIATE_TEST_SUITE_P(All, ExactCodebook, ::testing::ValuesIn(all_dim_bits()),
                         [](const auto& info) { return "d" + std::to_string(info.param.dim) + "_b" + std::to_string(info.param.bits); });

TEST(ExactCodebook, Dim128MatchesExactBetaFigures) {
  // Lloyd-Max distortion of the exact density at d = 128 (issue 2): 0.361, 0.116, 0.034, 0.0093.
  const double want[] = {0.361, 0.116, 0.034, 0.0093};
  for (uint32_t b = 1; b <= 4; ++b) EXPECT_NEAR(codebook(128, b).expected_mse, want[b - 1], 0.005 * want[b - 1] + 5e-5) << b;
}

TEST(ExactCodebook, TendsToGaussianLimit) {
  for (uint32_t b = 1; b <= 4; ++b) {
    const Codebook& e = codebook(65536, b);
    const Codebook& g = gaussian_codebook(b);
    // (2 and 3 bits: the exact codebook's centroids sit on the 1/32 grid, up to 1/64 from the optimum)
    const double grid = b == 2 || b == 3 ? 0.5 / kCentroidGrid : 0.0;
    for (size_t j = 0; j < g.centroids.size(); ++j) EXPECT_NEAR(e.centroids[j] * 256.0, g.centroids[j], 2e-3 + grid);
  }
}

TEST(ExactCodebook, EncodePicksNearestCentroidAndTiesGoDown) {
  const Codebook& cb = codebook(128, 3);
  for (size_t j = 0; j < cb.centroids.size(); ++j) EXPECT_EQ(cb.encode(cb.centroids[j]), j);
  for (size_t j = 0; j < cb.boundaries.size(); ++j) {
    EXPECT_EQ(cb.encode(cb.boundaries[j]), j);
    EXPECT_EQ(cb.encode(std::nextafter(cb.boundaries[j], 1.0f)), j + 1);
  }
  EXPECT_EQ(cb.encode(-2.0f), 0);
  EXPECT_EQ(cb.encode(2.0f), 7);
}

TEST(ExactCodebook, RejectsBadArguments) {
  EXPECT_THROW(codebook(128, 0), Error);
  EXPECT_THROW(codebook(128, 9), Error);
  EXPECT_THROW(codebook(2, 3), Error);
  try {
    codebook(128, 9);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("9"), std::string::npos) << e.what();
  }
}

// The CUDA decode kernels use 2- and 3-bit key centroids as int8 tensor-core operands (their z-unit
// values x 32, from an fp16 table): that must be exact, and fit, at every dim; the grid must cost
// little against the unconstrained optimum (the Gaussian limit's, not on the grid: within 0.2%).
TEST(ExactCodebook, TwoAndThreeBitCentroidsAreExactInt8) {
  for (uint32_t pd : {8u, 64u, 96u, 128u, 256u, 1024u})
    for (uint32_t bits : {2u, 3u}) {
      const Codebook& cb = codebook(pd, bits);
      for (float c : cb.centroids) {
        const double z = f16_to_f32(f32_to_f16(c * std::sqrt(float(pd)))), q = z * kCentroidGrid;  // as the kernel's table
        EXPECT_EQ(q, std::rint(q)) << "pd " << pd << " bits " << bits << " z " << z;
        EXPECT_LE(std::fabs(q), 127.0) << "pd " << pd << " bits " << bits;
      }
    }
  for (uint32_t bits : {2u, 3u})
    EXPECT_LT(codebook(65536, bits).expected_mse, gaussian_codebook(bits).expected_mse * 1.002) << bits;
}

// The 2-bit values' uniform levels (format.h value_levels_uniform): c - 1.5 in z-units exactly (the
// GPU decode builds them from the code bits, dev::subnormal2_pair), boundaries at the midpoints, and
// an expected error from the density that Monte Carlo agrees with, a little above Lloyd-Max's.
TEST(UniformCodebook, LevelsAreCodeMinusOneAndAHalfAndTheErrorIsTheDensitys) {
  for (uint32_t pd : {32u, 64u, 128u, 256u, 1024u}) {
    const Codebook& u = uniform_codebook(pd, 2);
    const float s = 1.0f / std::sqrt(float(pd));
    ASSERT_EQ(u.centroids.size(), 4u);
    for (int c = 0; c < 4; ++c) EXPECT_EQ(u.centroids[c], float(c - 1.5) * s) << "pd " << pd << " code " << c;
    ASSERT_EQ(u.boundaries.size(), 3u);
    for (int j = 0; j < 3; ++j) EXPECT_EQ(u.boundaries[j], float(j - 1) * s) << "pd " << pd;
    const double lm = codebook(pd, 2).expected_mse;
    EXPECT_GT(u.expected_mse, lm) << pd;  // Lloyd-Max is the optimum
    EXPECT_LT(u.expected_mse, lm * 1.02) << pd;
  }
  // Monte Carlo at d = 128: coordinates of random unit vectors (normalized Gaussians), encoded by
  // the boundaries; 4096 vectors x 128 coordinates, standard error of the mean ~0.2%.
  const uint32_t d = 128;
  const Codebook& u = uniform_codebook(d, 2);
  std::mt19937_64 rng(7);
  std::normal_distribution<double> n01;
  double sum = 0;
  const int vectors = 4096;
  std::vector<double> x(d);
  for (int v = 0; v < vectors; ++v) {
    double nn = 0;
    for (auto& xi : x) {
      xi = n01(rng);
      nn += xi * xi;
    }
    for (auto& xi : x) {
      const float c = float(xi / std::sqrt(nn));
      const double e = c - u.centroids[u.encode(c)];
      sum += e * e;
    }
  }
  EXPECT_NEAR(sum / vectors, u.expected_mse, 0.01 * u.expected_mse);
  EXPECT_NEAR(u.expected_mse, 0.1173, 5e-4);  // 0.1161 for Lloyd-Max (Dim128MatchesExactBetaFigures)
  EXPECT_THROW(uniform_codebook(128, 3), Error);
  EXPECT_THROW(uniform_codebook(2, 2), Error);
}

}  // namespace
}  // namespace tq
