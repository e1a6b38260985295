// Matrix products of activations with (possibly quantized) ggml weight matrices: a batch of T
// tokens goes through each weight matrix at once.
#pragma once

#include <cstddef>
#include <span>

#include "tq/backend/cpu/thread_pool.h"
#include "tq/model/model.h"

namespace tq::cpu {

// y[T][R] = x[T][C] * W^T for W [R][C] (R = w.n_rows, C = w.n_cols). Rows of W are split over
// the pool. Quantized W (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q2_K ... q6_K, iq4_xs): the T rows of x are quantized once to
// 8 bits and each weight row meets them in integer dot products (qdot.h). Float W (f32, f16, bf16):
// each thread converts a few rows to fp32 and dots them with all T tokens. Throws tq::Error when W
// is absent or of a type that cannot be dequantized.
// exact: quantized W too is multiplied in fp32, row by row dequantized, on the unquantized x (the
// numerical reference of the 8-bit path; slower).
void matmul(const model::TensorRef& w, const float* x, size_t T, float* y, ThreadPool& pool, bool exact = false);

// matmul for several weights of the same input x [T][C] (a layer's q, k and v): ys[i] = x * ws[i]^T,
// each bit for bit matmul's, in one parallel section over the rows of all of them with x quantized
// once, so the threads wait for each other once instead of once per weight. Weights of different
// activation formats, float weights, or exact: one matmul after the other.
void matmul_many(std::span<const model::TensorRef* const> ws, const float* x, size_t T, std::span<float* const> ys, ThreadPool& pool,
                 bool exact = false);
// The feed-forward's gate and up products and SwiGLU: g[T][F] = silu(x * gate^T) * (x * up^T), u [T][F]
// scratch (it ends holding x * up^T). One parallel section: each tile of rows computes its gate and up
// rows and applies SwiGLU to them, g * (1 / (1 + exp(-g))) * u; bit for bit two matmuls and the loop.
// act GeluTanh (Gemma): the tanh-approximated GELU in place of silu, gelu(g) * u.
void matmul_swiglu(const model::TensorRef& gate, const model::TensorRef& up, const float* x, size_t T, float* g, float* u, ThreadPool& pool,
                   bool exact = false, model::FfnAct act = model::FfnAct::SiLU);

// <a, b> over n floats: the AVX2+FMA kernel when the CPU has it, else a portable 8-lane loop.
float dot_f32(const float* a, const float* b, size_t n);

}  // namespace tq::cpu
