#include "tq/model/shapes.h"

#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "tq/check.h"

namespace tq::model {
namespace {

struct Named {
  const char* name;
  Arch arch;
  int layers, dim, hidden, heads, kv_heads, head_dim, vocab, max_seq;
  float rope_theta, rms_eps;
  bool tied, qkv_bias;
  int sliding_window = 0;     // gemma3: the local layers' window (every 6th layer global)
  float rope_scaling = 1.0f;  // gemma3: the global layers' linear RoPE scaling factor
};

// From each model's config.json on the Hugging Face hub (meta-llama/Llama-3.1-8B,
// meta-llama/Llama-3.2-1B, Qwen/Qwen2.5-7B, Qwen/Qwen2.5-0.5B, Qwen/Qwen3-8B, Qwen/Qwen3-0.6B,
// HuggingFaceTB/SmolLM2-135M, google/gemma-3-270m, google/gemma-3-12b-pt). Qwen3's heads (128) are
// wider than dim / heads, and normed (qk_norm); Gemma 3's too (256), with its sliding-window
// layers, post-norms, GELU and embedding scale (model_gguf.cpp's gemma3 settings).
constexpr Named kShapes[] = {
    {"llama-3.1-8b", Arch::Llama, 32, 4096, 14336, 32, 8, 128, 128256, 131072, 500000.0f, 1e-5f, false, false},
    {"llama-3.2-1b", Arch::Llama, 16, 2048, 8192, 32, 8, 64, 128256, 131072, 500000.0f, 1e-5f, true, false},
    {"qwen2.5-7b", Arch::Qwen2, 28, 3584, 18944, 28, 4, 128, 152064, 131072, 1000000.0f, 1e-6f, false, true},
    {"qwen2.5-0.5b", Arch::Qwen2, 24, 896, 4864, 14, 2, 64, 151936, 32768, 1000000.0f, 1e-6f, true, true},
    {"qwen3-8b", Arch::Qwen3, 36, 4096, 12288, 32, 8, 128, 151936, 40960, 1000000.0f, 1e-6f, false, false},
    {"qwen3-0.6b", Arch::Qwen3, 28, 1024, 3072, 16, 8, 128, 151936, 40960, 1000000.0f, 1e-6f, true, false},
    {"smollm2-135m", Arch::Llama, 30, 576, 1536, 9, 3, 64, 49152, 8192, 100000.0f, 1e-5f, true, false},
    {"gemma-3-270m", Arch::Gemma3, 18, 640, 2048, 4, 1, 256, 262144, 32768, 1000000.0f, 1e-6f, true, false, 512},
    {"gemma-3-12b", Arch::Gemma3, 48, 3840, 15360, 16, 8, 256, 262208, 131072, 1000000.0f, 1e-6f, true, false, 1024, 8.0f},
};

}  // namespace

std::vector<std::string> named_shapes() {
  std::vector<std::string> v;
  for (const Named& n : kShapes) v.emplace_back(n.name);
  return v;
}

size_t weight_bytes_bf16(const ModelConfig& c) {
  const size_t D = size_t(c.dim), Q = size_t(c.q_dim()), KV = size_t(c.kv_dim()), F = size_t(c.hidden_dim);
  const size_t layer = 2 * (Q * D + 2 * KV * D + D * Q + 3 * F * D) + 4 * (2 * D + (c.has_qkv_bias ? Q + 2 * KV : 0)) +
                       4 * (c.qk_norm ? 2 * size_t(c.head_dim) : 0) + 4 * (c.post_norms ? 2 * D : 0);
  return 2 * size_t(c.vocab_size) * D * (c.tied_embeddings ? 1 : 2) + 4 * D + size_t(c.n_layers) * layer;
}

ModelConfig named_shape(const std::string& name) {
  for (const Named& n : kShapes) {
    if (name != n.name) continue;
    ModelConfig c;
    c.source = WeightSource::Gguf;
    c.arch = n.arch;
    c.n_layers = n.layers, c.dim = n.dim, c.hidden_dim = n.hidden, c.n_heads = n.heads, c.n_kv_heads = n.kv_heads;
    c.head_dim = n.head_dim, c.vocab_size = n.vocab, c.max_seq = n.max_seq, c.rope_dim = n.head_dim;
    c.rope_theta = n.rope_theta, c.rms_eps = n.rms_eps;
    c.rope_style = n.arch == Arch::Llama ? RopeStyle::AdjacentPairs : RopeStyle::HalfSplit;
    c.tied_embeddings = n.tied, c.has_qkv_bias = n.qkv_bias, c.qk_norm = n.arch == Arch::Qwen3;
    if (n.arch == Arch::Gemma3) {  // as model_gguf.cpp reads a gemma3 file
      c.qk_norm = c.post_norms = true;
      c.ffn_act = FfnAct::GeluTanh;
      c.sliding_window = n.sliding_window, c.swa_pattern = 6, c.rope_theta_local = 10000.0f;
      c.rope_freq_scale = 1.0f / n.rope_scaling;
      c.embed_scale = std::sqrt(float(n.dim));
      c.attn_scale = 1.0f / std::sqrt(float(n.head_dim));
    }
    return c;
  }
  throw Error(fmt::format("unknown model shape '{}' (known: {})", name, fmt::join(named_shapes(), ", ")));
}

}  // namespace tq::model
