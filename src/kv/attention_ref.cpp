#include <fmt/format.h>

#include <cmath>
#include <vector>

#include "tq/kv/attention_ref.h"
#include "tq/check.h"

namespace tq {

void attention_reference(const PagedKvCache& cache, uint32_t layer, const AttentionBatch& a) {
  const CacheShape& shape = cache.shape();
  const uint32_t d = shape.head_dim, hkv = shape.kv_heads, ps = cache.page_size();
  TQ_CHECK(a.q_heads >= hkv && a.q_heads % hkv == 0, "query heads ({}) must be a multiple of KV heads ({})", a.q_heads, hkv);
  TQ_CHECK(a.num_q_tokens >= 1, "need at least one query token per sequence, got {}", a.num_q_tokens);
  const uint32_t group = a.q_heads / hkv;
  TQ_CHECK(attention_scale_valid(a.scale), "attention scale {} must be 0 (1/sqrt(head_dim)) or positive and finite", a.scale);
  const double scale = a.scale > 0 ? a.scale : 1.0 / std::sqrt(double(d));
  std::vector<float> kbuf(size_t(hkv) * d), vbuf(size_t(hkv) * d);
  for (uint32_t s = 0; s < a.num_seqs; ++s) {
    const int32_t len = a.seq_lens[s];
    TQ_CHECK(len >= int32_t(a.num_q_tokens) && uint32_t(len) <= a.max_pages * ps, "sequence {}: length {} outside [{}, {}]", s, len,
             a.num_q_tokens, a.max_pages * ps);
    // Dequantize the sequence once: [len][hkv][d]
    std::vector<float> K(size_t(len) * hkv * d), V(size_t(len) * hkv * d);
    for (int32_t t = 0; t < len; ++t) {
      const int32_t page = a.block_tables[size_t(s) * a.max_pages + t / ps];
      cache.read(layer, int64_t(page) * ps + t % ps, &K[size_t(t) * hkv * d], &V[size_t(t) * hkv * d]);
    }
    for (uint32_t j = 0; j < a.num_q_tokens; ++j) {
      const int32_t visible = len - int32_t(a.num_q_tokens) + int32_t(j) + 1, t0 = window_start(visible, a.sliding_window);
      for (uint32_t h = 0; h < a.q_heads; ++h) {
        const uint32_t kvh = h / group;
        const float* q = a.q + ((size_t(s) * a.num_q_tokens + j) * a.q_heads + h) * d;
        std::vector<double> logits(visible - t0);  // positions t0 .. visible - 1
        double mx = -INFINITY;
        for (int32_t t = t0; t < visible; ++t) {
          const float* k = &K[(size_t(t) * hkv + kvh) * d];
          double dot = 0;
          for (uint32_t i = 0; i < d; ++i) dot += double(q[i]) * k[i];
          logits[t - t0] = dot * scale;
          mx = std::max(mx, logits[t - t0]);
        }
        double sum = 0;
        for (double& l : logits) sum += (l = std::exp(l - mx));
        float* o = a.out + ((size_t(s) * a.num_q_tokens + j) * a.q_heads + h) * d;
        for (uint32_t i = 0; i < d; ++i) {
          double acc = 0;
          for (int32_t t = t0; t < visible; ++t) acc += logits[t - t0] * V[(size_t(t) * hkv + kvh) * d + i];
          o[i] = float(acc / sum);
        }
      }
    }
  }
}

}  // namespace tq
