// Speculative decoding on the CUDA runner: greedy generation with drafts verified in one step
// (CUDA graphs for 1..8 query tokens) against generation without, on a tiny random model. The
// drafts come from a draft model (the model itself, on its own CUDA engine) with a random tail
// poisoned, so most steps keep some drafts and reject others, whose K/V rows were written to the
// pages and the sink/window ring (the target's and the draft's) and must be taken back.
//
// Bound. A verification step multiplies k + 1 rows by the weights (cuBLAS) where a decode step
// multiplies one (the GEMV kernel), so a position's logits differ between the two by summation
// order only: far less than 1% of their spread (test_cuda_serve.cpp says why). So: every token
// of both runs must be the argmax of teacher-forced eager logits wherever the top-2 gap exceeds
// 1% of the spread, and the first position where the two runs differ must be a near-tie there.
// A rejected row left in the cache, or a wrong position, moves logits by O(their spread).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "cuda_test_util.h"
#include "tiny_models.h"
#include "tq/engine/generation.h"

namespace tq {
namespace {

constexpr int kVocab = 300;

// generate() asks a tokenizer which tokens stop the text: here none does.
struct NoStopTokens : model::Tokenizer {
  std::vector<int> encode(std::string_view, bool, std::span<const model::TextSpan>) const override { return {}; }
  std::string decode(int) const override { return {}; }
};

// The inner drafter's drafts with a random tail (possibly all, possibly none) made wrong.
class PoisonedTail : public engine::Drafter {
 public:
  explicit PoisonedTail(engine::Drafter& inner) : inner_(inner) {}
  void extend(std::span<const int> t) override { inner_.extend(t); }
  std::vector<int> draft(uint32_t max) override {
    std::vector<int> d = inner_.draft(max);
    for (size_t i = rng_() % (d.size() + 1); i < d.size(); ++i) d[i] = int((uint32_t(d[i]) + 1 + rng_() % (kVocab - 1)) % kVocab);
    return d;
  }

 private:
  engine::Drafter& inner_;
  std::mt19937 rng_{7};
};

struct GreedyRun {
  std::vector<int> tokens;
  uint32_t seq_len = 0;
  engine::SpeculativeStats stats;
};

GreedyRun generate_greedy(engine::Engine& e, const model::Model& m, const model::Tokenizer& tok, const std::vector<int>& prompt,
                          uint32_t n, engine::Drafter* d) {
  const int seq = e.add_sequence();
  engine::Sampler sampler({});
  engine::Speculation sp{d, 8, false};
  if (d) d->extend(prompt);
  GreedyRun r;
  engine::generate(e, seq, e.prefill(seq, prompt), sampler, m, tok, {.max_tokens = n, .speculation = d ? &sp : nullptr},
                   [&](int t) { r.tokens.push_back(t); });
  r.seq_len = e.seq_len(seq);
  r.stats = sp.stats;
  e.remove_sequence(seq);
  return r;
}

TEST(CudaSpeculation, GreedyMatchesPlainDecodingUpToNearTies) {
  TQ_REQUIRE_GPU();
  model::testing::TinyModelSpec ms;
  ms.dim = 256, ms.n_heads = 4, ms.n_kv_heads = 2, ms.hidden = 512, ms.n_layers = 2, ms.vocab = kVocab, ms.realistic = true;
  const model::Model m = model::testing::load_written(model::testing::tiny_model(ms));
  const NoStopTokens tok;
  std::mt19937 rng(11);
  std::vector<int> prompt(37);
  for (int& t : prompt) t = int(rng() % kVocab);
  constexpr uint32_t kTokens = 160;
  for (const char* spec_text : {"k3v2", "fp16:page=8", "k3v2:sink=4:window=16"}) {
    SCOPED_TRACE(spec_text);
    const KvSpec spec = parse_kv_spec(spec_text);
    engine::Engine e(m, spec, {.device = engine::Device::kCuda, .context = 512, .max_chunk = 64});
    const GreedyRun plain = generate_greedy(e, m, tok, prompt, kTokens, nullptr);
    ASSERT_EQ(plain.tokens.size(), kTokens);
    engine::Engine draft_engine(m, spec, {.device = engine::Device::kCuda, .context = 512, .max_chunk = 64});
    engine::ModelDrafter model_drafter(draft_engine);
    PoisonedTail poison(model_drafter);
    const GreedyRun spec_run = generate_greedy(e, m, tok, prompt, kTokens, &poison);
    ASSERT_EQ(spec_run.tokens.size(), kTokens);
    EXPECT_EQ(spec_run.seq_len, plain.seq_len);
    EXPECT_GT(spec_run.stats.accepted, kTokens / 4) << "the drafts were hardly ever kept: nothing was tested";
    EXPECT_LT(spec_run.stats.accepted, spec_run.stats.drafted) << "nothing was rolled back";
    EXPECT_EQ(e.blocks().allocator().free_pages(), e.blocks().allocator().num_pages()) << "pages leaked";

    // Teacher-forced eager logits of each run's own text: every position at once.
    engine::Engine ref(m, spec, {.device = engine::Device::kCuda, .context = 512, .max_chunk = 512, .eager = true});
    const auto forced = [&](const std::vector<int>& out) {
      std::vector<int> seen = prompt;
      seen.insert(seen.end(), out.begin(), out.end() - 1);
      const int seq = ref.add_sequence();
      std::vector<float> logits = ref.prefill(seq, seen, true);
      ref.remove_sequence(seq);
      return logits;
    };
    size_t decided = 0;
    for (const GreedyRun* r : {&plain, &spec_run}) {
      const std::vector<float> logits = forced(r->tokens);
      for (size_t k = 0; k < kTokens; ++k) {
        const int want = test::clear_argmax(&logits[(prompt.size() - 1 + k) * kVocab], kVocab, 0.01f);
        if (want < 0) continue;
        ++decided;
        EXPECT_EQ(r->tokens[k], want) << (r == &plain ? "plain" : "speculative") << " token " << k;
      }
    }
    EXPECT_GT(decided, size_t(2 * kTokens) * 3 / 4) << "too few clear positions to judge";
    const auto diverge = std::mismatch(plain.tokens.begin(), plain.tokens.end(), spec_run.tokens.begin());
    if (diverge.first != plain.tokens.end()) {
      const size_t k = size_t(diverge.first - plain.tokens.begin());
      const std::vector<float> logits = forced(plain.tokens);
      EXPECT_EQ(test::clear_argmax(&logits[(prompt.size() - 1 + k) * kVocab], kVocab, 0.01f), -1)
          << "the runs part at token " << k << ", where the argmax is clear";
      RecordProperty(std::string("diverged_at_") + spec_text, int(k));
    }
  }
}

model::Model invariance_model() {
  model::testing::TinyModelSpec ms;
  ms.dim = 256, ms.n_heads = 4, ms.n_kv_heads = 2, ms.hidden = 512, ms.n_layers = 2, ms.vocab = kVocab, ms.realistic = true;
  ms.context = 1024;
  return model::testing::load_written(model::testing::tiny_model(ms));
}

// Batch-invariant mode, directly: the logits of 9 tokens fed in one step (the decode kernel's
// verification shape, 9 rows through gemm_rows) are the same bits as those of the same tokens fed
// one a step, across the fixed cut at position 512 (positions 506..514: the 9-token step has one
// split more than the 1-token steps before the cut).
TEST(CudaSpeculation, BatchInvariantStepsGiveTheSameLogitBits) {
  TQ_REQUIRE_GPU();
  const model::Model m = invariance_model();
  std::mt19937 rng(5);
  std::vector<int> prompt(506), next(9);
  for (int& t : prompt) t = int(rng() % kVocab);
  for (int& t : next) t = int(rng() % kVocab);
  for (const char* spec_text : {"k3v2", "fp16:page=8", "k4v4:edge=1/fp16"}) {
    SCOPED_TRACE(spec_text);
    const KvSpec spec = parse_kv_spec(spec_text);
    engine::Engine e(m, spec, {.device = engine::Device::kCuda, .context = 1024, .max_seqs = 2, .max_chunk = 64, .batch_invariant = true});
    const int a = e.add_sequence(), b = e.add_sequence();
    e.prefill(a, prompt), e.prefill(b, prompt);
    const std::vector<float> together = e.prefill(a, next, true);
    ASSERT_EQ(together.size(), next.size() * kVocab);
    for (size_t i = 0; i < next.size(); ++i) {
      const std::vector<float> one = e.prefill(b, {next[i]}, true);
      ASSERT_EQ(std::memcmp(one.data(), &together[i * kVocab], kVocab * sizeof(float)), 0)
          << "token " << i << " (position " << prompt.size() + i << "): its logits in a 9-token step differ from a 1-token step's";
    }
  }
}

// With it, greedy speculative decoding gives plain decoding's text token for token (drafts with
// poisoned tails, so most steps keep some drafts and roll others back), the text crossing the cut.
TEST(CudaSpeculation, BatchInvariantGreedyEqualsPlainDecoding) {
  TQ_REQUIRE_GPU();
  const model::Model m = invariance_model();
  const NoStopTokens tok;
  std::mt19937 rng(11);
  std::vector<int> prompt(450);
  for (int& t : prompt) t = int(rng() % kVocab);
  constexpr uint32_t kTokens = 160;
  for (const char* spec_text : {"k3v2", "fp16:page=8"}) {
    SCOPED_TRACE(spec_text);
    const KvSpec spec = parse_kv_spec(spec_text);
    const engine::EngineOptions eo{.device = engine::Device::kCuda, .context = 1024, .max_chunk = 64, .batch_invariant = true};
    engine::Engine e(m, spec, eo);
    const GreedyRun plain = generate_greedy(e, m, tok, prompt, kTokens, nullptr);
    engine::Engine draft_engine(m, spec, {.device = engine::Device::kCuda, .context = 1024, .max_chunk = 64});
    engine::ModelDrafter model_drafter(draft_engine);
    PoisonedTail poison(model_drafter);
    const GreedyRun spec_run = generate_greedy(e, m, tok, prompt, kTokens, &poison);
    EXPECT_GT(spec_run.stats.accepted, kTokens / 4) << "the drafts were hardly ever kept: nothing was tested";
    EXPECT_LT(spec_run.stats.accepted, spec_run.stats.drafted) << "nothing was rolled back";
    EXPECT_EQ(spec_run.tokens, plain.tokens);
    EXPECT_EQ(spec_run.seq_len, plain.seq_len);
    EXPECT_EQ(e.blocks().allocator().free_pages(), e.blocks().allocator().num_pages()) << "pages leaked";
  }
}

TEST(CudaSpeculation, BatchInvariantModeRefusesSideBufferSpecs) {
  TQ_REQUIRE_GPU();
  const model::Model m = invariance_model();
  try {
    engine::Engine e(m, parse_kv_spec("k3v2:sink=4:window=16"), {.device = engine::Device::kCuda, .context = 512, .batch_invariant = true});
    FAIL() << "a sink/window spec was accepted in batch-invariant mode";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sink and window"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tq
