// AVX2 + FMA dot products (matmul_avx2.h).
#include "matmul_avx2.h"

#include "avx2_common.h"

#include <immintrin.h>

namespace tq::cpu::detail {

float dot_f32_avx2(const float* a, const float* b, size_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void dot4_f32_avx2(const float* x, const float* w, size_t n, float* out) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + i), a0);
    a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + n + i), a1);
    a2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 2 * n + i), a2);
    a3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 3 * n + i), a3);
  }
  out[0] = hsum(a0);
  out[1] = hsum(a1);
  out[2] = hsum(a2);
  out[3] = hsum(a3);
  for (; i < n; ++i)
    for (int r = 0; r < 4; ++r) out[r] += x[i] * w[size_t(r) * n + i];
}

}  // namespace tq::cpu::detail
