// The block manager: block tables over one page pool, all-or-nothing reservations, rollback.
#include <gtest/gtest.h>

#include "tq/common.h"
#include "tq/kv/block_manager.h"

namespace tq {
namespace {

TEST(BlockManager, BlockTablesFollowPositions) {
  BlockManager b(8, 4);
  const int s = b.add_sequence(), t = b.add_sequence();
  b.reserve({{s, 3}, {t, 5}});
  EXPECT_EQ(b.len(s), 3u);
  EXPECT_EQ(b.len(t), 5u);
  EXPECT_EQ(b.block_table(s).size(), 1u);
  EXPECT_EQ(b.block_table(t).size(), 2u);
  b.reserve({{s, 2}});  // crosses into a second page, taken after t's
  ASSERT_EQ(b.block_table(s).size(), 2u);
  EXPECT_EQ(b.slot(s, 4), int64_t(b.block_table(s)[1]) * 4 + 0);
  EXPECT_EQ(b.slot(s, 2), int64_t(b.block_table(s)[0]) * 4 + 2);
  EXPECT_THROW(b.slot(s, 5), Error);
  EXPECT_EQ(b.pages_needed(s, 3), 0u);
  EXPECT_EQ(b.pages_needed(s, 4), 1u);
  EXPECT_EQ(b.allocator().free_pages(), 4u);
}

TEST(BlockManager, ReservationsAreAllOrNothing) {
  BlockManager b(3, 2);
  const int s = b.add_sequence(), t = b.add_sequence();
  b.reserve({{s, 3}});  // 2 pages
  try {
    b.reserve({{t, 1}, {s, 2}});  // t needs 1 page, s 1 more: 2 > 1 free
    FAIL() << "the pool had one page";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs 2 more pages, 1 of 3 are free"), std::string::npos) << e.what();
  }
  EXPECT_EQ(b.len(t), 0u);  // nothing changed
  EXPECT_EQ(b.len(s), 3u);
  EXPECT_EQ(b.allocator().free_pages(), 1u);
  EXPECT_THROW(b.reserve({{t, 1}, {t, 1}}), Error);  // one sequence twice
  EXPECT_THROW(b.reserve({{7, 1}}), Error);          // no such sequence
}

TEST(BlockManager, TruncateGivesPagesBackAndIdsAreReused) {
  BlockManager b(4, 4);
  const int s = b.add_sequence();
  b.reserve({{s, 10}});  // 3 pages
  b.truncate(s, 5);      // keeps 2
  EXPECT_EQ(b.len(s), 5u);
  EXPECT_EQ(b.block_table(s).size(), 2u);
  EXPECT_EQ(b.allocator().free_pages(), 2u);
  EXPECT_THROW(b.truncate(s, 6), Error);
  b.truncate(s, 4);  // a page boundary: the second page goes back
  EXPECT_EQ(b.block_table(s).size(), 1u);
  b.remove(s);
  EXPECT_EQ(b.allocator().free_pages(), 4u);
  EXPECT_FALSE(b.contains(s));
  EXPECT_THROW(b.len(s), Error);
  EXPECT_EQ(b.add_sequence(), s);
}

// Prefix caching: full pages are found again by their tokens and the salt, partial pages never;
// a different token anywhere before a page (or another salt) misses it; shared pages are held
// by both sequences and come back to the pool as cached pages when both are gone.
TEST(BlockManager, PrefixCacheMatchesFullPagesOfEqualPrefixes) {
  BlockManager b(8, 4);
  b.enable_prefix_cache(42);
  const std::vector<int> t = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const int s = b.add_sequence();
  b.reserve({{s, 10}});
  b.cache_full_pages(s, t);
  EXPECT_EQ(b.cached_pages(), 2u);  // positions 0..7; 8..9 are a partial page
  EXPECT_EQ(b.match_prefix(t, 10), (std::vector<int32_t>{b.block_table(s)[0], b.block_table(s)[1]}));
  EXPECT_EQ(b.match_prefix(t, 7).size(), 1u);  // the limit cuts the second page
  std::vector<int> other = t;
  other[1] = 99;
  EXPECT_TRUE(b.match_prefix(other, 10).empty());  // the first page differs, so the second's prefix does too
  other = t;
  other[6] = 99;
  EXPECT_EQ(b.match_prefix(other, 10).size(), 1u);

  const int u = b.add_sequence(t, 9);
  EXPECT_EQ(b.len(u), 8u);
  EXPECT_EQ(b.block_table(u), (std::vector<int32_t>{b.block_table(s)[0], b.block_table(s)[1]}));
  EXPECT_EQ(b.allocator().refcount(b.block_table(s)[0]), 2u);
  b.reserve({{u, 1}});  // position 8 goes to a page of u's own
  EXPECT_NE(b.block_table(u)[2], b.block_table(s)[2]);
  EXPECT_THROW(b.truncate(u, 6), Error);  // would write into a page s shares

  b.remove(s);
  b.remove(u);
  EXPECT_EQ(b.allocator().free_pages(), 8u);
  EXPECT_EQ(b.allocator().cached_free_pages(), 2u);
  const int v = b.add_sequence(t, 10);  // revives the cached pages
  EXPECT_EQ(b.len(v), 8u);
  EXPECT_EQ(b.allocator().cached_free_pages(), 0u);
  b.remove(v);

  BlockManager salted(8, 4);
  salted.enable_prefix_cache(43);
  EXPECT_TRUE(salted.match_prefix(t, 10).empty());
}

// Allocation evicts unreferenced cached pages (their entries go) once the free list is empty.
TEST(BlockManager, PrefixCacheEvictionDropsEntries) {
  BlockManager b(3, 2);
  b.enable_prefix_cache(1);
  const std::vector<int> t = {1, 2, 3, 4, 5, 6};
  const int s = b.add_sequence();
  b.reserve({{s, 6}});
  b.cache_full_pages(s, t);
  EXPECT_EQ(b.cached_pages(), 3u);
  b.remove(s);
  const int u = b.add_sequence();
  b.reserve({{u, 2}});  // evicts the page released first: the last one of t
  EXPECT_EQ(b.cached_pages(), 2u);
  EXPECT_EQ(b.match_prefix(t, 6).size(), 2u);
  b.reserve({{u, 4}});
  EXPECT_EQ(b.cached_pages(), 0u);
  EXPECT_TRUE(b.match_prefix(t, 6).empty());
}

// Tails: with tail slots, a match ends at the last matched page that has one; slots are reused
// least recently used first (attaching or hitting counts as a use); a page leaving the cache, by
// eviction or a truncation into it, frees its slot.
TEST(BlockManager, PrefixTailsEndMatchesAndAreReusedAndFreed) {
  BlockManager b(6, 2);
  b.enable_prefix_cache(7, 2);
  EXPECT_TRUE(b.needs_tails());
  const std::vector<int> t = {1, 2, 3, 4, 5, 6, 7};
  const int s = b.add_sequence();
  b.reserve({{s, 7}});
  EXPECT_EQ(b.attach_tail(s, t, 4), -1);  // not cached yet
  b.cache_full_pages(s, t);
  EXPECT_TRUE(b.match_prefix(t, 7).empty());  // three cached pages, no tail
  const int32_t a = b.attach_tail(s, t, 4);
  EXPECT_GE(a, 0);
  EXPECT_EQ(b.attach_tail(s, t, 4), -1);  // it has one
  EXPECT_EQ(b.tail_of(b.block_table(s)[1]), a);
  EXPECT_EQ(b.match_prefix(t, 7).size(), 2u);
  const int32_t c = b.attach_tail(s, t, 6);
  EXPECT_EQ(b.match_prefix(t, 7).size(), 3u);
  EXPECT_EQ(b.match_prefix(t, 5).size(), 2u);  // the limit cuts page 2: back to the tail at 4
  EXPECT_EQ(b.tails_used(), 2u);
  EXPECT_THROW(b.attach_tail(s, t, 5), Error);    // not a page boundary
  // A hit on the tail at 4 makes the one at 6 the least recently used: a third tail takes its slot.
  const int u = b.add_sequence(t, 5);
  EXPECT_EQ(b.len(u), 4u);
  std::vector<int> t2 = t;
  t2.resize(6);
  t2[5] = 9;
  b.reserve({{u, 2}});
  b.cache_full_pages(u, t2);
  EXPECT_EQ(b.attach_tail(u, t2, 6), c);
  EXPECT_EQ(b.match_prefix(t, 7).size(), 2u);   // page 2 of t lost its tail
  EXPECT_EQ(b.match_prefix(t2, 6).size(), 3u);
  b.detach_tail(c);
  EXPECT_EQ(b.match_prefix(t2, 6).size(), 2u);
  EXPECT_EQ(b.tails_used(), 1u);
  // Truncating into a cached page uncaches it and frees its tail.
  b.remove(u);
  b.truncate(s, 3);
  EXPECT_EQ(b.tail_of(b.block_table(s)[1]), -1);
  EXPECT_EQ(b.tails_used(), 0u);
  EXPECT_TRUE(b.match_prefix(t, 7).empty());
  b.remove(s);
  EXPECT_EQ(b.allocator().free_pages(), 6u);
}

// A sequence that matched cached pages without a tail computes its own copy of them (private:
// the cache keeps the first); its tail goes to the cached page for those tokens, where later
// matches find it. match_prefix says how far the tokens matched before the cut to a tail.
TEST(BlockManager, PrefixTailsOfAPrivateCopyGoToTheCachedPage) {
  BlockManager b(8, 2);
  b.enable_prefix_cache(7, 2);
  const std::vector<int> t = {1, 2, 3, 4, 5, 6, 7};
  const int s = b.add_sequence();
  b.reserve({{s, 7}});
  b.cache_full_pages(s, t);
  uint32_t matched = 0;
  EXPECT_TRUE(b.match_prefix(t, 7, &matched).empty());
  EXPECT_EQ(matched, 3u);  // three pages match, none with a tail
  const int u = b.add_sequence();
  b.reserve({{u, 4}});
  b.cache_full_pages(u, t);  // its pages stay private copies
  EXPECT_EQ(b.cached_pages(), 3u);
  const int32_t slot = b.attach_tail(u, t, 4);
  EXPECT_GE(slot, 0);
  EXPECT_EQ(b.tail_of(b.block_table(s)[1]), slot);
  EXPECT_EQ(b.tail_of(b.block_table(u)[1]), -1);
  const std::vector<int32_t> hit = b.match_prefix(t, 7, &matched);
  EXPECT_EQ(matched, 3u);
  ASSERT_EQ(hit.size(), 2u);
  EXPECT_EQ(hit[1], b.block_table(s)[1]);
  EXPECT_EQ(b.attach_tail(u, t, 4), -1);  // it has one now
  // Pages that end without a tail are refused before anything is held.
  const uint32_t free = b.allocator().free_pages();
  const std::vector<int32_t> untailed(b.block_table(s).begin(), b.block_table(s).begin() + 3);
  EXPECT_THROW(b.add_cached_sequence(untailed), Error);
  EXPECT_EQ(b.allocator().free_pages(), free);
  EXPECT_EQ(b.allocator().refcount(untailed[0]), 1u);  // s alone
  b.remove(u);
  b.remove(s);
  EXPECT_EQ(b.allocator().free_pages(), 8u);
}

// Eviction of a page with a tail frees the slot.
TEST(BlockManager, PrefixTailsGoWithEvictedPages) {
  BlockManager b(2, 2);
  b.enable_prefix_cache(7, 1);
  const std::vector<int> t = {1, 2, 3, 4};
  const int s = b.add_sequence();
  b.reserve({{s, 4}});
  b.cache_full_pages(s, t);
  EXPECT_GE(b.attach_tail(s, t, 4), 0);
  b.remove(s);
  EXPECT_EQ(b.match_prefix(t, 4).size(), 2u);
  const int u = b.add_sequence();
  b.reserve({{u, 2}});  // evicts t's last page, the one with the tail
  EXPECT_EQ(b.tails_used(), 0u);
  EXPECT_TRUE(b.match_prefix(t, 4).empty());
  b.remove(u);
}

// Hash collisions (64 bits, found by inverting the mixer with salt 0): page {1, 2} and page
// {-1814316136, 113800797} chain to the same hash. A sequence whose first page collides with a
// cached one must not cache the pages after it under the other prefix's chain, or a request with
// the other prefix would match them and read keys computed after different tokens; and its tail
// must not go to the other page.
TEST(BlockManager, HashCollisionsNeverShareOtherTokensPages) {
  BlockManager b(16, 2);
  b.enable_prefix_cache(0, 2);
  const std::vector<int> legit = {1, 2, 5}, other = {-1814316136, 113800797, 7, 8, 9}, victim = {1, 2, 7, 8, 9};
  const int a = b.add_sequence();
  b.reserve({{a, 2}});
  b.cache_full_pages(a, legit);
  ASSERT_GE(b.attach_tail(a, legit, 2), 0);
  ASSERT_EQ(b.match_prefix(victim, 4).size(), 1u);
  EXPECT_TRUE(b.match_prefix(other, 4).empty());  // the hash matches, the tokens do not
  const int x = b.add_sequence(other, 4);
  EXPECT_EQ(b.len(x), 0u);
  b.reserve({{x, 4}});
  b.cache_full_pages(x, other);
  EXPECT_EQ(b.cached_pages(), 1u);  // neither of x's pages: the first's hash is taken, the second follows it
  EXPECT_EQ(b.attach_tail(x, other, 2), -1);
  EXPECT_EQ(b.attach_tail(x, other, 4), -1);
  const std::vector<int32_t> hit = b.match_prefix(victim, 4);
  ASSERT_EQ(hit.size(), 1u);
  EXPECT_EQ(hit[0], b.block_table(a)[0]);
  b.remove(a);
  b.remove(x);
  // Where no other page holds the hash, the same tokens are cached under their own chain.
  BlockManager c(16, 2);
  c.enable_prefix_cache(0);
  const int y = c.add_sequence();
  c.reserve({{y, 4}});
  c.cache_full_pages(y, other);
  EXPECT_EQ(c.cached_pages(), 2u);
  EXPECT_EQ(c.match_prefix(other, 4).size(), 2u);
  EXPECT_TRUE(c.match_prefix(victim, 4).empty());
}

}  // namespace
}  // namespace tq
