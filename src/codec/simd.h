// Runtime-dispatched SIMD kernels of the core (AVX2 + FMA). Each has a scalar twin that is the
// reference; tests pin them together (bit-identical where the operations are the same, within a
// stated tolerance where the summation order differs).
#pragma once

#include <cstddef>
#include <cstdint>

#include "tq/format.h"

namespace tq::simd {

// Callers check tq::cpu::has_avx2_fma() (tq/cpu_features.h) first.

// In-place normalized fast Walsh-Hadamard transform, n a power of two; bit-identical to fwht_scalar.
void fwht_avx2(float* x, uint32_t n);

// sum_i q[i] * centroids[code_i] over one row of packed codes. q: [pd], codes: [pd / 32 * bits] words,
// centroids: [2^bits]. Summation order differs from the scalar loop (8 lanes, FMA).
float dot_codes_avx2(const float* q, const uint32_t* codes, uint32_t pd, uint32_t bits, const float* centroids);

// out[i] = centroids[code i] over one row of packed codes (pd values).
void decode_codes_avx2(const uint32_t* codes, uint32_t pd, uint32_t bits, const float* centroids, float* out);
// out[i] = levels[tcq_level_index(...)] over one row of trellis-coded codes (format.h kTqTcq; pd
// values, the tail-biting trellis): bit-identical to tcq_decode on the unpacked codes.
// levels: the union, [2^(bits + 1)]; bits 1..7.
void tcq_decode_avx2(const uint32_t* codes, uint32_t pd, uint32_t bits, const float* levels, float* out);
// The forward pass of tcq_encode's four searches (tq/codec/trellis_steps.h; one from each start
// state) for widths 1..3 (unions of <= 16 levels): per coordinate the searches' back bits back[i]
// (search s's in nibble s) and the subsets' nearest indices near[i]; cost[s]: search s's four
// states' costs, its start costs in, its end costs out. Bit-identical to tcq_nearest and tcq_step.
void tcq_forward_avx2(const float* y, uint32_t n, const float* levels, uint32_t bits, float (*cost)[4], uint16_t* back,
                      uint8_t (*near)[4]);
// sum_i q[i] * levels[...] over a row of 2- or 3-bit trellis codes, fused: bit-identical to
// dot_decoded_avx2(q, v, pd, bits) over tcq_decode_avx2's v.
float tcq_dot_avx2(const float* q, const uint32_t* codes, uint32_t pd, uint32_t bits, const float* levels);
// sum_i q[i] * v[i] for v = decode_codes_avx2's output: bit-identical to dot_codes_avx2 on the codes
// (the same products in the same accumulators).
float dot_decoded_avx2(const float* q, const float* v, uint32_t pd, uint32_t bits);
// y[i] += w * x[i] for n values, a multiply and an add each (no FMA): bit-identical to the plain loop.
void axpy_avx2(float w, const float* x, float* y, uint32_t n);
// The same, by axpy_avx2 where `avx2` (cpu::has_avx2_fma(), which callers in a loop ask once) or
// by the plain loop: the same bits either way.
inline void axpy(bool avx2, float w, const float* x, float* y, uint32_t n) {
  if (avx2) return axpy_avx2(w, x, y, n);
  for (uint32_t i = 0; i < n; ++i) y[i] += w * x[i];
}
// y[g][i] += w[g][r] * x[r][i] for g < G, r < rows (in increasing r), i < n: the same multiplies and
// adds, in the same order per element, as G x rows calls of axpy_avx2, with the rows read once for
// all G outputs and each output kept in registers across the rows. Strides in floats.
void axpy_rows_avx2(uint32_t G, const float* w, size_t w_stride, const float* x, size_t x_stride, uint32_t rows, float* y, size_t y_stride,
                    uint32_t n);
// The same over rows stored in `enc` (kFp32, kFp16 or kBf16) at x + r * x_stride bytes, converted in
// registers (exactly), so the bits are those of the fp32 rows converted first.
void axpy_rows_avx2(uint32_t G, const float* w, size_t w_stride, const uint8_t* x, size_t x_stride, Encoding enc, uint32_t rows, float* y,
                    size_t y_stride, uint32_t n);

// Scores of G queries against `rows` float key rows, each row read and converted once for all G:
// out[g * out_stride + r] = <q + g * q_stride, row r> * scale, row r at x + r * x_stride bytes in
// `enc` (kFp32, kFp16 or kBf16, converted in registers), n % 8 == 0. Each score is dot_f32_avx2's
// bits times scale: FMA lanes acc0 (8-float chunks 0, 2, 4, ...; the last chunk when n % 16 == 8)
// and acc1 (chunks 1, 3, ...), then acc0 + acc1 summed ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)).
// So a score depends on neither G, nor `rows`, nor where a row falls in the kernel's blocks of 8.
void dot_rows_avx2(uint32_t G, const float* q, size_t q_stride, const uint8_t* x, size_t x_stride, Encoding enc, uint32_t rows, uint32_t n,
                   float scale, float* out, size_t out_stride);

// codes[i] = number of boundaries strictly below y[i] (the scalar Codebook::encode), for n values.
void encode_avx2(const float* y, uint32_t n, const float* boundaries, uint32_t bits, uint8_t* codes);

// out[i] = the fp16 value at src + 2i, for n values (F16C); bit-identical to f16_to_f32.
void load_f16_avx2(const uint8_t* src, uint32_t n, float* out);

}  // namespace tq::simd
