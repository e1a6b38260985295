// evaluate_passkey's grid on stories260K (its answers are not the point: the model is too small to
// find a key): a row per length and depth with by_depth, the trials of a cell each with its own
// key, the same prompts for every spec, the same prompts and answers from the same seed, and the
// refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "engine/stories.h"
#include "tq/common.h"
#include "tq/engine/eval.h"

namespace tq::engine {
namespace {

using tq::testing::stories;

// A text of numbered sentences, long enough for a few hundred tokens a trial.
std::string haystack() {
  std::string t;
  for (int i = 0; i < 400; ++i) t += "The dog ran to the park number " + std::to_string(i) + ". ";
  return t;
}

// Perplexity over windows: each window after the first starts with BOS in place of its first
// token (llama-perplexity's rule), so the whole text's negative log-likelihood is the sum of
// single-window runs on the first window and on [BOS] + the second window's other tokens.
TEST(Perplexity, WindowsAfterTheFirstStartWithBos) {
  REQUIRE_STORIES();
  const model::Tokenizer& tok = *stories()->tok;
  const std::vector<int> text = tok.encode(haystack(), true);
  constexpr uint32_t N = 48;
  ASSERT_GT(text.size(), 2 * N);
  const std::vector<int> tokens(text.begin(), text.begin() + 2 * N);
  const auto nll = [&](const std::vector<int>& t, int bos) {
    PerplexityOptions o;
    o.ctx = N;
    o.chunk = 16;
    o.bos = bos;
    o.threads = 2;
    const PerplexityResult r = evaluate_perplexity(stories()->m, t, {parse_kv_spec("fp32")}, o);
    return std::log(r.rows[0].ppl) * double(r.scored);
  };
  std::vector<int> second(tokens.begin() + N, tokens.end());
  second[0] = tok.bos_id();
  const double whole = nll(tokens, tok.bos_id());
  const double parts = nll(std::vector<int>(tokens.begin(), tokens.begin() + N), tok.bos_id()) + nll(second, tok.bos_id());
  EXPECT_NEAR(whole, parts, 1e-9 * std::abs(parts));
  EXPECT_GT(std::abs(nll(tokens, -1) - whole), 1e-6 * std::abs(whole));  // without BOS the second window is another text
}

TEST(Passkey, GridByDepthWithTrialsAndHaystack) {
  REQUIRE_STORIES();
  PasskeyOptions o;
  o.lengths = {200, 280};  // the shortest prompt, around a few characters of this haystack, has ~150 tokens
  o.depths = {0.0, 0.5, 1.0};
  o.trials = 3;
  o.by_depth = true;
  o.haystack = haystack();
  o.threads = 2;
  o.answer_tokens = 2;
  std::vector<std::string> seen;
  const auto specs = std::vector<KvSpec>{parse_kv_spec("fp16"), parse_kv_spec("k3v2")};
  const auto rows = evaluate_passkey(stories()->m, *stories()->tok, specs, o, [&](const std::string& s) { seen.push_back(s); });
  ASSERT_EQ(rows.size(), 2u * 2u * 3u);
  for (size_t i = 0; i < rows.size(); ++i) {
    const PasskeyRow& r = rows[i];
    EXPECT_EQ(r.kv, i < 6 ? "fp16" : "k3v2");
    EXPECT_EQ(r.depth, o.depths[i % 3]);
    EXPECT_EQ(r.asked, i % 6 < 3 ? 200u : 280u);
    EXPECT_EQ(r.trials, 3u);
    EXPECT_LE(r.correct, r.trials);
    EXPECT_GE(r.length, (i % 6 < 3 ? 200u : 280u) / 2) << "row " << i;  // the filler is there (the intro adds more)
    EXPECT_EQ(r.length, rows[i % 6].length) << "the same prompts for every spec";
  }
  ASSERT_EQ(seen.size(), 2u * 2u * 3u * 3u);  // one progress line a trial
  // The three keys of a cell differ (each trial its own key).
  const auto key_of = [](const std::string& line) { return line.substr(line.find("key ") + 4, 5); };
  EXPECT_NE(key_of(seen[0]), key_of(seen[1]));
  EXPECT_NE(key_of(seen[1]), key_of(seen[2]));
  // The same seed gives the same prompts and answers, trial by trial.
  std::vector<std::string> again;
  evaluate_passkey(stories()->m, *stories()->tok, specs, o, [&](const std::string& s) { again.push_back(s); });
  EXPECT_EQ(again, seen);
}

TEST(Passkey, AggregatesDepthsByDefault) {
  REQUIRE_STORIES();
  PasskeyOptions o;
  o.lengths = {256};  // at least the shortest prompt (204 tokens with stories260K's tokenizer)
  o.depths = {0.1, 0.9};
  o.trials = 2;
  o.threads = 2;
  o.answer_tokens = 2;
  const auto rows = evaluate_passkey(stories()->m, *stories()->tok, {parse_kv_spec("fp16")}, o);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].depth, -1.0);
  EXPECT_EQ(rows[0].trials, 4u);
}

// Runs f and checks that it throws tq::Error saying `says`.
template <class F>
void expect_error(F f, const std::string& says) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one saying '" << says << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
  }
}

TEST(Passkey, RefusesBadGrids) {
  REQUIRE_STORIES();
  PasskeyOptions o;
  o.lengths = {300};
  o.trials = 0;
  const std::vector<KvSpec> fp16{parse_kv_spec("fp16")};
  const auto run = [&] { evaluate_passkey(stories()->m, *stories()->tok, fp16, o); };
  expect_error(run, "--trials 0");
  o.trials = 1;
  o.haystack = "Too short. ";
  expect_error(run, "--haystack: the text holds about");
  o.haystack.clear();
  o.depths = {1.5};
  expect_error(run, "--depths 1.5");
  // A value given twice would count its cell's trials twice.
  o.depths = {0.5, 0.25, 0.5};
  expect_error(run, "--depths: 0.5 is given twice");
  o.depths = {0.5};
  o.lengths = {100, 120, 100};
  expect_error(run, "--lengths: 100 is given twice");
  // A length below the shortest prompt (the intro, the key and the question around one round of the
  // filler: 204 tokens with stories260K's tokenizer) would silently get that prompt.
  o.lengths = {300, 100};
  expect_error(run, "--lengths 100: the shortest pass-key prompt is 204 tokens with this model");
}

}  // namespace
}  // namespace tq::engine
