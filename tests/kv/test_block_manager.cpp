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

}  // namespace
}  // namespace tq
