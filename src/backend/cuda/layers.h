// The transformer's kernels for the CUDA model runner: the small ones, the products of steps of
// few rows (the rest are cuBLAS), sampling; attention is tq::cuda's paged kernels. Activations
// are fp32 in the residual stream and in the products' outputs; products read bf16 operands.
#pragma once

#include <cstdint>

#include "tq/cuda/kernels.h"

namespace tq::cuda::layers {

using bf16_t = uint16_t;  // storage of a __nv_bfloat16 (host code does not include cuda_bf16.h)

// x[r] = table[tokens[r]] * scale as fp32 (scale: ModelConfig::embed_scale, Gemma's sqrt(dim)).
// table: [vocab][dim] bf16, tokens: [n], x: [n][dim].
void embed(const bf16_t* table, const int32_t* tokens, uint32_t n, uint32_t dim, float scale, float* x, Stream s);
// In place, each of the n rows: x <- w * (x / rms(x)), the CPU runner's rmsnorm (1 / sqrt(ss / dim
// + eps)): Gemma's norms of the attention and FFN outputs before their residual adds. x: [n][dim].
void rmsnorm_rows(float* x, uint32_t n, uint32_t dim, const float* w, float eps, Stream s);
// For each of the n rows listed in rows (all rows 0..n-1 when rows is null): x[row] += add[row]
// when add is set, then out[i] = bf16(w * x[row] / rms(x[row])). x, add: [*][dim]; out: [n][dim].
void add_rmsnorm(float* x, const float* add, const int32_t* rows, uint32_t n, uint32_t dim, const float* w, float eps, bf16_t* out,
                 Stream s);
// Qwen3's per-head RMSNorm of the queries and keys (ModelConfig::qk_norm), in place on the fused
// projection, before qkv_rope and key_centre read it (the CPU runner's order): each q head's
// head_dim elements x <- q_w * (x / rms(x)), each k head's with k_w; the v heads are left alone.
// qkv: [n][(q_heads + 2 kv_heads) head_dim]; q_w, k_w: [head_dim].
void qk_norm(float* qkv, uint32_t n, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim, const float* q_w, const float* k_w, float eps,
             Stream s);
// Splits the fused projection's rows into q, k, v with the bias added (when set) and RoPE applied
// to q and k at position pos[r]. qkv: [n][(q_heads + 2 kv_heads) head_dim] (q heads, k heads, v
// heads), bias: [that width] or null; q: [n][q_heads][head_dim]; k, v: [n][kv_heads][head_dim];
// cos/sin: [context][rope_dim / 2]. adjacent: pairs (2i, 2i+1) (llama), else (i, i + rope_dim/2)
// (neox / qwen2). centre: null, or the layer's key centres [kv_heads][head_dim], subtracted from the
// keys after RoPE (KvPolicy::key_centre: keys are stored, and read, as k - mu).
void qkv_rope(const float* qkv, const float* bias, const int32_t* pos, uint32_t n, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim,
              uint32_t rope_dim, const float* cos, const float* sin, bool adjacent, const float* centre, float* q, float* k, float* v,
              Stream s);
// The key centres of a layer's first step, as the CPU runner fixes them (CpuModelRunner::key_centre):
// each KV head's mean key before RoPE (bias added; rows whose pos[r] != 0, or all when every one is
// at position 0), summed in double in row order, mapped by model::rope_centre with a, b
// ([rope_dim / 2], model::rope_mean_rotation; null when rope_dim is 0). qkv: the fused projection
// [n][(q_heads + 2 kv_heads) head_dim] (its k heads are read), bias: [that width] or null,
// pos: [n], centre: [kv_heads][head_dim].
void key_centre(const float* qkv, const float* bias, const int32_t* pos, uint32_t n, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim,
                uint32_t rope_dim, bool adjacent, const double* a, const double* b, float* centre, Stream s);
// h[r][i] = bf16(act(gu[r][i]) * gu[r][hidden + i]): the fused gate and up products, act SiLU or
// (gelu) GELU's tanh approximation, as the CPU's matmul_swiglu. gu: [n][2 hidden].
void gated_ffn(const float* gu, uint32_t n, uint32_t hidden, bool gelu, bf16_t* h, Stream s);
// y[rows] = w x for a step of one row (decode at batch 1, the logits of one sequence): each
// weight read once with 16-byte loads, fp32 sums. w: [rows][cols] bf16 with cols % 8 == 0
// (gemv_takes), x: [cols] bf16, both 16-byte aligned; y: [rows] fp32. Beyond one row it loses
// (bench/results/2026-11-30-h200-sampling-gemv.md): gemm_rows or cuBLAS take those.
inline bool gemv_takes(uint32_t n, uint32_t cols) { return n == 1 && cols % 8 == 0; }
void gemv(const bf16_t* w, uint32_t rows, uint32_t cols, const bf16_t* x, float* y, Stream s);
// y[n][rows] = x[n][cols] w^T for steps of 1..kGemmRowsMax rows on tensor cores (gemm_rows.cu):
// each weight read once, fp32 sums whose order does not depend on n or on the other rows, so a
// row's outputs are the same bits in any step (batch invariance). w: [rows][cols] bf16, x:
// [n][cols] bf16 (cols % 8 == 0, 16-byte aligned), y fp32. A programmatic dependent launch on
// Hopper: it starts reading weights before the previous kernel in the stream has finished.
inline constexpr uint32_t kGemmRowsMax = 16;
inline bool gemm_rows_takes(uint32_t n, uint32_t cols) { return n >= 1 && n <= kGemmRowsMax && cols % 8 == 0; }
void gemm_rows(const bf16_t* w, uint32_t rows, uint32_t cols, const bf16_t* x, uint32_t n, float* y, Stream s);

// One row's sampling: engine::SamplingParams (validated) and the draw u in [0, 1).
struct SampleRow {
  float temperature = 0;  // 0: the argmax (ties: the lowest id)
  int32_t top_k = 0;
  float top_p = 1, min_p = 0;
  double u = 0;
};
// ids[r] = the token engine::Sampler::sample(logits[r], args[r].u) picks with args[r]'s
// parameters (sample.cu), or -1 when the row holds a NaN or +inf or only -inf.
// logits: [rows][vocab], vocab < 2^24; args, ids: [rows].
void sample(const float* logits, uint32_t rows, uint32_t vocab, const SampleRow* args, int32_t* ids, Stream s);

// Random weights of a model of a named shape (benchmarks, like vLLM's dummy load format):
// p[i] uniform in [-scale, scale), a hash of (seed, i), so a run is reproducible.
void fill_uniform(bf16_t* p, size_t n, float scale, uint64_t seed, Stream s);
void fill_uniform(float* p, size_t n, float scale, uint64_t seed, Stream s);
void fill(float* p, size_t n, float value, Stream s);
// y[i] = x[i] rounded to bf16 (to nearest even): the dense prompt path's operands.
void to_bf16(const float* x, size_t n, bf16_t* y, Stream s);

}  // namespace tq::cuda::layers
