// A small deterministic random generator (splitmix64), so rotations and test data are the same on
// every platform and standard library (std::normal_distribution is implementation-defined).
#pragma once

#include <cmath>
#include <cstdint>

namespace tq {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  // Standard normal by Box-Muller (both values used).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    const double r = std::sqrt(-2.0 * std::log(u1)), t = 6.283185307179586 * u2;
    spare_ = r * std::sin(t);
    has_spare_ = true;
    return r * std::cos(t);
  }
  bool coin() { return next() >> 63; }

 private:
  uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

// Mixes a base seed with a (layer, kv_head, purpose) triple into an independent stream seed.
inline uint64_t derive_seed(uint64_t base, uint32_t layer, uint32_t head, uint32_t purpose) {
  Rng r(base ^ (uint64_t(layer) << 40) ^ (uint64_t(head) << 16) ^ (uint64_t(purpose) << 56));
  r.next();
  return r.next();
}

}  // namespace tq
