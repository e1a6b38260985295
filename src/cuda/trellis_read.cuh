// Reading trellis-coded rows (format.h kTqTcq) in the attention kernels: an octet of b-bit trellis
// codes becomes the octet of its (b + 1)-bit union indices as 8 selector nibbles (format.h's
// tcq_octet_index), which the plain (b + 1)-bit paths then look up in the union codebook
// (widths.h). A coordinate's index needs the branch bits of the two coordinates before it: within
// an octet they are its neighbours'; into an octet they carry from the previous one, around the
// row (tcq_carry for the first octet a thread reads, then tcq_octet passes them on). Widths 1..3
// (the kernels': 2, 3).
#pragma once

#include <cstdint>

#include "device_common.cuh"
#include "tq/format.h"

namespace tq::cuda::dev {

// The branch word carried into octet og0 of the group at `group` (B words) of a row of G groups
// (format.h's tcq_carry_into: for the row's first group, `first`, from its last group).
template <int B, int G>
__device__ __forceinline__ uint32_t tcq_carry(const uint32_t* group, int og0, bool first) {
  return tcq_carry_into(group, uint32_t(og0), first, G, B);
}

// Octet og of a group of trellis codes w (B words) as 8 nibbles of union indices; prev: the branch
// word of the octet before it (tcq_carry, or the previous call's), replaced by this octet's.
template <int B>
__device__ __forceinline__ uint32_t tcq_octet(const uint32_t (&w)[B], int og, uint32_t& prev) {
  static_assert(B >= 1 && B <= 3, "union indices below 16");
  return tcq_octet_index(octet_selector<B>(w, og), B, prev);
}

}  // namespace tq::cuda::dev
