// Test helpers: tiny GGUF models (llama / qwen2 tensor layout) and a small byte-level BPE vocabulary.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gguf_writer.h"
#include "quant_packers.h"
#include "tq/model/gguf.h"
#include "tq/model/model.h"

namespace tq::model::testing {

// GPT-2 bytes_to_unicode, re-derived for the tests: printable bytes ('!'..'~', 0xA1..0xAC,
// 0xAE..0xFF) stand for themselves, the others map to U+0100 + their rank among them.
inline std::string byte_char(uint8_t b) {
  uint32_t cp = b;
  const auto printable = [](uint32_t x) { return (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE; };
  if (!printable(b)) {
    cp = 256;
    for (uint32_t x = 0; x < b; ++x)
      if (!printable(x)) ++cp;
  }
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

struct BpeVocab {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;  // 1 normal, 3 control
  std::vector<std::string> merges;
  int find(const std::string& t) const {
    for (size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] == t) return int(i);
    return -1;
  }
};

// Byte tokens (all 256 bytes, or only those of `alphabet`), merged tokens in rank order, and the
// control tokens <|endoftext|>, <|im_start|>, <|im_end|>.
inline BpeVocab small_bpe_vocab(bool all_bytes) {
  BpeVocab v;
  const std::string alphabet = " abcdefghijklmnopqrstuvwxyzHTW.,!'0123456789\n<>|_";
  for (int b = 0; b < 256; ++b)
    if (all_bytes || alphabet.find(char(b)) != std::string::npos) {
      v.tokens.push_back(byte_char(uint8_t(b)));
      v.types.push_back(1);
    }
  const char* merges[][2] = {{"Ġ", "t"},   {"h", "e"},  {"Ġt", "he"}, {"i", "n"},      {"Ġ", "w"},
                             {"o", "r"},   {"Ġw", "or"}, {"l", "d"},  {"Ġwor", "ld"}, {"H", "e"},
                             {"l", "l"},   {"He", "ll"}, {"Hell", "o"}, {"Ġ", "Ġ"}};
  for (const auto& m : merges) {
    v.merges.push_back(std::string(m[0]) + " " + m[1]);
    v.tokens.push_back(std::string(m[0]) + m[1]);
    v.types.push_back(1);
  }
  for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    v.tokens.push_back(s);
    v.types.push_back(3);
  }
  return v;
}

// A GGUF SentencePiece tokenizer (tokenizer.ggml.model "llama"): <unk> <s> </s> (ids 0..2), the 256
// byte tokens <0xHH> (ids 3..258; without_byte >= 0: that byte's an ordinary token instead), then
// `words` (text, score) and `specials` (control tokens). BOS 1, EOS 2.
inline void add_spm_tokenizer(GgufWriter& w, const std::vector<std::pair<std::string, float>>& words, const std::vector<std::string>& specials,
                              bool space_prefix, int without_byte = -1) {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  std::vector<float> scores = {0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, b == without_byte ? "<u%02X>" : "<0x%02X>", b);
    tokens.push_back(buf);
    types.push_back(b == without_byte ? 1 : 6);
    scores.push_back(0);
  }
  for (const auto& [t, score] : words) {
    tokens.push_back(t);
    types.push_back(1);
    scores.push_back(score);
  }
  for (const std::string& t : specials) {
    tokens.push_back(t);
    types.push_back(3);
    scores.push_back(0);
  }
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  w.add_f32_array("tokenizer.ggml.scores", scores);
  w.add_i32_array("tokenizer.ggml.token_type", types);
  w.add_u32("tokenizer.ggml.bos_token_id", 1);
  w.add_u32("tokenizer.ggml.eos_token_id", 2);
  w.add_bool("tokenizer.ggml.add_space_prefix", space_prefix);
}

inline void add_bpe_tokenizer(GgufWriter& w, const BpeVocab& v, const std::string& pre = "smollm") {
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", pre);
  w.add_string_array("tokenizer.ggml.tokens", v.tokens);
  w.add_i32_array("tokenizer.ggml.token_type", v.types);
  w.add_string_array("tokenizer.ggml.merges", v.merges);
  w.add_u32("tokenizer.ggml.bos_token_id", uint32_t(v.find("<|endoftext|>")));
  w.add_u32("tokenizer.ggml.eos_token_id", uint32_t(v.find("<|im_end|>")));
}

struct TinyModelSpec {
  std::string arch = "llama";
  int dim = 32, n_heads = 2, n_kv_heads = 1, hidden = 64, n_layers = 2, vocab = 16;
  int head_dim = 0;  // attention.key_length / value_length when set (qwen3's heads are wider than dim / heads); 0: dim / heads, not written
  int context = 128;
  bool tied = false;
  bool bias = false;
  GgmlType wtype = GgmlType::F32;  // type of the attention / FFN matrices (F32, F16, Q8_0, ...)
  // F32 weights at a trained model's scale (matrices uniform with variance 1/cols, norm weights
  // near 1), so logits are O(1) as in a real model; otherwise values of up to +-15.6 that test the
  // loaders' bytes.
  bool realistic = false;
  std::string chat_template;
  const BpeVocab* tokenizer = nullptr;  // adds its metadata (vocab must then equal its size)
  float rope_theta = 500000.0f, rms_eps = 1e-6f;
  // gemma3 / qwen3: the per-head q/k norms; gemma3: the post-norms and this sliding window (0: no key)
  int sliding_window = 4;
  std::string rope_scaling;  // rope.scaling.type when not empty (factor 8)
  bool skip_post_ffw_norm = false;  // gemma3 without blk.0.post_ffw_norm.weight (an error)
  // A tensor made non-finite (the loaders must refuse it): element `poison_element` is NaN, or for
  // the block types the last fp16 scale of its block (m / dmin where there is one, else d) is inf.
  std::string poison;
  size_t poison_element = 0;
  // Every F32 tensor whose name ends with `scaled` (e.g. "attn_v.weight") multiplied by `scale`:
  // rows past what a cache can store.
  std::string scaled;
  float scale = 1.0f;
};

// Makes element e of `bytes` (type t) non-finite, as TinyModelSpec::poison says.
inline void poison_element(GgmlType t, std::vector<uint8_t>& bytes, size_t e) {
  const GgmlTypeInfo& ti = ggml_type_info(t);
  const auto put = [&](size_t at, const void* v, size_t n) {
    if (at + n > bytes.size()) throw std::out_of_range("poison_element: element past the tensor");
    std::memcpy(bytes.data() + at, v, n);
  };
  const auto put16 = [&](size_t at, uint16_t v) { put(at, &v, 2); };
  if (t == GgmlType::F32) {
    const float nan = std::nanf("");
    put(4 * e, &nan, 4);
  } else if (t == GgmlType::F16) {
    put16(2 * e, 0x7e00);  // NaN
  } else if (t == GgmlType::BF16) {
    put16(2 * e, 0x7fc0);  // NaN
  } else {
    const size_t field = ggml_scale_fields(t).back();
    put16(e / ti.block_elems * ti.block_bytes + field, 0x7c00);  // +inf
  }
}

// A random matrix [rows][cols] of type t.
inline std::vector<uint8_t> random_matrix(GgmlType t, size_t rows, size_t cols, std::mt19937& rng) {
  std::vector<uint8_t> out;
  if (!ggml_type_info(t).dequantizable) {  // types the loader must reject: contents do not matter
    out.resize(rows * ggml_row_bytes(t, cols), 0);
    return out;
  }
  std::vector<float> unused;
  for (size_t r = 0; r < rows; ++r) {
    const auto row = random_row(t, cols, rng, unused);
    out.insert(out.end(), row.begin(), row.end());
  }
  return out;
}

inline GgufWriter tiny_model(const TinyModelSpec& s) {
  GgufWriter w;
  const std::string a = s.arch;
  w.add_string("general.architecture", a);
  w.add_string("general.name", "tiny");
  w.add_u32(a + ".context_length", uint32_t(s.context));
  w.add_u32(a + ".embedding_length", uint32_t(s.dim));
  w.add_u32(a + ".block_count", uint32_t(s.n_layers));
  w.add_u32(a + ".feed_forward_length", uint32_t(s.hidden));
  w.add_u32(a + ".attention.head_count", uint32_t(s.n_heads));
  w.add_u32(a + ".attention.head_count_kv", uint32_t(s.n_kv_heads));
  w.add_f32(a + ".rope.freq_base", s.rope_theta);
  w.add_f32(a + ".attention.layer_norm_rms_epsilon", s.rms_eps);
  const int hd_written = s.head_dim > 0 ? s.head_dim : s.dim / s.n_heads;
  w.add_u32(a + ".rope.dimension_count", uint32_t(hd_written));
  if (s.head_dim > 0) {
    w.add_u32(a + ".attention.key_length", uint32_t(s.head_dim));
    w.add_u32(a + ".attention.value_length", uint32_t(s.head_dim));
  }
  if (a == "gemma3" && s.sliding_window > 0) w.add_u32(a + ".attention.sliding_window", uint32_t(s.sliding_window));
  if (!s.rope_scaling.empty()) {
    w.add_string(a + ".rope.scaling.type", s.rope_scaling);
    w.add_f32(a + ".rope.scaling.factor", 8.0f);
  }
  if (!s.chat_template.empty()) w.add_string("tokenizer.chat_template", s.chat_template);
  if (s.tokenizer != nullptr) add_bpe_tokenizer(w, *s.tokenizer);

  std::mt19937 rng(2024);
  const uint64_t D = uint64_t(s.dim), H = uint64_t(s.hidden), V = uint64_t(s.vocab);
  const uint64_t hd = uint64_t(hd_written), QD = hd * uint64_t(s.n_heads), KVD = hd * uint64_t(s.n_kv_heads);
  // n floats uniform in [center - half, center + half], as F32 bytes.
  const auto uniform = [&](size_t n, float center, float half) {
    std::vector<uint8_t> out(n * 4);
    std::uniform_real_distribution<float> u(center - half, center + half);
    for (size_t i = 0; i < n; ++i) {
      const float v = u(rng);
      std::memcpy(&out[i * 4], &v, 4);
    }
    return out;
  };
  const auto add = [&](const std::string& name, const std::vector<uint64_t>& dims, GgmlType t, std::vector<uint8_t> bytes) {
    if (name == s.poison) poison_element(t, bytes, s.poison_element);
    if (!s.scaled.empty() && t == GgmlType::F32 && name.size() >= s.scaled.size() &&
        name.compare(name.size() - s.scaled.size(), s.scaled.size(), s.scaled) == 0)
      for (size_t i = 0; i + 4 <= bytes.size(); i += 4) {
        float f;
        std::memcpy(&f, &bytes[i], 4);
        f *= s.scale;
        std::memcpy(&bytes[i], &f, 4);
      }
    w.add_tensor(name, dims, t, bytes);
  };
  const auto mat = [&](const std::string& name, uint64_t rows, uint64_t cols, GgmlType t) {
    if (s.realistic && t == GgmlType::F32)
      add(name, {cols, rows}, t, uniform(rows * cols, 0.0f, std::sqrt(3.0f / float(cols))));
    else
      add(name, {cols, rows}, t, random_matrix(t, rows, cols, rng));
  };
  const auto vec = [&](const std::string& name, uint64_t n) {
    add(name, {n}, GgmlType::F32, s.realistic ? uniform(n, 1.0f, 0.2f) : random_matrix(GgmlType::F32, 1, n, rng));
  };
  mat("token_embd.weight", V, D, GgmlType::F32);
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    vec(p + "attn_norm.weight", D);
    mat(p + "attn_q.weight", QD, D, s.wtype);
    mat(p + "attn_k.weight", KVD, D, s.wtype);
    mat(p + "attn_v.weight", KVD, D, s.wtype);
    mat(p + "attn_output.weight", D, QD, s.wtype);
    if (s.bias) {
      vec(p + "attn_q.bias", QD);
      vec(p + "attn_k.bias", KVD);
      vec(p + "attn_v.bias", KVD);
    }
    if (a == "gemma3" || a == "qwen3") {
      vec(p + "attn_q_norm.weight", hd);
      vec(p + "attn_k_norm.weight", hd);
    }
    if (a == "gemma3") {
      vec(p + "post_attention_norm.weight", D);
      if (!(s.skip_post_ffw_norm && l == 0)) vec(p + "post_ffw_norm.weight", D);
    }
    vec(p + "ffn_norm.weight", D);
    mat(p + "ffn_gate.weight", H, D, s.wtype);
    mat(p + "ffn_up.weight", H, D, s.wtype);
    mat(p + "ffn_down.weight", D, H, s.wtype);
  }
  vec("output_norm.weight", D);
  if (!s.tied) mat("output.weight", V, D, GgmlType::F32);
  return w;
}

// The model a writer's file holds, loaded from its bytes in memory.
inline Model load_written(const GgufWriter& w) { return load_gguf(std::make_shared<const GgufFile>(GgufFile::from_bytes(w.bytes()))); }

// Gemma 3's layout, small, realistic random weights: five sliding-window layers of six (window 16,
// which prompts of a few dozen tokens outgrow), head dim 32, 2 KV heads, a vocabulary of 300. The
// window rings' tests (tests/engine/test_window_ring.cpp, tests/serve/test_scheduler_rings.cpp).
inline Model small_gemma3(int context) {
  TinyModelSpec s;
  s.arch = "gemma3";
  s.dim = 64, s.n_heads = 4, s.n_kv_heads = 2, s.hidden = 128, s.n_layers = 6, s.vocab = 300, s.head_dim = 32;
  s.sliding_window = 16, s.context = context, s.realistic = true;
  return load_written(tiny_model(s));
}

}  // namespace tq::model::testing
