// The engine drives any ModelRunner through the same step: a recording runner checks what the
// schedule hands over (positions, block tables, logits rows) and that a failed step leaves no trace.
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <thread>

#include "tq/common.h"
#include "tq/engine/engine.h"

namespace tq::engine {
namespace {

class RecordingRunner : public ModelRunner {
 public:
  RecordingRunner(int vocab, uint32_t pages) : pages_(pages) { cfg_.vocab_size = vocab; cfg_.max_seq = 64; }
  const model::ModelConfig& config() const override { return cfg_; }
  const KvSpec& spec() const override { return spec_; }
  std::string describe() const override { return "recording"; }
  void add_sequence(int seq) override { added.push_back(seq); }
  std::vector<float> forward(const std::vector<StepSeq>& step) override {
    if (fail_next) {
      fail_next = false;
      throw Error("runner failed");
    }
    steps.push_back({});
    size_t rows = 0;
    for (const StepSeq& s : step) {
      steps.back().push_back({s.seq, s.first, s.n, s.block_table ? s.block_table->size() : 0, s.tokens[0]});
      rows += s.all_logits ? s.n : 1;
    }
    return std::vector<float>(rows * size_t(cfg_.vocab_size), 0.5f);
  }
  uint32_t num_pages() const override { return pages_; }
  uint32_t max_chunk() const override { return UINT32_MAX; }
  size_t page_bytes() const override { return 100; }
  size_t side_bytes() const override { return 7; }

  struct Seen {
    int seq;
    uint32_t first, n;
    size_t pages;
    int token0;
  };
  std::vector<std::vector<Seen>> steps;
  std::vector<int> added;
  bool fail_next = false;

 private:
  model::ModelConfig cfg_;
  KvSpec spec_ = parse_kv_spec("k3v2");
  uint32_t pages_;
};

TEST(EngineStep, SchedulesPositionsAndPagesForTheRunner) {
  auto r = std::make_unique<RecordingRunner>(10, 6);
  RecordingRunner* rec = r.get();
  Engine e(std::move(r), 4, {.context = 32, .num_pages = 6, .max_chunk = 8});
  const int a = e.add_sequence(), b = e.add_sequence();
  EXPECT_EQ(rec->added, (std::vector<int>{a, b}));
  EXPECT_EQ(e.forward({{a, {1, 2, 3, 4, 5}, true}}).size(), 5u * 10);
  EXPECT_EQ(e.forward({{a, {6}, false}, {b, {7, 8}, false}}).size(), 2u * 10);
  ASSERT_EQ(rec->steps.size(), 2u);
  const auto& s1 = rec->steps[1];
  EXPECT_EQ(s1[0].seq, a);
  EXPECT_EQ(s1[0].first, 5u);
  EXPECT_EQ(s1[0].pages, 2u);
  EXPECT_EQ(s1[1].seq, b);
  EXPECT_EQ(s1[1].first, 0u);
  EXPECT_EQ(s1[1].token0, 7);
  EXPECT_EQ(e.seq_len(a), 6u);
  EXPECT_EQ(e.kv_bytes(a), 2u * 100 + 7);
}

// A thread count beyond the machine's (-t 4294967295) is capped, not started thread by thread.
TEST(EngineStep, ThreadsAreCappedAtTheHardwareThreads) {
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const model::ModelConfig c;
  EXPECT_EQ(Engine::resolve(c, 4, {.threads = 4294967295u}).threads, hw);
  EXPECT_EQ(Engine::resolve(c, 4, {.threads = hw + 1}).threads, hw);
  EXPECT_EQ(Engine::resolve(c, 4, {.threads = 1}).threads, 1u);
  EXPECT_EQ(Engine::resolve(c, 4, {.threads = 0}).threads, 0u);  // 0: all of them, as before
  Engine e(std::make_unique<RecordingRunner>(10, 6), 4, {.threads = 4294967295u, .context = 32, .num_pages = 6});
  EXPECT_EQ(e.options().threads, hw);
}

TEST(EngineStep, AFailedStepLeavesNoTrace) {
  auto r = std::make_unique<RecordingRunner>(10, 3);
  RecordingRunner* rec = r.get();
  Engine e(std::move(r), 4, {.context = 32, .num_pages = 3, .max_chunk = 8});
  const int a = e.add_sequence(), b = e.add_sequence();
  e.forward({{a, {1, 2, 3}, false}});
  rec->fail_next = true;
  EXPECT_THROW(e.forward({{a, {4, 5}, false}, {b, {6}, false}}), Error);
  EXPECT_EQ(e.seq_len(a), 3u);
  EXPECT_EQ(e.seq_len(b), 0u);
  EXPECT_EQ(e.blocks().allocator().free_pages(), 2u);
  // Refused before the runner sees it: the pool, the context, a token id, a sequence twice.
  EXPECT_THROW(e.forward({{a, {4, 5}, false}, {b, {1, 2, 3, 4, 5}, false}}), Error);  // 3 pages > 2 free
  EXPECT_THROW(e.forward({{a, std::vector<int>(30, 1), false}}), Error);
  EXPECT_THROW(e.forward({{a, {10}, false}}), Error);
  EXPECT_THROW(e.forward({{a, {1}, false}, {a, {2}, false}}), Error);
  EXPECT_EQ(rec->steps.size(), 1u);
  EXPECT_EQ(e.seq_len(a), 3u);
  EXPECT_EQ(e.seq_len(b), 0u);
}

// Sampling arguments are checked at the runner boundary, before the step runs: one per sequence,
// valid parameters, a draw in [0, 1); a refused step leaves no trace. Good ones sample the
// runner's logits (all equal here: the lowest id greedily, the draw's place otherwise).
TEST(EngineStep, SamplingArgumentsAreCheckedBeforeTheStepRuns) {
  auto r = std::make_unique<RecordingRunner>(10, 3);
  RecordingRunner* rec = r.get();
  Engine e(std::move(r), 4, {.context = 32, .num_pages = 3, .max_chunk = 8});
  const int a = e.add_sequence();
  const auto message = [&](const std::vector<SampleArgs>& args) {
    try {
      e.forward_sample({{a, {1}, false}}, args);
    } catch (const Error& err) {
      return std::string(err.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message({}).find("a step of 1 sequences (1 logits rows) got sampling arguments for 0"), std::string::npos);
  EXPECT_NE(message({{.params = {.temperature = 1}, .u = 1.0}}).find("draw must be in [0, 1), got 1"), std::string::npos);
  EXPECT_NE(message({{.params = {.temperature = -2}}}).find("got -2"), std::string::npos);
  EXPECT_TRUE(rec->steps.empty());
  EXPECT_EQ(e.seq_len(a), 0u);
  EXPECT_EQ(e.forward_greedy({{a, {1}, false}}), std::vector<int>{0});
  EXPECT_EQ(e.forward_sample({{a, {2}, false}}, {{.params = {.temperature = 1}, .u = 0.75}}), std::vector<int>{7});
  EXPECT_EQ(e.seq_len(a), 2u);
}

}  // namespace
}  // namespace tq::engine
