// A source-independent description of a Llama-family decoder: its hyper-parameters (ModelConfig)
// and views of its weight tensors (Weights), loaded from a llama2.c checkpoint or a GGUF file.
// Families: llama, qwen2, qwen3 (per-head q/k RMSNorm) and gemma3 (q/k norms, post-norms, GELU,
// scaled embedding, interleaved sliding-window layers).
// Weights are not copied: each TensorRef points into the memory-mapped file and keeps its ggml
// type, so quantized GGUF weights stay quantized and are multiplied with dot_rows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tq/model/byte_source.h"
#include "tq/model/ggml_quants.h"
#include "tq/model/gguf.h"

namespace tq::model {

enum class WeightSource { Llama2c, Gguf };
enum class Arch { Llama, Qwen2, Qwen3, Gemma3 };
const char* arch_name(Arch a);

// Which elements of a head the rotary embedding rotates together (frequency index i in
// [0, rope_dim/2), theta_i = rope_theta^(-2i/rope_dim)).
enum class RopeStyle {
  // (2i, 2i+1). llama2.c's run.c. Also GGUF "llama": llama.cpp's converter (convert_hf_to_gguf.py,
  // LlamaModel.permute) reorders the rows of attn_q / attn_k inside each head so that the HF
  // rotate-half pairs become adjacent, and llama.cpp runs LLM_ARCH_LLAMA with LLAMA_ROPE_TYPE_NORM.
  AdjacentPairs,
  // (i, i + rope_dim/2): HF's rotate_half, ggml's NEOX mode. GGUF "qwen2", "qwen3", "gemma3" (rows
  // not permuted; llama.cpp's llama_model_rope_type gives them LLAMA_ROPE_TYPE_NEOX).
  HalfSplit,
};

// Gemma: <start_of_turn>user ... <end_of_turn> turns, the assistant's role named "model".
enum class ChatTemplate { None, ChatML, Llama3, Gemma };
// The gated FFN's activation: w_down (act(w_gate x) * (w_up x)).
enum class FfnAct { SiLU, GeluTanh };
const char* chat_template_name(ChatTemplate c);

struct ModelConfig {
  WeightSource source = WeightSource::Llama2c;
  Arch arch = Arch::Llama;
  int n_layers = 0;
  int dim = 0;         // residual stream width
  int hidden_dim = 0;  // FFN width
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (grouped-query attention when < n_heads)
  int head_dim = 0;
  int vocab_size = 0;
  int max_seq = 0;   // training context length
  int rope_dim = 0;  // leading elements of each head that are rotated (== head_dim here)
  float rope_theta = 10000.0f;
  float rms_eps = 1e-5f;
  RopeStyle rope_style = RopeStyle::AdjacentPairs;
  bool tied_embeddings = false;  // output classifier == token embedding
  bool has_qkv_bias = false;
  bool qk_norm = false;     // RMSNorm of each q and k head (attn_q_norm, attn_k_norm) before RoPE
  bool post_norms = false;  // RMSNorm of the attention and FFN outputs before their residual adds (Gemma)
  FfnAct ffn_act = FfnAct::SiLU;
  float embed_scale = 1.0f;  // token embeddings are multiplied by this (Gemma: sqrt(dim))
  float attn_scale = 0.0f;   // softmax scale of q.k; 0: 1/sqrt(head_dim)
  // Interleaved sliding-window attention (Gemma 3): with swa_pattern > 0, layer l is local when
  // l % swa_pattern < swa_pattern - 1 (every swa_pattern-th layer is global). A local layer's query
  // at p sees positions t with p - t < sliding_window, and its RoPE uses rope_theta_local unscaled;
  // global layers use rope_theta with positions times rope_freq_scale (linear RoPE scaling).
  int sliding_window = 0;
  int swa_pattern = 0;
  float rope_theta_local = 10000.0f;
  float rope_freq_scale = 1.0f;
  int bos_id = -1;  // -1: none
  int eos_id = -1;
  ChatTemplate chat_template = ChatTemplate::None;
  // A GGUF tokenizer.chat_template that is none of the above: its first line (at most 80 bytes),
  // so that errors say the template is unsupported rather than missing; empty otherwise.
  std::string unsupported_chat_template;
  // What chat_template None means here, for errors: "has no chat template" or "has a chat
  // template this build does not support (ChatML, Llama 3, Gemma): '...'".
  std::string chat_template_missing() const;

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  bool layer_is_local(int l) const { return sliding_window > 0 && swa_pattern > 0 && l % swa_pattern < swa_pattern - 1; }
  // The window of layer l's attention, 0 for full (causal) attention.
  int layer_window(int l) const { return layer_is_local(l) ? sliding_window : 0; }
  // [n_layers] layer_is_local of each layer (what a cache's `ip=local` needs: KvSpec::cache_layers).
  std::vector<bool> local_layers() const {
    std::vector<bool> out;
    for (int l = 0; l < n_layers; ++l) out.push_back(layer_is_local(l));
    return out;
  }
};

// A weight matrix [n_rows][n_cols], row-major, rows contiguous, elements of `type` (a vector is
// one row). For the projections, y[n_rows] = W x[n_cols]: rows are output features.
// RoPE angle tables as run.c computes them, in float: theta_i = pos * rope_theta^(-2i/rope_dim).
// cos, sin: [context][rope_dim / 2]. Every runner uses these, so they rotate alike. The global
// layers' table: rope_theta, positions times rope_freq_scale.
void rope_angles(const ModelConfig& c, uint32_t context, std::vector<float>& cos, std::vector<float>& sin);
// The table of local (sliding-window) layers: rope_theta_local, unscaled positions.
void rope_angles_local(const ModelConfig& c, uint32_t context, std::vector<float>& cos, std::vector<float>& sin);

// The key centre under RoPE (KvPolicy::key_centre). A head's keys share an offset m before RoPE,
// which RoPE turns with the position, so no fixed vector is their offset at every position. The
// fixed vector closest to R(p) m on average (least squares, p uniform over the table's positions)
// is E_p[R(p)] m: per rotated pair i, [[a_i, -b_i], [b_i, a_i]] m with (a_i, b_i) the mean of the
// table's (cos, sin) over its positions; fast pairs average to ~0 (nothing to remove), slow ones to
// ~1 (their whole offset). It is subtracted after RoPE, position-independent, so softmax still
// ignores it. cos, sin: [positions][half]; a, b: [half].
void rope_mean_rotation(const std::vector<float>& cos, const std::vector<float>& sin, uint32_t half, std::vector<double>& a,
                        std::vector<double>& b);
// The same over positions 0 .. positions-1 of the model's table (the local layers' when `local`):
// from cos and sin when given and that long (the runner's own tables), else computed without a
// table (a span that need not be the runner's context), to the same bits.
void rope_mean_rotation(const ModelConfig& c, uint32_t positions, bool local, std::vector<double>& a, std::vector<double>& b,
                        const std::vector<float>* cos = nullptr, const std::vector<float>* sin = nullptr);
// centre[head_dim] = that map applied to one head's mean pre-RoPE key m[head_dim] (the pairs of
// c.rope_style; elements past rope_dim as they are), rounded to float.
void rope_centre(const ModelConfig& c, const double* a, const double* b, const double* m, float* centre);

struct TensorRef {
  std::string name;
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;  // inside Model::storage; null when the tensor is absent
  size_t n_rows = 0, n_cols = 0;

  bool present() const { return data != nullptr; }
  size_t row_bytes() const { return ggml_row_bytes(type, n_cols, name); }
  void matvec(const float* x, float* y) const;  // y[n_rows] = W x
  void dequantize_row(size_t r, float* out) const;                     // out[n_cols] (embedding lookup)
  std::vector<float> to_f32() const;                                   // [n_rows][n_cols]
  // Throws tq::Error, "<where> '<name>': ...", naming the first element that is NaN or inf (for
  // block types: whose block scale is), its row and column, and its value. One read of the values
  // or block scales (ggml_find_nonfinite): the loaders check every weight once.
  void check_finite(std::string_view where) const;
};

struct LayerWeights {
  TensorRef attn_norm;   // [1][dim]
  TensorRef wq;          // [q_dim][dim]
  TensorRef wk;          // [kv_dim][dim]
  TensorRef wv;          // [kv_dim][dim]
  TensorRef wo;          // [dim][q_dim]
  TensorRef bq, bk, bv;  // optional biases [1][q_dim], [1][kv_dim], [1][kv_dim] (qwen2)
  TensorRef q_norm, k_norm;  // [1][head_dim] per-head RMSNorm weights (qk_norm: qwen3, gemma3)
  TensorRef attn_post_norm;  // [1][dim] post_attention_norm (post_norms: gemma3)
  TensorRef ffn_norm;    // [1][dim]
  TensorRef w_gate;      // [hidden][dim]: llama2.c w1, GGUF ffn_gate
  TensorRef w_up;        // [hidden][dim]: llama2.c w3, GGUF ffn_up
  TensorRef w_down;      // [dim][hidden]: llama2.c w2, GGUF ffn_down
  TensorRef ffn_post_norm;  // [1][dim] post_ffw_norm (post_norms: gemma3)
};

// FFN: w_down (act(w_gate x) * (w_up x)), act = silu or tanh-GELU (ffn_act). Norms: x * rsqrt(mean(x^2) +
// rms_eps) * weight (Gemma's (1 + weight) has its 1 folded into the GGUF weight by llama.cpp's converter).
struct Weights {
  TensorRef token_embd;  // [vocab][dim]
  std::vector<LayerWeights> layers;
  TensorRef output_norm;  // [1][dim]
  TensorRef output;       // [vocab][dim]; a copy of token_embd's view when tied
};

struct Model {
  ModelConfig config;
  Weights weights;
  std::shared_ptr<const ByteSource> storage;  // keeps the file bytes alive for the TensorRefs
  std::shared_ptr<const GgufFile> gguf;       // the GGUF file (tokenizer metadata); null for llama2.c
};

// llama2.c legacy checkpoint (run.c's format). Throws tq::Error on a bad header, a size mismatch or
// a weight that is not finite (NaN, inf), naming the weight.
Model load_llama2c(const std::string& path);
Model load_llama2c(std::shared_ptr<const ByteSource> src);
// GGUF with general.architecture "llama", "qwen2", "qwen3" or "gemma3". Throws tq::Error on bad metadata (non-finite
// rope.freq_base or RMS epsilon included) and on weights that are not finite, naming the key or tensor.
Model load_gguf(const std::string& path);
Model load_gguf(std::shared_ptr<const GgufFile> file);
// By content: the "GGUF" magic (or its first bytes, in a truncated file) -> load_gguf; else a file
// named *.gguf is a GGUF file that lacks the magic (an error); else load_llama2c (its checkpoints
// have no magic). An empty file is an error that says so.
Model load_model(const std::string& path);

}  // namespace tq::model
