#include "tq/codec/trellis.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "tq/check.h"
#include "tq/format.h"

namespace tq {

namespace {
constexpr uint32_t kStates = 4;  // state = t_{i-1} | t_{i-2} << 1
constexpr uint32_t kMaxLen = 1024;

// The subset that branch t from state s draws on, and the state it leads to.
constexpr uint32_t subset_of(uint32_t s, uint32_t t) { return (s & 1u) + 2u * (((s >> 1) & 1u) ^ t); }
constexpr uint32_t next_state(uint32_t s, uint32_t t) { return ((s << 1) | t) & (kStates - 1); }
}  // namespace

double tcq_encode(const float* y, uint32_t n, const float* levels, uint32_t bits, uint8_t* codes) {
  TQ_CHECK(bits >= 1 && bits <= 7, "trellis-coded widths are 1..7 bits, got {}", bits);
  TQ_CHECK(n <= kMaxLen, "a trellis-coded row has at most {} coordinates, got {}", kMaxLen, n);
  const uint32_t L = 2u << bits;  // union levels
  // Per coordinate and state: the predecessor's older branch bit (which of the two states leads
  // here) and the level's index in its subset. [n][kStates] each.
  uint8_t from_hi[kMaxLen][kStates], index[kMaxLen][kStates];
  float cost[kStates] = {0.0f, INFINITY, INFINITY, INFINITY};
  for (uint32_t i = 0; i < n; ++i) {
    const float x = y[i];
    // Nearest level of each subset: its last level below x or its first at or above x.
    const uint32_t u = uint32_t(std::lower_bound(levels, levels + L, x) - levels);  // first level >= x
    float err[4];
    uint8_t near[4];
    for (uint32_t k = 0; k < 4; ++k) {
      float best = INFINITY;
      uint32_t arg = 0;
      const uint32_t up = u + (k + 4 - u % 4) % 4;  // subset k's first index >= u
      for (const uint32_t c : {up - 4, up}) {        // up - 4 wraps past L when up < 4
        if (c >= L) continue;
        const float d = x - levels[c];
        const float e = d * d;
        if (e < best) best = e, arg = c / 4;
      }
      err[k] = best;
      near[k] = uint8_t(arg);
    }
    float next[kStates] = {INFINITY, INFINITY, INFINITY, INFINITY};
    for (uint32_t s = 0; s < kStates; ++s)
      for (uint32_t t = 0; t < 2; ++t) {
        const uint32_t ns = next_state(s, t), k = subset_of(s, t);
        const float c = cost[s] + err[k];
        if (c < next[ns]) {
          next[ns] = c;
          from_hi[i][ns] = uint8_t(s >> 1);
          index[i][ns] = near[k];
        }
      }
    for (uint32_t s = 0; s < kStates; ++s) cost[s] = next[s];
  }
  uint32_t s = 0;
  for (uint32_t k = 1; k < kStates; ++k)
    if (cost[k] < cost[s]) s = k;
  const double total = n ? cost[s] : 0.0;
  for (uint32_t i = n; i-- > 0;) {
    const uint32_t t = s & 1u;  // the branch that entered state s
    codes[i] = uint8_t((t << (bits - 1)) | index[i][s]);
    s = (s >> 1) | (uint32_t(from_hi[i][s]) << 1);
  }
  return total;
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
