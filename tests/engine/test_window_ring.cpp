// Window rings (kv/window_ring.h): a model's sliding-window layers keep only the pages their
// queries can still see, in a ring per sequence. The logits must be the same bits as with every
// position kept in the pool (swa_full), through chunked prefill, decode, several sequences at once,
// rollbacks and prefix-cache hits, and the memory must be what the ring says.
#include <gtest/gtest.h>

#include <random>

#include "model/tiny_models.h"
#include "tq/engine/engine.h"
#include "tq/kv/window_ring.h"

namespace tq::engine {
namespace {

// Gemma 3's layout, small: a window of 16 that the prompts outgrow many times over.
model::Model gemma3() { return model::testing::small_gemma3(256); }

std::vector<int> tokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int> t(n);
  for (int& x : t) x = int(rng() % 300);
  return t;
}

EngineOptions options(bool swa_full, uint32_t max_seqs = 3, uint32_t tails = 0) {
  return {.context = 256, .max_seqs = max_seqs, .max_chunk = 24, .prefix_tails = tails, .swa_full = swa_full};
}

// Two sequences: one prefilled in chunks then decoded, the other decoded beside it in shared steps;
// every logit of both.
std::vector<float> run(const model::Model& m, const KvSpec& spec, bool swa_full) {
  Engine e(m, spec, options(swa_full));
  EXPECT_EQ(e.runner().ring_bytes() > 0, !swa_full);  // the rings are what the comparison is about
  const std::vector<int> a = tokens(150, 1), b = tokens(90, 2);
  const int sa = e.add_sequence(), sb = e.add_sequence();
  std::vector<float> out = e.prefill(sa, std::vector<int>(a.begin(), a.begin() + 100), true);
  const std::vector<float> pb = e.prefill(sb, std::vector<int>(b.begin(), b.begin() + 40), true);
  out.insert(out.end(), pb.begin(), pb.end());
  for (size_t i = 0; i < 50; ++i) {
    const std::vector<float> l = e.forward({{sa, {a[100 + i]}, false}, {sb, {b[40 + i]}, false}});
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

TEST(WindowRing, PagesHoldTheWindowAChunkAndARollback) {
  // window 16 + a chunk of 24 - 1 = 39 positions at once: 3 pages of 16 when aligned, 4 at worst.
  EXPECT_EQ(WindowRing::make(16, 256, 24, 16, false).pages, 4u);
  EXPECT_EQ(WindowRing::make(16, 256, 24, 16, true).pages, 5u);  // tails: a page more
  EXPECT_EQ(WindowRing::make(1, 256, 1, 16, false).pages, 1u);
  // Steps beyond kRingStep are attended in sub-steps of it: the ring does not grow with the chunk.
  EXPECT_EQ(WindowRing::make(1024, 32768, 512, 16, false).pages, 81u);
  EXPECT_EQ(WindowRing::make(1024, 32768, 2048, 16, false).pages, 81u);
  EXPECT_EQ(WindowRing::make(1024, 32768, 2048, 16, false).step, kRingStep);
  EXPECT_FALSE(WindowRing::make(16, 48, 24, 16, false).on());  // no smaller than the context's 3 pages
  EXPECT_FALSE(WindowRing::make(0, 256, 24, 16, false).on());
  const WindowRing r = WindowRing::make(16, 256, 24, 16, false);
  EXPECT_EQ(r.page(2, 5 * 16 + 3), 2 * 4 + 1);
  EXPECT_EQ(r.slot(2, 5 * 16 + 3), int64_t(9) * 16 + 3);
  EXPECT_TRUE(r.holds(100, 76));
  EXPECT_FALSE(r.holds(100, 75));  // taken back 25 positions, beyond a chunk
  EXPECT_TRUE(r.holds(100, 0));    // from the start: nothing older is read
  // A tail at 64 needs positions 49..63: pages 3..(written-1)/16 must fit the 4 ring pages.
  EXPECT_TRUE(r.holds_tail(100, 64, 16));
  EXPECT_FALSE(r.holds_tail(113, 64, 16));
  EXPECT_FALSE(r.holds_tail(60, 64, 16));
}

// Every format the rings hold, with the policy's side buffers and edge layers: the same bits.
TEST(WindowRing, LogitsAreTheBitsOfEveryPositionKept) {
  const model::Model m = gemma3();
  for (const char* text : {"fp16", "k3v2", "k4v4:centre", "k3v2:sink=4:window=8:edge=1/k4v4", "fp8"}) {
    const KvSpec spec = parse_kv_spec(text);
    const std::vector<float> ring = run(m, spec, false), full = run(m, spec, true);
    ASSERT_EQ(ring.size(), full.size()) << text;
    size_t differ = 0;
    for (size_t i = 0; i < ring.size(); ++i) differ += ring[i] != full[i];
    EXPECT_EQ(differ, 0u) << text << ": logits that differ from swa_full's";
  }
}

// Prompt chunks longer than kRingStep: the sliding-window layers write and attend them in
// sub-steps, with the same bits as the whole chunk over every position kept.
TEST(WindowRing, LongChunksAreAttendedInSubSteps) {
  const model::Model m = gemma3();
  const std::vector<int> t = tokens(420, 7);
  for (const char* text : {"k3v2", "fp16:sink=4:window=8"}) {
    std::vector<float> out[2];
    for (const bool swa_full : {false, true}) {
      Engine e(m, parse_kv_spec(text), {.context = 512, .max_chunk = 320, .swa_full = swa_full});
      EXPECT_EQ(e.runner().ring_bytes() > 0, !swa_full);
      const int s = e.add_sequence();
      out[swa_full] = e.prefill(s, std::vector<int>(t.begin(), t.begin() + 400), true);  // chunks of 320 and 80
      const std::vector<float> l = e.forward({{s, std::vector<int>(t.begin() + 400, t.end()), false}});
      out[swa_full].insert(out[swa_full].end(), l.begin(), l.end());
    }
    EXPECT_EQ(out[0], out[1]) << text;
  }
}

TEST(WindowRing, MemoryIsTheRingsNotTheContext) {
  const model::Model m = gemma3();
  Engine ring(m, parse_kv_spec("k3v2"), options(false)), full(m, parse_kv_spec("k3v2"), options(true));
  // One global layer of six in the pool, five in rings of 4 pages.
  EXPECT_EQ(ring.runner().page_bytes() * 6, full.runner().page_bytes());
  EXPECT_EQ(ring.runner().ring_page_bytes() * 6, full.runner().page_bytes() * 5);
  EXPECT_EQ(ring.runner().ring_bytes(), ring.runner().ring_page_bytes() * 4);
  EXPECT_EQ(full.runner().ring_bytes(), 0u);
  EXPECT_DOUBLE_EQ(ring.bits_per_element(), full.bits_per_element());
  const std::vector<int> t = tokens(200, 3);
  const int a = ring.add_sequence(), b = full.add_sequence();
  ring.prefill(a, t);
  full.prefill(b, t);
  // 200 positions: 13 pages of every layer kept, or 13 of the global one and the rings' 4.
  EXPECT_EQ(full.kv_bytes(b), 13 * full.runner().page_bytes());
  EXPECT_EQ(ring.kv_bytes(a), 13 * ring.runner().page_bytes() + 4 * ring.runner().ring_page_bytes());
  EXPECT_LT(ring.kv_bytes(a) * 2, full.kv_bytes(b));
}

// Drafts taken back (speculative decoding's rollback) within a chunk: the same bits as a run that
// never wrote them. Further back than the ring keeps: refused by name, the sequence unchanged.
TEST(WindowRing, RollbacksWithinAChunkKeepTheBitsFurtherAreRefused) {
  const model::Model m = gemma3();
  const std::vector<int> t = tokens(140, 4), junk = tokens(24, 5);
  for (const char* text : {"k3v2", "fp16:sink=4:window=8"}) {
    const KvSpec spec = parse_kv_spec(text);
    Engine clean(m, spec, options(false)), rolled(m, spec, options(false));
    const int c = clean.add_sequence(), r = rolled.add_sequence();
    clean.prefill(c, std::vector<int>(t.begin(), t.begin() + 100));
    rolled.prefill(r, std::vector<int>(t.begin(), t.begin() + 100));
    rolled.forward({{r, junk, false}});  // 24 positions written, then taken back
    rolled.truncate(r, 100);
    const std::vector<int> rest(t.begin() + 100, t.end());
    EXPECT_EQ(clean.prefill(c, rest, true), rolled.prefill(r, rest, true)) << text;
    // Now at 140: a step written to 164 and taken back to 139 has lost rows position 139 reads.
    rolled.forward({{r, junk, false}});
    rolled.truncate(r, 139);
    try {
      rolled.forward({{r, {t[139]}, false}});
      ADD_FAILURE() << text << ": a sequence taken back 25 positions ran";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("further than the 24 positions its"), std::string::npos) << e.what();  // the side ring or the window ring
    }
    EXPECT_EQ(rolled.seq_len(r), 139u);
    rolled.reset_sequence(r);  // from the start again: nothing older is read
    EXPECT_NO_THROW(rolled.prefill(r, std::vector<int>(t.begin(), t.begin() + 30)));
  }
}

// A refusal in a step of several sequences changes none of them: a sequence beside the refused
// one, whose step is longer than a sub-step, runs the same step afterwards as if nothing happened.
TEST(WindowRing, ARefusalInAStepChangesNoOtherSequence) {
  const model::Model m = gemma3();
  const std::vector<int> t = tokens(400, 8);
  const EngineOptions o{.context = 512, .max_seqs = 2, .max_chunk = 320};
  Engine e(m, parse_kv_spec("k3v2"), o), clean(m, parse_kv_spec("k3v2"), o);
  const int a = e.add_sequence(), b = e.add_sequence(), c = clean.add_sequence();
  e.prefill(a, std::vector<int>(t.begin(), t.begin() + 30));
  clean.prefill(c, std::vector<int>(t.begin(), t.begin() + 30));
  e.prefill(b, std::vector<int>(t.begin(), t.begin() + 300));
  e.truncate(b, 40);  // 260 positions back: beyond the 256 of a sub-step
  const std::vector<int> next(t.begin() + 30, t.begin() + 300);  // 270 tokens: written in two sub-steps
  EXPECT_THROW(e.forward({{a, next, false}, {b, {t[40]}, false}}), Error);
  EXPECT_EQ(e.seq_len(a), 30u);
  std::vector<float> got, want;
  EXPECT_NO_THROW(got = e.forward({{a, next, false}}));
  want = clean.forward({{c, next, false}});
  EXPECT_EQ(got, want);
}

// A prefix-cache hit restores the rings from the tail: the same logits as a cold run.
TEST(WindowRing, PrefixHitsRestoreTheRingsFromTheirTail) {
  const model::Model m = gemma3();
  const std::vector<int> prompt = tokens(120, 6);
  for (const char* text : {"k3v2", "k3v2:sink=4:window=8"}) {
    const KvSpec spec = parse_kv_spec(text);
    Engine cold(m, spec, options(false, 3, 2)), warm(m, spec, options(false, 3, 2));
    Engine none(m, spec, options(false, 3, 0));
    const std::string why = none.enable_prefix_cache();  // nothing to keep the rings (and side rows) in
    EXPECT_NE(why.find(spec.policy.window ? "side buffers" : "window rings"), std::string::npos) << why;
    ASSERT_EQ(warm.enable_prefix_cache(), "") << text;
    const int first = warm.add_sequence();
    warm.prefill(first, std::vector<int>(prompt.begin(), prompt.begin() + 100));
    EXPECT_TRUE(warm.cache_prefix(first, prompt)) << text;  // a tail at 96
    const int hit = warm.add_sequence(prompt, 119);  // another sequence id: its ring is restored, not left over
    ASSERT_NE(hit, first);
    ASSERT_EQ(warm.seq_len(hit), 96u) << text;
    const int c = cold.add_sequence();
    const std::vector<int> rest(prompt.begin() + 96, prompt.end());
    cold.prefill(c, std::vector<int>(prompt.begin(), prompt.begin() + 96));
    EXPECT_EQ(cold.prefill(c, rest, true), warm.prefill(hit, rest, true)) << text;
    // The restored ring holds the rows a step from 96 on reads, not older ones: a step from before
    // the restored start is refused (the saver's later pages may sit in those slots).
    const int again = warm.add_sequence(prompt, 119);
    ASSERT_EQ(warm.seq_len(again), 96u);
    warm.truncate(again, 80);
    EXPECT_THROW(warm.forward({{again, {prompt[80]}, false}}), Error) << text;
  }
}

TEST(WindowRing, SequencesBeyondMaxSeqsAreRefusedByName) {
  const model::Model m = gemma3();
  Engine e(m, parse_kv_spec("k3v2"), options(false, 1));
  e.add_sequence();
  try {
    e.add_sequence();
    ADD_FAILURE() << "a second sequence got a ring of a store built for one";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence id 1 has no window ring"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tq::engine
