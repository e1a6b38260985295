// The serving scheduler over the CUDA runner: requests arriving mid-run, batched with chunked
// prefill, a pool small enough that decodes preempt and recompute, prefix hits (with a sink/window
// spec, through tails: preempted requests coming back, then next turns of the first requests),
// speculative requests (verification steps, rejected drafts taken back) among plain ones. Each request is
// greedy, so each of its tokens must be the argmax of an eager engine's logits over its prompt and
// the tokens before, wherever that argmax is clear; and every page is back in the pool at the end.
//
// Bound. The scheduler's steps and the reference prefill run the same kernels on the same cache
// format; they differ in batch composition and chunking, hence in summation order (fp32 sums of
// bf16 products), which moves logits by far less than 1% of their spread (the CPU-against-GPU
// tests bound a larger difference, fp32 against bf16 weights, by KL < 1e-2). So the argmax is
// required where the top-2 gap exceeds 1% of the spread. A wrong page, position or sequence in a
// step moves logits by O(their spread).
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "cuda_test_util.h"
#include "tiny_models.h"
#include "tq/engine/engine.h"
#include "tq/serve/scheduler.h"

namespace tq {
namespace {

constexpr int kServeVocab = 300;

TEST(CudaRunnerServe, SchedulerStepsGiveGreedyTokens) {
  TQ_REQUIRE_GPU();
  model::testing::TinyModelSpec ms;
  ms.dim = 256, ms.n_heads = 4, ms.n_kv_heads = 2, ms.hidden = 512, ms.n_layers = 2, ms.vocab = kServeVocab, ms.realistic = true;
  const model::Model m = model::testing::load_written(model::testing::tiny_model(ms));
  // 256 tokens of pages: two or three of the six requests at once, so decodes preempt.
  for (const char* spec_text : {"k3v2", "fp16:page=8", "k3v2:sink=4:window=16"}) {
    SCOPED_TRACE(spec_text);
    const KvSpec spec = parse_kv_spec(spec_text);
    engine::Engine e(m, spec, {.device = engine::Device::kCuda, .context = 256, .max_seqs = 6, .num_pages = 256 / spec.format.page_size, .max_chunk = 64,
                               .prefix_tails = 4});
    serve::Scheduler s(e, [](int) { return false; }, {.max_num_seqs = 6, .max_batched_tokens = 40});
    ASSERT_TRUE(s.prefix_caching()) << s.prefix_caching_note();
    std::mt19937 rng(5);
    const auto tokens = [&](size_t n) {
      std::vector<int> p(n);
      for (int& t : p) t = int(rng() % kServeVocab);
      return p;
    };
    const std::vector<int> shared = tokens(40);  // the first 40 tokens of half the prompts: 2 full pages of 16
    std::vector<serve::Request> reqs;
    for (int i = 0; i < 10; ++i) {
      std::vector<int> p = i % 2 ? shared : std::vector<int>{};
      const std::vector<int> tail = tokens(3 + rng() % 60);
      p.insert(p.end(), tail.begin(), tail.end());
      // A third speculate (n-gram drafts of one token and up, in steps shared with the others).
      reqs.push_back({p, {}, uint32_t(8 + rng() % 23), i % 3 ? std::nullopt : std::optional(engine::parse_speculative_spec("ngram:min=1"))});
    }
    std::map<uint64_t, size_t> index;  // request id -> reqs index
    std::map<uint64_t, std::vector<int>> got;
    std::map<uint64_t, serve::Finish> ended;
    for (size_t i = 0; i < 5; ++i) index[s.add(reqs[i])] = i;
    for (int step = 0; !s.idle() && step < 10000; ++step) {
      if (step == 6)
        for (size_t i = 5; i < reqs.size(); ++i) index[s.add(reqs[i])] = i;  // arrivals while others run
      for (const serve::Event& ev : s.step()) {
        EXPECT_EQ(ended.count(ev.id), 0u) << "an event after the end of request " << ev.id;
        if (ev.token >= 0) got[ev.id].push_back(ev.token);
        if (ev.finish != serve::Finish::kNone) ended[ev.id] = ev.finish;
      }
    }
    ASSERT_TRUE(s.idle());
    EXPECT_EQ(s.stats().finished, reqs.size());
    EXPECT_GT(s.stats().preemptions, 0u);
    EXPECT_GT(s.stats().spec_verifications, 0u);
    EXPECT_GT(s.stats().prefix_hit_tokens, 0u);
    // Next turns of the first three requests: prompt, answer and new tokens, started from whatever
    // of their pages and tails the later requests left in this small pool (the H200 showed most
    // evicted: 0-40 hit tokens; the CPU suite's SchedulerPrefixTails checks hit lengths with room).
    // Their tokens are judged with the others' below.
    std::vector<uint64_t> first_ids;
    for (const auto& [id, i] : index)
      if (i < 3) first_ids.push_back(id);
    for (uint64_t id : first_ids) {
      std::vector<int> p = reqs[index[id]].prompt;
      p.insert(p.end(), got[id].begin(), got[id].end());
      const std::vector<int> more = tokens(5);
      p.insert(p.end(), more.begin(), more.end());
      reqs.push_back({p, {}, 10, std::nullopt});
      index[s.add(reqs.back())] = reqs.size() - 1;
    }
    for (int step = 0; !s.idle() && step < 10000; ++step)
      for (const serve::Event& ev : s.step()) {
        if (ev.token >= 0) got[ev.id].push_back(ev.token);
        if (ev.finish != serve::Finish::kNone) ended[ev.id] = ev.finish;
      }
    ASSERT_TRUE(s.idle());
    const serve::SchedulerStats st = s.stats();
    EXPECT_EQ(st.pages_free, st.pages_total) << "pages leaked";
    EXPECT_EQ(st.finished, reqs.size());
    EXPECT_LE(st.tails_used, st.tails_total);

    // Each request teacher-forced through one eager prefill: logits of every position.
    engine::Engine ref(m, spec, {.device = engine::Device::kCuda, .context = 256, .max_chunk = 256, .eager = true});
    size_t decided = 0, total = 0;
    for (const auto& [id, i] : index) {
      const serve::Request& r = reqs[i];
      const std::vector<int>& out = got[id];
      ASSERT_EQ(ended[id], serve::Finish::kLength) << "request " << i;
      ASSERT_EQ(out.size(), r.max_tokens) << "request " << i;
      std::vector<int> seen = r.prompt;
      seen.insert(seen.end(), out.begin(), out.end() - 1);
      const int seq = ref.add_sequence();
      const std::vector<float> logits = ref.prefill(seq, seen, true);
      ref.remove_sequence(seq);
      for (size_t k = 0; k < out.size(); ++k) {
        const int want = test::clear_argmax(&logits[(r.prompt.size() - 1 + k) * kServeVocab], kServeVocab, 0.01f);
        ++total;
        if (want >= 0) {
          ++decided;
          EXPECT_EQ(out[k], want) << "request " << i << " token " << k;
        }
      }
    }
    EXPECT_GT(decided, total * 3 / 4) << "too few clear positions to judge: " << decided << " of " << total;
  }
}

// A sequence started from cached pages and a tail computes bit for bit what a cold sequence
// computes in the same chunks: the tail restores exactly the sink and window rows the cold run
// reads (here hit at 48 of 70 positions, window 24: rows 24..47 come from the tail).
TEST(CudaRunnerServe, PrefixTailHitLogitsEqualColdBitForBit) {
  TQ_REQUIRE_GPU();
  model::testing::TinyModelSpec ms;
  ms.dim = 256, ms.n_heads = 4, ms.n_kv_heads = 2, ms.hidden = 512, ms.n_layers = 2, ms.vocab = kServeVocab, ms.realistic = true;
  const model::Model m = model::testing::load_written(model::testing::tiny_model(ms));
  for (const char* spec_text : {"k3v2:sink=4:window=24:page=8", "k4v4:window=24:page=16", "k3v2:sink=6:page=8"}) {
    SCOPED_TRACE(spec_text);
    engine::Engine e(m, parse_kv_spec(spec_text),
                     {.device = engine::Device::kCuda, .context = 256, .max_seqs = 3, .max_chunk = 64, .eager = true, .prefix_tails = 2});
    ASSERT_EQ(e.enable_prefix_cache(), "");
    std::mt19937 rng(9);
    std::vector<int> t(70);
    for (int& x : t) x = int(rng() % kServeVocab);
    // The same chunks as the cold run up to 48 (so the same bits in pages and side rows), then two
    // more: the tail at 48 is saved from a ring that has moved on.
    const int a = e.add_sequence();
    e.prefill(a, std::vector<int>(t.begin(), t.begin() + 48));
    e.prefill(a, std::vector<int>(t.begin() + 48, t.begin() + 50));
    e.cache_prefix(a, t, 48);
    e.remove_sequence(a);
    const int b = e.add_sequence(t, 69);
    ASSERT_EQ(e.seq_len(b), 48u);
    const std::vector<int> rest(t.begin() + 48, t.end());
    const std::vector<float> hot = e.prefill(b, rest, true);
    e.remove_sequence(b);
    const int c = e.add_sequence();  // cold: the same chunks after position 48
    e.prefill(c, std::vector<int>(t.begin(), t.begin() + 48));
    const std::vector<float> cold = e.prefill(c, rest, true);
    e.remove_sequence(c);
    EXPECT_EQ(hot, cold);
  }
}

}  // namespace
}  // namespace tq
