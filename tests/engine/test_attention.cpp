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
  KvShape shape{.layers = 2, .kv_heads = c.kv_heads, .head_dim = c.head_dim, .num_pages = 64, .max_chunk = 64};
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
                      Case{"k3v2:edge=1/k4v4", 64, 1, 3, 30, 5}, Case{"fp8", 64, 1, 2, 33, 3}));

}  // namespace
}  // namespace tq::cpu
