// ModelConfig / Weights from GGUF files built in memory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include <fmt/format.h>

#include "test_data.h"
#include "tiny_models.h"
#include "tq/common.h"
#include "tq/model/model.h"

namespace tq::model {
namespace {

using testing::TinyModelSpec;
using testing::expect_error;

class GgufWeightType : public ::testing::TestWithParam<GgmlType> {};

TEST_P(GgufWeightType, LlamaConfigAndWeights) {
  TinyModelSpec s;
  s.wtype = GetParam();
  s.dim = 256;  // K-quants need rows of 256
  s.hidden = 256;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}...";
  const Model m = testing::load_written(testing::tiny_model(s));
  const ModelConfig& c = m.config;
  EXPECT_EQ(c.source, WeightSource::Gguf);
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.dim, 256);
  EXPECT_EQ(c.hidden_dim, 256);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.rope_dim, 64);
  EXPECT_EQ(c.vocab_size, 16);
  EXPECT_EQ(c.max_seq, 128);
  EXPECT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.rms_eps, 1e-6f);
  EXPECT_EQ(c.rope_style, RopeStyle::AdjacentPairs);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_FALSE(c.has_qkv_bias);
  EXPECT_EQ(c.chat_template, ChatTemplate::ChatML);
  ASSERT_EQ(m.weights.layers.size(), 2u);
  const LayerWeights& l1 = m.weights.layers[1];
  EXPECT_EQ(l1.wq.type, GetParam());
  EXPECT_EQ(l1.wq.n_rows, 256u);
  EXPECT_EQ(l1.wq.n_cols, 256u);
  EXPECT_EQ(l1.wk.n_rows, 128u);
  EXPECT_EQ(l1.wo.n_cols, 256u);
  EXPECT_EQ(l1.w_down.n_rows, 256u);
  EXPECT_FALSE(l1.bq.present());
  EXPECT_EQ(l1.wk.name, "blk.1.attn_k.weight");
  EXPECT_EQ(m.weights.output.name, "output.weight");

  // The views are the file's bytes: matvec == dot of the dequantized tensor read through GgufFile.
  const GgufTensorInfo& ti = m.gguf->tensor("blk.1.attn_k.weight");
  EXPECT_EQ(l1.wk.data, m.gguf->tensor_bytes(ti).data());
  const std::vector<float> wk = m.gguf->dequantize(ti);  // [128][256]
  std::vector<float> x(256), y(128);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 7) - 3.0f;
  l1.wk.matvec(x.data(), y.data());
  for (size_t r = 0; r < 128; ++r) {
    double ref = 0, mag = 0;
    for (size_t cidx = 0; cidx < 256; ++cidx) {
      ref += double(wk[r * 256 + cidx]) * x[cidx];
      mag += std::fabs(double(wk[r * 256 + cidx]) * x[cidx]);
    }
    EXPECT_NEAR(y[r], ref, 1e-5 * mag + 1e-6);
  }
  std::vector<float> row(256);
  m.weights.token_embd.dequantize_row(3, row.data());
  const std::vector<float> emb = m.gguf->dequantize(m.gguf->tensor("token_embd.weight"));  // [16][256]
  EXPECT_EQ(row, std::vector<float>(emb.begin() + 3 * 256, emb.begin() + 4 * 256));
  EXPECT_EQ(l1.attn_norm.to_f32(), m.gguf->dequantize(m.gguf->tensor("blk.1.attn_norm.weight")));
}

INSTANTIATE_TEST_SUITE_P(Types, GgufWeightType,
                         ::testing::Values(GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q3_K,
                                           GgmlType::IQ4_XS),
                         [](const auto& info) { return std::string(ggml_type_name(info.param)); });

// A weight with a NaN, or a block whose scale is inf, is refused at load with the tensor named.
class GgufNonFiniteWeight : public ::testing::TestWithParam<GgmlType> {};

TEST_P(GgufNonFiniteWeight, RefusedNamingTheTensor) {
  TinyModelSpec s;
  s.wtype = GetParam();
  s.dim = 256;  // K-quants need rows of 256
  s.hidden = 256;
  const size_t be = ggml_type_info(s.wtype).block_elems;
  s.poison = "blk.1.ffn_up.weight";
  const size_t col = be == kQK_K ? 0 : 2 * be;  // the third block of a row (K-quants: its only one)
  s.poison_element = 2 * 256 + col;              // of row 2
  expect_error([&] { testing::load_written(testing::tiny_model(s)); },
               fmt::format("GGUF tensor 'blk.1.ffn_up.weight': element {} (row 2, column {}) is ", s.poison_element, col));
  if (be > 1)
    expect_error([&] { testing::load_written(testing::tiny_model(s)); },
                 fmt::format("(its {} block's scale is not finite): weights must be finite numbers", ggml_type_name(s.wtype)));
  s.poison = "blk.0.attn_norm.weight";  // an F32 norm vector: ppl nan, top-1 1.0 before this was checked
  s.poison_element = 7;
  expect_error([&] { testing::load_written(testing::tiny_model(s)); },
               "GGUF tensor 'blk.0.attn_norm.weight': element 7 (row 0, column 7) is nan: weights must be finite numbers");
  s.poison.clear();
  EXPECT_NO_THROW(testing::load_written(testing::tiny_model(s)));
}

INSTANTIATE_TEST_SUITE_P(Types, GgufNonFiniteWeight,
                         ::testing::Values(GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1,
                                           GgmlType::Q5_1, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                                           GgmlType::Q6_K, GgmlType::IQ4_XS),
                         [](const auto& info) { return std::string(ggml_type_name(info.param)); });

TEST(ModelGguf, NonFiniteHyperparametersAreNamed) {
  TinyModelSpec s;
  s.rope_theta = std::numeric_limits<float>::infinity();
  expect_error([&] { testing::load_written(testing::tiny_model(s)); }, "llama.rope.freq_base = inf must be a finite number > 0");
  s = TinyModelSpec{};
  s.rms_eps = std::nanf("");
  expect_error([&] { testing::load_written(testing::tiny_model(s)); },
               "llama.attention.layer_norm_rms_epsilon = nan must be a finite number > 0");
  s = TinyModelSpec{};
  s.rope_theta = -1.0f;
  expect_error([&] { testing::load_written(testing::tiny_model(s)); }, "llama.rope.freq_base = -1 must be a finite number > 0");
  testing::GgufWriter w;  // f64 beyond float's range: inf once used as a float
  w.add_string("general.architecture", "llama");
  w.add_f64("llama.rope.freq_base", 1e300);
  for (const char* k : {"llama.context_length", "llama.embedding_length", "llama.feed_forward_length", "llama.block_count"})
    w.add_u32(k, 32);
  w.add_u32("llama.attention.head_count", 2);
  expect_error([&] { testing::load_written(w); }, "llama.rope.freq_base = 1e+300 must be a finite number > 0");
}

// Detection by magic bytes: a truncated or empty .gguf is not "a llama2.c checkpoint".
TEST(ModelGguf, LoadModelNamesTheFormatByMagic) {
  const std::string path = testing::temp_path("trunc.gguf");
  const auto write = [&](const std::string& p, const std::string& bytes) {
    std::FILE* f = std::fopen(p.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  };
  write(path, "");
  expect_error([&] { load_model(path); }, "is empty (0 bytes): not a model file");
  write(path, "GG");
  expect_error([&] { load_model(path); }, "GGUF '" + path + "': truncated: the magic needs 4 bytes");
  write(path, std::string("GGUF\x03\0\0\0", 8));
  expect_error([&] { load_model(path); }, "GGUF '" + path + "': truncated");
  write(path, std::string(40, 'x'));  // named .gguf, no magic: a GGUF error, not a llama2.c one
  expect_error([&] { load_model(path); }, "is not a GGUF file (magic bytes 78 78 78 78)");
  const std::string bin = testing::temp_path("short.bin");
  write(bin, "GGU");  // the start of the magic, whatever the name
  expect_error([&] { load_model(bin); }, "GGUF '" + bin + "': truncated");
  write(bin, std::string(10, 'x'));  // no magic, not .gguf: the llama2.c loader's error
  expect_error([&] { load_model(bin); }, "llama2.c checkpoint '" + bin + "': 10 bytes, smaller than the 28-byte header");
  std::remove(path.c_str());
  std::remove(bin.c_str());
}

TEST(ModelGguf, TiedOutputAndQwen2Biases) {
  TinyModelSpec s;
  s.arch = "qwen2";
  s.tied = true;
  s.bias = true;
  s.chat_template = "<|start_header_id|>";
  const Model m = testing::load_written(testing::tiny_model(s));
  EXPECT_EQ(m.config.arch, Arch::Qwen2);
  EXPECT_EQ(m.config.rope_style, RopeStyle::HalfSplit);
  EXPECT_TRUE(m.config.tied_embeddings);
  EXPECT_EQ(m.weights.output.data, m.weights.token_embd.data);
  EXPECT_TRUE(m.config.has_qkv_bias);
  EXPECT_EQ(m.weights.layers[0].bk.n_cols, 16u);
  EXPECT_EQ(m.config.chat_template, ChatTemplate::Llama3);
}

// Gemma 3 as llama.cpp reads it: every 6th layer global, the rest local with RoPE base 10000;
// embedding scale sqrt(dim), query scale 1/sqrt(head_dim), GELU, q/k norms and post-norms; the
// Gemma turn template even without tokenizer.chat_template; linear RoPE scaling on the global layers.
TEST(ModelGguf, Gemma3Config) {
  TinyModelSpec s;
  s.arch = "gemma3";
  s.n_layers = 7;
  s.tied = true;
  s.rope_scaling = "linear";
  const Model m = testing::load_written(testing::tiny_model(s));
  const ModelConfig& c = m.config;
  EXPECT_EQ(c.arch, Arch::Gemma3);
  EXPECT_EQ(c.rope_style, RopeStyle::HalfSplit);
  EXPECT_TRUE(c.qk_norm && c.post_norms);
  EXPECT_EQ(c.ffn_act, FfnAct::GeluTanh);
  EXPECT_FLOAT_EQ(c.embed_scale, std::sqrt(32.0f));
  EXPECT_FLOAT_EQ(c.attn_scale, 1.0f / std::sqrt(16.0f));
  EXPECT_EQ(c.sliding_window, 4);
  for (int l = 0; l < 7; ++l) EXPECT_EQ(c.layer_window(l), l == 5 ? 0 : 4) << "layer " << l;
  EXPECT_EQ(c.rope_theta_local, 10000.0f);
  EXPECT_FLOAT_EQ(c.rope_freq_scale, 1.0f / 8.0f);
  EXPECT_EQ(c.chat_template, ChatTemplate::Gemma);
  EXPECT_EQ(m.weights.layers[6].q_norm.n_cols, 16u);
  EXPECT_TRUE(m.weights.layers[6].ffn_post_norm.present());

  s.sliding_window = 0;  // no key: no local layers
  EXPECT_EQ(testing::load_written(testing::tiny_model(s)).config.layer_window(0), 0);
  s.rope_scaling = "yarn";
  expect_error([&] { testing::load_written(testing::tiny_model(s)); }, "RoPE scaling type 'yarn' is not supported (gemma3: none or linear)");
  s.rope_scaling.clear();
  s.skip_post_ffw_norm = true;
  expect_error([&] { testing::load_written(testing::tiny_model(s)); }, "required tensor 'blk.0.post_ffw_norm.weight' is missing");
}

TEST(ModelGguf, Qwen3Config) {
  TinyModelSpec s;
  s.arch = "qwen3";
  const Model m = testing::load_written(testing::tiny_model(s));
  EXPECT_EQ(m.config.arch, Arch::Qwen3);
  EXPECT_EQ(m.config.rope_style, RopeStyle::HalfSplit);
  EXPECT_TRUE(m.config.qk_norm);
  EXPECT_FALSE(m.config.post_norms || m.config.has_qkv_bias);
  EXPECT_EQ(m.config.ffn_act, FfnAct::SiLU);
  EXPECT_EQ(m.config.layer_window(0), 0);
  EXPECT_TRUE(m.weights.layers[1].k_norm.present());
  TinyModelSpec wide = s;  // heads wider than dim / heads (attention.key_length), as Qwen3-0.6B's
  wide.head_dim = 48;
  const Model w = testing::load_written(testing::tiny_model(wide));
  EXPECT_EQ(w.config.head_dim, 48);
  EXPECT_EQ(w.config.q_dim(), 96);
  EXPECT_EQ(w.weights.layers[0].q_norm.n_cols, 48u);
  s.rope_scaling = "linear";  // only gemma3's linear scaling is read
  expect_error([&] { testing::load_written(testing::tiny_model(s)); }, "RoPE scaling type 'linear' is not supported");
}

TEST(ModelGguf, LoadModelDispatchesOnMagic) {
  const std::string path = testing::temp_path("tiny.gguf");
  testing::tiny_model(TinyModelSpec{}).write(path);
  const Model m = load_model(path);
  EXPECT_EQ(m.config.source, WeightSource::Gguf);
  EXPECT_EQ(m.config.chat_template, ChatTemplate::None);
  std::remove(path.c_str());
}

TEST(ModelGguf, Errors) {
  TinyModelSpec s;
  s.arch = "gemma2";
  expect_error([&] { testing::load_written(testing::tiny_model(s)); }, "unsupported architecture 'gemma2'");

  s = TinyModelSpec{};
  s.n_heads = 4;
  s.n_kv_heads = 3;
  expect_error([&] { testing::load_written(testing::tiny_model(s)); }, "head_count 4 is not a multiple of head_count_kv 3");

  s = TinyModelSpec{};
  s.wtype = GgmlType::Q8_1;  // parses, but cannot be multiplied
  expect_error([&] { testing::load_written(testing::tiny_model(s)); }, "GGUF tensor 'blk.0.attn_q.weight': ggml type q8_1");

  {
    testing::GgufWriter w = testing::tiny_model(TinyModelSpec{});
    w.add_u32("llama.vocab_size", 17);
    expect_error([&] { testing::load_written(w); }, "llama.vocab_size = 17 but token_embd.weight has 16 rows");
  }
  {  // a huge block_count is refused before any layer is looked for, not a million layers allocated
    testing::GgufWriter w;
    w.add_string("general.architecture", "llama");
    w.add_u32("llama.context_length", 32);
    w.add_u32("llama.embedding_length", 32);
    w.add_u32("llama.feed_forward_length", 32);
    w.add_u32("llama.attention.head_count", 2);
    w.add_u32("llama.block_count", 1000000);
    w.add_tensor_f32("token_embd.weight", {32, 4}, std::vector<float>(128, 0.0f));
    expect_error([&] { testing::load_written(w); }, "llama.block_count = 1000000, beyond the 1024 layers a KV cache takes");
  }
  {
    testing::GgufWriter w;
    w.add_string("general.architecture", "llama");
    expect_error([&] { testing::load_written(w); }, "metadata key 'llama.block_count' is missing");
  }
  {  // heads x head dim past int: refused before any buffer is sized by it (it was a SIGSEGV in rope)
    testing::GgufWriter w = testing::tiny_model(TinyModelSpec{});
    w.add_u32("llama.attention.key_length", 1u << 30);
    expect_error([&] { testing::load_written(w); }, "llama.head_count 2 x head dim 1073741824 = 2147483648 channels, more than 2^30");
  }
  {  // Llama 3.1's RoPE factors are a tensor, not a key: refused by the tensor too
    testing::GgufWriter w = testing::tiny_model(TinyModelSpec{});
    w.add_tensor_f32("rope_freqs.weight", {8}, std::vector<float>(8, 1.0f));
    expect_error([&] { testing::load_written(w); }, "per-frequency RoPE factors (rope_freqs.weight");
  }
  {  // a tensor of a layer past block_count (a damaged header would run the model on fewer layers)
    TinyModelSpec one;
    one.n_layers = 1;
    testing::GgufWriter w = testing::tiny_model(one);
    w.add_tensor_f32("blk.1.attn_norm.weight", {32}, std::vector<float>(32, 1.0f));
    expect_error([&] { testing::load_written(w); }, "1 tensor this architecture does not use (blk.1.attn_norm.weight)");
    w.add_tensor_f32("blk.0.attn_qkv.weight", {32, 96}, std::vector<float>(32 * 96, 0.0f));  // another model's fused form
    expect_error([&] { testing::load_written(w); }, "2 tensors this architecture does not use (blk.1.attn_norm.weight, blk.0.attn_qkv.weight)");
  }
  {  // gemma3 with 62 layers scales queries by dim / heads, which must not be 0
    TinyModelSpec g;
    g.arch = "gemma3";
    g.n_layers = 62;
    g.n_heads = g.n_kv_heads = 64;
    g.head_dim = 4;
    expect_error([&] { testing::load_written(testing::tiny_model(g)); }, "embedding_length / head_count, but 32 / 64 is 0");
  }
}

TEST(ModelGguf, WrongShapeIsNamed) {
  // attn_k declared with the query width: a shape error naming the tensor
  TinyModelSpec s;
  s.n_kv_heads = 2;  // file has [32][32] k/v ...
  testing::GgufWriter w = testing::tiny_model(s);
  auto bytes = w.bytes();
  // ... but the metadata claims 1 KV head: patch head_count_kv (u32 value right after its key)
  const std::string key = "llama.attention.head_count_kv";
  const auto it = std::search(bytes.begin(), bytes.end(), key.begin(), key.end());
  ASSERT_NE(it, bytes.end());
  const size_t at = size_t(it - bytes.begin()) + key.size() + 4;
  bytes[at] = 1;
  expect_error([&] { load_gguf(std::make_shared<const GgufFile>(GgufFile::from_bytes(bytes))); },
               "GGUF tensor 'blk.0.attn_k.weight': dims [32, 32], expected [32, 16]");
}

}  // namespace
}  // namespace tq::model
