// The scheduler on stories260K (CPU): whatever it does to a request (batching with others,
// chunked prefill, preemption and recompute, a prefix taken from the cache, cancellation of its
// neighbours), the request's tokens are those it gets alone with engine::generate, and every page
// is back in the pool at the end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <random>

#include "engine/stories.h"
#include "model/test_data.h"
#include "tq/engine/generation.h"
#include "tq/model/tokenizer.h"
#include "tq/serve/scheduler.h"

namespace tq::serve {
namespace {

using engine::BatchItem;
using engine::Engine;
using engine::EngineOptions;
using engine::SamplingParams;
using model::testing::shared_data_file;

using tq::testing::stories;

bool is_stop(int id) { return engine::is_stop_token(stories()->m, *stories()->tok, id); }

std::vector<int> prompt(const std::string& text) { return stories()->tok->encode(text, true); }

// The request alone on a fresh engine: prefill, then engine::generate (speculating as the request
// says when `speculate`).
// The draft model of draft-model requests: stories260K itself, on its own fp16 cache.
constexpr const char* kDraftSpec = "fp16";

std::vector<int> alone(const std::string& spec, const Request& r, bool speculate = false) {
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512});
  const int s = e.add_sequence();
  engine::Sampler sampler(r.sampling);
  std::optional<Engine> draft_engine;
  std::unique_ptr<engine::Drafter> d;
  std::optional<engine::Speculation> sp;
  if (speculate && r.speculation) {
    if (r.speculation->source == engine::SpeculativeSpec::Source::kDraftModel) {
      draft_engine.emplace(stories()->m, parse_kv_spec(kDraftSpec), EngineOptions{.threads = 2, .context = 512});
      d = std::make_unique<engine::ModelDrafter>(*draft_engine);
    } else {
      d = engine::make_drafter(*r.speculation);
    }
    d->extend(r.prompt);
    sp.emplace(d.get(), r.speculation->max_draft, r.speculation->adaptive);
  }
  std::vector<int> out;
  engine::generate(e, s, e.prefill(s, r.prompt), sampler, stories()->m, *stories()->tok,
                   {.max_tokens = r.max_tokens, .speculation = sp ? &*sp : nullptr}, [&](int t) { out.push_back(t); });
  return out;
}

// Runs the scheduler until idle; returns each request's tokens and how it ended.
struct Outcome {
  std::vector<int> tokens;
  Finish finish = Finish::kNone;
  int events_after_finish = 0;
  std::vector<engine::TokenLogprobs> logprobs;  // of the tokens that came with them
  std::vector<engine::TokenLogprobs> prompt_logprobs;  // Request::prompt_logprobs
  int prompt_logprob_events = 0;                       // events that carried them (one at most)
};
void record(std::map<uint64_t, Outcome>& out, const std::vector<Event>& events) {
  for (const Event& ev : events) {
    Outcome& o = out[ev.id];
    if (o.finish != Finish::kNone) ++o.events_after_finish;
    if (ev.token >= 0) o.tokens.push_back(ev.token);
    if (ev.logprobs) o.logprobs.push_back(*ev.logprobs);
    if (!ev.prompt_logprobs.empty()) o.prompt_logprobs = ev.prompt_logprobs, ++o.prompt_logprob_events;
    if (ev.finish != Finish::kNone) o.finish = ev.finish;
  }
}
// The requests added in order; their ids.
std::vector<uint64_t> add_all(Scheduler& s, const std::vector<Request>& reqs) {
  std::vector<uint64_t> ids;
  for (const Request& r : reqs) ids.push_back(s.add(r));
  return ids;
}
std::map<uint64_t, Outcome> drain(Scheduler& s, int max_steps = 100000) {
  std::map<uint64_t, Outcome> out;
  for (int i = 0; i < max_steps && !s.idle(); ++i) record(out, s.step());
  EXPECT_TRUE(s.idle()) << "the scheduler did not finish in " << max_steps << " steps";
  return out;
}

const std::vector<std::string> kPrompts = {
    "Once upon a time",
    "Lily and Tom went to the park to play with their new red ball",
    "The cat",
    "One day, a little bird flew over the big tree and saw a boy who was sad because he lost his toy",
    "Max",
    "There was a girl named Sue. She liked to sing. Every day she sang to the flowers in the garden and the flowers",
};

struct Case {
  const char* name;
  const char* spec;
  EngineOptions eo;
  SchedulerOptions so;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class SchedulerMatchesAlone : public ::testing::TestWithParam<Case> {};

// Six requests, greedy and seeded, through the scheduler of case c, each against its run alone.
// With `speculate`, two of three speculate (ngram drafts; rejected ones taken back) in steps shared
// with plain requests: greedy ones must still give the tokens they get alone without speculation;
// sampled ones those generate() gives them alone with the same speculation, where nothing shortens
// their drafts (a token budget or a small pool: drafts then give way, and so draw other numbers).
// With `draft_model` too, two of those draft on a draft model (one sequence each on a shared
// draft engine, given back on preemption and at the end).
void matches_alone(const Case& c, bool speculate, bool draft_model = false) {
  EngineOptions eo = c.eo;
  eo.threads = 2;
  eo.context = 512;
  Engine e(stories()->m, parse_kv_spec(c.spec), eo);
  std::optional<Engine> draft;
  SchedulerOptions so = c.so;
  if (draft_model) {
    draft.emplace(stories()->m, parse_kv_spec(kDraftSpec), EngineOptions{.threads = 2, .context = 512, .max_seqs = so.max_num_seqs});
    so.draft = &*draft;
  }
  Scheduler s(e, is_stop, so);
  std::vector<Request> reqs;
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    Request r{prompt(kPrompts[i]), {}, uint32_t(20 + 9 * i), {}};
    if (i % 2) r.sampling = SamplingParams{.temperature = 0.9f, .top_p = 0.95f, .seed = 1000 + i};
    if (speculate && i % 3 != 2) r.speculation = engine::parse_speculative_spec(i % 2 ? "ngram:k=3:min=1" : "ngram:n=2:min=1");
    if (draft_model && i % 3 == 0) r.speculation = engine::parse_speculative_spec("draft:k=4");
    reqs.push_back(r);
  }
  const std::vector<uint64_t> ids = add_all(s, reqs);
  const auto got = drain(s);
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Outcome& o = got.at(ids[i]);
    if (!speculate || reqs[i].sampling.greedy()) {
      EXPECT_EQ(o.tokens, alone(c.spec, reqs[i])) << "request " << i;
    } else if (c.so.max_batched_tokens == 0 && c.eo.num_pages == 0) {
      EXPECT_EQ(o.tokens, alone(c.spec, reqs[i], true)) << "request " << i;
    }
    EXPECT_TRUE(o.finish == Finish::kStop || o.finish == Finish::kLength) << finish_name(o.finish);
    EXPECT_EQ(o.finish == Finish::kLength, o.tokens.size() == reqs[i].max_tokens);
    EXPECT_EQ(o.events_after_finish, 0);
  }
  const SchedulerStats st = s.stats();
  EXPECT_EQ(st.pages_free, st.pages_total) << "pages leaked";
  EXPECT_EQ(e.blocks().allocator().free_pages(), e.blocks().allocator().num_pages());
  EXPECT_EQ(st.finished, reqs.size());
  if (std::string(c.name) == "TinyPoolPreempts") {
    EXPECT_GT(st.preemptions, 0u);
  }
  if (c.eo.prefix_tails) {
    EXPECT_TRUE(s.prefix_caching()) << s.prefix_caching_note();
    EXPECT_GT(st.preemptions, 0u);
    EXPECT_LE(st.tails_used, st.tails_total);
  }
  if (std::string(c.name) == "DefaultSpecSideBuffers" && !speculate) {  // preempted requests came back through their tails
    EXPECT_GT(st.prefix_hit_tokens, 0u);
  }
  if (speculate) {
    EXPECT_GT(st.spec_verifications, 10u);
    EXPECT_GT(st.spec_accepted, 5u);
    EXPECT_LT(st.spec_accepted, st.spec_drafted);
    EXPECT_EQ(st.spec_failures, 0u);
  }
  if (draft) {  // every draft sequence went back with its request
    EXPECT_EQ(draft->blocks().allocator().free_pages(), draft->blocks().allocator().num_pages()) << "draft pages leaked";
  }
}

TEST_P(SchedulerMatchesAlone, GreedyAndSeeded) {
  REQUIRE_STORIES();
  matches_alone(GetParam(), false);
}

TEST_P(SchedulerMatchesAlone, SpeculativeRequestsShareSteps) {
  REQUIRE_STORIES();
  matches_alone(GetParam(), true);
}

TEST_P(SchedulerMatchesAlone, DraftModelRequestsShareSteps) {
  REQUIRE_STORIES();
  matches_alone(GetParam(), true, true);
}

INSTANTIATE_TEST_SUITE_P(
    Stories260K, SchedulerMatchesAlone,
    ::testing::Values(Case{"AllAtOnce", "k3v2:page=8", {.max_seqs = 8, .max_chunk = 256}, {.max_num_seqs = 8}},
                      Case{"ChunkedPrefill", "k3v2:page=8", {.max_seqs = 8, .max_chunk = 256}, {.max_num_seqs = 4, .max_batched_tokens = 7}},
                      Case{"TwoAtATime", "k4v4:page=16", {.max_seqs = 2, .max_chunk = 64}, {.max_num_seqs = 2}},
                      // 16 pages of 8: two or three requests at once, so decodes preempt the newest.
                      Case{"TinyPoolPreempts", "k3v2:page=8", {.max_seqs = 6, .num_pages = 16, .max_chunk = 64}, {.max_num_seqs = 6}},
                      // Side buffers with prefix tails: preempted requests come back through their own tails.
                      Case{"DefaultSpecSideBuffers", "k3v2:edge=2/k4v4:sink=4:window=16:page=8",
                           {.max_seqs = 6, .num_pages = 16, .max_chunk = 64, .prefix_tails = 6}, {.max_num_seqs = 6, .max_batched_tokens = 13}},
                      Case{"DefaultSpecItself", kDefaultKvSpec, {.max_seqs = 6, .num_pages = 14, .max_chunk = 64, .prefix_tails = 3},
                           {.max_num_seqs = 6}},
                      Case{"PrefixCacheFp16", "fp16:page=4", {.max_seqs = 4, .num_pages = 40, .max_chunk = 32}, {.max_num_seqs = 4}},
                      // The key centre comes from the engine's calibration step, not from whichever prompt chunk
                      // runs first: chunked and batched, each request still gets its tokens alone.
                      Case{"CentredChunked", "k3v2:page=8:centre", {.max_seqs = 8, .max_chunk = 256},
                           {.max_num_seqs = 4, .max_batched_tokens = 7}}),
    [](const auto& info) { return std::string(info.param.name); });

// log_softmax of a logits row, in long double, and the tolerance of a float result against it:
// the CPU engine's logits do not depend on the batch or the chunks (HitLogitsEqualColdBitForBit),
// so only the float rounding of the result differs: half an ulp, bounded by twice that.
struct LogSoftmax {
  const float* row;
  size_t V;
  long double mx = 0, lse = 0;
  LogSoftmax(const float* r, size_t v) : row(r), V(v) {
    mx = row[0];
    for (size_t i = 0; i < V; ++i) mx = std::max(mx, (long double)row[i]);
    long double sum = 0;
    for (size_t i = 0; i < V; ++i) sum += std::exp((long double)row[i] - mx);
    lse = std::log(sum);
  }
  double operator()(int id) const { return double((long double)row[id] - mx - lse); }
  static double tol(double x) { return std::numeric_limits<float>::epsilon() * std::max(1.0, std::fabs(x)); }
};

// Each generated token's logprob and its alternatives against a teacher-forced prefill of the
// prompt and the tokens before it on a fresh engine; greedy requests' most likely token is theirs.
void expect_generation_scored(const char* spec, const Request& r, const Outcome& o, const std::string& what) {
  ASSERT_EQ(o.logprobs.size(), o.tokens.size()) << what;
  Engine ref(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512});
  std::vector<int> seq = r.prompt;
  seq.insert(seq.end(), o.tokens.begin(), o.tokens.end() - 1);
  const std::vector<float> logits = ref.prefill(ref.add_sequence(), seq, true);
  const size_t V = size_t(stories()->m.config.vocab_size), first = r.prompt.size() - 1;
  for (size_t j = 0; j < o.tokens.size(); ++j) {
    const LogSoftmax want(&logits[(first + j) * V], V);
    EXPECT_NEAR(o.logprobs[j].logprob, want(o.tokens[j]), LogSoftmax::tol(want(o.tokens[j]))) << what << " token " << j;
    ASSERT_EQ(o.logprobs[j].top.size(), size_t(r.logprobs)) << what;
    for (const auto& [id, lp] : o.logprobs[j].top) EXPECT_NEAR(lp, want(id), LogSoftmax::tol(want(id))) << what << " token " << j << " id " << id;
    for (size_t k = 1; k < o.logprobs[j].top.size(); ++k) EXPECT_GE(o.logprobs[j].top[k - 1].second, o.logprobs[j].top[k].second) << what;
    if (r.sampling.greedy()) {
      EXPECT_EQ(o.logprobs[j].top[0].first, o.tokens[j]) << what << " token " << j;
    }
  }
}

// Requests that ask for logprobs share steps with others (which then sample on the host, from
// the same logits and by the same rule): every request still gets its tokens alone, and each of
// the asking ones a TokenLogprobs a token, equal to log_softmax of the logits of a teacher-forced
// prefill of its prompt and tokens on a fresh engine.
TEST(SchedulerLogprobs, EqualTeacherForcedLogSoftmax) {
  REQUIRE_STORIES();
  const char* spec = "k3v2:page=8";
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512, .max_seqs = 4, .max_chunk = 64});
  Scheduler s(e, is_stop, {.max_num_seqs = 4, .max_batched_tokens = 19});
  std::vector<Request> reqs;
  for (size_t i = 0; i < 4; ++i) {
    Request r{prompt(kPrompts[i + 1]), {}, uint32_t(12 + 5 * i), {}};
    if (i % 2) r.sampling = SamplingParams{.temperature = 0.8f, .top_k = 40, .seed = 77 + i};
    r.logprobs = i < 2 ? int(3 * i + 2) : -1;  // 2 and 5 alternatives; the other two ask nothing
    reqs.push_back(r);
  }
  const std::vector<uint64_t> ids = add_all(s, reqs);
  const auto got = drain(s);
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Outcome& o = got.at(ids[i]);
    EXPECT_EQ(o.tokens, alone(spec, reqs[i])) << "request " << i;
    if (reqs[i].logprobs < 0) {
      EXPECT_TRUE(o.logprobs.empty());
      continue;
    }
    expect_generation_scored(spec, reqs[i], o, "request " + std::to_string(i));
  }
  EXPECT_EQ(s.stats().pages_free, s.stats().pages_total);
}

// Each prompt token's logprob (given those before it) and its alternatives against a teacher-forced
// prefill of the prompt on a fresh engine.
void expect_prompt_scored(const char* spec, const Request& r, const Outcome& o, const std::string& what) {
  ASSERT_EQ(o.prompt_logprobs.size(), r.prompt.size() - 1) << what;
  EXPECT_EQ(o.prompt_logprob_events, r.prompt.size() > 1 ? 1 : 0) << what;
  Engine ref(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512});
  const std::vector<float> logits = ref.prefill(ref.add_sequence(), r.prompt, true);
  const size_t V = size_t(stories()->m.config.vocab_size);
  for (size_t p = 0; p + 1 < r.prompt.size(); ++p) {
    const LogSoftmax want(&logits[p * V], V);
    const engine::TokenLogprobs& got = o.prompt_logprobs[p];
    EXPECT_NEAR(got.logprob, want(r.prompt[p + 1]), LogSoftmax::tol(want(r.prompt[p + 1]))) << what << ", prompt token " << p + 1;
    ASSERT_EQ(got.top.size(), size_t(r.prompt_logprobs)) << what;
    for (const auto& [id, lp] : got.top) EXPECT_NEAR(lp, want(id), LogSoftmax::tol(want(id))) << what << ", prompt token " << p + 1;
  }
}

// Speculating requests that ask for logprobs (ngram drafts, greedy and sampled, in steps shared
// with each other under a small token budget): a TokenLogprobs for every token, kept drafts
// included, each equal to log_softmax of a teacher-forced prefill of its prompt and tokens (the
// target model's values, whatever the drafts proposed); greedy ones still give their tokens alone
// without speculation; one scores its prompt too, one asks nothing and gets none.
TEST(SchedulerLogprobs, SpeculativeRequestsReportTheTargetsLogSoftmax) {
  REQUIRE_STORIES();
  const char* spec = "k3v2:page=8";
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512, .max_seqs = 4, .max_chunk = 64});
  Scheduler s(e, is_stop, {.max_num_seqs = 4, .max_batched_tokens = 19});
  std::vector<Request> reqs;
  for (size_t i = 0; i < 4; ++i) {
    Request r{prompt(kPrompts[i + 2]), {}, uint32_t(40 + 5 * i), {}};
    if (i % 2) r.sampling = SamplingParams{.temperature = 0.8f, .top_k = 40, .seed = 91 + i};
    r.speculation = engine::parse_speculative_spec(i % 2 ? "ngram:k=3:min=1" : "ngram:n=2:min=1");
    r.logprobs = i == 3 ? -1 : int(2 * i + 1);  // 1, 3, 5 alternatives; the last asks nothing
    if (i == 0) r.prompt_logprobs = 2;
    reqs.push_back(r);
  }
  const std::vector<uint64_t> ids = add_all(s, reqs);
  const auto got = drain(s);
  const SchedulerStats st = s.stats();
  EXPECT_GT(st.spec_accepted, 5u) << "drafts were meant to be kept (their rows are the ones this tests)";
  EXPECT_EQ(st.pages_free, st.pages_total);
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Outcome& o = got.at(ids[i]);
    const std::string what = "request " + std::to_string(i);
    EXPECT_EQ(o.events_after_finish, 0) << what;
    if (reqs[i].sampling.greedy()) {
      EXPECT_EQ(o.tokens, alone(spec, reqs[i])) << what;
    }
    if (reqs[i].prompt_logprobs >= 0) expect_prompt_scored(spec, reqs[i], o, what);
    if (reqs[i].logprobs < 0) {
      EXPECT_TRUE(o.logprobs.empty()) << what;
      continue;
    }
    expect_generation_scored(spec, reqs[i], o, what);
  }
}

// Requests that score their prompts (OpenAI's echo with logprobs) share steps with plain ones and
// with each other under a small token budget and a pool small enough to preempt: each gets every
// prompt token's log-probability, equal to a teacher-forced prefill's log_softmax, on one event;
// one with max_tokens 0 ends after its prompt with nothing generated; the others generate what
// they generate alone. No prefix hit stands in for a scored prompt (its pages have no logits).
TEST(SchedulerPromptLogprobs, EqualTeacherForcedLogSoftmax) {
  REQUIRE_STORIES();
  const char* spec = "k3v2:page=8";
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512, .max_seqs = 4, .num_pages = 28, .max_chunk = 64});
  Scheduler s(e, is_stop, {.max_num_seqs = 4, .max_batched_tokens = 23});
  std::vector<Request> reqs;
  for (size_t i = 0; i < 5; ++i) {
    Request r{prompt(kPrompts[(i + 1) % kPrompts.size()]), {}, uint32_t(i == 0 ? 0 : 30 + 7 * i), {}};
    if (i == 2) r.sampling = SamplingParams{.temperature = 0.8f, .top_k = 40, .seed = 5};
    r.prompt_logprobs = i == 3 ? -1 : int(i % 3) + 1;  // 1, 2, 3, none, 2
    if (i == 1) r.logprobs = 2;                         // the generated tokens' too
    reqs.push_back(r);
  }
  reqs.push_back(reqs[0]);  // the same prompt again, added last: it was cached, but is computed to be scored
  const std::vector<uint64_t> ids = add_all(s, reqs);
  const auto got = drain(s);
  EXPECT_GT(s.stats().preemptions, 0u) << "the pool was meant to preempt";
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Outcome& o = got.at(ids[i]);
    const std::string what = "request " + std::to_string(i);
    EXPECT_EQ(o.events_after_finish, 0) << what;
    if (reqs[i].max_tokens == 0) {
      EXPECT_TRUE(o.tokens.empty()) << what;
      EXPECT_EQ(o.finish, Finish::kLength) << what;
    } else {
      EXPECT_EQ(o.tokens, alone(spec, reqs[i])) << what;
      EXPECT_EQ(o.logprobs.size(), reqs[i].logprobs >= 0 ? o.tokens.size() : 0u) << what;
    }
    if (reqs[i].prompt_logprobs < 0) {
      EXPECT_TRUE(o.prompt_logprobs.empty()) << what;
      continue;
    }
    expect_prompt_scored(spec, reqs[i], o, what);
  }
  EXPECT_EQ(s.stats().pages_free, s.stats().pages_total);
}

// A prompt longer than kPromptLogitRows is scored in steps of at most that many positions (their
// logits go to the host), whatever the token budget; a one-token prompt has nothing to score.
TEST(SchedulerPromptLogprobs, LongPromptsInStepsOfAtMostTheRowCap) {
  REQUIRE_STORIES();
  const char* spec = "k3v2";
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512, .max_seqs = 2, .max_chunk = 512});
  Scheduler s(e, is_stop, {.max_num_seqs = 2, .max_batched_tokens = 512});
  std::string text;
  while (prompt(text).size() < kPromptLogitRows + 100) text += kPrompts[5] + " ";
  Request r{prompt(text), {}, 0, {}};
  r.prompt_logprobs = 1;
  const uint64_t id = s.add(r);
  const auto got = drain(s);
  EXPECT_EQ(s.stats().steps, 2u) << r.prompt.size() << " prompt tokens";
  expect_prompt_scored(spec, r, got.at(id), "long prompt");
  Request one{{r.prompt[0]}, {}, 0, {}};
  one.prompt_logprobs = 2;
  const uint64_t id1 = s.add(one);
  const auto got1 = drain(s);
  EXPECT_TRUE(got1.at(id1).prompt_logprobs.empty());
  EXPECT_EQ(got1.at(id1).finish, Finish::kLength);
  EXPECT_EQ(s.stats().pages_free, s.stats().pages_total);
}

TEST(SchedulerPromptLogprobs, Refusals) {
  REQUIRE_STORIES();
  Engine e(stories()->m, parse_kv_spec("k3v2"), {.threads = 1, .context = 512, .max_seqs = 2});
  Scheduler s(e, is_stop, {.max_num_seqs = 2});
  const auto refused = [&](Request r, const std::string& param, const std::string& words) {
    try {
      s.check(r);
      ADD_FAILURE() << "accepted: " << words;
    } catch (const Refused& err) {
      EXPECT_EQ(err.param, param) << err.what();
      EXPECT_NE(std::string(err.what()).find(words), std::string::npos) << err.what();
    }
  };
  Request r{prompt("Once upon a time"), {}, 0, {}};
  refused(r, "max_tokens", "0 only to score the prompt");
  r.prompt_logprobs = 21;
  refused(r, "logprobs", "got 21");
  r.prompt_logprobs = 1;
  r.max_tokens = 4;
  r.speculation = engine::parse_speculative_spec("ngram");  // they combine (SpeculativeRequestsReportTheTargetsLogSoftmax)
  r.logprobs = 2;
  EXPECT_NO_THROW(s.check(r));
}

// A prefix hit gives the tokens of a cold run and computes only what is not cached.
TEST(SchedulerPrefix, SharedPrefixHitsGiveColdTokens) {
  REQUIRE_STORIES();
  const std::string spec = "k3v2:page=4";
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512, .max_seqs = 4, .max_chunk = 64});
  Scheduler s(e, is_stop, {.max_num_seqs = 4});
  ASSERT_TRUE(s.prefix_caching());
  const std::string system = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
  const Request first{prompt(system + " One day"), {}, 12, {}};
  const uint64_t a = s.add(first);
  const auto cold = drain(s);
  EXPECT_EQ(cold.at(a).tokens, alone(spec, first));
  const uint64_t before = s.stats().prefix_hit_tokens;
  EXPECT_EQ(before, 0u);
  // Three at once, sharing the system prefix; one repeats the first request exactly.
  std::vector<Request> reqs = {{prompt(system + " One day"), {}, 12, {}},
                               {prompt(system + " Her mom"), {}, 15, {}},
                               {prompt(system + " The sun was"), SamplingParams{.temperature = 1.0f, .seed = 7}, 10, {}}};
  const std::vector<uint64_t> ids = add_all(s, reqs);
  const auto hot = drain(s);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(hot.at(ids[i]).tokens, alone(spec, reqs[i])) << "request " << i;
  const SchedulerStats st = s.stats();
  const size_t shared_pages = (prompt(system).size() - 1) / 4;  // the last system token may merge with the next word
  EXPECT_GE(st.prefix_hit_tokens, 3 * 4 * (shared_pages - 1));
  EXPECT_EQ(st.pages_free, st.pages_total);
  EXPECT_GT(st.pages_cached, 0u);
}

// With too few pages for every cached prefix, the least recently released are evicted, and hits
// on what remains still give cold tokens.
TEST(SchedulerPrefix, EvictionUnderPressure) {
  REQUIRE_STORIES();
  const std::string spec = "k3v2:page=4";
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512, .max_seqs = 3, .num_pages = 24, .max_chunk = 64});
  Scheduler s(e, is_stop, {.max_num_seqs = 3});
  std::mt19937 rng(5);
  std::vector<Request> reqs;
  std::vector<uint64_t> ids;
  for (int round = 0; round < 4; ++round) {
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      Request r{prompt(kPrompts[(i + round) % kPrompts.size()] + (rng() % 2 ? " and" : "")), {}, uint32_t(8 + rng() % 12), {}};
      reqs.push_back(r);
      ids.push_back(s.add(r));
    }
    const auto got = drain(s);
    for (size_t i = reqs.size() - kPrompts.size(); i < reqs.size(); ++i)
      EXPECT_EQ(got.at(ids[i]).tokens, alone(spec, reqs[i])) << "round " << round << " request " << i;
  }
  const SchedulerStats st = s.stats();
  EXPECT_GT(st.prefix_hit_tokens, 0u);
  EXPECT_EQ(st.pages_free, st.pages_total);
  EXPECT_LE(e.blocks().cached_pages(), st.pages_total);
}

TEST(SchedulerPrefix, OffWithSideBuffersWithoutTailsAndSaysWhy) {
  REQUIRE_STORIES();
  Engine e(stories()->m, parse_kv_spec("k3v2:sink=4:window=16"), {.threads = 1, .context = 512, .max_seqs = 2});
  Scheduler s(e, is_stop, {.max_num_seqs = 2});
  EXPECT_FALSE(s.prefix_caching());
  EXPECT_NE(s.prefix_caching_note().find("side buffers"), std::string::npos) << s.prefix_caching_note();
  EXPECT_NE(s.prefix_caching_note().find("prefix_tails 0"), std::string::npos) << s.prefix_caching_note();
  Engine with(stories()->m, parse_kv_spec("k3v2:sink=4:window=16"), {.threads = 1, .context = 512, .max_seqs = 2, .prefix_tails = 2});
  Scheduler on(with, is_stop, {.max_num_seqs = 2});
  EXPECT_TRUE(on.prefix_caching()) << on.prefix_caching_note();
  EXPECT_EQ(on.stats().tails_total, 2u);
  EXPECT_EQ(on.stats().tail_bytes, with.runner().tail_bytes());
  EXPECT_GT(with.runner().tail_bytes(), 0u);
}

// Prefix caching for specs with sink/window side buffers: a hit takes the pages up to a page with
// a tail and the side rows from it, and must give the tokens of a cold run.
struct TailCase {
  const char* name;
  const char* spec;
};
void PrintTo(const TailCase& c, std::ostream* os) { *os << c.name; }
class SchedulerPrefixTails : public ::testing::TestWithParam<TailCase> {};

// Tokens of `text` without a BOS: what follows earlier turns of a conversation.
std::vector<int> more(const std::string& text) { return stories()->tok->encode(text, false); }
std::vector<int> cat(std::vector<int> a, const std::vector<int>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const std::string kStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friend Tom. "
    "One day, they found a big red ball under a tree. Tom said they should share it. Lily was happy and they played "
    "with the ball all day, until the sun went down and their moms called them home.";

// A chat: each turn's prompt is the last one, its answer and a new line (the answer's end has a
// tail); then the last prompt repeated, greedy and seeded, and requests extending it, at once.
// Every request gives the tokens of its cold run, and every turn after the first hits. Two greedy
// requests speculate (rejected drafts taken back before their tails are kept).
TEST_P(SchedulerPrefixTails, MultiTurnAndRepeatsHitWithColdTokens) {
  REQUIRE_STORIES();
  const std::string spec = GetParam().spec;
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512, .max_seqs = 4, .max_chunk = 64, .prefix_tails = 8});
  Scheduler s(e, is_stop, {.max_num_seqs = 4});
  ASSERT_TRUE(s.prefix_caching()) << s.prefix_caching_note();
  std::vector<int> conv = prompt(kStory);
  ASSERT_GT(conv.size(), 80u);  // longer than every window here
  const std::vector<std::string> turns = {" Then the sun came out.", " Lily smiled at her mom and said", " They went home."};
  uint64_t hits = 0;
  std::vector<int> last;
  for (size_t turn = 0; turn < turns.size(); ++turn) {
    Request r{conv, {}, uint32_t(20 + 5 * turn), {}};
    if (turn == 1) r.sampling = SamplingParams{.temperature = 0.9f, .top_p = 0.95f, .seed = 77};
    if (turn == 2) r.speculation = engine::parse_speculative_spec("ngram:k=4:min=1");  // greedy: its tokens alone without it
    const uint64_t id = s.add(r);
    const auto got = drain(s);
    EXPECT_EQ(got.at(id).tokens, alone(spec, r)) << "turn " << turn;
    const uint64_t now = s.stats().prefix_hit_tokens;
    if (turn > 0) {
      // At least up to the page boundary before the previous answer's last fed token.
      const uint32_t P = e.blocks().page_size();
      EXPECT_GE(now - hits, (last.size() - 1) / P * P) << "turn " << turn;
    }
    hits = now;
    last = cat(conv, got.at(id).tokens);
    conv = cat(last, more(turns[turn]));
  }
  const std::vector<Request> reqs = {{conv, {}, 16, engine::parse_speculative_spec("ngram:n=2:min=1")},
                                     {conv, SamplingParams{.temperature = 1.0f, .seed = 3}, 16, {}},
                                     {cat(conv, more(" Max")), {}, 12, {}},
                                     {cat(conv, more(" The end.")), SamplingParams{.temperature = 0.7f, .seed = 9}, 12, {}}};
  const std::vector<uint64_t> ids = add_all(s, reqs);
  const auto got = drain(s);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(got.at(ids[i]).tokens, alone(spec, reqs[i])) << "request " << i;
  const SchedulerStats st = s.stats();
  EXPECT_GE(st.prefix_hit_tokens - hits, 4 * (last.size() / e.blocks().page_size() - 1) * e.blocks().page_size());
  EXPECT_GT(st.spec_verifications, 0u);
  EXPECT_EQ(st.pages_free, st.pages_total) << "pages leaked";
  EXPECT_GT(st.tails_used, 0u);
  EXPECT_LE(st.tails_used, st.tails_total);
  EXPECT_LE(st.tails_used, e.blocks().cached_pages());
}

// A shared system prompt before different questions, the common case of prefix caching: the first
// request keeps tails only past the shared part (where its prompt and its text end); the second
// matches the shared pages but finds no tail there, computes them again and keeps one at the
// branch point; every later question, two at once, takes the shared pages up to it. Every request
// gives its cold tokens. (Without the branch tail the later questions would hit nothing.)
TEST_P(SchedulerPrefixTails, SharedSystemPromptIsSharedFromTheThirdQuestionOn) {
  REQUIRE_STORIES();
  const std::string spec = GetParam().spec;
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512, .max_seqs = 4, .max_chunk = 64, .prefix_tails = 8});
  Scheduler s(e, is_stop, {.max_num_seqs = 4});
  ASSERT_TRUE(s.prefix_caching()) << s.prefix_caching_note();
  const uint32_t P = e.blocks().page_size();
  const std::vector<int> system = prompt(kStory);
  std::vector<Request> reqs;
  for (const char* q : {" 1. Who found the big red ball under the tree, and what did Tom say about it?",
                        " 2. Can you tell me what color the ball was that Lily and Tom found in the park?",
                        " 3. Please say where the two friends played with the ball until the sun went down.",
                        " 4. Tell me why Lily and her friend Tom were happy when they went home at night."})
    reqs.push_back({cat(system, more(q)), {}, 12, {}});
  reqs[3].sampling = SamplingParams{.temperature = 0.8f, .seed = 5};
  // Every two prompts share the same tokens (the system prompt and the questions' first tokens,
  // which the tokenizer may join): the branch point is the last page boundary within them.
  const auto common = [&](size_t i, size_t j) {
    return size_t(std::mismatch(reqs[i].prompt.begin(), reqs[i].prompt.end(), reqs[j].prompt.begin(), reqs[j].prompt.end()).first -
                  reqs[i].prompt.begin());
  };
  const size_t shared = common(0, 1);
  ASSERT_GE(shared, system.size());
  for (size_t i = 0; i < reqs.size(); ++i)
    for (size_t j = 0; j < i; ++j) ASSERT_EQ(common(i, j), shared) << "requests " << j << " and " << i;
  const uint32_t branch = uint32_t(shared) / P * P;
  ASSERT_GT(branch, 0u);
  ASSERT_GT((reqs[0].prompt.size() - 1) / P * P, branch) << "the first prompt's own tail would be at the branch point";
  const auto hits = [&] { return s.stats().prefix_hit_tokens; };
  uint64_t before = hits();
  for (size_t i = 0; i < 2; ++i) {  // one at a time
    const uint64_t id = s.add(reqs[i]);
    EXPECT_EQ(drain(s).at(id).tokens, alone(spec, reqs[i])) << "request " << i;
    EXPECT_EQ(hits() - before, 0u) << "request " << i << ": no tail within the shared pages yet";
    before = hits();
  }
  EXPECT_EQ(s.stats().prefix_branch_tails, 1u);
  const uint64_t c = s.add(reqs[2]), d = s.add(reqs[3]);
  const auto got = drain(s);
  EXPECT_EQ(got.at(c).tokens, alone(spec, reqs[2]));
  EXPECT_EQ(got.at(d).tokens, alone(spec, reqs[3]));
  EXPECT_EQ(hits() - before, 2u * branch) << "both later questions take the shared pages up to the branch point";
  EXPECT_EQ(s.stats().prefix_branch_tails, 1u);
  EXPECT_EQ(s.stats().pages_free, s.stats().pages_total) << "pages leaked";
}

// Two tail slots for six conversations three at a time, over a pool too small for three: tails and
// pages are evicted and taken again, requests preempted; hits on what remains still give cold tokens.
TEST_P(SchedulerPrefixTails, EvictionOfTailsAndPagesUnderPressure) {
  REQUIRE_STORIES();
  const std::string spec = GetParam().spec;
  const uint32_t pages = 400 / parse_kv_spec(spec).format.page_size;  // fewer than three conversations take
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512, .max_seqs = 3, .num_pages = pages, .max_chunk = 64, .prefix_tails = 2});
  Scheduler s(e, is_stop, {.max_num_seqs = 3, .max_batched_tokens = 40});
  ASSERT_TRUE(s.prefix_caching()) << s.prefix_caching_note();
  std::vector<std::vector<int>> convs;
  for (const std::string& p : kPrompts) convs.push_back(prompt(kStory + " " + p));
  for (int round = 0; round < 3; ++round) {
    std::vector<Request> reqs;
    std::vector<uint64_t> ids;
    for (size_t k = 0; k < convs.size(); ++k) {
      const size_t i = round % 2 ? convs.size() - 1 - k : k;  // the last to finish come first next round
      Request r{convs[i], {}, uint32_t(6 + (i * 5 + round * 3) % 11), {}};
      if (i % 2) r.sampling = SamplingParams{.temperature = 0.8f, .seed = uint64_t(100 * round + i)};
      reqs.push_back(r);
      ids.push_back(s.add(r));
    }
    const auto got = drain(s);
    for (size_t k = 0; k < reqs.size(); ++k) {
      EXPECT_EQ(got.at(ids[k]).tokens, alone(spec, reqs[k])) << "round " << round << " request " << k;
      const size_t i = round % 2 ? convs.size() - 1 - k : k;
      convs[i] = cat(cat(convs[i], got.at(ids[k]).tokens), more(" and"));
    }
    EXPECT_LE(s.stats().tails_used, 2u);
  }
  const SchedulerStats st = s.stats();
  EXPECT_GT(st.prefix_hit_tokens, 0u);
  EXPECT_EQ(st.pages_free, st.pages_total) << "pages leaked";
  EXPECT_GT(st.preemptions, 0u);
  EXPECT_EQ(st.tails_used, 2u);
  EXPECT_LE(st.tails_used, e.blocks().cached_pages());  // every tail still on a cached page
}

// Below the scheduler: a sequence started from cached pages and a tail computes bit for bit what a
// cold sequence computes in the same chunks (hit at 96 positions: the default spec's window rows
// 32..95 and every sink row come from the tail).
void hit_logits_equal_cold(const std::string& spec) {
  Engine e(stories()->m, parse_kv_spec(spec), {.threads = 2, .context = 512, .max_seqs = 3, .max_chunk = 8, .prefix_tails = 2});
  ASSERT_EQ(e.enable_prefix_cache(), "");
  const std::vector<int> t = prompt(kStory + " " + kStory);
  ASSERT_GT(t.size(), 120u);
  const std::vector<int> head(t.begin(), t.begin() + 96), rest(t.begin() + 96, t.end());
  // The cold run's chunks up to 96 (so the same bits in pages and side rows), then twelve tokens
  // more, more than a chunk of 8: the tail at 96 is saved from a ring that has moved on past what
  // the steps alone need it to keep (it keeps a page more with tails).
  const int a = e.add_sequence();
  e.prefill(a, head);
  e.prefill(a, std::vector<int>(t.begin() + 96, t.begin() + 108));
  e.cache_prefix(a, t, 96);
  e.remove_sequence(a);
  const int b = e.add_sequence(t, uint32_t(t.size() - 1));
  ASSERT_EQ(e.seq_len(b), 96u);
  const std::vector<float> hot = e.prefill(b, rest, true);
  e.remove_sequence(b);
  const int c = e.add_sequence();
  e.prefill(c, head);
  const std::vector<float> cold = e.prefill(c, rest, true);
  e.remove_sequence(c);
  EXPECT_EQ(hot, cold);
  EXPECT_EQ(e.blocks().allocator().free_pages(), e.blocks().allocator().num_pages());
}
TEST_P(SchedulerPrefixTails, HitLogitsEqualColdBitForBit) {
  REQUIRE_STORIES();
  hit_logits_equal_cold(GetParam().spec);
}

INSTANTIATE_TEST_SUITE_P(Stories260K, SchedulerPrefixTails,
                         // The default has the key centre, fixed by each engine's calibration step: the same
                         // for the hot and the cold sequence and for requests run alone.
                         ::testing::Values(TailCase{"Default", kDefaultKvSpec}, TailCase{"SinkWindowPage8", "k3v2:sink=4:window=16:page=8"},
                                           TailCase{"WindowOnlyPage4", "k4v4:window=24:page=4"},
                                           TailCase{"SinkOnlyPage4", "k3v2:sink=8:page=4"}),
                         [](const auto& info) { return std::string(info.param.name); });

// Random arrivals, lengths and cancellations over a tiny pool: every request ends exactly once,
// the ones not cancelled with their tokens alone, and no page leaks.
void random_arrivals_and_cancellations(const std::string& spec, uint32_t tails) {
  Engine e(stories()->m, parse_kv_spec(spec),
           {.threads = 2, .context = 512, .max_seqs = 5, .num_pages = 30, .max_chunk = 24, .prefix_tails = tails});
  Scheduler s(e, is_stop, {.max_num_seqs = 5, .max_batched_tokens = 11});
  EXPECT_TRUE(s.prefix_caching()) << s.prefix_caching_note();
  std::mt19937 rng(11);
  std::map<uint64_t, Request> reqs;
  std::map<uint64_t, Outcome> got;
  std::vector<uint64_t> cancelled;
  for (int step = 0; step < 400 && (step < 120 || !s.idle()); ++step) {
    if (step < 120 && rng() % 3 == 0) {
      Request r{prompt(kPrompts[rng() % kPrompts.size()]), {}, uint32_t(1 + rng() % 25), {}};
      if (rng() % 2) r.sampling = SamplingParams{.temperature = 0.8f, .seed = rng()};
      const uint64_t id = s.add(r);
      reqs.emplace(id, r);
    }
    if (!reqs.empty() && rng() % 10 == 0) {
      const uint64_t id = std::next(reqs.begin(), long(rng() % reqs.size()))->first;
      s.cancel(id);
      cancelled.push_back(id);
    }
    record(got, s.step());
  }
  ASSERT_TRUE(s.idle());
  size_t checked = 0;
  for (const auto& [id, r] : reqs) {
    const Outcome& o = got[id];
    EXPECT_NE(o.finish, Finish::kNone) << "request " << id << " never ended";
    EXPECT_EQ(o.events_after_finish, 0);
    if (o.finish == Finish::kCancelled) {
      EXPECT_NE(std::find(cancelled.begin(), cancelled.end(), id), cancelled.end());
      continue;
    }
    if (checked++ < 12) {
      EXPECT_EQ(o.tokens, alone(spec, r)) << "request " << id;
    }
  }
  const SchedulerStats st = s.stats();
  EXPECT_GT(st.cancelled, 0u);
  EXPECT_GT(st.preemptions, 0u);
  EXPECT_GT(st.prefix_hit_tokens, 0u);
  EXPECT_EQ(st.pages_free, st.pages_total) << "pages leaked";
}

TEST(SchedulerStress, RandomArrivalsAndCancellations) {
  REQUIRE_STORIES();
  random_arrivals_and_cancellations("k3v2:page=4", 0);
}

// The same with side buffers and three tails (cancelled and preempted requests leave tails too).
TEST(SchedulerStress, RandomArrivalsAndCancellationsWithTails) {
  REQUIRE_STORIES();
  random_arrivals_and_cancellations("k3v2:edge=2/k4v4:sink=4:window=16:page=4", 3);
}

// A request its server ends on a stop string (cancel with kStop) ends as stopped: counted as
// finished, not cancelled, its pages back; a plain cancel is counted as cancelled.
TEST(SchedulerCancel, AStopEndsAsStoppedAndACancelAsCancelled) {
  REQUIRE_STORIES();
  Engine e(stories()->m, parse_kv_spec("k3v2:page=8"), {.threads = 1, .context = 128, .max_seqs = 2, .num_pages = 16});
  Scheduler s(e, is_stop, {.max_num_seqs = 2});
  const uint64_t stopped = s.add({prompt(kPrompts[0]), {}, 40, {}}), cancelled = s.add({prompt(kPrompts[1]), {}, 40, {}});
  std::map<uint64_t, Outcome> got;
  for (int i = 0; i < 4; ++i) record(got, s.step());
  s.cancel(stopped, Finish::kStop);
  s.cancel(cancelled);
  record(got, s.step());
  ASSERT_TRUE(s.idle());
  EXPECT_EQ(got[stopped].finish, Finish::kStop);
  EXPECT_EQ(got[cancelled].finish, Finish::kCancelled);
  const SchedulerStats st = s.stats();
  EXPECT_EQ(st.finished, 2u);
  EXPECT_EQ(st.cancelled, 1u);
  EXPECT_EQ(st.pages_free, st.pages_total) << "pages leaked";
  model::testing::expect_error([&] { s.cancel(stopped, Finish::kLength); }, "cancelled or stopped");
}

TEST(SchedulerErrors, RequestsThatCanNeverRunAreRefused) {
  REQUIRE_STORIES();
  Engine e(stories()->m, parse_kv_spec("k3v2:page=8"), {.threads = 1, .context = 64, .max_seqs = 2, .num_pages = 4, .max_chunk = 16});
  Scheduler s(e, is_stop, {.max_num_seqs = 2});
  using model::testing::expect_error;
  expect_error([&] { s.add({{}, {}, 4, {}}); }, "prompt is empty");
  expect_error([&] { s.add({{1, 600}, {}, 4, {}}); }, "token id 600");
  expect_error([&] { s.add({{1, 2}, {}, 0, {}}); }, "max_tokens");
  expect_error([&] { s.add({std::vector<int>(60, 5), {}, 10, {}}); }, "maximum context length is 64 tokens, but 70");
  try {
    s.check({std::vector<int>(60, 5), {}, 10, {}});
  } catch (const Refused& r) {
    EXPECT_EQ(r.code, "context_length_exceeded");  // OpenAI's code for it, which the server passes on
  }
  expect_error([&] { s.add({std::vector<int>(30, 5), {}, 10, {}}); }, "more than the whole pool holds (4 pages)");
  expect_error([&] { s.add({{1}, SamplingParams{.top_p = 2}, 4, {}}); }, "top_p");
  expect_error([&] { s.add({{1}, {}, 4, engine::parse_speculative_spec("draft")}); }, "no draft model");
  EXPECT_TRUE(s.idle());
  // Each refusal names the request field to blame (the server's error "param").
  const auto param = [&](const Request& r) {
    try {
      s.check(r);
    } catch (const Refused& e) {
      return e.param;
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(param({{}, {}, 4, {}}), "prompt");
  EXPECT_EQ(param({{1, 600}, {}, 4, {}}), "prompt");
  EXPECT_EQ(param({{1, 2}, {}, 0, {}}), "max_tokens");
  EXPECT_EQ(param({std::vector<int>(60, 5), {}, 10, {}}), "max_tokens");
  EXPECT_EQ(param({{1}, SamplingParams{.temperature = -1}, 4, {}}), "temperature");
  EXPECT_EQ(param({{1}, SamplingParams{.top_p = 2}, 4, {}}), "top_p");
  EXPECT_EQ(param({{1}, SamplingParams{.top_k = -1}, 4, {}}), "top_k");
  EXPECT_EQ(param({{1}, SamplingParams{.min_p = 2}, 4, {}}), "min_p");
  EXPECT_EQ(param({{1}, {}, 4, engine::parse_speculative_spec("draft")}), "speculative");
  EXPECT_EQ(param({{1}, {}, 4, {}, 21}), "logprobs");
  EXPECT_EQ(param({{1}, {}, 4, engine::parse_speculative_spec("ngram"), 2}), "(accepted)");
  EXPECT_EQ(param({{1}, {}, 4, {}, 20}), "(accepted)");
  EXPECT_EQ(param({{1}, {}, 4, {}}), "(accepted)");
  expect_error([&] { Scheduler(e, is_stop, {.max_num_seqs = 3}); }, "--max-num-seqs");
  expect_error([&] { Scheduler(e, is_stop, {.max_num_seqs = 2, .max_batched_tokens = 17}); }, "largest step");
}

}  // namespace
}  // namespace tq::serve
