#include <gtest/gtest.h>

#include "tq/common.h"
#include "tq/kv/page_allocator.h"

namespace tq {
namespace {

TEST(PageAllocator, FreeListAndRefcounts) {
  PageAllocator a(3);
  EXPECT_EQ(a.allocate(), 0);
  EXPECT_EQ(a.allocate(), 1);
  const int32_t p = a.allocate();
  EXPECT_EQ(a.free_pages(), 0u);
  EXPECT_THROW(a.allocate(), Error);
  a.retain(p);  // shared by two sequences
  a.release(p);
  EXPECT_EQ(a.free_pages(), 0u);
  EXPECT_EQ(a.refcount(p), 1u);
  a.release(p);
  EXPECT_EQ(a.free_pages(), 1u);
  EXPECT_EQ(a.allocate(), p);
  EXPECT_THROW(a.release(7), Error);
  a.release(0);
  EXPECT_THROW(a.release(0), Error);  // double free
}

}  // namespace
}  // namespace tq
