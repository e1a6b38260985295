// The steps of the trellis search (tq/codec/trellis.h), host and device alike, so that the CPU's
// codes (tcq_encode, built from them; its AVX2 forward pass repeats them lane-wise, tested bit for
// bit) and the GPU's (quantize_store's tcq_codes, built from them) come from one algorithm.
// Per coordinate: the nearest level of each subset (tcq_nearest), then one add-compare-select step
// over the 4 states (tcq_step), which records where each state came from; at the row's end the
// search of least cost (tcq_best_start: one search from each start state, tail-biting) and its
// path traced back (tcq_traceback).
//
// Every float operation rounds once, in this order, on both sides: the device's intrinsics
// (__fsub_rn, __fmul_rn, __fadd_rn) keep nvcc from fusing a multiply and an add into an FMA; the
// host's C++ is compiled with -ffp-contract=off (the top CMakeLists.txt's tq_options) for the same
// reason. Comparisons are strict: ties keep the lower state, then the lower level.
#pragma once

#include <cstdint>

#include "tq/common.h"

namespace tq {

namespace tcq_detail {
TQ_HD float sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
TQ_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
TQ_HD float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
TQ_HD float inf() { return __builtin_huge_valf(); }
}  // namespace tcq_detail

// The trellis's state before a coordinate is its two previous branch bits, t_{i-1} | t_{i-2} << 1
// (before the row: the row's last two, tail-biting; the search runs from each start state).
// Branch t from state s draws on subset tcq_subset(s, t) and leads to tcq_next_state(s, t):
// format.h's tcq_level_index read as a walk.
TQ_HD constexpr uint32_t tcq_subset(uint32_t s, uint32_t t) { return (s & 1u) + 2u * (((s >> 1) & 1u) ^ t); }
TQ_HD constexpr uint32_t tcq_next_state(uint32_t s, uint32_t t) { return ((s << 1) | t) & 3u; }

// The nearest level to x of each subset k (levels k, k + 4, ... of the L ascending union levels):
// its squared error err[k] and its index within the subset near[k]. u: the index of the first
// level >= x (L if none; a lower_bound), so the candidates are subset k's last level below u and
// its first at or above it.
TQ_HD void tcq_nearest(float x, const float* levels, uint32_t L, uint32_t u, float* err, uint8_t* near) {
  for (uint32_t k = 0; k < 4; ++k) {
    float best = tcq_detail::inf();
    uint32_t arg = 0;
    const uint32_t up = u + (k + 4 - u % 4) % 4;  // subset k's first index >= u
    for (uint32_t r = 0; r < 2; ++r) {
      const uint32_t c = r == 0 ? up - 4 : up;  // up - 4 wraps past L when up < 4
      if (c >= L) continue;
      const float d = tcq_detail::sub(x, levels[c]), e = tcq_detail::mul(d, d);
      if (e < best) best = e, arg = c / 4;
    }
    err[k] = best;
    near[k] = uint8_t(arg);
  }
}

// One coordinate of the search: cost[s], the least squared error of a path reaching state s,
// moves past a coordinate whose subsets' errors are err. Returns the coordinate's back bits: bit s
// is the older branch bit of the state that the best path into s came from, which is then
// (s >> 1) | bit << 1.
TQ_HD uint32_t tcq_step(float* cost, const float* err) {
  float next[4] = {tcq_detail::inf(), tcq_detail::inf(), tcq_detail::inf(), tcq_detail::inf()};
  uint32_t back = 0;
  for (uint32_t s = 0; s < 4; ++s)
    for (uint32_t t = 0; t < 2; ++t) {
      const uint32_t ns = tcq_next_state(s, t);
      const float c = tcq_detail::add(cost[s], err[tcq_subset(s, t)]);
      if (c < next[ns]) {
        next[ns] = c;
        back = (back & ~(1u << ns)) | ((s >> 1) << ns);
      }
    }
  for (uint32_t s = 0; s < 4; ++s) cost[s] = next[s];
  return back;
}

// The start state of the tail-biting search whose path, back in its start state, costs least: es
// is search s's cost of ending in state s (ties: the lower s).
TQ_HD uint32_t tcq_best_start(float e0, float e1, float e2, float e3) {
  uint32_t s = 0;
  float best = e0;
  if (e1 < best) s = 1, best = e1;
  if (e2 < best) s = 2, best = e2;
  if (e3 < best) s = 3, best = e3;
  return s;
}

// codes[0..n) of the path that ends in state s: back[i] are coordinate i's back bits (tcq_step),
// near[i] its subsets' nearest indices (tcq_nearest). A code is the branch bit on top of the index.
TQ_HD void tcq_traceback(uint32_t n, uint32_t s, const uint8_t* back, const uint8_t (*near)[4], uint32_t bits, uint8_t* codes) {
  for (uint32_t i = n; i-- > 0;) {
    const uint32_t t = s & 1u, prev = (s >> 1) | (((uint32_t(back[i]) >> s) & 1u) << 1);
    codes[i] = uint8_t((t << (bits - 1)) | near[i][tcq_subset(prev, t)]);
    s = prev;
  }
}

}  // namespace tq
