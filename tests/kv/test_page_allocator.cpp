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

namespace tq {
namespace {

// Cached pages released by their last owner stay out of the free list until nothing else is
// left; then the least recently released goes first, and a revived one is not evicted.
TEST(PageAllocator, CachedPagesAreEvictedLeastRecentlyReleasedFirst) {
  PageAllocator a(4);
  const int32_t p0 = a.allocate(), p1 = a.allocate(), p2 = a.allocate();
  a.set_cached(p0, true);
  a.set_cached(p1, true);
  a.set_cached(p2, true);
  a.release(p1);
  a.release(p0);
  a.release(p2);
  EXPECT_EQ(a.free_pages(), 4u);
  EXPECT_EQ(a.cached_free_pages(), 3u);
  int32_t ev = 0;
  EXPECT_EQ(a.allocate(&ev), 3);  // the never-cached page first
  EXPECT_EQ(ev, -1);
  a.revive(p1);                   // held again: not evictable
  EXPECT_EQ(a.refcount(p1), 1u);
  EXPECT_THROW(a.allocate(), Error);  // only cached pages left and the caller cannot evict
  EXPECT_EQ(a.allocate(&ev), p0);
  EXPECT_EQ(ev, p0);
  EXPECT_FALSE(a.cached(p0));
  EXPECT_EQ(a.allocate(&ev), p2);
  EXPECT_THROW(a.allocate(&ev), Error);
  EXPECT_THROW(a.revive(p0), Error);  // held, not a cached free page
  a.set_cached(p1, false);
  a.release(p1);
  EXPECT_EQ(a.cached_free_pages(), 0u);
  EXPECT_EQ(a.allocate(&ev), p1);
  EXPECT_EQ(ev, -1);
}

// A refused set_cached changes nothing: it marked a free page cached before refusing, and a later
// set_cached(page, false) erased an LRU entry the page never had (a segfault).
TEST(PageAllocator, ARefusedSetCachedLeavesThePoolAsItWas) {
  PageAllocator a(2);
  EXPECT_THROW(a.set_cached(1, true), Error);
  EXPECT_FALSE(a.cached(1));
  a.set_cached(1, false);  // a no-op on a page that is not cached
  EXPECT_EQ(a.allocate(), 0);
  EXPECT_EQ(a.allocate(), 1);
  a.release(1);
  a.release(0);
  EXPECT_EQ(a.allocate(), 0);  // the free list as before: the last released comes first
  EXPECT_EQ(a.allocate(), 1);
}

}  // namespace
}  // namespace tq
