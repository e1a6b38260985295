// AVX-512 (F + BW + VL, VNNI when `vnni`) kernels of the quantized dot products (qdot.h): bit for
// bit the AVX2 kernels of qdot_avx2.h. Callers check cpu::has_avx512() first, and
// pass cpu::has_avx512_vnni(). One token: 512-bit registers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tq/backend/cpu/qdot.h"

namespace tq::cpu::detail {

float dot_q8_0_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni);
float dot_q4_0_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni);
float dot_q4_1_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni);
float dot_q5_0_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni);
// Four tokens, with VNNI only (callers check cpu::has_avx512_vnni()): bit for bit the dot4_*_avx2.
void dot4_q8_0_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
void dot4_q4_0_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
void dot4_q4_1_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
void dot4_q5_0_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
float dot_q5_1_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni);
float dot_iq4_nl_avx512(const uint8_t* w, const ActQ8x32* a, size_t nb, bool vnni);
void dot4_q5_1_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
void dot4_iq4_nl_avx512vnni(const uint8_t* w, const ActQ8x32* const* a, size_t nb, float* out);
// The K-quants, one token (nb blocks of 256): bit for bit dot_q4_K_avx2 and kin.
float dot_q4_K_avx512(const uint8_t* w, const ActQ8x256* a, size_t nb, bool vnni);
float dot_q5_K_avx512(const uint8_t* w, const ActQ8x256* a, size_t nb, bool vnni);
float dot_q6_K_avx512(const uint8_t* w, const ActQ8x256* a, size_t nb, bool vnni);
// q2_K and q3_K, one token: bit for bit their AVX2 kernels. (iq4_xs: the AVX2 kernel, qdot_avx512.cpp says why.)
float dot_q2_K_avx512(const uint8_t* w, const ActQ8x256* a, size_t nb, bool vnni);
float dot_q3_K_avx512(const uint8_t* w, const ActQ8x256* a, size_t nb, bool vnni);

}  // namespace tq::cpu::detail
