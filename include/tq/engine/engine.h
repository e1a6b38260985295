// A CPU forward pass for Llama-family models (llama2.c checkpoints, GGUF llama / qwen2) whose KV
// cache is a tq::PagedKvCache in the KV spec the user chose: keys and values are quantized as they
// are written and attention reads the packed pages directly (kv_store.h).
//
// Shaped for continuous batching: sequences hold block tables over one shared page pool, and one
// forward() runs the new tokens of several sequences together (every weight matrix is applied to
// all of them at once; attention is per sequence, causal).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tq/backend/cpu/kv_store.h"
#include "tq/backend/cpu/thread_pool.h"
#include "tq/kv/spec.h"
#include "tq/model/model.h"

namespace tq::engine {

struct EngineOptions {
  unsigned threads = 0;     // 0: all hardware threads
  uint32_t context = 0;     // most tokens per sequence; 0: the model's training context
  uint32_t max_seqs = 1;    // sequences the page pool is sized for (when num_pages is 0)
  uint32_t num_pages = 0;   // pages in the pool; 0: max_seqs * ceil(context / page size)
  uint32_t max_chunk = 64;  // most tokens per forward() call, all sequences together
};

// New tokens of one sequence in a batch.
struct BatchItem {
  int seq = 0;
  std::vector<int> tokens;
  bool all_logits = false;  // logits of every token (perplexity) or of the last one only
};

class Engine {
 public:
  // Keeps a reference to `m` (must outlive the engine). Throws tq::Error on an unsupported model
  // (head dim, missing tensors, weight types that cannot be dequantized) or a bad KV spec.
  Engine(const model::Model& m, const KvSpec& spec, const EngineOptions& opts = {});

  const model::ModelConfig& config() const { return cfg_; }
  const EngineOptions& options() const { return opts_; }
  const KvStore& kv() const { return *kv_; }
  ThreadPool& pool() { return pool_; }

  int add_sequence();             // a new empty sequence; returns its id
  void remove_sequence(int seq);  // its pages go back to the pool
  void reset_sequence(int seq);   // empty again (pages released)
  uint32_t seq_len(int seq) const;
  size_t kv_bytes(int seq) const;  // pages + side buffers held by the sequence

  // Runs the batch (total tokens <= max_chunk) and appends the tokens to their sequences.
  // Returns logits, item by item: [n_tokens or 1][vocab]. Throws tq::Error (before changing any
  // sequence) when a sequence would exceed the context or a token id is out of range, and when
  // the page pool is exhausted.
  std::vector<float> forward(const std::vector<BatchItem>& batch);
  // One sequence, tokens in chunks of max_chunk: logits of the last token [vocab], or of every
  // token [n][vocab] when all_logits.
  std::vector<float> prefill(int seq, const std::vector<int>& tokens, bool all_logits = false);

 private:
  SeqKv& seq(int id);
  const SeqKv& seq(int id) const;
  void rmsnorm(const float* x, const std::vector<float>& w, float* out) const;
  void rope(float* v, uint32_t pos) const;

  const model::Model& model_;
  model::ModelConfig cfg_;
  EngineOptions opts_;
  ThreadPool pool_;
  std::unique_ptr<KvStore> kv_;
  std::vector<std::unique_ptr<SeqKv>> seqs_;  // null: removed
  std::vector<std::vector<float>> attn_norm_, ffn_norm_;  // [layers][dim]
  std::vector<float> out_norm_;                           // [dim]
  std::vector<float> rope_cos_, rope_sin_;                // [context][rope_dim / 2]
};

}  // namespace tq::engine
