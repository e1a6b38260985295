// Quantized dot products: the CPU backend's matrix products keep the GGUF weights in their blocks
// and quantize each activation row once to 8 bits, so a weight block and an activation block meet
// in integer multiply-adds (AVX2 maddubs/madd) and only one float multiply-add per block remains.
// This is what llama.cpp does (ggml's vec_dot_q4_1_q8_1 and kin); the layouts here are our own.
//
// Activation formats, chosen by the weight type:
//   Q8x32  (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl weights): blocks of 32: d, the sum of the codes, 32 int8 codes.
//   Q8x256 (q2_K, q3_K, q4_K, q5_K, q6_K, iq4_xs weights): blocks of 256: d, the sums of each 16 codes, 256 codes.
//   F32    (f32, f16, bf16 weights): the activations as they are (matmul dequantizes the weights).
// Codes are round(x / d) with d = max|x| / 127, so |x - d*q| <= d/2 for every element of a block.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tq/model/ggml_quants.h"

namespace tq::cpu {

enum class ActFormat { kF32, kQ8x32, kQ8x256 };

struct ActQ8x32 {
  float d;       // scale: x ~ d * q
  int32_t sum;   // sum of q[0..32): the offset term of q4_0 and q4_1 weights
  int8_t q[32];  // codes in [-127, 127]
};
struct ActQ8x256 {
  float d;
  int16_t bsums[16];  // bsums[i] = sum of q[16i .. 16i+16): the min / offset terms of the K-quants
  int8_t q[256];
};
static_assert(sizeof(ActQ8x32) == 40 && sizeof(ActQ8x256) == 292);

ActFormat act_format(model::GgmlType w);
// Bytes of one quantized activation row of n elements (n a multiple of the format's block: checked).
size_t act_row_bytes(ActFormat f, size_t n);
// out[act_row_bytes(f, n)] = x[n] quantized. A non-finite element makes its block's d NaN, so the
// products it enters are NaN rather than silently finite.
void quantize_act_row(ActFormat f, const float* x, size_t n, void* out);

// The scalar reference: integer sums per block (exact), combined in double. `abs_sum` is the sum of
// the magnitudes of every product the dot is made of (code products and offset terms, times their
// float scales): it bounds the rounding of an fp32 evaluation that groups them in any order.
struct DotRef {
  double value = 0, abs_sum = 0;
};
DotRef vec_dot_ref(model::GgmlType w, const uint8_t* row, const void* act, size_t n);

// <row, act> over n elements of a weight row of type w (a quantized type) and its quantized
// activation row: the AVX-512 kernel (q8_0, q4_0, q4_1, q5_0 and q4_K to q6_K; bit for bit the AVX2
// one) or the AVX2 kernel when the CPU has it (cpu::simd_level()), else the portable one (integer
// block sums, fp32 scales: within the bound of KernelMatchesReference of the reference).
float vec_dot(model::GgmlType w, const uint8_t* row, const void* act, size_t n);
// out[j] = vec_dot(w, row, act[j], n) for four activation rows, bit for bit, the weight row's blocks
// unpacked once for all four where a kernel does that (every quantized type with AVX2).
void vec_dot4(model::GgmlType w, const uint8_t* row, const void* const act[4], size_t n, float out[4]);

// The kernels vec_dot and vec_dot4 run for weight type w at the SIMD level in use, looked up once
// for a loop over rows (matmul) instead of once per row. dot4_kernel: nullptr where no kernel takes
// four tokens at once (vec_dot4 then runs the one-token kernel four times).
using DotFn = float (*)(const uint8_t* row, const void* act, size_t n);
using Dot4Fn = void (*)(const uint8_t* row, const void* const act[4], size_t n, float out[4]);
DotFn dot_kernel(model::GgmlType w);
Dot4Fn dot4_kernel(model::GgmlType w);

}  // namespace tq::cpu
