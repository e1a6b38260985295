// The scheduler over a toy runner whose next token is the last one plus 1 (mod the vocabulary),
// and whose logits after token 7 are NaN: one request's bad row ends that request with an error
// and no other; and a long prompt's chunks never take the step's whole budget while others decode.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <limits>
#include <map>

#include "tq/common.h"
#include "tq/engine/engine.h"
#include "tq/serve/scheduler.h"
#include "tq/serve/service.h"

namespace tq::serve {
namespace {

using engine::Engine;
using engine::ModelRunner;
using engine::StepSeq;

constexpr int kVocab = 32;
constexpr int kPoison = 7;  // the logits after this token are NaN

class ToyRunner : public ModelRunner {
 public:
  // tails > 0: a spec with side rows (a byte a sequence) and that many prefix tail slots.
  explicit ToyRunner(uint32_t pages, uint32_t tails = 0) : pages_(pages) {
    cfg_.vocab_size = kVocab;
    cfg_.max_seq = 256;
    tails_ = tails;
  }
  const model::ModelConfig& config() const override { return cfg_; }
  const KvSpec& spec() const override { return spec_; }
  std::string describe() const override { return "toy"; }
  void add_sequence(int) override {}
  std::vector<float> forward(const std::vector<StepSeq>& step) override {
    std::vector<float> out;
    for (const StepSeq& s : step) {
      step_tokens.push_back({});
      for (uint32_t j = 0; j < s.n; ++j) step_tokens.back().push_back(s.tokens[j]);
      for (uint32_t j = s.all_logits ? 0 : s.n - 1; j < s.n; ++j) {
        std::vector<float> row(kVocab, 0.0f);
        if (s.tokens[j] == kPoison) {
          row.assign(kVocab, std::numeric_limits<float>::quiet_NaN());
        } else {  // greedy: the token after; sampled: that one or the next (a draw decides)
          row[size_t((s.tokens[j] + 1) % kVocab)] = 2.0f;
          row[size_t((s.tokens[j] + 2) % kVocab)] = 1.5f;
        }
        out.insert(out.end(), row.begin(), row.end());
      }
    }
    steps.push_back(step.size());
    return out;
  }
  uint32_t num_pages() const override { return pages_; }
  uint32_t max_chunk() const override { return UINT32_MAX; }
  size_t page_bytes() const override { return 64; }
  size_t side_bytes() const override { return tails_ ? 1 : 0; }
  bool save_tail(int, uint32_t, uint32_t) override {
    if (fail_tails) throw Error("toy runner: cannot copy a tail");
    return true;
  }
  void restore_tail(uint32_t, int, uint32_t) override {}

  std::vector<size_t> steps;                   // [steps] sequences in each
  std::vector<std::vector<int>> step_tokens;   // [items over all steps] the item's new tokens
  std::atomic<bool> fail_tails{false};          // save_tail throws (an error past the scheduler's handling)

 private:
  model::ModelConfig cfg_;
  KvSpec spec_ = parse_kv_spec("k3v2");
  uint32_t pages_;
};

struct Ended {
  std::vector<int> tokens;
  Finish finish = Finish::kNone;
  std::string error;
};

std::map<uint64_t, Ended> run_toy(Scheduler& s) {
  std::map<uint64_t, Ended> out;
  for (int i = 0; i < 1000 && !s.idle(); ++i)
    for (const Event& ev : s.step()) {
      if (ev.token >= 0) out[ev.id].tokens.push_back(ev.token);
      if (ev.finish != Finish::kNone) out[ev.id].finish = ev.finish, out[ev.id].error = ev.error;
    }
  EXPECT_TRUE(s.idle());
  return out;
}

// A seeded request's tokens with and without a neighbour whose logits turn NaN: the same draws.
TEST(SchedulerFaults, ANaNRowEndsOnlyItsRequest) {
  const Request seeded_request{{20}, {.temperature = 1.0f, .seed = 3}, 6, {}};  // 20 + 6 x (1 or 2) never reaches 7
  const auto alone = [&] {
    Engine e(std::make_unique<ToyRunner>(64), 4, {.context = 128, .max_seqs = 4, .num_pages = 64, .max_chunk = 16});
    Scheduler s(e, [](int) { return false; }, {.max_num_seqs = 4, .prefix_caching = false});
    const uint64_t id = s.add(Request(seeded_request));
    return run_toy(s).at(id).tokens;
  }();
  auto r = std::make_unique<ToyRunner>(64);
  ToyRunner* toy = r.get();
  Engine e(std::move(r), 4, {.context = 128, .max_seqs = 4, .num_pages = 64, .max_chunk = 16});
  Scheduler s(e, [](int) { return false; }, {.max_num_seqs = 4, .prefix_caching = false});
  const uint64_t bad = s.add({{1, 2}, {}, 10, {}});     // 3 4 5 6 7, then NaN logits
  const uint64_t good = s.add({{10}, {}, 8, {}});       // 11 .. 18
  const uint64_t seeded = s.add(Request(seeded_request));
  const auto got = run_toy(s);
  EXPECT_EQ(got.at(bad).finish, Finish::kError);
  EXPECT_NE(got.at(bad).error.find("NaN"), std::string::npos) << got.at(bad).error;
  EXPECT_EQ(got.at(bad).tokens, (std::vector<int>{3, 4, 5, 6, 7}));
  EXPECT_EQ(got.at(good).finish, Finish::kLength);
  EXPECT_EQ(got.at(good).tokens, (std::vector<int>{11, 12, 13, 14, 15, 16, 17, 18}));
  EXPECT_EQ(got.at(seeded).finish, Finish::kLength);
  EXPECT_EQ(got.at(seeded).tokens, alone);
  EXPECT_EQ(s.stats().pages_free, s.stats().pages_total);
  size_t shared = 0;
  for (size_t n : toy->steps) shared = std::max(shared, n);
  EXPECT_EQ(shared, 3u);  // the bad row was in a step with the others
}

// An older request still in its prompt must not stall a newer one's decodes. Here the older one
// (A) stops its first chunk where its tokens leave the cached pages of an earlier prompt (a branch
// point: a tail is kept there), which leaves budget to admit B; from then on A's chunks leave a
// token of each step's budget to B, which decodes in every step while A's prompt goes in.
TEST(SchedulerFaults, PromptChunksLeaveRoomForDecodes) {
  Engine e(std::make_unique<ToyRunner>(64, 4), 4, {.context = 128, .max_seqs = 2, .num_pages = 64, .max_chunk = 16});
  Scheduler s(e, [](int) { return false; }, {.max_num_seqs = 2, .max_batched_tokens = 16});
  ASSERT_TRUE(s.prefix_caching()) << s.prefix_caching_note();
  const std::vector<int> shared = {1, 2, 3, 4, 5, 1, 2, 3};
  std::vector<int> first = shared, a_prompt = shared;
  first.insert(first.end(), 10, 2);
  for (int i = 0; i < 60; ++i) a_prompt.push_back(i % 5);
  s.add({first, {}, 1, {}});
  run_toy(s);
  const uint64_t a = s.add({a_prompt, {}, 2, {}});
  const uint64_t b = s.add({{10, 10, 10}, {}, 10, {}});
  std::vector<int> b_tokens;
  int steps_with_b = 0, steps_before_a = 0;
  for (bool a_started = false; !a_started;) {
    bool b_here = false;
    for (const Event& ev : s.step()) {
      a_started |= ev.id == a && ev.token >= 0;
      if (ev.id == b && ev.token >= 0) b_tokens.push_back(ev.token), b_here = true;
    }
    steps_with_b += b_here;
    ++steps_before_a;
    ASSERT_LT(steps_before_a, 20);
  }
  EXPECT_GE(s.stats().prefix_branch_tails, 1u);  // the first chunk did stop at the branch point
  EXPECT_EQ(steps_with_b, steps_before_a) << "B waited for A's prompt";
  EXPECT_GE(steps_before_a, 5);
  run_toy(s);
  EXPECT_EQ(s.stats().pages_free, s.stats().pages_total);
}

// A step that throws past the scheduler's own handling (here the runner's tail copy) ends the
// requests in flight with the error; the service thread goes on, serves the next request, and
// every page comes back.
TEST(SchedulerFaults, TheServiceOutlivesAFailedStep) {
  auto r = std::make_unique<ToyRunner>(64, 4);
  ToyRunner* toy = r.get();
  Engine e(std::move(r), 4, {.context = 128, .max_seqs = 2, .num_pages = 64, .max_chunk = 16});
  Service svc(e, [](int) { return false; }, {.max_num_seqs = 2});
  const auto finish = [](Stream& st, std::vector<int>* tokens, std::string* error) {
    std::vector<Event> evs;
    for (int i = 0; i < 400; ++i) {
      if (!st.next(evs, std::chrono::milliseconds(50))) continue;
      for (const Event& ev : evs) {
        if (ev.token >= 0) tokens->push_back(ev.token);
        if (ev.finish != Finish::kNone) {
          *error = ev.error;
          return ev.finish;
        }
      }
    }
    return Finish::kNone;
  };
  toy->fail_tails = true;
  std::vector<int> tokens;
  std::string error;
  EXPECT_EQ(finish(*svc.submit({{1, 2, 3, 4, 5, 6}, {}, 4, {}}), &tokens, &error), Finish::kError);
  EXPECT_NE(error.find("cannot copy a tail"), std::string::npos) << error;
  // The slot the failed copy was given holds no rows of that page: it is free again.
  EXPECT_EQ(svc.stats().scheduler.tails_used, 0u);
  toy->fail_tails = false;
  tokens.clear();
  EXPECT_EQ(finish(*svc.submit({{10, 11, 12, 13, 14}, {}, 4, {}}), &tokens, &error), Finish::kLength);
  EXPECT_EQ(tokens, (std::vector<int>{15, 16, 17, 18}));
  for (int i = 0; i < 100 && svc.stats().scheduler.pages_free != svc.stats().scheduler.pages_total; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(svc.stats().scheduler.pages_free, svc.stats().scheduler.pages_total);
}

}  // namespace
}  // namespace tq::serve
