#include "tq/codec/rotation.h"

#include <fmt/format.h>

#include <cmath>
#include <vector>

#include "simd.h"
#include "tq/check.h"
#include "tq/cpu_features.h"
#include "tq/rng.h"

namespace tq {

const char* rotation_name(RotationKind k) { return k == RotationKind::kHadamard ? "hadamard" : "dense"; }

RotationKind parse_rotation(const std::string& s) {
  if (s == "hadamard" || s == "wht") return RotationKind::kHadamard;
  if (s == "dense" || s == "qr") return RotationKind::kDense;
  throw Error(fmt::format("unknown rotation '{}': expected 'hadamard' or 'dense'", s));
}

void fwht_scalar(float* x, uint32_t n) {
  for (uint32_t h = 1; h < n; h *= 2)
    for (uint32_t i = 0; i < n; i += 2 * h)
      for (uint32_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  const float s = float(1.0 / std::sqrt(double(n)));
  for (uint32_t i = 0; i < n; ++i) x[i] *= s;
}

void fwht(float* x, uint32_t n) {
  if (cpu::has_avx2_fma()) {
    simd::fwht_avx2(x, n);
  } else {
    fwht_scalar(x, n);
  }
}

namespace {

// Haar-random orthogonal matrix: modified Gram-Schmidt (in double) on a Gaussian matrix's rows,
// which is the QR factorization with a positive diagonal in R, the sign fix that makes Q Haar.
std::vector<float> random_orthogonal(uint32_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<double> a(size_t(n) * n);
  for (double& v : a) v = rng.normal();
  for (uint32_t i = 0; i < n; ++i) {
    double* ri = &a[size_t(i) * n];
    for (int pass = 0; pass < 2; ++pass)  // re-orthogonalize once: keeps ||Q^T Q - I|| at rounding level
      for (uint32_t j = 0; j < i; ++j) {
        const double* rj = &a[size_t(j) * n];
        double d = 0;
        for (uint32_t k = 0; k < n; ++k) d += ri[k] * rj[k];
        for (uint32_t k = 0; k < n; ++k) ri[k] -= d * rj[k];
      }
    double nn = 0;
    for (uint32_t k = 0; k < n; ++k) nn += ri[k] * ri[k];
    nn = std::sqrt(nn);
    for (uint32_t k = 0; k < n; ++k) ri[k] /= nn;
  }
  return std::vector<float>(a.begin(), a.end());
}

}  // namespace

Rotation::Rotation(RotationKind kind, uint32_t dim, uint64_t seed) : kind_(kind), dim_(dim), seed_(seed) {
  TQ_CHECK(dim >= 1 && dim <= 65536, "rotation dimension must be 1..65536, got {}", dim);
  if (kind == RotationKind::kHadamard) {
    TQ_CHECK(is_pow2(dim), "the Hadamard rotation needs a power-of-two dimension, got {} (use the dense rotation)", dim);
    Rng rng(seed);
    signs_.resize(dim);
    for (float& s : signs_) s = rng.coin() ? -1.0f : 1.0f;
  } else {
    matrix_ = random_orthogonal(dim, seed);
  }
}

void Rotation::forward(const float* x, float* y) const {
  if (kind_ == RotationKind::kHadamard) {
    for (uint32_t i = 0; i < dim_; ++i) y[i] = x[i] * signs_[i];
    fwht(y, dim_);
    return;
  }
  std::vector<float> tmp(x, x + dim_);
  for (uint32_t i = 0; i < dim_; ++i) {
    const float* r = &matrix_[size_t(i) * dim_];
    float s = 0;
    for (uint32_t k = 0; k < dim_; ++k) s += r[k] * tmp[k];
    y[i] = s;
  }
}

void Rotation::inverse(const float* y, float* x) const {
  if (kind_ == RotationKind::kHadamard) {
    if (x != y)
      for (uint32_t i = 0; i < dim_; ++i) x[i] = y[i];
    fwht(x, dim_);  // H / sqrt(n) is its own inverse
    for (uint32_t i = 0; i < dim_; ++i) x[i] *= signs_[i];
    return;
  }
  std::vector<float> acc(dim_, 0.0f);
  for (uint32_t i = 0; i < dim_; ++i) {
    const float* r = &matrix_[size_t(i) * dim_];
    const float yi = y[i];
    for (uint32_t k = 0; k < dim_; ++k) acc[k] += r[k] * yi;
  }
  for (uint32_t k = 0; k < dim_; ++k) x[k] = acc[k];
}

}  // namespace tq
