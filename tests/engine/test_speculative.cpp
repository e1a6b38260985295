// Speculative decoding on the CPU runner (stories260K): the n-gram drafter, greedy text identical
// to decoding without speculation for every spec (the CPU runner computes a position's logits the
// same way whatever the step carries), poisoned drafts that must leave no trace, and sampled
// tokens distributed as the target's distribution (a chi-square test over many seeds).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <numeric>
#include <random>

#include "engine/stories.h"
#include "model/tiny_models.h"
#include "tq/engine/generation.h"
#include "tq/engine/speculative.h"

namespace tq::engine {
namespace {

using tq::testing::stories;

std::vector<int> draft_of(NgramDrafter& d, const std::vector<int>& text, uint32_t max) {
  d.extend(text);
  return d.draft(max);
}

TEST(NgramDrafter, LatestEarlierOccurrenceOfTheLongestSuffix) {
  {  // suffix "1 2" occurs at 0 and 4: the latest (4) is taken, what follows it is the draft
    NgramDrafter d(1, 3);
    EXPECT_EQ(draft_of(d, {1, 2, 3, 9, 1, 2, 5, 6, 7, 1, 2}, 3), (std::vector<int>{5, 6, 7}));
  }
  {  // the 3-gram "8 1 2" beats the later 2-gram "1 2"
    NgramDrafter d(1, 3);
    EXPECT_EQ(draft_of(d, {8, 1, 2, 3, 4, 1, 2, 5, 8, 1, 2}, 2), (std::vector<int>{3, 4}));
  }
  {  // past the end of the text the repetition goes on: "4 5" at 0 is followed by 6 4 5, period 3
    NgramDrafter d(2, 3);
    EXPECT_EQ(draft_of(d, {4, 5, 6, 4, 5}, 8), (std::vector<int>{6, 4, 5, 6, 4, 5, 6, 4}));
  }
  {  // a run of one token drafts as many as asked (it drafted one a step)
    NgramDrafter d(1, 3);
    EXPECT_EQ(draft_of(d, {9, 1, 1, 1, 1}, 5), (std::vector<int>(5, 1)));
  }
  {  // no earlier occurrence: the suffix is never its own match
    NgramDrafter d(2, 3);
    EXPECT_TRUE(draft_of(d, {1, 2, 3, 4, 5}, 4).empty());
    EXPECT_TRUE(d.draft(4).empty());
  }
  {  // below min_ngram nothing is looked up; fed in pieces, the text is the same
    NgramDrafter d(2, 2);
    d.extend(std::vector<int>{7, 1, 9, 7});
    EXPECT_TRUE(d.draft(2).empty());  // "9 7" has no earlier occurrence; the unigram 7 is not tried
    d.extend(std::vector<int>{1});
    EXPECT_EQ(d.draft(2), (std::vector<int>{9, 7}));  // "7 1" followed by 9 7
  }
}

TEST(NgramDrafter, SpecParsing) {
  const SpeculativeSpec a = parse_speculative_spec("ngram");
  EXPECT_EQ(a.max_draft, 8u);
  EXPECT_TRUE(a.adaptive);
  const SpeculativeSpec b = parse_speculative_spec("ngram:k=3:n=4:min=1:fixed=1");
  EXPECT_EQ(b.max_draft, 3u);
  EXPECT_EQ(b.max_ngram, 4u);
  EXPECT_EQ(b.min_ngram, 1u);
  EXPECT_FALSE(b.adaptive);
  EXPECT_EQ(parse_speculative_spec("ngram:n=1").min_ngram, 1u);
  for (const auto& [text, says] : std::vector<std::pair<const char*, const char*>>{{"eagle", "unknown draft source 'eagle'"},
                                                                                   {"draft:n=2", "n= is an option of ngram"},
                                                                                   {"ngram:k=9", "k=9"},
                                                                                   {"ngram:k=0", "k=0"},
                                                                                   {"ngram:k=", "'k=' is not name=count"},
                                                                                   {"ngram:k=2x", "'k=2x'"},
                                                                                   {"ngram:n=9", "n=9"},
                                                                                   {"ngram:n=2:min=3", "min=3"},
                                                                                   {"ngram:zz=1", "unknown option 'zz'"},
                                                                                   {"ngram:fixed=2", "fixed=2"},
                                                                                   {"ngram:k=4:k=2", "k= given twice"}}) {
    try {
      parse_speculative_spec(text);
      ADD_FAILURE() << text << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << text << ": " << e.what();
    }
  }
}

bool is_stop(int id) { return is_stop_token(stories()->m, *stories()->tok, id); }

struct Outcome {
  std::vector<int> tokens;
  uint32_t seq_len = 0;
  std::vector<float> next_logits;  // of one more token fed after the run: what the cache holds
  SpeculativeStats stats;
};

// Greedy (or `sp`) generation of max_tokens after `prompt`, with speculation where `d` is given.
Outcome run(const char* spec, const std::vector<int>& prompt, uint32_t max_tokens, Drafter* d, uint32_t k, bool adaptive,
        const SamplingParams& sp = {}) {
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512});
  const int seq = e.add_sequence();
  Sampler sampler(sp);
  Speculation spec_state{d, k, adaptive};
  if (d) d->extend(prompt);
  Outcome r;
  generate(e, seq, e.prefill(seq, prompt), sampler, stories()->m, *stories()->tok,
           {.max_tokens = max_tokens, .context = 512, .speculation = d ? &spec_state : nullptr}, [&](int t) { r.tokens.push_back(t); });
  r.seq_len = e.seq_len(seq);
  r.next_logits = e.forward({BatchItem{seq, {5}, false}});
  r.stats = spec_state.stats;
  return r;
}

const char* kRepetitive =
    "Once upon a time, there was a little girl named Lily. She liked to play in the park. One day, Lily went to the park. "
    "She saw a big dog. The dog was happy. Lily was happy too. Once upon a time, there was a little";

struct Case {
  const char* spec;
  uint32_t k;
  bool adaptive;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.spec << " k=" << c.k << (c.adaptive ? " adaptive" : " fixed"); }

class GreedySpeculation : public ::testing::TestWithParam<Case> {};

// Text, final length and cache contents identical to decoding without speculation, bit for bit.
TEST_P(GreedySpeculation, IdenticalToPlainDecoding) {
  REQUIRE_STORIES();
  const Case& c = GetParam();
  const std::vector<int> prompt = stories()->tok->encode(kRepetitive, true);
  const Outcome plain = run(c.spec, prompt, 200, nullptr, 0, false);
  NgramDrafter ngram(1, 3);
  const Outcome spec = run(c.spec, prompt, 200, &ngram, c.k, c.adaptive);
  EXPECT_EQ(spec.tokens, plain.tokens);
  EXPECT_EQ(spec.seq_len, plain.seq_len);
  EXPECT_EQ(spec.next_logits, plain.next_logits);
  EXPECT_GT(spec.stats.accepted, 10u) << "the drafts were hardly ever kept: nothing was tested";
  EXPECT_LT(spec.stats.steps + spec.stats.plain_steps, plain.tokens.size()) << "no step was saved";
}
INSTANTIATE_TEST_SUITE_P(Specs, GreedySpeculation,
                         ::testing::Values(Case{"fp32", 8, true}, Case{"fp16", 4, false}, Case{"k4v4", 8, true}, Case{"k3v2:page=5", 1, false},
                                           Case{"k3v2", 8, false}, Case{"k2v2:nc:prod", 3, true},
                                           Case{"k3v2:edge=1/k4v4:sink=2:window=6:page=4", 8, false},
                                           Case{"k3v2:edge=2/k4v4:sink=4:window=64", 8, true},
                                           // the key centre: fixed by the engine's calibration step, the same with drafts or without
                                           Case{"k3v2:edge=1/k4v4:sink=2:window=6:page=4:centre", 8, true}));

// The draft model's drafter checks itself: at every step its drafts must be those a fresh draft
// engine, told the whole text at once, gives. So what it keeps of its cache between steps (the
// kept drafts) and what it takes back (the rejected ones, the stale tail) leave no trace.
class CheckedModelDrafter : public Drafter {
 public:
  CheckedModelDrafter(const KvSpec& spec) : engine_(stories()->m, spec, {.threads = 2, .context = 512}), inner_(engine_), spec_(spec) {}
  void extend(std::span<const int> t) override {
    inner_.extend(t);
    text_.insert(text_.end(), t.begin(), t.end());
  }
  std::vector<int> draft(uint32_t max) override {
    const std::vector<int> d = inner_.draft(max);
    Engine fresh(stories()->m, spec_, {.threads = 2, .context = 512});
    ModelDrafter cold(fresh);
    cold.extend(text_);
    EXPECT_EQ(d, cold.draft(max)) << "after " << text_.size() << " tokens";
    ++checked;
    return d;
  }
  int checked = 0;

 private:
  Engine engine_;
  ModelDrafter inner_;
  KvSpec spec_;
  std::vector<int> text_;
};

// A draft model (stories260K itself): greedy text identical to plain decoding and the draft cache
// exact. On the target's own cache every draft is kept (the CPU runner's logits do not depend on
// the step); on other caches some are rejected (this tiny model's argmax moves with the cache).
TEST(ModelDrafter, GreedyTextIdenticalAndDraftCacheExact) {
  REQUIRE_STORIES();
  const std::vector<int> prompt = stories()->tok->encode("Lily and Tom went to the park", true);
  for (const char* draft_spec : {"k3v2", "fp16", "k2v2:nc:page=4"}) {
    SCOPED_TRACE(draft_spec);
    const Outcome plain = run("k3v2", prompt, 120, nullptr, 0, false);
    CheckedModelDrafter d(parse_kv_spec(draft_spec));
    const Outcome spec = run("k3v2", prompt, 120, &d, 5, true);
    EXPECT_EQ(spec.tokens, plain.tokens);
    EXPECT_EQ(spec.seq_len, plain.seq_len);
    EXPECT_EQ(spec.next_logits, plain.next_logits);
    if (std::string(draft_spec) == "k3v2") {
      EXPECT_EQ(spec.stats.accepted, spec.stats.drafted);
      EXPECT_GT(spec.stats.accepted, 90u);
    } else {
      EXPECT_GT(spec.stats.accepted, 10u);
      EXPECT_LT(spec.stats.accepted, spec.stats.drafted);
    }
    EXPECT_GT(d.checked, 10);
  }
}

// Drafts stop where the draft engine's context ends; a text beyond it gets none.
TEST(ModelDrafter, StaysWithinItsContext) {
  REQUIRE_STORIES();
  Engine e(stories()->m, parse_kv_spec("fp16"), {.threads = 2, .context = 20});
  ModelDrafter d(e);
  EXPECT_TRUE(d.draft(4).empty());  // told nothing yet
  d.extend(std::vector<int>(18, 5));
  EXPECT_EQ(d.draft(8).size(), 3u);  // 18 tokens and 2 fed drafts fill the 20
  d.extend(std::vector<int>(3, 6));
  EXPECT_TRUE(d.draft(8).empty());  // 21 tokens: beyond the context
}

TEST(ModelDrafter, VocabularyMustBeTheTargets) {
  REQUIRE_STORIES();
  EXPECT_NO_THROW(check_draft_vocabulary(*stories()->tok, *stories()->tok));
  const auto bpe = [](const model::testing::BpeVocab& v) {
    model::testing::GgufWriter w;
    model::testing::add_bpe_tokenizer(w, v);
    return model::tokenizer_from_gguf(model::GgufFile::from_bytes(w.bytes()));
  };
  model::testing::BpeVocab v = model::testing::small_bpe_vocab(true);
  const auto a = bpe(v);
  const auto expect_error = [](const model::Tokenizer& t, const model::Tokenizer& d, const std::string& says) {
    try {
      check_draft_vocabulary(t, d);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  expect_error(*a, *stories()->tok, "vocabulary has 512 tokens, the target's 273");
  v.tokens[260] = "Ġx";
  expect_error(*a, *bpe(v), "token 260 is");
}

// Drafts that are wrong, or right then wrong: the rejected tokens must leave nothing a later step
// reads (pages, the recent-token ring), so the text and the cache are those of plain decoding.
class PoisonedDrafter : public Drafter {
 public:
  PoisonedDrafter(std::vector<int> truth, size_t prompt_len, int vocab, bool some_right)
      : truth_(std::move(truth)), prompt_len_(prompt_len), vocab_(vocab), some_right_(some_right) {}
  void extend(std::span<const int> t) override { len_ += t.size(); }
  std::vector<int> draft(uint32_t max) override {
    std::vector<int> d;
    const size_t at = len_ - prompt_len_;  // tokens generated so far: the next one is truth_[at]
    const uint32_t right = some_right_ ? uint32_t(rng_() % (max + 1)) : 0;
    for (uint32_t i = 0; i < right && at + i < truth_.size(); ++i) d.push_back(truth_[at + i]);
    while (d.size() < max) {
      int t = int(rng_() % uint32_t(vocab_));
      if (at + d.size() < truth_.size() && t == truth_[at + d.size()]) t = (t + 1) % vocab_;  // surely wrong
      d.push_back(t);
    }
    return d;
  }

 private:
  std::vector<int> truth_;
  size_t prompt_len_, len_ = 0;
  int vocab_;
  bool some_right_;
  std::mt19937 rng_{7};
};

TEST(SpeculationRollback, PoisonedDraftsLeaveNoTrace) {
  REQUIRE_STORIES();
  const std::vector<int> prompt = stories()->tok->encode("Lily and Tom went to the park", true);
  for (const char* spec : {"fp16", "k3v2:page=4", "k3v2:edge=1/k4v4:sink=2:window=6:page=4"}) {
    SCOPED_TRACE(spec);
    const Outcome plain = run(spec, prompt, 150, nullptr, 0, false);
    for (bool some_right : {false, true}) {
      PoisonedDrafter poison(plain.tokens, prompt.size(), stories()->m.config.vocab_size, some_right);
      const Outcome spec_run = run(spec, prompt, 150, &poison, 8, false);
      EXPECT_EQ(spec_run.tokens, plain.tokens) << (some_right ? "right then wrong" : "all wrong");
      EXPECT_EQ(spec_run.seq_len, plain.seq_len);
      EXPECT_EQ(spec_run.next_logits, plain.next_logits);
      EXPECT_LE(spec_run.stats.plain_steps, 1u);  // the last token, where no draft fits under max_tokens
      if (some_right) {
        EXPECT_GT(spec_run.stats.accepted, 50u);
        EXPECT_LT(spec_run.stats.accepted, spec_run.stats.drafted);
      } else {
        EXPECT_EQ(spec_run.stats.accepted, 0u);
      }
    }
  }
}

// Stops and limits end a speculative run exactly where a plain one ends: max_tokens within a
// run of accepted drafts, the context, and a stop token among the drafts.
TEST(SpeculationRollback, LimitsAndStopsLikePlainDecoding) {
  REQUIRE_STORIES();
  const std::vector<int> prompt = stories()->tok->encode(kRepetitive, true);
  for (uint32_t max_tokens : {1u, 2u, 7u, 33u, 400u}) {
    const Outcome plain = run("k3v2", prompt, max_tokens, nullptr, 0, false);
    NgramDrafter ngram(1, 3);
    const Outcome spec = run("k3v2", prompt, max_tokens, &ngram, 8, false);
    EXPECT_EQ(spec.tokens, plain.tokens) << "max_tokens " << max_tokens;
    EXPECT_EQ(spec.seq_len, plain.seq_len) << "max_tokens " << max_tokens;
  }
}

// A verification step sampled by the runner: a token for every row of an all_logits item (each
// with its own draw), and the last row of the others, as Sampler::sample picks from forward()'s
// logits of the same step.
TEST(SpeculationSampling, RunnerSamplesEveryRowOfAVerification) {
  REQUIRE_STORIES();
  Engine e(stories()->m, parse_kv_spec("k3v2"), {.threads = 2, .context = 128, .max_seqs = 2, .max_chunk = 16});
  const int a = e.add_sequence(), b = e.add_sequence();
  e.prefill(a, stories()->tok->encode("Lily saw a dog", true));
  e.prefill(b, stories()->tok->encode("Tom had a ball", true));
  const std::vector<BatchItem> step{{a, {30, 41, 52, 63}, true}, {b, {70, 81}, false}};
  const uint32_t la = e.seq_len(a), lb = e.seq_len(b);
  const std::vector<float> logits = e.forward(step);
  e.truncate(a, la), e.truncate(b, lb);
  std::vector<SampleArgs> args;
  for (int i = 0; i < 5; ++i) args.push_back({.params = {.temperature = i % 2 ? 0.0f : 0.8f, .top_k = 40}, .u = 0.13 + 0.17 * i});
  const std::vector<int> ids = e.forward_sample(step, args);
  ASSERT_EQ(ids.size(), 5u);
  const size_t V = size_t(stories()->m.config.vocab_size);
  for (size_t r = 0; r < 5; ++r)
    EXPECT_EQ(ids[r], Sampler(args[r].params).sample(std::span<const float>(&logits[r * V], V), args[r].u)) << "row " << r;
  EXPECT_EQ(e.seq_len(a), la + 4);
  e.truncate(a, la), e.truncate(b, lb);
  EXPECT_EQ(e.forward_greedy(step).size(), 5u);
  try {
    e.forward_sample(step, std::vector<SampleArgs>(2));
    ADD_FAILURE() << "two sampling arguments for five rows were accepted";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("(5 logits rows) got sampling arguments for 2"), std::string::npos) << err.what();
  }
}

// A drafter that always proposes one fixed token.
class FixedDrafter : public Drafter {
 public:
  explicit FixedDrafter(int t) : t_(t) {}
  void extend(std::span<const int>) override {}
  std::vector<int> draft(uint32_t max) override { return std::vector<int>(std::min(max, 1u), t_); }

 private:
  int t_;
};

// Sampling: the token after a verified draft is distributed as the target's sampling distribution
// p, whether the draft is p's mode (kept often), a rare token (rejected often) or a token p never
// draws. The first token is fixed by one-hot logits; the second is the verified one. Chi-square
// goodness of fit over 4000 seeds, tokens with fewer than 5 expected draws pooled; the critical
// value is the chi-square quantile at 1 - 1e-4 (Wilson-Hilferty), so a correct sampler fails
// with probability 1e-4 (the seeds are fixed: the test is deterministic).
TEST(SpeculationSampling, KeepsTheTargetDistribution) {
  REQUIRE_STORIES();
  const auto& m = stories()->m;
  const int V = m.config.vocab_size;
  const std::vector<int> prompt = stories()->tok->encode("Once upon a time, there was a", true);
  Engine e(m, parse_kv_spec("k3v2"), {.threads = 2, .context = 512});
  const int seq = e.add_sequence();
  const std::vector<float> first_logits = e.prefill(seq, prompt);
  const uint32_t base = e.seq_len(seq);
  const int first = int(std::max_element(first_logits.begin(), first_logits.end()) - first_logits.begin());
  ASSERT_FALSE(is_stop(first));
  const SamplingParams params{.temperature = 1.0f, .top_p = 0.95f};
  std::vector<float> p;
  {
    const std::vector<float> row = e.forward({BatchItem{seq, {first}, false}});
    Sampler(params).probabilities(row, p);
    e.truncate(seq, base);
  }
  std::vector<float> onehot(size_t(V), -INFINITY);
  onehot[size_t(first)] = 0;
  std::vector<int> by_p(static_cast<size_t>(V));
  std::iota(by_p.begin(), by_p.end(), 0);
  std::sort(by_p.begin(), by_p.end(), [&](int a, int b) { return p[size_t(a)] > p[size_t(b)]; });
  const int mode = by_p[0], rare = by_p[4], never = by_p[size_t(V) - 1];
  ASSERT_GT(p[size_t(rare)], 0.0f);
  ASSERT_EQ(p[size_t(never)], 0.0f);
  constexpr int kDraws = 4000;
  for (int draft : {mode, rare, never}) {
    SCOPED_TRACE(::testing::Message() << "draft " << draft << " p=" << p[size_t(draft)]);
    FixedDrafter fixed(draft);
    std::map<int, int> seen;  // second token -> count; -1: a stop token (generation ended)
    SpeculativeStats total;
    for (int i = 0; i < kDraws; ++i) {
      SamplingParams ps = params;
      ps.seed = uint64_t(1000 + i);
      Sampler sampler(ps);
      Speculation spec{&fixed, 1, false};
      std::vector<int> out;
      generate(e, seq, onehot, sampler, m, *stories()->tok, {.max_tokens = 3, .speculation = &spec}, [&](int t) { out.push_back(t); });
      ASSERT_EQ(out[0], first);
      ++seen[out.size() > 1 ? out[1] : -1];
      total.steps += spec.stats.steps, total.accepted += spec.stats.accepted;
      e.truncate(seq, base);
    }
    // Categories: tokens expected >= 5 times; the rest and the stop tokens pooled.
    double chi2 = 0, pooled_expected = 0;
    int pooled_seen = 0, categories = 0;
    for (int t = 0; t < V; ++t) {
      const double expect = double(p[size_t(t)]) * kDraws;
      const int got = is_stop(t) ? 0 : (seen.count(t) ? seen[t] : 0);
      if (is_stop(t) || expect < 5) {
        pooled_expected += expect, pooled_seen += got;
        continue;
      }
      chi2 += (got - expect) * (got - expect) / expect;
      ++categories;
    }
    pooled_seen += seen.count(-1) ? seen[-1] : 0;
    if (pooled_expected > 0) chi2 += (pooled_seen - pooled_expected) * (pooled_seen - pooled_expected) / pooled_expected, ++categories;
    const double df = categories - 1, z = 3.719;  // the normal's 1 - 1e-4 quantile
    const double critical = df * std::pow(1 - 2 / (9 * df) + z * std::sqrt(2 / (9 * df)), 3);
    EXPECT_LT(chi2, critical) << categories << " categories";
    EXPECT_EQ(total.steps, uint64_t(kDraws));
    if (draft == never) {
      EXPECT_EQ(total.accepted, 0u);
    } else {
      // Kept about p(d) of the time (4 standard deviations).
      const double want = double(p[size_t(draft)]) * kDraws, sd = std::sqrt(want * (1 - p[size_t(draft)]));
      EXPECT_NEAR(double(total.accepted), want, 4 * sd + 1);
    }
  }
}

}  // namespace
}  // namespace tq::engine
