#include "tq/codec/trellis.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "simd.h"
#include "tq/check.h"
#include "tq/cpu_features.h"
#include "tq/codec/trellis_steps.h"
#include "tq/format.h"

namespace tq {

namespace {
constexpr uint32_t kMaxLen = 1024;
}  // namespace

double tcq_encode(const float* y, uint32_t n, const float* levels, uint32_t bits, uint8_t* codes) {
  TQ_CHECK(bits >= 1 && bits <= 7, "trellis-coded widths are 1..7 bits, got {}", bits);
  TQ_CHECK(n <= kMaxLen, "a trellis-coded row has at most {} coordinates, got {}", kMaxLen, n);
  const uint32_t L = 2u << bits;  // union levels
  // Per coordinate: its back bits (tcq_step) and its subsets' nearest indices (tcq_nearest).
  uint8_t back[kMaxLen], near[kMaxLen][4];
  float cost[4] = {0.0f, INFINITY, INFINITY, INFINITY};  // the row starts in state 0
  if (bits <= 3 && cpu::has_avx2_fma()) {
    simd::tcq_forward_avx2(y, n, levels, bits, cost, back, near);
  } else {
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t u = uint32_t(std::lower_bound(levels, levels + L, y[i]) - levels);  // first level >= y[i]
      float err[4];
      tcq_nearest(y[i], levels, L, u, err, near[i]);
      back[i] = uint8_t(tcq_step(cost, err));
    }
  }
  const uint32_t s = tcq_best_state(cost);
  tcq_traceback(n, s, back, near, bits, codes);
  return n ? cost[s] : 0.0;
}

void tcq_decode(const uint8_t* codes, uint32_t n, const float* levels, uint32_t bits, float* out) {
  uint32_t p1 = 0, p2 = 0;  // branch bits of coordinates i-1 and i-2
  for (uint32_t i = 0; i < n; ++i) {
    out[i] = levels[tcq_level_index(codes[i], p1, p2, bits)];
    p2 = p1;
    p1 = tcq_branch(codes[i], bits);
  }
}

}  // namespace tq
