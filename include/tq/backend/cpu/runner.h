// The CPU model runner: a forward pass for Llama-family models (llama2.c checkpoints, GGUF llama /
// qwen2 / qwen3 / gemma3) on the host, its KV cache in the KV spec the user chose (kv_store.h: quantized as written,
// attention over the packed pages). Every weight matrix is applied to all the step's tokens at
// once; attention is per sequence, causal.
#pragma once

#include <memory>

#include "tq/backend/cpu/kv_store.h"
#include "tq/backend/cpu/thread_pool.h"
#include "tq/engine/runner.h"

namespace tq::cpu {

class CpuModelRunner : public engine::ModelRunner {
 public:
  // Keeps a reference to `m` (must outlive the runner). Throws tq::Error on an unsupported model
  // (head dim, missing tensors, weight types that cannot be dequantized) or a bad KV spec.
  CpuModelRunner(const model::Model& m, const KvSpec& spec, const engine::RunnerOptions& opts);

  const model::ModelConfig& config() const override { return cfg_; }
  const KvSpec& spec() const override { return kv_.spec(); }
  std::string describe() const override;
  void add_sequence(int seq) override { kv_.add_sequence(seq); }
  std::vector<float> forward(const std::vector<engine::StepSeq>& step) override;
  uint32_t num_pages() const override { return opts_.num_pages; }
  uint32_t max_chunk() const override { return opts_.max_chunk; }
  size_t page_bytes() const override { return kv_.page_bytes(); }
  size_t side_bytes() const override { return kv_.side_bytes(); }
  size_t ring_bytes() const override { return kv_.ring_bytes(); }
  size_t ring_page_bytes() const override { return kv_.ring_page_bytes(); }
  size_t tail_bytes() const override { return kv_.tail_bytes(); }
  // The side rows are always there: no step writes more than a chunk past a sequence's length,
  // and the side ring keeps a chunk and a page beyond the window; the window rings as KvStore says.
  bool save_tail(int seq, uint32_t end, uint32_t slot) override { return kv_.save_tail(seq, end, slot); }
  void restore_tail(uint32_t slot, int seq, uint32_t end) override { kv_.restore_tail(slot, seq, end); }

  const KvStore& kv() const { return kv_; }
  ThreadPool& pool() { return pool_; }

 private:
  void rmsnorm(const float* x, const std::vector<float>& w, float* out) const;
  void rope(float* v, uint32_t pos, bool local) const;  // local: a sliding-window layer's table
  // A layer's key centres (KvPolicy::key_centre) from its first step's keys before RoPE, k [n][kv_dim]:
  // each KV head's mean key (rows not at position 0, unless that is all), through
  // model::rope_centre. [kv_heads][head_dim].
  std::vector<float> key_centre(const float* k, const uint32_t* pos, size_t n, bool local) const;

  const model::Model& model_;
  model::ModelConfig cfg_;
  engine::RunnerOptions opts_;
  ThreadPool pool_;
  KvStore kv_;
  std::vector<std::vector<float>> attn_norm_, ffn_norm_;  // [layers][dim]
  std::vector<std::vector<float>> q_norm_, k_norm_;       // [layers][head_dim] (qk_norm), else empty
  std::vector<std::vector<float>> attn_post_norm_, ffn_post_norm_;  // [layers][dim] (post_norms), else empty
  std::vector<float> out_norm_;                           // [dim]
  std::vector<float> rope_cos_, rope_sin_;                // [context][rope_dim / 2]
  std::vector<float> rope_cos_local_, rope_sin_local_;    // the same for sliding-window layers (empty without)
  std::vector<double> centre_a_, centre_b_, centre_a_local_, centre_b_local_;  // [rope_dim / 2] model::rope_mean_rotation (centre)
};

}  // namespace tq::cpu
