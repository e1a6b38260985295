// Lloyd-Max iteration on the exact coordinate density, in the scaled variable z = x * sqrt(d) so
// that every dimension has the same numerical range. The cell probabilities come from a tabulated
// CDF (Gauss-Legendre per table interval, then Gauss-Legendre from the nearest table point), the
// cell first moments from the closed form of  integral z (1 - z^2/d)^k dz.
#include "tq/codec/codebook.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "tq/check.h"
#include "tq/numeric.h"

namespace tq {
namespace {

// 16-point Gauss-Legendre nodes and weights on [-1, 1] (positive half; symmetric).
constexpr double kGlX[8] = {0.0950125098376374, 0.2816035507792589, 0.4580167776572274, 0.6178762444026438,
                            0.7554044083550030, 0.8656312023878318, 0.9445750230732326, 0.9894009349916499};
constexpr double kGlW[8] = {0.1894506104550685, 0.1826034150449236, 0.1691565193950025, 0.1495959888165767,
                            0.1246289712555339, 0.0951585116824928, 0.0622535239386479, 0.0271524594117541};

template <class F>
double gauss_legendre(F&& f, double a, double b) {
  const double c = 0.5 * (a + b), h = 0.5 * (b - a);
  double s = 0;
  for (int i = 0; i < 8; ++i) s += kGlW[i] * (f(c - h * kGlX[i]) + f(c + h * kGlX[i]));
  return s * h;
}

// A distribution of z on [-zmax, zmax]: its density, CDF and partial first moment.
class Density {
 public:
  virtual ~Density() = default;
  virtual double zmax() const = 0;
  virtual double pdf(double z) const = 0;
  virtual double cdf(double z) const = 0;
  virtual double moment(double z) const = 0;  // integral_{-zmax}^{z} t g(t) dt
};

class GaussianDensity final : public Density {
 public:
  double zmax() const override { return 40.0; }
  double pdf(double z) const override { return std::exp(-0.5 * z * z) / std::sqrt(2.0 * M_PI); }
  double cdf(double z) const override { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }
  double moment(double z) const override { return -std::exp(-0.5 * z * z) / std::sqrt(2.0 * M_PI); }
};

// z = x sqrt(d), g(z) = C (1 - z^2/d)^k with k = (d-3)/2 on [-sqrt(d), sqrt(d)].
class SphereDensity final : public Density {
 public:
  explicit SphereDensity(uint32_t d) : d_(d), k_((double(d) - 3.0) / 2.0), zmax_(std::sqrt(double(d))) {
    // log C = lgamma(d/2) - lgamma((d-1)/2) - 0.5 log(pi) - 0.5 log(d)   (the 1/sqrt(d) from dx = dz/sqrt(d))
    log_c_ = std::lgamma(d / 2.0) - std::lgamma((d - 1) / 2.0) - 0.5 * std::log(M_PI) - 0.5 * std::log(double(d));
    table_.resize(kTable + 1);
    table_[0] = 0;
    const double h = 2 * zmax_ / kTable;
    for (int i = 0; i < kTable; ++i)
      table_[i + 1] = table_[i] + gauss_legendre([this](double z) { return pdf(z); }, -zmax_ + i * h, -zmax_ + (i + 1) * h);
    // The table's last value is 1 up to quadrature error; normalize so that cdf(zmax) == 1 exactly.
    const double total = table_[kTable];
    for (double& t : table_) t /= total;
    norm_ = total;
  }
  double zmax() const override { return zmax_; }
  double pdf(double z) const override {
    const double u = 1.0 - z * z / d_;
    return u <= 0 ? 0.0 : std::exp(log_c_ + k_ * std::log(u)) / norm_;
  }
  double cdf(double z) const override {
    if (z <= -zmax_) return 0;
    if (z >= zmax_) return 1;
    const double h = 2 * zmax_ / kTable;
    const int i = std::clamp(int((z + zmax_) / h), 0, kTable - 1);
    const double a = -zmax_ + i * h;
    return table_[i] + gauss_legendre([this](double t) { return pdf(t); }, a, z);
  }
  // integral t C (1 - t^2/d)^k dt = -C d (1 - t^2/d)^(k+1) / (2 (k+1))
  double moment(double z) const override {
    const double u = std::max(0.0, 1.0 - z * z / d_);
    return -std::exp(log_c_ + (k_ + 1) * std::log(std::max(u, 1e-300))) * d_ / (2 * (k_ + 1)) / norm_;
  }

 private:
  static constexpr int kTable = 4096;
  double d_, k_, zmax_, log_c_ = 0, norm_ = 1;
  std::vector<double> table_;
};

// z such that cdf(z) = p, by bisection.
double quantile(const Density& g, double p) {
  double lo = -g.zmax(), hi = g.zmax();
  for (int it = 0; it < 200 && hi - lo > 1e-15; ++it) {
    const double mid = 0.5 * (lo + hi);
    (g.cdf(mid) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

// Probability of [a, b]. Both densities are symmetric: cells right of 0 are measured from the
// right tail (cdf(-b) is small and exact there) instead of as 1 - tiny differences of values near 1.
double mass(const Density& g, double a, double b) { return a >= 0 ? g.cdf(-a) - g.cdf(-b) : g.cdf(b) - g.cdf(a); }

// Centroids (cell means) and probabilities of the cells between consecutive boundaries b[0..n].
void centroids_of(const Density& g, const std::vector<double>& b, std::vector<double>& c, std::vector<double>& p) {
  const size_t n = b.size() - 1;
  for (size_t j = 0; j < n; ++j) {
    p[j] = mass(g, b[j], b[j + 1]);
    c[j] = p[j] > 1e-300 ? (g.moment(b[j + 1]) - g.moment(b[j])) / p[j] : 0.5 * (b[j] + b[j + 1]);
  }
}

// Newton's method on the Lloyd fixed point b_j = (c_{j-1} + c_j) / 2 (j = 1..n-1). With
// dc_j/db_j = g(b_j)(c_j - b_j)/P_j and dc_j/db_{j+1} = g(b_{j+1})(b_{j+1} - c_j)/P_j the Jacobian
// is tridiagonal. Plain Lloyd needs ~n^2 iterations at 8 bits (minutes); Newton needs a handful.
// Returns false if a step failed to keep the boundaries ordered and reduce the residual.
bool newton(const Density& g, std::vector<double>& b, uint32_t& iterations) {
  const size_t n = b.size() - 1;
  std::vector<double> c(n), p(n), r(n + 1), lo(n + 1), di(n + 1), up(n + 1), nb(n + 1);
  auto residual = [&](const std::vector<double>& bb) {
    centroids_of(g, bb, c, p);
    double worst = 0;
    for (size_t j = 1; j < n; ++j) {
      r[j] = 0.5 * (c[j - 1] + c[j]) - bb[j];
      worst = std::max(worst, std::abs(r[j]));
    }
    return worst;
  };
  double res = residual(b);
  for (int it = 0; it < 100 && res > 1e-13; ++it, ++iterations) {
    for (size_t j = 1; j < n; ++j) {
      const double dcl_dbj = g.pdf(b[j]) * (b[j] - c[j - 1]) / p[j - 1];  // c_{j-1} w.r.t. its upper boundary
      const double dcr_dbj = g.pdf(b[j]) * (c[j] - b[j]) / p[j];          // c_j w.r.t. its lower boundary
      di[j] = 0.5 * (dcl_dbj + dcr_dbj) - 1.0;
      lo[j] = j > 1 ? 0.5 * g.pdf(b[j - 1]) * (c[j - 1] - b[j - 1]) / p[j - 1] : 0.0;
      up[j] = j + 1 < n ? 0.5 * g.pdf(b[j + 1]) * (b[j + 1] - c[j]) / p[j] : 0.0;
    }
    // Thomas algorithm: J delta = -r
    std::vector<double> cp(n + 1), dp(n + 1);
    for (size_t j = 1; j < n; ++j) {
      const double m = di[j] - (j > 1 ? lo[j] * cp[j - 1] : 0.0);
      cp[j] = up[j] / m;
      dp[j] = (-r[j] - (j > 1 ? lo[j] * dp[j - 1] : 0.0)) / m;
    }
    std::vector<double> delta(n + 1, 0.0);
    for (size_t j = n - 1; j >= 1; --j) delta[j] = dp[j] - (j + 1 < n ? cp[j] * delta[j + 1] : 0.0);
    double step = 1.0;
    for (int halvings = 0;; ++halvings) {
      if (halvings > 30) return res <= 1e-10;  // at the quadrature's noise floor (~1e-11)
      bool ordered = true;
      nb = b;
      for (size_t j = 1; j < n; ++j) {
        nb[j] = b[j] + step * delta[j];
        if (nb[j] <= nb[j - 1]) ordered = false;
      }
      if (ordered && nb[n - 1] < nb[n]) {
        const double nres = residual(nb);
        if (nres < res) {
          b = nb;
          res = nres;
          break;
        }
      }
      step *= 0.5;
    }
  }
  return res <= 1e-10;  // far below float32 resolution of the centroids (~1e-7 relative)
}

// The codebook of levels c (z-units) and boundaries b[0..n] (b[0], b[n] the density's ends), with
// its expected squared error for g: D = E z^2 - sum_j (2 c_j M_j - c_j^2 P_j), M_j and P_j the
// cell's first moment and mass (E z^2 = 1 for both densities), whether or not c_j is the cell's mean.
Codebook codebook_of(const Density& g, const std::vector<double>& c, const std::vector<double>& b, uint32_t bits, uint32_t dim) {
  const size_t n = c.size();
  double captured = 0;
  for (size_t j = 0; j < n; ++j)
    captured += 2 * c[j] * (g.moment(b[j + 1]) - g.moment(b[j])) - c[j] * c[j] * mass(g, b[j], b[j + 1]);
  Codebook cb;
  cb.dim = dim;
  cb.bits = bits;
  cb.expected_mse = 1.0 - captured;
  const double scale = dim ? 1.0 / std::sqrt(double(dim)) : 1.0;
  for (size_t j = 0; j < n; ++j) cb.centroids.push_back(float(c[j] * scale));
  for (size_t j = 1; j < n; ++j) cb.boundaries.push_back(float(b[j] * scale));
  return cb;
}

// grid_bits: the widest codebook whose centroids go on the 1/32 grid (narrower ones too, from 2 bits).
Codebook lloyd_max(const Density& g, uint32_t bits, uint32_t dim, uint32_t grid_bits) {
  const size_t n = size_t(1) << bits;
  std::vector<double> c(n), p(n), b(n + 1);
  b[0] = -g.zmax();
  b[n] = g.zmax();
  for (size_t j = 1; j < n; ++j) b[j] = quantile(g, double(j) / n);
  // Lloyd iterations until the boundaries are close, then Newton to full precision.
  uint32_t it = 0;
  for (; it < 300; ++it) {
    centroids_of(g, b, c, p);
    double change = 0;
    for (size_t j = 1; j < n; ++j) {
      const double nb = 0.5 * (c[j - 1] + c[j]);
      change = std::max(change, std::abs(nb - b[j]));
      b[j] = nb;
    }
    if (change < 1e-13) break;
  }
  if (!newton(g, b, it)) {
    // Fall back to plain Lloyd (slow but monotone) if Newton could not make progress.
    for (uint32_t k = 0; k < 20000; ++k, ++it) {
      centroids_of(g, b, c, p);
      double change = 0;
      for (size_t j = 1; j < n; ++j) {
        const double nb = 0.5 * (c[j - 1] + c[j]);
        change = std::max(change, std::abs(nb - b[j]));
        b[j] = nb;
      }
      if (change < 1e-12) break;
    }
  }
  centroids_of(g, b, c, p);
  // Exact symmetry (the iteration keeps it up to rounding).
  for (size_t j = 0; j < n / 2; ++j) {
    const double s = 0.5 * (c[n - 1 - j] - c[j]);
    c[j] = -s;
    c[n - 1 - j] = s;
  }
  // The format's centroids in units of 1/sqrt(d) (z-units), so that every path decodes a code to
  // the same value (docs/format.md): at 2 and 3 bits multiples of 1/32, which the GPU's key
  // lookups use as exact int8 tensor-core operands (one table and one MMA where int16 took two);
  // at other widths fp16 numbers, which its fp16 tables hold exactly. The grid moves a centroid by
  // at most 1/64 (the 3-bit step between centroids is over 0.49, the 4-bit one over 0.13), fp16 by
  // 2^-11 of itself. Trellis-coded rows' unions put 4 bits on the grid too (tcq_codebook).
  if (dim > 0)
    for (size_t j = 0; j < n; ++j)
      c[j] = bits >= 2 && bits <= grid_bits ? std::nearbyint(c[j] * kCentroidGrid) / kCentroidGrid : double(f16_to_f32(f32_to_f16(float(c[j]))));
  for (size_t j = 1; j < n; ++j) b[j] = 0.5 * (c[j - 1] + c[j]);
  Codebook cb = codebook_of(g, c, b, bits, dim);  // (for exact cell means D = 1 - sum_j P_j c_j^2)
  cb.iterations = it;
  return cb;
}

// The uniform 2-bit codebook (uniform_codebook) with its expected squared error for g.
Codebook uniform_levels(const Density& g, uint32_t bits, uint32_t dim) {
  const size_t n = size_t(1) << bits;
  std::vector<double> c(n), b(n + 1);
  for (size_t j = 0; j < n; ++j) c[j] = double(j) - 0.5 * double(n - 1);
  b[0] = -g.zmax();
  b[n] = g.zmax();
  for (size_t j = 1; j < n; ++j) b[j] = 0.5 * (c[j - 1] + c[j]);
  return codebook_of(g, c, b, bits, dim);
}

std::mutex g_mutex;
std::map<std::tuple<uint32_t, uint32_t, uint32_t>, std::unique_ptr<Codebook>> g_cache;

const Codebook& cached(uint32_t dim, uint32_t bits, uint32_t grid_bits = 3) {
  TQ_CHECK(bits >= 1 && bits <= 8, "codebook bits must be 1..8, got {}", bits);
  TQ_CHECK(dim == 0 || (dim >= 3 && dim <= 65536), "codebook dimension must be 3..65536, got {}", dim);
  std::lock_guard<std::mutex> lock(g_mutex);
  auto& slot = g_cache[{dim, bits, grid_bits}];
  if (!slot) {
    if (dim == 0) {
      slot = std::make_unique<Codebook>(lloyd_max(GaussianDensity(), bits, 0, grid_bits));
    } else {
      slot = std::make_unique<Codebook>(lloyd_max(SphereDensity(dim), bits, dim, grid_bits));
    }
  }
  return *slot;
}

}  // namespace

uint8_t Codebook::encode(float x) const {
  // Branch-free binary search over the sorted boundaries: the count of boundaries < x.
  uint32_t lo = 0, n = uint32_t(boundaries.size());
  while (n > 0) {
    const uint32_t half = n / 2;
    if (boundaries[lo + half] < x) {
      lo += half + 1;
      n -= half + 1;
    } else {
      n = half;
    }
  }
  return uint8_t(lo);
}

const Codebook& codebook(uint32_t dim, uint32_t bits) { return cached(dim, bits); }
const Codebook& uniform_codebook(uint32_t dim, uint32_t bits) {
  TQ_CHECK(bits == 2, "the uniform codebook is the 2-bit values' (format.h value_levels_uniform), got {} bits", bits);
  TQ_CHECK(dim >= 3 && dim <= 65536, "codebook dimension must be 3..65536, got {}", dim);
  static std::mutex m;
  static std::map<uint32_t, std::unique_ptr<Codebook>> cache;
  std::lock_guard<std::mutex> lock(m);
  auto& slot = cache[dim];
  if (!slot) slot = std::make_unique<Codebook>(uniform_levels(SphereDensity(dim), bits, dim));
  return *slot;
}
const Codebook& gaussian_codebook(uint32_t bits) { return cached(0, bits); }
const Codebook& tcq_codebook(uint32_t dim, uint32_t bits) {
  TQ_CHECK(bits >= 1 && bits <= 7, "trellis-coded widths are 1..7 bits, got {}", bits);
  TQ_CHECK(dim >= 3, "codebook dimension must be 3..65536, got {}", dim);
  return cached(dim, bits + 1, 4);
}

}  // namespace tq
