#include "tq/backend/cpu/matmul.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "matmul_avx2.h"
#include "tq/backend/cpu/qdot.h"
#include "tq/check.h"
#include "tq/cpu_features.h"

namespace tq::cpu {

float dot_f32(const float* a, const float* b, size_t n) {
  if (cpu::has_avx2_fma()) return detail::dot_f32_avx2(a, b, n);
  float acc[8] = {};  // 8 independent lanes: the compiler vectorizes this without reassociation
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

namespace {

// Float weights (f32, f16, bf16), or any weights when exact: a few rows at a time are converted to
// fp32 and dotted with all T tokens; 8 rows of <= 2K floats stay in L1/L2 while the tokens stream
// past them.
void matmul_float(const model::TensorRef& w, const float* x, size_t T, float* y, ThreadPool& pool) {
  const size_t R = w.n_rows, C = w.n_cols, row_bytes = w.row_bytes();
  constexpr size_t kTile = 8;
  const size_t tiles = (R + kTile - 1) / kTile;
  const bool avx2 = cpu::has_avx2_fma();
  pool.parallel_for(tiles, [&](size_t t0, size_t t1) {
    std::vector<float> tile(kTile * C);  // [kTile][C] dequantized weight rows
    for (size_t tb = t0; tb < t1; ++tb) {
      const size_t r0 = tb * kTile, nr = std::min(kTile, R - r0);
      model::dequantize_row(w.type, w.data + r0 * row_bytes, tile.data(), nr * C);
      for (size_t t = 0; t < T; ++t) {
        const float* xt = x + t * C;
        float* yt = y + t * R + r0;
        size_t r = 0;
        if (avx2)
          for (; r + 4 <= nr; r += 4) detail::dot4_f32_avx2(xt, &tile[r * C], C, yt + r);
        for (; r < nr; ++r) yt[r] = dot_f32(xt, &tile[r * C], C);
      }
    }
  });
}

// Tiles of 16 rows: enough work per tile to amortize the split, small enough to balance threads.
constexpr size_t kRowTile = 16;

// Rows r0..r1-1 of quantized W against the T quantized activation rows act [T][act_bytes]: the
// tile's rows stay in L1 while the tokens pass, four tokens at a time (each weight block unpacked
// once for them).
void tile_quantized(const model::TensorRef& w, const uint8_t* act, size_t act_bytes, size_t T, float* y, size_t r0, size_t r1) {
  const size_t R = w.n_rows, C = w.n_cols, row_bytes = w.row_bytes();
  const DotFn dot = dot_kernel(w.type);  // vec_dot's and vec_dot4's kernels, looked up once per tile
  const Dot4Fn dot4 = T >= 4 ? dot4_kernel(w.type) : nullptr;
  size_t t = 0;
  for (; dot4 && t + 4 <= T; t += 4) {
    const void* at[4] = {act + t * act_bytes, act + (t + 1) * act_bytes, act + (t + 2) * act_bytes, act + (t + 3) * act_bytes};
    float out[4];
    for (size_t r = r0; r < r1; ++r) {
      dot4(w.data + r * row_bytes, at, C, out);
      for (size_t j = 0; j < 4; ++j) y[(t + j) * R + r] = out[j];
    }
  }
  for (; t < T; ++t) {
    const uint8_t* at = act + t * act_bytes;
    float* yt = y + t * R;
    for (size_t r = r0; r < r1; ++r) yt[r] = dot(w.data + r * row_bytes, at, C);
  }
}

// The T activation rows quantized once to format f: [T][act_row_bytes(f, C)].
std::vector<uint8_t> quantize_acts(ActFormat f, const float* x, size_t T, size_t C) {
  const size_t act_bytes = act_row_bytes(f, C);
  std::vector<uint8_t> act(T * act_bytes);
  for (size_t t = 0; t < T; ++t) quantize_act_row(f, x + t * C, C, &act[t * act_bytes]);
  return act;
}

// Quantized weights: the T activation rows are quantized once, then each weight row meets each of
// them in integers, straight from its blocks.
void matmul_quantized(const model::TensorRef& w, ActFormat f, const float* x, size_t T, float* y, ThreadPool& pool) {
  const size_t C = w.n_cols, act_bytes = act_row_bytes(f, C);
  const std::vector<uint8_t> act = quantize_acts(f, x, T, C);
  pool.parallel_for((w.n_rows + kRowTile - 1) / kRowTile, [&](size_t t0, size_t t1) {
    for (size_t tb = t0; tb < t1; ++tb) tile_quantized(w, act.data(), act_bytes, T, y, tb * kRowTile, std::min(w.n_rows, (tb + 1) * kRowTile));
  });
}

// The quantized format all of ws share (with x's width C), or kF32 when they do not, or when a
// product is to be exact: then each goes through matmul on its own.
ActFormat shared_format(std::span<const model::TensorRef* const> ws, bool exact) {
  if (exact || ws.empty()) return ActFormat::kF32;
  for (const model::TensorRef* w : ws) {
    TQ_CHECK(w->present(), "weight '{}' is absent", w->name);
    model::ggml_check_dequantizable(w->type, w->name);
  }
  const ActFormat f = act_format(ws[0]->type);
  for (const model::TensorRef* w : ws)
    if (act_format(w->type) != f || w->n_cols != ws[0]->n_cols) return ActFormat::kF32;
  return f;
}

}  // namespace

void matmul_many(std::span<const model::TensorRef* const> ws, const float* x, size_t T, std::span<float* const> ys, ThreadPool& pool,
                 bool exact) {
  TQ_CHECK(ws.size() == ys.size(), "matmul_many: {} weights for {} outputs", ws.size(), ys.size());
  const ActFormat f = shared_format(ws, exact);
  if (f == ActFormat::kF32) {
    for (size_t i = 0; i < ws.size(); ++i) matmul(*ws[i], x, T, ys[i], pool, exact);
    return;
  }
  const size_t C = ws[0]->n_cols, act_bytes = act_row_bytes(f, C);
  const std::vector<uint8_t> act = quantize_acts(f, x, T, C);
  std::vector<size_t> first(ws.size() + 1, 0);  // [i] the first tile of weight i in the joint numbering
  for (size_t i = 0; i < ws.size(); ++i) first[i + 1] = first[i] + (ws[i]->n_rows + kRowTile - 1) / kRowTile;
  pool.parallel_for(first.back(), [&](size_t t0, size_t t1) {
    size_t i = size_t(std::upper_bound(first.begin(), first.end(), t0) - first.begin()) - 1;
    for (size_t tb = t0; tb < t1; ++tb) {
      while (tb >= first[i + 1]) ++i;
      const size_t r0 = (tb - first[i]) * kRowTile;
      tile_quantized(*ws[i], act.data(), act_bytes, T, ys[i], r0, std::min(ws[i]->n_rows, r0 + kRowTile));
    }
  });
}

namespace {
inline float swiglu(float g, float u) { return g * (1.0f / (1.0f + std::exp(-g))) * u; }
// GELU's tanh approximation (HF's gelu_pytorch_tanh, ggml's gelu) times the up projection.
inline float geglu(float g, float u) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f, kA = 0.044715f;
  return 0.5f * g * (1.0f + std::tanh(kSqrt2OverPi * g * (1.0f + kA * g * g))) * u;
}
}  // namespace

void matmul_swiglu(const model::TensorRef& gate, const model::TensorRef& up, const float* x, size_t T, float* g, float* u, ThreadPool& pool,
                   bool exact, model::FfnAct activation) {
  const auto gated = activation == model::FfnAct::GeluTanh ? geglu : swiglu;
  const model::TensorRef* ws[2] = {&gate, &up};
  const ActFormat f = shared_format(ws, exact);
  const size_t F = gate.n_rows;
  if (f == ActFormat::kF32 || up.n_rows != F) {
    matmul(gate, x, T, g, pool, exact);
    matmul(up, x, T, u, pool, exact);
    for (size_t i = 0; i < T * F; ++i) g[i] = gated(g[i], u[i]);
    return;
  }
  const size_t C = gate.n_cols, act_bytes = act_row_bytes(f, C);
  const std::vector<uint8_t> act = quantize_acts(f, x, T, C);
  pool.parallel_for((F + kRowTile - 1) / kRowTile, [&](size_t t0, size_t t1) {
    for (size_t tb = t0; tb < t1; ++tb) {
      const size_t r0 = tb * kRowTile, r1 = std::min(F, r0 + kRowTile);
      tile_quantized(gate, act.data(), act_bytes, T, g, r0, r1);
      tile_quantized(up, act.data(), act_bytes, T, u, r0, r1);
      for (size_t t = 0; t < T; ++t)
        for (size_t r = r0; r < r1; ++r) g[t * F + r] = gated(g[t * F + r], u[t * F + r]);
    }
  });
}

void matmul(const model::TensorRef& w, const float* x, size_t T, float* y, ThreadPool& pool, bool exact) {
  TQ_CHECK(w.present(), "weight '{}' is absent", w.name);
  model::ggml_check_dequantizable(w.type, w.name);
  const ActFormat f = act_format(w.type);
  if (f == ActFormat::kF32 || exact)
    matmul_float(w, x, T, y, pool);
  else
    matmul_quantized(w, f, x, T, y, pool);
}

}  // namespace tq::cpu
