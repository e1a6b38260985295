// The AVX2 + FMA kernels of matmul.cpp (matmul_avx2.cpp alone is compiled with -mavx2 -mfma;
// callers check tq::cpu::has_avx2_fma() first).
#pragma once

#include <cstddef>

namespace tq::cpu::detail {

float dot_f32_avx2(const float* a, const float* b, size_t n);
// out[r] = <x, w + r * n> for r in 0..3
void dot4_f32_avx2(const float* x, const float* w, size_t n, float* out);

}  // namespace tq::cpu::detail
