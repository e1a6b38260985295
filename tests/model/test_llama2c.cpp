// llama2.c checkpoints: layout and header checks on synthetic files, and the real stories260K.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include "ref_forward.h"
#include "test_data.h"
#include "tq/common.h"
#include "tq/model/model.h"
#include "tq/model/tokenizer.h"

namespace tq::model {
namespace {

using testing::expect_error;

// A checkpoint whose float k holds the value k: each array's first value is its offset in floats.
std::vector<uint8_t> synthetic(std::array<int32_t, 7> h, int64_t n_floats) {
  std::vector<uint8_t> b(28 + size_t(n_floats) * 4);
  std::memcpy(b.data(), h.data(), 28);
  for (int64_t k = 0; k < n_floats; ++k) {
    const float v = float(k);
    std::memcpy(b.data() + 28 + k * 4, &v, 4);
  }
  return b;
}

Model load_bytes(std::vector<uint8_t> b) { return load_llama2c(ByteSource::from_vector(std::move(b), "ckpt.bin")); }

float first(const TensorRef& t) {
  float v;
  std::memcpy(&v, t.data, 4);
  return v;
}

class Llama2cLayout : public ::testing::TestWithParam<bool> {};  // param: shared classifier

TEST_P(Llama2cLayout, ArraysInRunCOrder) {
  const bool shared = GetParam();
  // dim 8, hidden 12, 2 layers, 2 heads (head 4), 1 kv head (kv_dim 4), vocab 10, seq_len 4
  const int64_t D = 8, H = 12, L = 2, KV = 4, V = 10, S = 4, HS = 4;
  int64_t n = V * D + L * D + L * D * D + 2 * L * D * KV + L * D * D + L * D + 3 * L * D * H + D + S * HS;
  if (!shared) n += V * D;
  const Model m = load_bytes(synthetic({8, 12, 2, 2, 1, shared ? 10 : -10, 4}, n));
  const ModelConfig& c = m.config;
  EXPECT_EQ(c.source, WeightSource::Llama2c);
  EXPECT_EQ(c.dim, 8);
  EXPECT_EQ(c.hidden_dim, 12);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.n_heads, 2);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.vocab_size, 10);
  EXPECT_EQ(c.max_seq, 4);
  EXPECT_EQ(c.rope_style, RopeStyle::AdjacentPairs);
  EXPECT_EQ(c.tied_embeddings, shared);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_id, 2);
  const Weights& w = m.weights;
  int64_t off = 0;
  EXPECT_EQ(first(w.token_embd), float(off));
  off += V * D;
  EXPECT_EQ(first(w.layers[1].attn_norm), float(off + D));
  off += L * D;
  EXPECT_EQ(first(w.layers[1].wq), float(off + D * D));
  EXPECT_EQ(w.layers[1].wq.n_rows, 8u);
  off += L * D * D;
  EXPECT_EQ(first(w.layers[1].wk), float(off + KV * D));
  EXPECT_EQ(w.layers[1].wk.n_rows, 4u);  // [kv_dim][dim]: out x in
  EXPECT_EQ(w.layers[1].wk.n_cols, 8u);
  off += L * KV * D;
  EXPECT_EQ(first(w.layers[0].wv), float(off));
  off += L * KV * D;
  EXPECT_EQ(first(w.layers[1].wo), float(off + D * D));
  off += L * D * D;
  EXPECT_EQ(first(w.layers[1].ffn_norm), float(off + D));
  off += L * D;
  EXPECT_EQ(first(w.layers[1].w_gate), float(off + H * D));  // w1
  EXPECT_EQ(w.layers[1].w_gate.n_rows, 12u);
  off += L * H * D;
  EXPECT_EQ(first(w.layers[1].w_down), float(off + D * H));  // w2 [dim][hidden]
  EXPECT_EQ(w.layers[1].w_down.n_cols, 12u);
  off += L * D * H;
  EXPECT_EQ(first(w.layers[1].w_up), float(off + H * D));  // w3
  off += L * H * D;
  EXPECT_EQ(first(w.output_norm), float(off));
  off += D + S * HS;  // rms_final, then the skipped freq_cis tables
  if (shared) {
    EXPECT_EQ(w.output.data, w.token_embd.data);
  } else {
    EXPECT_EQ(first(w.output), float(off));
    EXPECT_EQ(w.output.name, "wcls");
  }
  // [out][in]: y = W x picks rows. wq of layer 0 with x = e_0 gives column 0 = values off + r*D.
  std::vector<float> x(8, 0.0f), y(8);
  x[0] = 1.0f;
  w.layers[0].wq.matvec(x.data(), y.data());
  const float wq0 = first(w.layers[0].wq);
  for (size_t r = 0; r < 8; ++r) EXPECT_EQ(y[r], wq0 + float(r * 8));
}

INSTANTIATE_TEST_SUITE_P(Classifier, Llama2cLayout, ::testing::Values(true, false),
                         [](const auto& i) { return i.param ? "Shared" : "Separate"; });

TEST(Llama2c, HeaderAndSizeErrors) {
  const int64_t n = 10 * 8 + 2 * 8 + 2 * 64 + 2 * 2 * 32 + 2 * 64 + 2 * 8 + 3 * 2 * 96 + 8 + 16;
  EXPECT_NO_THROW(load_bytes(synthetic({8, 12, 2, 2, 1, 10, 4}, n)));
  expect_error([&] { load_bytes(synthetic({8, 12, 2, 2, 1, 10, 4}, n - 1)); }, "implies");
  expect_error([&] { load_bytes(synthetic({8, 12, 2, 2, 1, 10, 4}, n + 1)); }, "file has");
  expect_error([&] { load_bytes(synthetic({8, 12, 2, 2, 1, -10, 4}, n)); }, "unshared");
  expect_error([&] { load_bytes(synthetic({8, 12, 2, 3, 1, 10, 4}, n)); }, "n_heads = 3");
  expect_error([&] { load_bytes(synthetic({8, 12, 2, 2, 0, 10, 4}, n)); }, "n_kv_heads = 0");
  expect_error([&] { load_bytes(synthetic({8, 12, 0, 2, 1, 10, 4}, n)); }, "n_layers = 0");
  expect_error([&] { load_bytes(synthetic({8, 12, 2, 2, 1, 0, 4}, n)); }, "vocab_size = 0");
  expect_error([&] { load_bytes(synthetic({6, 12, 2, 2, 1, 10, 4}, n)); }, "head size 3");
  expect_error([&] { load_bytes(synthetic({0x616b3432, 1, 2, 2, 1, 10, 4}, n)); }, "'ak42'");
  expect_error([&] { load_bytes(synthetic({1 << 30, 1 << 30, 1024, 2, 1, 10, 4}, 0)); }, "size overflows");
  expect_error([&] { load_bytes(synthetic({8, 12, 1025, 2, 1, 10, 4}, 0)); }, "n_layers = 1025 (1..1024 layers)");
  expect_error([] { load_bytes({1, 2, 3}); }, "smaller than the 28-byte header");
  expect_error([] { load_llama2c("/nonexistent/model.bin"); }, "/nonexistent/model.bin");
}

TEST(Llama2c, NonFiniteWeightIsNamed) {
  const int64_t n = 10 * 8 + 2 * 8 + 2 * 64 + 2 * 2 * 32 + 2 * 64 + 2 * 8 + 3 * 2 * 96 + 8 + 16;
  std::vector<uint8_t> b = synthetic({8, 12, 2, 2, 1, 10, 4}, n);
  const float inf = std::numeric_limits<float>::infinity();
  std::memcpy(b.data() + 28 + (10 * 8 + 2 * 8 + 64 + 8 + 3) * 4, &inf, 4);  // wq of layer 1, row 1, column 3
  expect_error([&] { load_bytes(b); }, "llama2.c checkpoint 'ckpt.bin': weight 'wq[1]': element 11 (row 1, column 3) is inf");
}

// ---- the real stories260K model ----
TEST(Stories260K, ConfigMatchesItsHeader) {
  const std::string path = testing::shared_data_file("stories260K/stories260K.bin");
  TQ_REQUIRE_SHARED(path);
  const Model m = load_model(path);  // dispatches on content: not GGUF
  const ModelConfig& c = m.config;
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq, 512);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(m.weights.layers[4].wk.n_rows, 32u);
  EXPECT_EQ(m.weights.layers[4].w_down.n_cols, 172u);
}

// Greedy decoding from BOS with the reference forward pass reproduces run.c's output
// (`run stories260K.bin -z tok512.bin -t 0`), which checks the array order, the [out][in]
// orientation, adjacent-pair RoPE, GQA head mapping and the tokenizer's decoding end to end.
TEST(Stories260K, GreedyGenerationMatchesRunC) {
  const std::string model_path = testing::shared_data_file("stories260K/stories260K.bin");
  const std::string tok_path = testing::shared_data_file("stories260K/tok512.bin");
  TQ_REQUIRE_SHARED(model_path);
  TQ_REQUIRE_SHARED(tok_path);
  const Model m = load_llama2c(model_path);
  const auto tok = load_llama2c_tokenizer(tok_path, m.config.vocab_size);
  const auto generate = [&](const std::string& prompt, int steps) {
    testing::RefForward fwd(m);
    const std::vector<int> p = tok->encode(prompt, true);
    std::string text;
    int token = p[0], pos = 0;
    while (pos < steps) {  // as run.c generate(): feed the prompt, then the argmax
      const std::vector<float> logits = fwd.forward(token, pos);
      const int next = pos + 1 < int(p.size())
                           ? p[size_t(pos) + 1]
                           : int(std::max_element(logits.begin(), logits.end()) - logits.begin());
      ++pos;
      if (next == 1) break;  // run.c stops on BOS
      text += tok->decode_next(token, next);
      token = next;
    }
    return text;
  };
  EXPECT_EQ(generate("", 80),
            "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she "
            "saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to");
  EXPECT_EQ(generate("Lily and Tom went to the park", 40),
            "Lily and Tom went to the park. They saw a big box with a big box. They wanted to play with it. They wanted "
            "to play with");
}

}  // namespace
}  // namespace tq::model
