// The scheduler on a model whose sliding-window layers keep window rings (kv/window_ring.h): a
// small Gemma 3 of random weights, a window of 16 that every prompt outgrows. Chats whose turns hit
// the prefix cache (the rings restored from tails), several at once in shared steps, give the
// tokens each request gets alone on a fresh engine, and every page is back in the pool at the end.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "model/tiny_models.h"
#include "tq/serve/scheduler.h"

namespace tq::serve {
namespace {

using engine::Engine;
using engine::EngineOptions;

const model::Model& ring_model() {
  static const model::Model m = model::testing::small_gemma3(512);
  return m;
}

std::vector<int> ring_tokens(size_t n, std::mt19937& rng) {
  std::vector<int> t(n);
  for (int& x : t) x = int(rng() % 300);
  return t;
}

// Greedy tokens of the request alone: a fresh engine, its prompt prefilled, then one token a step.
std::vector<int> alone_on_rings(const std::string& spec, const Request& r) {
  Engine e(ring_model(), parse_kv_spec(spec), {.threads = 2, .context = 512});
  const int s = e.add_sequence();
  std::vector<float> logits = e.prefill(s, r.prompt);
  std::vector<int> out;
  for (uint32_t i = 0; i < r.max_tokens; ++i) {
    out.push_back(int(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    if (i + 1 < r.max_tokens) logits = e.forward({{s, {out.back()}, false}});
  }
  return out;
}

std::map<uint64_t, std::vector<int>> drain_tokens(Scheduler& s) {
  std::map<uint64_t, std::vector<int>> out;
  for (int i = 0; i < 100000 && !s.idle(); ++i)
    for (const Event& ev : s.step())
      if (ev.token >= 0) out[ev.id].push_back(ev.token);
  EXPECT_TRUE(s.idle());
  return out;
}

TEST(SchedulerWindowRings, ChatsHitTheirTailsAndGiveColdTokens) {
  for (const char* spec : {"k3v2", "k3v2:sink=4:window=8"}) {
    SCOPED_TRACE(spec);
    Engine e(ring_model(), parse_kv_spec(spec), {.threads = 2, .context = 512, .max_seqs = 3, .max_chunk = 48, .prefix_tails = 6});
    ASSERT_GT(e.runner().ring_bytes(), 0u) << e.runner().describe();
    Scheduler s(e, [](int) { return false; }, {.max_num_seqs = 3, .max_batched_tokens = 48});
    ASSERT_TRUE(s.prefix_caching()) << s.prefix_caching_note();
    std::mt19937 rng(21);
    // Three chats of three turns, their turns sent together: each turn's prompt is the last one,
    // its answer and a new message.
    std::vector<std::vector<int>> conv = {ring_tokens(70, rng), ring_tokens(90, rng), ring_tokens(50, rng)};
    uint64_t hits = 0;
    for (int turn = 0; turn < 3; ++turn) {
      std::vector<Request> reqs;
      std::vector<uint64_t> ids(conv.size());
      for (const auto& c : conv) reqs.push_back(Request{c, {}, uint32_t(12 + 4 * turn), {}});
      // Sent in another order each turn: a chat's turn runs on another sequence id than its last
      // turn did, so its rings hold another chat's rows until the tail restores them.
      for (size_t k = 0; k < reqs.size(); ++k) {
        const size_t i = (k + size_t(turn)) % reqs.size();
        ids[i] = s.add(reqs[i]);
      }
      const auto got = drain_tokens(s);
      for (size_t i = 0; i < reqs.size(); ++i) {
        EXPECT_EQ(got.at(ids[i]), alone_on_rings(spec, reqs[i])) << "turn " << turn << " chat " << i;
        conv[i] = reqs[i].prompt;
        conv[i].insert(conv[i].end(), got.at(ids[i]).begin(), got.at(ids[i]).end());
        const std::vector<int> msg = ring_tokens(10, rng);
        conv[i].insert(conv[i].end(), msg.begin(), msg.end());
      }
      if (turn > 0) {
        EXPECT_GT(s.stats().prefix_hit_tokens, hits) << "turn " << turn << " hit nothing";
      }
      hits = s.stats().prefix_hit_tokens;
    }
    EXPECT_EQ(s.stats().pages_free, s.stats().pages_total) << "pages leaked";
  }
}

}  // namespace
}  // namespace tq::serve
