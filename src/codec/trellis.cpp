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
  // The trellis is tail-biting (format.h): one search from each start state s, whose path must end
  // in s. Per coordinate: the four searches' back bits (tcq_step), search s's in nibble s, and the
  // subsets' nearest indices (tcq_nearest, the same for all four).
  uint16_t back[kMaxLen];
  uint8_t near[kMaxLen][4];
  float cost[4][4];  // [start state][state]
  for (uint32_t s = 0; s < 4; ++s)
    for (uint32_t k = 0; k < 4; ++k) cost[s][k] = k == s ? 0.0f : INFINITY;
  if (bits <= 3 && cpu::has_avx2_fma()) {
    simd::tcq_forward_avx2(y, n, levels, bits, cost, back, near);
  } else {
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t u = uint32_t(std::lower_bound(levels, levels + L, y[i]) - levels);  // first level >= y[i]
      float err[4];
      tcq_nearest(y[i], levels, L, u, err, near[i]);
      back[i] = 0;
      for (uint32_t s = 0; s < 4; ++s) back[i] = uint16_t(back[i] | tcq_step(cost[s], err) << (4 * s));
    }
  }
  const uint32_t s = tcq_best_start(cost[0][0], cost[1][1], cost[2][2], cost[3][3]);
  uint8_t path[kMaxLen];  // search s's back bits
  for (uint32_t i = 0; i < n; ++i) path[i] = uint8_t((back[i] >> (4 * s)) & 15u);
  tcq_traceback(n, s, path, near, bits, codes);
  return n ? cost[s][s] : 0.0;
}

void tcq_decode(const uint8_t* codes, uint32_t n, const float* levels, uint32_t bits, float* out) {
  if (n == 0) return;
  // branch bits of coordinates i-1 and i-2, around the row (tail-biting; n = 1: both coordinate 0's)
  uint32_t p1 = tcq_branch(codes[n - 1], bits), p2 = tcq_branch(codes[n >= 2 ? n - 2 : 0], bits);
  for (uint32_t i = 0; i < n; ++i) {
    out[i] = levels[tcq_level_index(codes[i], p1, p2, bits)];
    p2 = p1;
    p1 = tcq_branch(codes[i], bits);
  }
}

}  // namespace tq
