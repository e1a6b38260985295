// Test data: random vectors, including the hostile kinds (outlier channels, zeros, huge norms).
#pragma once

#include <cmath>
#include <vector>

#include "tq/rng.h"

namespace tq::test {

// [n][d] Gaussian rows.
inline std::vector<float> gaussian(size_t n, size_t d, uint64_t seed, float scale = 1.0f) {
  Rng r(seed);
  std::vector<float> x(n * d);
  for (float& v : x) v = float(r.normal()) * scale;
  return x;
}

// [n][d] unit rows.
inline std::vector<float> unit_rows(size_t n, size_t d, uint64_t seed) {
  std::vector<float> x = gaussian(n, d, seed);
  for (size_t i = 0; i < n; ++i) {
    double s = 0;
    for (size_t j = 0; j < d; ++j) s += double(x[i * d + j]) * x[i * d + j];
    const double inv = 1.0 / std::sqrt(s);
    for (size_t j = 0; j < d; ++j) x[i * d + j] = float(x[i * d + j] * inv);
  }
  return x;
}

// [n][d] rows like real keys: a few channels 20-100x larger than the rest, and a common offset.
inline std::vector<float> outlier_rows(size_t n, size_t d, uint64_t seed) {
  std::vector<float> x = gaussian(n, d, seed);
  for (size_t i = 0; i < n; ++i) {
    x[i * d + 0] = x[i * d + 0] * 20.0f + 40.0f;
    if (d > 3) x[i * d + 3] *= 100.0f;
    if (d > 7) x[i * d + d - 1] -= 30.0f;
  }
  return x;
}

inline double sq_dist(const float* a, const float* b, size_t d) {
  double s = 0;
  for (size_t i = 0; i < d; ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return s;
}
inline double sq_norm(const float* a, size_t d) {
  double s = 0;
  for (size_t i = 0; i < d; ++i) s += double(a[i]) * a[i];
  return s;
}

// A float x and a double n >= |x| whose quotient x / n lies within 24 double ulps of a float
// midpoint (|x / n| in (2^-20, 1]): where float(x * (1 / n)) can differ from float(x / n), the
// inputs numeric.h's unit_coord_by_inverse must decline. False (x, n unusable) when stepping n
// left it below |x|.
inline bool near_midpoint_quotient(Rng& r, float& x, double& n) {
  x = float((r.coin() ? 1 : -1) * std::pow(2.0, r.uniform() * 30 - 14));
  const float f = float(std::pow(2.0, -r.uniform() * 20));
  const double mid = (double(f) + double(std::nextafter(f, 2.0f))) / 2;  // exact in double
  n = std::fabs(double(x)) / mid;
  for (int k = int(r.next() % 49) - 24; k != 0; k += k > 0 ? -1 : 1) n = std::nextafter(n, k > 0 ? INFINITY : 0.0);
  return n >= std::fabs(double(x));
}

}  // namespace tq::test
