// AVX2 + FMA + F16C kernels of the quantized dot products (qdot.h); nb blocks of the weight type.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tq/backend/cpu/qdot.h"

namespace tq::cpu::detail {

// d and the codes of n activations (n a multiple of 8): bit-identical to the scalar quantize_block.
float quantize_block_avx2(const float* x, size_t n, int8_t* q);

float dot_q8_0_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb);
float dot_q4_0_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb);
float dot_q4_1_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb);
float dot_q5_0_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb);
// Four tokens' activation rows a[0..4) against one weight row: out[j] is bit for bit the one-token
// kernel's result for a[j].
void dot4_q8_0_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
void dot4_q4_0_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
void dot4_q4_1_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
void dot4_q5_0_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
float dot_q5_1_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb);
float dot_iq4_nl_avx2(const uint8_t* w, const ActQ8x32* a, size_t nb);
void dot4_q5_1_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
void dot4_iq4_nl_avx2(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
float dot_q4_K_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb);
float dot_q5_K_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb);
float dot_q6_K_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb);
// Four tokens of the K-quants, bit for bit the one-token kernels. AVX-512 CPUs run these too: there
// is no 512-bit four-token K-quant kernel (for the 32-element types the 512-bit four-token form
// measured slower than AVX2's on Zen 4; qdot_avx512.cpp).
void dot4_q4_K_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out);
void dot4_q5_K_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out);
void dot4_q6_K_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out);
// q2_K, q3_K and iq4_xs: AVX2 only, AVX-512 CPUs run these (one and four tokens).
float dot_q2_K_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb);
float dot_q3_K_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb);
float dot_iq4_xs_avx2(const uint8_t* w, const ActQ8x256* a, size_t nb);
void dot4_q2_K_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out);
void dot4_q3_K_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out);
void dot4_iq4_xs_avx2(const uint8_t* w, const ActQ8x256* const* a, size_t nb, float* out);

}  // namespace tq::cpu::detail
