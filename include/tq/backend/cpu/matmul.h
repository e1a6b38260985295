// Matrix products of activations with (possibly quantized) ggml weight matrices: a batch of T
// tokens goes through each weight matrix at once, so every weight row is dequantized once per
// batch instead of once per token.
#pragma once

#include <cstddef>

#include "tq/backend/cpu/thread_pool.h"
#include "tq/model/model.h"

namespace tq::cpu {

// y[T][R] = x[T][C] * W^T for W [R][C] (R = w.n_rows, C = w.n_cols). Rows of W are split over
// the pool; each thread dequantizes a few rows into a small float tile and dots them with all T
// tokens. Throws tq::Error when W is absent or of a type that cannot be dequantized.
void matmul(const model::TensorRef& w, const float* x, size_t T, float* y, ThreadPool& pool);

// <a, b> over n floats: the AVX2+FMA kernel when the CPU has it, else a portable 8-lane loop.
float dot_f32(const float* a, const float* b, size_t n);

}  // namespace tq::cpu
