// Attention computed directly over the packed pages (KvStore::attend) against the double
// precision oracle over the dequantized cache (attention_reference), on the same cache contents.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "tq/kv/attention_ref.h"
#include "tq/backend/cpu/kv_store.h"
#include "tq/kv/block_manager.h"

namespace tq::cpu {
namespace {

struct Case {
  const char* spec;
  uint32_t head_dim, kv_heads, q_heads, len, nq;
};
std::ostream& operator<<(std::ostream& o, const Case& c) {
  return o << c.spec << " d" << c.head_dim << " h" << c.kv_heads << "/" << c.q_heads << " len" << c.len << " nq" << c.nq;
}

class PagedAttention : public ::testing::TestWithParam<Case> {};

// Tolerance: both sides see the same stored rows; the oracle sums in double, attend() in float
// (scores over <= 1024 coordinates, softmax over <= 100 positions, values un-rotated by a float
// rotation). Float relative error grows like n * 2^-24 ~ 1e-5 for these sizes; 2e-4 of the largest
// value element leaves margin while still catching any wrong row, position or weight (those move
// outputs by O(1) of the value scale).
TEST_P(PagedAttention, MatchesReferenceOverDequantizedCache) {
  const Case c = GetParam();
  const uint32_t pages = 2 * (c.len / parse_kv_spec(c.spec).format.page_size + 2);  // this sequence's and another's
  KvShape shape{.layers = 2, .kv_heads = c.kv_heads, .head_dim = c.head_dim, .num_pages = pages, .max_chunk = 64};
  KvStore store(shape, parse_kv_spec(c.spec));
  std::mt19937 rng(42);
  std::normal_distribution<float> n01;
  // Hostile data: a few outlier channels in K (as real keys have), one zero token.
  const size_t row = size_t(c.kv_heads) * c.head_dim;
  BlockManager blocks(shape.num_pages, store.page_size());
  const int other = blocks.add_sequence(), seq = blocks.add_sequence();
  store.add_sequence(other);
  store.add_sequence(seq);
  const SeqPages s{seq, &blocks.block_table(seq)};
  float vmax = 0;
  for (uint32_t t = 0; t < c.len; ++t) {
    blocks.reserve({{other, 1}});  // interleave pages of another sequence: the block table is not contiguous
    blocks.reserve({{seq, 1}});
    std::vector<float> k(row), v(row);
    for (size_t i = 0; i < row; ++i) {
      k[i] = n01(rng) * (i % c.head_dim == 3 ? 20.0f : 1.0f) + (i % c.head_dim == 7 ? 5.0f : 0.0f);
      v[i] = t == 5 ? 0.0f : n01(rng);
      vmax = std::max(vmax, std::abs(v[i]));
    }
    store.write(1, s, t, k.data(), v.data());
  }
  std::vector<float> q(size_t(c.nq) * c.q_heads * c.head_dim), out(q.size()), ref(q.size());
  for (float& x : q) x = n01(rng) * 0.5f;
  ThreadPool pool(2);
  store.attend(1, s, c.len - c.nq, c.nq, c.q_heads, q.data(), out.data(), pool);

  uint32_t local = 0;
  const PagedKvCache& cache = store.cache_of(1, &local);
  const int32_t seq_len = int32_t(c.len);
  AttentionBatch b;
  b.q = q.data();
  b.out = ref.data();
  b.block_tables = s.block_table->data();
  b.seq_lens = &seq_len;
  b.num_q_tokens = c.nq;
  b.q_heads = c.q_heads;
  b.max_pages = uint32_t(s.block_table->size());
  attention_reference(cache, local, b);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 2e-4f * vmax) << "element " << i;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, PagedAttention,
    ::testing::Values(Case{"fp32", 64, 2, 6, 37, 1}, Case{"fp16", 64, 2, 6, 37, 13}, Case{"k3v2", 64, 3, 9, 50, 1},
                      Case{"k3v2", 64, 3, 9, 50, 17}, Case{"k4v4:page=1", 128, 1, 2, 20, 4}, Case{"k3v2:prod", 64, 1, 4, 41, 2},
                      Case{"k2v2:nc:page=7", 80, 2, 4, 54, 9}, Case{"k4v3:rot=dense", 32, 1, 1, 97, 1},
                      Case{"k3v2:edge=1/k4v4", 64, 1, 3, 30, 5}, Case{"fp8", 64, 1, 2, 33, 3}, Case{"bf16", 80, 2, 10, 45, 7},
                      Case{"fp32:sink=2:window=8", 24, 1, 3, 40, 6},
                      // beyond one part of 512 positions: a decode merges 3 parts; a block of
                      // queries straddles the cut at 512 (page=7: parts of 518)
                      Case{"fp16", 64, 2, 6, 1100, 1}, Case{"k3v2", 64, 3, 9, 1100, 1}, Case{"k3v2", 64, 3, 9, 540, 40},
                      Case{"k2v2:nc:page=7", 80, 2, 4, 530, 25}, Case{"fp16:sink=4:window=16", 64, 1, 3, 700, 20},
                      // fractional widths (the outlier split): two norms and rotations per row
                      Case{"k2.5v2.5", 64, 3, 9, 50, 1}, Case{"k3.5v2.5", 64, 3, 9, 50, 17}, Case{"k2.5v2:nc:page=7", 80, 2, 4, 54, 9},
                      Case{"k4.5v3.5:rot=dense", 96, 1, 2, 40, 3}, Case{"k3v2:edge=1/k3.5v3.5", 64, 1, 3, 30, 5},
                      Case{"k2v1.5", 24, 1, 3, 40, 6}, Case{"k2.5v2.5", 128, 1, 2, 540, 40},
                      // trellis-coded rows: levels through a window of branch bits
                      Case{"k3tv2t", 64, 3, 9, 50, 1}, Case{"k4tv3t:ip:page=7", 80, 2, 4, 54, 9}, Case{"k3v2t:edge=1/k4tv4t", 64, 1, 3, 30, 5},
                      Case{"k2tv2t", 128, 1, 2, 540, 40}));

// A query's output is the same bits whatever else its step carries (a one-token decode, a
// verification of drafts, a prompt chunk) and on any thread count: what makes speculative decoding
// exact on the CPU. Positions beyond one part, so that parts merge.
TEST(PagedAttention, AQueryGivesTheSameBitsInAnyStep) {
  for (const char* spec : {"fp16", "k3v2", "k3v2:sink=4:window=16", "k2.5v2.5", "k3tv2t"}) {
    const uint32_t len = 1200, D = 64, H = 2, QH = 6;
    KvShape shape{.layers = 1, .kv_heads = H, .head_dim = D, .num_pages = len / 16 + 2, .max_chunk = 64};
    KvStore store(shape, parse_kv_spec(spec));
    BlockManager blocks(shape.num_pages, store.page_size());
    const int seq = blocks.add_sequence();
    store.add_sequence(seq);
    blocks.reserve({{seq, len}});
    const SeqPages s{seq, &blocks.block_table(seq)};
    std::mt19937 rng(7);
    std::normal_distribution<float> n01;
    std::vector<float> k(size_t(H) * D), v(k.size());
    for (uint32_t t = 0; t < len; ++t) {
      for (size_t i = 0; i < k.size(); ++i) k[i] = n01(rng), v[i] = n01(rng);
      store.write(0, s, t, k.data(), v.data());
    }
    // 40 tokens ending at len - 1: 6 (KV head, block) pairs, a task each; 9 tokens: 2 pairs, every
    // part a task; 1 token: 2 pairs, every part a task, on 1 and 2 threads.
    const uint32_t n = 40, row = QH * D;
    std::vector<float> q(size_t(n) * row);
    for (float& x : q) x = n01(rng);
    ThreadPool one(1), two(2);
    std::vector<float> chunk(q.size()), block(size_t(9) * row), alone(row), alone1(row);
    store.attend(0, s, len - n, n, QH, q.data(), chunk.data(), two);
    store.attend(0, s, len - 9, 9, QH, &q[size_t(n - 9) * row], block.data(), two);
    for (uint32_t j = 0; j < 9; ++j) {
      const float* qj = &q[size_t(n - 9 + j) * row];
      store.attend(0, s, len - 9 + j, 1, QH, qj, alone.data(), two);
      store.attend(0, s, len - 9 + j, 1, QH, qj, alone1.data(), one);
      for (size_t i = 0; i < row; ++i) {
        ASSERT_EQ(alone[i], block[size_t(j) * row + i]) << spec << " token " << j << " element " << i << " (9-token step)";
        ASSERT_EQ(alone[i], chunk[size_t(n - 9 + j) * row + i]) << spec << " token " << j << " element " << i << " (40-token step)";
        ASSERT_EQ(alone1[i], alone[i]) << spec << " token " << j << " element " << i << " (1 thread against 2)";
      }
    }
  }
}

// Fractional widths: calibrate() gives each (layer, KV head) the channels of largest mean square
// over the first rows it sees (position 0 left out), once; other layers keep channels 0..n-1.
TEST(PagedAttention, CalibrateTakesTheLargestChannels) {
  const uint32_t D = 64, H = 2, n = 10;
  KvShape shape{.layers = 3, .kv_heads = H, .head_dim = D, .num_pages = 4, .max_chunk = 64};
  KvStore store(shape, parse_kv_spec("k2.5v3.5:edge=1/k3v3"));
  std::mt19937 rng(3);
  std::normal_distribution<float> n01;
  std::vector<float> k(size_t(n) * H * D), v(k.size());
  std::vector<uint32_t> pos(n);
  for (uint32_t r = 0; r < n; ++r) {
    pos[r] = r;
    for (uint32_t h = 0; h < H; ++h)
      for (uint32_t i = 0; i < D; ++i) {
        // head h: K channels 10..41 (+ h) large from position 1 on; position 0 large in 0..31 (a sink)
        const bool big = r == 0 ? i < 32 : i >= 10 + h && i < 42 + h;
        k[(r * H + h) * D + i] = n01(rng) * (big ? 50.0f : 1.0f);
        v[(r * H + h) * D + i] = n01(rng) * (i % 2 ? 10.0f : 1.0f);  // V: the odd channels
      }
  }
  store.calibrate(1, n, pos.data(), k.data(), v.data());
  uint32_t local = 0;
  const PagedKvCache& cache = store.cache_of(1, &local);
  for (uint32_t h = 0; h < H; ++h) {
    const TurboQuant* kc = cache.format().k_codec(local, h);
    const TurboQuant* vc = cache.format().v_codec(local, h);
    for (uint32_t i = 0; i < 32; ++i) {
      EXPECT_EQ(kc->channel(i), 10 + h + i) << "head " << h;
      EXPECT_EQ(vc->channel(i), 2 * i + 1) << "head " << h;
    }
  }
  // Once only: a second call with other rows changes nothing.
  std::vector<float> k2(k.size(), 1.0f);
  store.calibrate(1, n, pos.data(), k2.data(), v.data());
  EXPECT_EQ(store.cache_of(1, &local).format().k_codec(local, 0)->channel(0), 10u);
  // Edge layers here are whole widths: calibrating them is a no-op. Layer 1 never calibrated
  // before a write keeps the default channels.
  store.calibrate(0, n, pos.data(), k.data(), v.data());
  KvStore other(shape, parse_kv_spec("k2.5v2"));
  BlockManager blocks(shape.num_pages, other.page_size());
  const int seq = blocks.add_sequence();
  other.add_sequence(seq);
  blocks.reserve({{seq, 1}});
  other.write(1, SeqPages{seq, &blocks.block_table(seq)}, 0, k.data(), v.data());
  other.calibrate(1, n, pos.data(), k.data(), v.data());
  EXPECT_EQ(other.cache_of(1, &local).format().k_codec(local, 0)->channel(0), 0u);
  // outliers=fixed: never calibrated.
  KvStore fixed(shape, parse_kv_spec("k2.5v2:outliers=fixed"));
  fixed.calibrate(1, n, pos.data(), k.data(), v.data());
  EXPECT_EQ(fixed.cache_of(1, &local).format().k_codec(local, 1)->channel(0), 0u);
}

// The oracle read any scale <= 0 (NaN too) as the default 1/sqrt(d): a caller's NaN became a
// plausible answer. Now only 0 means the default, and the rest is refused by value.
TEST(PagedAttention, TheOracleRefusesAScaleThatIsNotPositiveAndFinite) {
  PagedKvCache cache(CacheShape{1, 1, 32, 2}, parse_kv_spec("fp32").format);
  std::vector<float> q(32, 0.5f), out(32), row(32, 1.0f);
  cache.write(0, 0, row.data(), row.data());
  const int32_t len = 1, page = 0;
  AttentionBatch b;
  b.q = q.data(), b.out = out.data(), b.block_tables = &page, b.seq_lens = &len;
  for (const float bad : {std::nanf(""), -1.0f, INFINITY, -0.5f}) {
    b.scale = bad;
    try {
      attention_reference(cache, 0, b);
      ADD_FAILURE() << "scale " << bad << " was not refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("attention scale"), std::string::npos) << e.what();
    }
  }
  b.scale = 0;
  attention_reference(cache, 0, b);
  EXPECT_FLOAT_EQ(out[0], 1.0f);  // one position: its value row
}

}  // namespace
}  // namespace tq::cpu
