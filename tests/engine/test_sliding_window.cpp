// Sliding-window attention (attend_pages' sliding_window, Gemma 3's local layers): a query at p
// sees the positions t with p - t < window and nothing older, on every cache format, with the KV
// policy's side buffers, across the 512-position parts the positions are cut into.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "tq/backend/cpu/kv_store.h"
#include "tq/kv/block_manager.h"

namespace tq::cpu {
namespace {

constexpr uint32_t kD = 64, kH = 2, kQH = 6;

// One layer's cache holding a sequence of `len` random K/V rows; rows of positions < `redraw_before`
// come from a second generator seeded with `old_seed`, so that two stores differ only there.
struct Filled {
  KvShape shape;
  KvStore store;
  BlockManager blocks;
  int seq;
  Filled(const char* spec, uint32_t len, uint32_t redraw_before, uint32_t old_seed)
      : shape{.layers = 1, .kv_heads = kH, .head_dim = kD, .num_pages = len + 2, .max_chunk = 64},
        store(shape, parse_kv_spec(spec)),
        blocks(shape.num_pages, store.page_size()) {
    seq = blocks.add_sequence();
    store.add_sequence(seq);
    blocks.reserve({{seq, len}});
    std::mt19937 rng(5), old(old_seed);
    std::normal_distribution<float> n01;
    std::vector<float> k(size_t(kH) * kD), v(k.size());  // [kv_heads][head_dim]
    for (uint32_t t = 0; t < len; ++t) {
      for (size_t i = 0; i < k.size(); ++i) k[i] = n01(rng) * (i % kD == 3 ? 8.0f : 1.0f), v[i] = n01(rng);
      if (t < redraw_before)
        for (size_t i = 0; i < k.size(); ++i) k[i] = 3.0f * n01(old), v[i] = 10.0f * n01(old);
      store.write(0, SeqPages{seq, &blocks.block_table(seq)}, t, k.data(), v.data());
    }
  }
  // out [nq][q_heads][head_dim] of the queries at len - nq .. len - 1.
  std::vector<float> attend(const std::vector<float>& q, uint32_t len, uint32_t nq, uint32_t window, ThreadPool& pool) const {
    std::vector<float> out(q.size());
    store.attend(0, SeqPages{seq, &blocks.block_table(seq)}, len - nq, nq, kQH, q.data(), out.data(), pool, 0.0f, window);
    return out;
  }
};

std::vector<float> queries(uint32_t nq) {
  std::mt19937 rng(11);
  std::normal_distribution<float> n01;
  std::vector<float> q(size_t(nq) * kQH * kD);  // [nq][q_heads][head_dim]
  for (float& x : q) x = n01(rng) * 0.5f;
  return q;
}

// ip=local through the engine's store: the codecs of the model's sliding-window layers (KvShape's
// flags) store the unbiased norm, the others not, in the edge cache as in the main one.
TEST(SlidingWindow, UnbiasedNormOnTheSlidingLayersOnly) {
  KvShape shape{.layers = 6, .kv_heads = kH, .head_dim = kD, .num_pages = 4, .max_chunk = 8};
  shape.sliding = {true, false, true, true, false, true};
  for (const char* spec : {"k3v2:ip=local:edge=1/k4v4", "k3v2:ip:edge=1/k4v4", "k3v2:ip=local"}) {
    const bool local = std::string(spec).find("ip=local") != std::string::npos;
    for (const bool flags : {true, false}) {  // without flags the store's model has no sliding layers
      KvShape sh = shape;
      if (!flags) sh.sliding.clear();
      const KvStore store(sh, parse_kv_spec(spec));
      for (uint32_t l = 0; l < shape.layers; ++l) {
        uint32_t at = 0;
        const CacheFormat& f = store.cache_of(l, &at).format();
        const bool want = !local || (flags && shape.sliding[l]);
        EXPECT_EQ(f.k_codec(at, 1)->config().norm_unbiased, want) << spec << ", layer " << l;
        EXPECT_EQ(f.v_codec(at, 1)->config().norm_unbiased, want) << spec << ", layer " << l;
      }
    }
  }
}

// Keys and values older than every query's window are redrawn (other values, other scale): the
// outputs keep their bits. Without the window the same change moves them: the test can fail.
TEST(SlidingWindow, RowsBeforeTheWindowDoNotMatter) {
  for (const char* spec : {"fp32", "fp16", "k3v2", "k4v4:page=7", "k3v2:sink=4:window=16", "fp16:sink=2:window=100"})
    for (const auto& [len, nq, window] :
         {std::tuple{1100u, 1u, 8u}, std::tuple{1100u, 20u, 600u}, std::tuple{700u, 33u, 100u}, std::tuple{1100u, 40u, 513u}}) {
      const uint32_t before = len - nq + 1 - window;  // the first query's window starts here; later ones start later
      const Filled a(spec, len, before, 1), b(spec, len, before, 2);
      const std::vector<float> q = queries(nq);
      ThreadPool pool(2);
      const std::vector<float> oa = a.attend(q, len, nq, window, pool), ob = b.attend(q, len, nq, window, pool);
      for (size_t i = 0; i < oa.size(); ++i)
        ASSERT_EQ(oa[i], ob[i]) << spec << " len " << len << " nq " << nq << " window " << window << " element " << i;
      const std::vector<float> fa = a.attend(q, len, nq, 0, pool), fb = b.attend(q, len, nq, 0, pool);
      float moved = 0;
      for (size_t i = 0; i < fa.size(); ++i) moved = std::max(moved, std::abs(fa[i] - fb[i]));
      EXPECT_GT(moved, 1e-3f) << spec << ": without the window the old rows must count";
    }
}

// The window's rows alone, written as a fresh sequence at positions 0 .. window-1, give the same
// attention (RoPE is applied before the cache, so attention does not see absolute positions) up to
// float rounding: the window is neither shorter nor longer than `window` positions.
TEST(SlidingWindow, EqualsAttentionOverTheWindowAlone) {
  for (const char* spec : {"fp32", "k3v2"})
    for (const uint32_t window : {1u, 8u, 100u, 530u}) {
      const uint32_t len = 1100;
      const Filled full(spec, len, 0, 1);
      // the same rows from position len - window on, in a sequence of their own
      KvShape shape = full.shape;
      KvStore alone(shape, parse_kv_spec(spec));
      BlockManager blocks(shape.num_pages, alone.page_size());
      const int seq = blocks.add_sequence();
      alone.add_sequence(seq);
      blocks.reserve({{seq, window}});
      {
        std::mt19937 rng(5);
        std::normal_distribution<float> n01;
        std::vector<float> k(size_t(kH) * kD), v(k.size());
        for (uint32_t t = 0; t < len; ++t) {
          for (size_t i = 0; i < k.size(); ++i) k[i] = n01(rng) * (i % kD == 3 ? 8.0f : 1.0f), v[i] = n01(rng);
          if (t >= len - window) alone.write(0, SeqPages{seq, &blocks.block_table(seq)}, t - (len - window), k.data(), v.data());
        }
      }
      const std::vector<float> q = queries(1);
      ThreadPool pool(2);
      const std::vector<float> got = full.attend(q, len, 1, window, pool);
      std::vector<float> want(q.size());
      alone.attend(0, SeqPages{seq, &blocks.block_table(seq)}, window - 1, 1, kQH, q.data(), want.data(), pool);
      for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5f) << spec << " window " << window << " element " << i;
    }
}

// A window at least as long as the sequence is full causal attention, bit for bit.
TEST(SlidingWindow, AWindowBeyondTheSequenceIsFullAttention) {
  const uint32_t len = 600, nq = 20;
  const Filled f("k3v2:sink=4:window=16", len, 0, 1);
  const std::vector<float> q = queries(nq);
  ThreadPool pool(2);
  EXPECT_EQ(f.attend(q, len, nq, len, pool), f.attend(q, len, nq, 0, pool));
  EXPECT_EQ(f.attend(q, len, nq, 100000, pool), f.attend(q, len, nq, 0, pool));
}

}  // namespace
}  // namespace tq::cpu
