// End to end on stories260K: the engine with a full-precision cache reproduces llama2.c's run.c
// greedy output, chunked prompt processing gives the logits of token-by-token decoding, and the
// quantized caches stay close.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "model/test_data.h"
#include "tq/common.h"
#include "tq/engine/engine.h"
#include "tq/model/tokenizer.h"

namespace tq::engine {
namespace {

using model::testing::shared_data_file;

struct Stories {
  model::Model m;
  std::unique_ptr<model::Tokenizer> tok;
};
const Stories* stories() {
  static const Stories* s = [] () -> const Stories* {
    const std::string mp = shared_data_file("stories260K/stories260K.bin"), tp = shared_data_file("stories260K/tok512.bin");
    if (!std::filesystem::exists(mp) || !std::filesystem::exists(tp)) return nullptr;
    auto* st = new Stories{model::load_llama2c(mp), nullptr};
    st->tok = model::load_llama2c_tokenizer(tp, st->m.config.vocab_size);
    return st;
  }();
  return s;
}
#define REQUIRE_STORIES() \
  if (!stories()) GTEST_SKIP() << "stories260K not found under " << model::testing::shared_data_dir()

// run.c's generate(): feed the prompt one token at a time, then the argmax; stop on BOS.
std::string generate(Engine& e, const std::string& prompt, int steps) {
  const auto& tok = *stories()->tok;
  const std::vector<int> p = tok.encode(prompt, true);
  const int s = e.add_sequence();
  std::string text;
  int token = p[0];
  for (int pos = 0; pos < steps; ++pos) {
    const std::vector<float> logits = e.forward({BatchItem{s, {token}, false}});
    const int next = pos + 1 < int(p.size()) ? p[size_t(pos) + 1] : int(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (next == 1) break;
    text += tok.decode_next(token, next);
    token = next;
  }
  e.remove_sequence(s);
  return text;
}

TEST(Stories260K, Fp32CacheMatchesRunC) {
  REQUIRE_STORIES();
  Engine e(stories()->m, parse_kv_spec("fp32"), {.threads = 2});
  EXPECT_EQ(generate(e, "", 80),
            "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she "
            "saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to");
  EXPECT_EQ(generate(e, "Lily and Tom went to the park", 40),
            "Lily and Tom went to the park. They saw a big box with a big box. They wanted to play with it. They wanted "
            "to play with");
}

TEST(Stories260K, Fp16CacheMatchesRunC) {
  REQUIRE_STORIES();
  Engine e(stories()->m, parse_kv_spec("fp16"), {.threads = 2});
  EXPECT_EQ(generate(e, "Lily and Tom went to the park", 40),
            "Lily and Tom went to the park. They saw a big box with a big box. They wanted to play with it. They wanted "
            "to play with");
}

// Prompt chunks (multi-token queries) give the logits of single-token decoding, for every spec
// and knob: the same rows are written and the same positions attended. Differences come only
// from float summation order (page tiles vs fused rows in attention): 1e-4 of the logit range for
// float caches. In a quantized cache such a 1e-6 difference in a later layer's key can move it
// across a codebook (or fp16 rounding) boundary, which changes that row by one quantization step:
// 1e-3 of the range there (a wrong position or page would move logits by O(range)).
class ChunkVsDecode : public ::testing::TestWithParam<const char*> {};
TEST_P(ChunkVsDecode, SameLogits) {
  REQUIRE_STORIES();
  const auto& tok = *stories()->tok;
  const std::vector<int> p = tok.encode("Once upon a time, there was a little dog named Max. Max liked to run and jump in the big green park", true);
  ASSERT_GT(p.size(), 20u);
  const KvSpec spec = parse_kv_spec(GetParam());
  Engine chunked(stories()->m, spec, {.threads = 2, .max_chunk = 7});  // odd chunk: pages straddle chunks
  Engine single(stories()->m, spec, {.threads = 1});
  const std::vector<float> a = chunked.prefill(chunked.add_sequence(), p, true);
  const int s = single.add_sequence();
  const size_t V = size_t(stories()->m.config.vocab_size);
  ASSERT_EQ(a.size(), p.size() * V);
  for (size_t i = 0; i < p.size(); ++i) {
    const std::vector<float> b = single.forward({BatchItem{s, {p[i]}, false}});
    float range = 0, err = 0;
    for (size_t j = 0; j < V; ++j) {
      range = std::max(range, std::abs(b[j]));
      err = std::max(err, std::abs(a[i * V + j] - b[j]));
    }
    EXPECT_LE(err, (is_tq(spec.k.enc) ? 1e-3f : 1e-4f) * range + 1e-5f) << "token " << i;
  }
}
INSTANTIATE_TEST_SUITE_P(Specs, ChunkVsDecode,
                         ::testing::Values("fp32", "fp16", "k4v4", "k3v2:page=5", "k2v2:nc:prod", "k3v2:edge=1/k4v4:sink=2:window=6:page=4",
                                           "fp32:ksim=int4", "k2v2:sink=3:window=64"));

// Several sequences in one batch give the logits each gets alone.
TEST(Stories260K, BatchedSequencesMatchAlone) {
  REQUIRE_STORIES();
  const auto& tok = *stories()->tok;
  const std::vector<int> a = tok.encode("The cat sat on the mat", true), b = tok.encode("Tom had a red ball and a blue kite", true);
  Engine e(stories()->m, parse_kv_spec("k3v2:page=4"), {.threads = 2, .max_seqs = 2});
  const int sa = e.add_sequence(), sb = e.add_sequence();
  const std::vector<float> both = e.forward({BatchItem{sa, a, false}, BatchItem{sb, b, false}});
  Engine alone(stories()->m, parse_kv_spec("k3v2:page=4"), {.threads = 2});
  const std::vector<float> lb = alone.prefill(alone.add_sequence(), b);
  const size_t V = lb.size();
  ASSERT_EQ(both.size(), 2 * V);
  for (size_t j = 0; j < V; ++j) EXPECT_NEAR(both[V + j], lb[j], 1e-4f * (1 + std::abs(lb[j])));
}

TEST(Stories260K, ErrorsOnBadInput) {
  REQUIRE_STORIES();
  Engine e(stories()->m, parse_kv_spec("k3v2"), {.threads = 1, .context = 32});
  const int s = e.add_sequence();
  EXPECT_THROW(e.prefill(s, std::vector<int>(40, 5)), Error);  // longer than the context
  EXPECT_EQ(e.seq_len(s), 0u);
  EXPECT_THROW(e.forward({BatchItem{s, {9999}, false}}), Error);  // token outside the vocabulary
  // Two sequences of 32 tokens in a pool sized for one: the second runs out of pages.
  const int s2 = e.add_sequence();
  e.prefill(s, std::vector<int>(32, 5));
  EXPECT_THROW(e.prefill(s2, std::vector<int>(8, 5)), Error);
  EXPECT_EQ(e.seq_len(s2), 0u);
  e.remove_sequence(s);
  EXPECT_NO_THROW(e.prefill(s2, std::vector<int>(8, 5)));
}

}  // namespace
}  // namespace tq::engine
