// The portable quantized dot products (no SIMD intrinsics): vec_dot's path on CPUs without AVX2,
// and under cpu::set_simd_level(SimdLevel::kPortable) or TQ_SIMD=portable. Integer sums per block
// (exact, as the reference's), scales applied in fp32 once per block and summed in block order.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tq/backend/cpu/qdot.h"

namespace tq::cpu::detail {

// t: q8_0, q4_0, q4_1 or q5_0; nb blocks of 32.
float dot_q8x32_portable(model::GgmlType t, const uint8_t* w, const ActQ8x32* a, size_t nb);
// t: q4_K, q5_K or q6_K; nb blocks of 256.
float dot_q8x256_portable(model::GgmlType t, const uint8_t* w, const ActQ8x256* a, size_t nb);

}  // namespace tq::cpu::detail
