// Paged decode attention on the CPU: the oracle the CUDA kernels are tested against.
#pragma once

#include <cmath>
#include <cstdint>

#include "tq/kv/paged_cache.h"

namespace tq {

// Queries of a batch of sequences against one layer of a paged cache. Sequence s has seq_lens[s]
// tokens in the cache, the last `num_q_tokens` of which are its queries (1 for decode, up to 8 for
// speculative verification): query token j sits at position seq_lens[s] - num_q_tokens + j and
// sees the keys at positions <= its own (causal). Query head h reads KV head h / (q_heads / kv_heads).
struct AttentionBatch {
  const float* q = nullptr;             // [num_seqs][num_q_tokens][q_heads][head_dim]
  float* out = nullptr;                 // [num_seqs][num_q_tokens][q_heads][head_dim]
  const int32_t* block_tables = nullptr;  // [num_seqs][max_pages] page ids
  const int32_t* seq_lens = nullptr;      // [num_seqs]
  uint32_t num_seqs = 1;
  uint32_t num_q_tokens = 1;
  uint32_t q_heads = 1;
  uint32_t max_pages = 1;
  float scale = 0;  // softmax scale; 0 means 1/sqrt(head_dim)
  uint32_t sliding_window = 0;  // > 0: a query at q sees only the positions t with q - t < sliding_window
};

// What every attention path takes as its softmax scale: 0 (1/sqrt(head_dim)) or a positive finite
// number; the rest (NaN, negative, inf) is refused, where it used to be read as the default.
inline bool attention_scale_valid(float scale) { return scale == 0 || (std::isfinite(scale) && scale > 0); }

// The first position a query that sees positions below `visible` reads under a sliding window
// (0: none).
inline int32_t window_start(int32_t visible, uint32_t sliding_window) {
  return sliding_window && int64_t(visible) > int64_t(sliding_window) ? visible - int32_t(sliding_window) : 0;
}

// Softmax attention computed in double over the dequantized cache (PagedKvCache::read): the
// "fp32 computation over the dequantized cache" that faster paths must match.
void attention_reference(const PagedKvCache& cache, uint32_t layer, const AttentionBatch& batch);

}  // namespace tq
