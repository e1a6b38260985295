// ModelConfig + Weights from a GGUF file written by llama.cpp's convert_hf_to_gguf.py.
//
// Tensor names (llama.cpp's LLM_TENSOR_NAMES for llama / qwen2 / qwen3 / gemma3): token_embd.weight,
// blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}.weight,
// blk.N.attn_{q,k,v}.bias (qwen2), blk.N.attn_{q,k}_norm.weight (qwen3, gemma3),
// blk.N.{post_attention_norm, post_ffw_norm}.weight (gemma3), output_norm.weight, output.weight
// (absent: tied to token_embd).
// A ggml tensor of dims [ne0, ne1] holds ne1 rows of ne0 contiguous elements, i.e. [ne1][ne0]
// row-major: attn_q.weight has dims {dim, q_dim}, so it is [q_dim][dim] = [out][in] as in TensorRef.
//
// RoPE pairing: for "llama" the converter permutes the rows of attn_q / attn_k within each head
// (LlamaModel.permute: reshape(n_head, 2, head_dim/2, ...).swapaxes(1, 2)), turning HF's rotate-half
// pairs (i, i + head_dim/2) into adjacent pairs (2i, 2i+1); llama.cpp then uses
// LLAMA_ROPE_TYPE_NORM (adjacent pairs) for LLM_ARCH_LLAMA. "qwen2", "qwen3" and "gemma3" are not
// permuted and use LLAMA_ROPE_TYPE_NEOX (half split). See llama-model.cpp llama_model_rope_type().
//
// Gemma 3 (llama.cpp's llama-model.cpp LLM_ARCH_GEMMA3 and src/models/gemma3.cpp; HF's
// modeling_gemma3.py): every 6th layer (l % 6 == 5) is global, the others attend to a sliding window
// of gemma3.attention.sliding_window positions with RoPE base 10000 and no RoPE scaling; the global
// ones use rope.freq_base and the file's linear RoPE scaling, if any. Embeddings times sqrt(dim);
// per-head q/k RMSNorm before RoPE; RMSNorm of the attention and FFN outputs before each residual
// add; GELU (tanh) gated FFN; query scale 1/sqrt(head_dim) (query_pre_attn_scalar = head_dim) but
// for the 62-layer 27B, 1/sqrt(dim / heads). Gemma's norms compute x * (1 + w): the converter
// (convert_hf_to_gguf.py, Gemma3Model norm_shift) stores 1 + w, so every norm here is x * w.
#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "tq/check.h"
#include "tq/format.h"
#include "tq/model/model.h"

namespace tq::model {

namespace {

int to_int(uint64_t v, const std::string& key) {
  TQ_CHECK(v > 0 && v <= uint64_t(1) << 30, "GGUF metadata '{}' = {} is out of range [1, 2^30]", key, v);
  return int(v);
}

class WeightBinder {
 public:
  WeightBinder(const GgufFile& f) : f_(f) {}

  // The tensor `name`, which must have dims {cols} (rows == 1) or {cols, rows} and a type that can
  // be dequantized. Absent + optional -> an empty TensorRef.
  TensorRef bind(const std::string& name, uint64_t rows, uint64_t cols, bool optional = false) const {
    const GgufTensorInfo* t = f_.find_tensor(name);
    if (t == nullptr) {
      TQ_CHECK(optional, "GGUF '{}': required tensor '{}' is missing", f_.name(), name);
      return {};
    }
    const bool vector_ok = rows == 1 && t->dims.size() == 1 && t->dims[0] == cols;
    const bool matrix_ok = t->dims.size() == 2 && t->dims[0] == cols && t->dims[1] == rows;
    TQ_CHECK(vector_ok || matrix_ok, "GGUF tensor '{}': dims [{}], expected [{}]", name, fmt::join(t->dims, ", "),
             rows == 1 ? fmt::to_string(cols) : fmt::format("{}, {}", cols, rows));
    ggml_check_dequantizable(t->type, fmt::format("GGUF tensor '{}'", name));
    bound_.insert(name);
    TensorRef r;
    r.name = name;
    r.type = t->type;
    r.data = f_.tensor_bytes(*t).data();
    r.n_rows = size_t(rows);
    r.n_cols = size_t(cols);
    r.check_finite("GGUF tensor");
    return r;
  }

  // Refuses the file's tensors that no bind() took, as llama.cpp does: a damaged block_count (a
  // model run on fewer layers than it has) or another architecture's tensors under this one's name
  // would otherwise run as garbage.
  void check_all_bound() const {
    std::vector<std::string> extra;
    for (const GgufTensorInfo& t : f_.tensors())
      if (!bound_.contains(t.name)) extra.push_back(t.name);
    const size_t shown = std::min<size_t>(extra.size(), 4);
    TQ_CHECK(extra.empty(), "GGUF '{}': {} tensor{} this architecture does not use ({}{}): a damaged header (block_count?) or another model's file",
             f_.name(), extra.size(), extra.size() == 1 ? "" : "s", fmt::join(extra.begin(), extra.begin() + shown, ", "),
             extra.size() > shown ? ", ..." : "");
  }

 private:
  const GgufFile& f_;
  mutable std::unordered_set<std::string> bound_;  // the names bind() took
};

// Gemma 3 files without a template (the base models) still carry the turn tokens: Gemma's format.
ChatTemplate detect_chat_template(const GgufFile& f, Arch arch) {
  const GgufValue* v = f.find("tokenizer.chat_template");
  if (v == nullptr || v->type != GgufType::STRING) return arch == Arch::Gemma3 ? ChatTemplate::Gemma : ChatTemplate::None;
  if (v->str.find("<|im_start|>") != std::string::npos) return ChatTemplate::ChatML;
  if (v->str.find("<|start_header_id|>") != std::string::npos) return ChatTemplate::Llama3;
  if (v->str.find("<start_of_turn>") != std::string::npos) return ChatTemplate::Gemma;
  return ChatTemplate::None;
}

}  // namespace

Model load_gguf(const std::string& path) { return load_gguf(std::make_shared<const GgufFile>(GgufFile::open(path))); }

Model load_gguf(std::shared_ptr<const GgufFile> file) {
  TQ_CHECK(file != nullptr, "load_gguf: null file");
  const GgufFile& f = *file;
  Model m;
  m.storage = f.source();
  m.gguf = file;
  ModelConfig& c = m.config;
  c.source = WeightSource::Gguf;

  const std::string arch = f.get_string("general.architecture");
  if (arch == "llama") {
    c.arch = Arch::Llama;
    c.rope_style = RopeStyle::AdjacentPairs;
  } else if (arch == "qwen2") {
    c.arch = Arch::Qwen2;
    c.rope_style = RopeStyle::HalfSplit;
  } else if (arch == "qwen3") {
    c.arch = Arch::Qwen3;
    c.rope_style = RopeStyle::HalfSplit;
    c.qk_norm = true;
  } else if (arch == "gemma3") {
    c.arch = Arch::Gemma3;
    c.rope_style = RopeStyle::HalfSplit;
    c.qk_norm = c.post_norms = true;
    c.ffn_act = FfnAct::GeluTanh;
  } else {
    throw Error(fmt::format("GGUF '{}': unsupported architecture '{}' (supported: llama, qwen2, qwen3, gemma3)", f.name(), arch));
  }
  const auto key = [&](const char* k) { return arch + "." + k; };
  const auto req = [&](const char* k) { return to_int(f.get_uint(key(k)), key(k)); };

  c.n_layers = req("block_count");
  TQ_CHECK(uint32_t(c.n_layers) <= kMaxLayers, "GGUF '{}': {} = {}, beyond the {} layers a KV cache takes", f.name(), key("block_count"),
           c.n_layers, kMaxLayers);
  c.dim = req("embedding_length");
  c.hidden_dim = req("feed_forward_length");
  c.n_heads = req("attention.head_count");
  c.n_kv_heads = f.has(key("attention.head_count_kv")) ? req("attention.head_count_kv") : c.n_heads;
  c.max_seq = req("context_length");
  TQ_CHECK(c.n_heads % c.n_kv_heads == 0, "GGUF '{}': head_count {} is not a multiple of head_count_kv {}", f.name(),
           c.n_heads, c.n_kv_heads);
  if (f.has(key("attention.key_length"))) {
    c.head_dim = req("attention.key_length");
  } else {
    TQ_CHECK(c.dim % c.n_heads == 0, "GGUF '{}': embedding_length {} is not a multiple of head_count {}", f.name(),
             c.dim, c.n_heads);
    c.head_dim = c.dim / c.n_heads;
  }
  if (f.has(key("attention.value_length")))
    TQ_CHECK(req("attention.value_length") == c.head_dim, "GGUF '{}': value_length {} != key_length {} is not supported",
             f.name(), req("attention.value_length"), c.head_dim);
  // Products of these index buffers as int: a file with more channels than that is refused here
  // rather than read past a buffer later.
  for (const auto& [heads, what] : {std::pair{c.n_heads, "head_count"}, std::pair{c.n_kv_heads, "head_count_kv"}})
    TQ_CHECK(uint64_t(heads) * uint64_t(c.head_dim) <= (uint64_t(1) << 30),
             "GGUF '{}': {} {} x head dim {} = {} channels, more than 2^30", f.name(), key(what), heads, c.head_dim,
             uint64_t(heads) * uint64_t(c.head_dim));
  c.rope_dim = f.has(key("rope.dimension_count")) ? req("rope.dimension_count") : c.head_dim;
  TQ_CHECK(c.rope_dim % 2 == 0 && c.rope_dim <= c.head_dim, "GGUF '{}': rope.dimension_count {} (head dim {})",
           f.name(), c.rope_dim, c.head_dim);
  // Used as floats: a double beyond float's range is as unusable as inf.
  const auto positive = [&](const char* k, double def) {
    const double v = f.get_float_or(key(k), def);
    TQ_CHECK(std::isfinite(float(v)) && float(v) > 0.0f, "GGUF '{}': {} = {} must be a finite number > 0", f.name(), key(k), v);
    return float(v);
  };
  c.rope_theta = positive("rope.freq_base", 10000.0);
  c.rms_eps = positive("attention.layer_norm_rms_epsilon", 1e-5);
  const std::string scaling = f.get_string_or(key("rope.scaling.type"), "none");
  if (c.arch == Arch::Gemma3 && scaling == "linear") {  // Gemma 3 4B and up: factor 8 on the global layers
    c.rope_freq_scale = 1.0f / positive("rope.scaling.factor", 1.0);
  } else {
    TQ_CHECK(scaling == "none", "GGUF '{}': RoPE scaling type '{}' is not supported{}", f.name(), scaling,
             c.arch == Arch::Gemma3 ? " (gemma3: none or linear)" : "");
  }
  if (c.arch == Arch::Gemma3) {
    // A file without the key, or with 0: no sliding-window layers, full attention in every layer.
    c.sliding_window = f.has(key("attention.sliding_window")) && f.get_uint(key("attention.sliding_window")) > 0
                           ? req("attention.sliding_window")
                           : 0;
    c.swa_pattern = 6;
    c.rope_theta_local = 10000.0f;
    c.embed_scale = std::sqrt(float(c.dim));
    // Gemma 3 27B (62 layers) scales queries by its query_pre_attn_scalar, dim / heads (llama.cpp's gemma3 graph).
    TQ_CHECK(c.n_layers != 62 || c.dim >= c.n_heads, "GGUF '{}': gemma3 with 62 layers scales queries by embedding_length / "
             "head_count, but {} / {} is 0", f.name(), c.dim, c.n_heads);
    c.attn_scale = c.n_layers == 62 ? 1.0f / std::sqrt(float(c.dim / c.n_heads)) : 1.0f / std::sqrt(float(c.head_dim));
  }
  TQ_CHECK(!f.find_tensor("rope_freqs.weight") && !f.has("rope_freqs.weight"), "GGUF '{}': per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 "
           "long-context scaling) are not supported", f.name());

  const GgufTensorInfo& emb = f.tensor("token_embd.weight");
  TQ_CHECK(emb.dims.size() == 2, "GGUF tensor 'token_embd.weight': {} dims, expected 2", emb.dims.size());
  c.vocab_size = to_int(emb.dims[1], "token_embd.weight rows");
  if (f.has(key("vocab_size")))
    TQ_CHECK(f.get_uint(key("vocab_size")) == uint64_t(c.vocab_size),
             "GGUF '{}': {} = {} but token_embd.weight has {} rows", f.name(), key("vocab_size"),
             f.get_uint(key("vocab_size")), c.vocab_size);
  c.bos_id = int(f.get_int_or("tokenizer.ggml.bos_token_id", -1));
  c.eos_id = int(f.get_int_or("tokenizer.ggml.eos_token_id", -1));
  TQ_CHECK(c.bos_id < c.vocab_size && c.eos_id < c.vocab_size, "GGUF '{}': bos {} / eos {} outside the vocabulary ({})",
           f.name(), c.bos_id, c.eos_id, c.vocab_size);
  c.chat_template = detect_chat_template(f, c.arch);
  if (const GgufValue* t = f.find("tokenizer.chat_template"); c.chat_template == ChatTemplate::None && t && t->type == GgufType::STRING) {
    std::string_view line = std::string_view(t->str).substr(0, std::min(t->str.find('\n'), size_t(80)));
    while (line.size() < t->str.size() && !line.empty() && (uint8_t(t->str[line.size()]) & 0xC0) == 0x80)
      line.remove_suffix(1);  // not inside a UTF-8 character: the text goes into error messages
    c.unsupported_chat_template = std::string(line) + (line.size() < t->str.size() ? "..." : "");
  }

  const uint64_t D = uint64_t(c.dim), H = uint64_t(c.hidden_dim), V = uint64_t(c.vocab_size);
  const uint64_t QD = uint64_t(c.q_dim()), KVD = uint64_t(c.kv_dim());
  const WeightBinder b(f);
  Weights& w = m.weights;
  w.token_embd = b.bind("token_embd.weight", V, D);
  // block_count comes from the file: grow the vector as layers are found rather than trusting it
  w.layers.reserve(std::min(size_t(c.n_layers), f.tensors().size()));
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& lw = w.layers.emplace_back();
    const std::string p = fmt::format("blk.{}.", l);
    lw.attn_norm = b.bind(p + "attn_norm.weight", 1, D);
    lw.wq = b.bind(p + "attn_q.weight", QD, D);
    lw.wk = b.bind(p + "attn_k.weight", KVD, D);
    lw.wv = b.bind(p + "attn_v.weight", KVD, D);
    lw.wo = b.bind(p + "attn_output.weight", D, QD);
    lw.bq = b.bind(p + "attn_q.bias", 1, QD, true);
    lw.bk = b.bind(p + "attn_k.bias", 1, KVD, true);
    lw.bv = b.bind(p + "attn_v.bias", 1, KVD, true);
    const bool any_bias = lw.bq.present() || lw.bk.present() || lw.bv.present();
    const bool all_bias = lw.bq.present() && lw.bk.present() && lw.bv.present();
    TQ_CHECK(any_bias == all_bias, "GGUF '{}': layer {} has only some of the attn_q/k/v biases", f.name(), l);
    TQ_CHECK(l == 0 || all_bias == c.has_qkv_bias, "GGUF '{}': layer {} differs from layer 0 in having q/k/v biases",
             f.name(), l);
    c.has_qkv_bias = all_bias;
    if (c.qk_norm) {
      lw.q_norm = b.bind(p + "attn_q_norm.weight", 1, uint64_t(c.head_dim));
      lw.k_norm = b.bind(p + "attn_k_norm.weight", 1, uint64_t(c.head_dim));
    }
    if (c.post_norms) {
      lw.attn_post_norm = b.bind(p + "post_attention_norm.weight", 1, D);
      lw.ffn_post_norm = b.bind(p + "post_ffw_norm.weight", 1, D);
    }
    lw.ffn_norm = b.bind(p + "ffn_norm.weight", 1, D);
    lw.w_gate = b.bind(p + "ffn_gate.weight", H, D);
    lw.w_up = b.bind(p + "ffn_up.weight", H, D);
    lw.w_down = b.bind(p + "ffn_down.weight", D, H);
  }
  w.output_norm = b.bind("output_norm.weight", 1, D);
  c.tied_embeddings = f.find_tensor("output.weight") == nullptr;
  w.output = c.tied_embeddings ? w.token_embd : b.bind("output.weight", V, D);
  b.check_all_bound();
  return m;
}

}  // namespace tq::model
