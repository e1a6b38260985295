#include "tq/backend/cpu/matmul.h"

#include <fmt/format.h>

#include <algorithm>
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

// Quantized weights: the T activation rows are quantized once (qdot.h), then each weight row
// meets each of them in integers, straight from its blocks.
void matmul_quantized(const model::TensorRef& w, ActFormat f, const float* x, size_t T, float* y, ThreadPool& pool) {
  const size_t R = w.n_rows, C = w.n_cols, row_bytes = w.row_bytes(), act_bytes = act_row_bytes(f, C);
  std::vector<uint8_t> act(T * act_bytes);  // [T][act_bytes] quantized activation rows
  for (size_t t = 0; t < T; ++t) quantize_act_row(f, x + t * C, C, &act[t * act_bytes]);
  // Tiles of 16 rows: enough work per tile to amortize the split, small enough to balance threads.
  constexpr size_t kTile = 16;
  const size_t tiles = (R + kTile - 1) / kTile;
  pool.parallel_for(tiles, [&](size_t t0, size_t t1) {
    for (size_t tb = t0; tb < t1; ++tb) {  // a tile's rows stay in L1 while the T tokens pass
      const size_t r0 = tb * kTile, r1 = std::min(R, r0 + kTile);
      size_t t = 0;
      for (; t + 4 <= T; t += 4) {  // four tokens at a time: each weight block unpacked once for them
        const void* at[4] = {&act[t * act_bytes], &act[(t + 1) * act_bytes], &act[(t + 2) * act_bytes], &act[(t + 3) * act_bytes]};
        float out[4];
        for (size_t r = r0; r < r1; ++r) {
          vec_dot4(w.type, w.data + r * row_bytes, at, C, out);
          for (size_t j = 0; j < 4; ++j) y[(t + j) * R + r] = out[j];
        }
      }
      for (; t < T; ++t) {
        const uint8_t* at = &act[t * act_bytes];
        float* yt = y + t * R;
        for (size_t r = r0; r < r1; ++r) yt[r] = vec_dot(w.type, w.data + r * row_bytes, at, C);
      }
    }
  });
}

}  // namespace

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
