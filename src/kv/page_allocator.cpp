#include "tq/kv/page_allocator.h"

#include <fmt/format.h>

#include "tq/check.h"

namespace tq {

PageAllocator::PageAllocator(uint32_t num_pages) : refs_(num_pages, 0), cached_(num_pages, false), at_(num_pages) {
  TQ_CHECK(num_pages >= 1, "the page pool needs at least one page");
  free_.reserve(num_pages);
  for (uint32_t i = num_pages; i-- > 0;) free_.push_back(int32_t(i));
}

int32_t PageAllocator::allocate(int32_t* evicted) {
  if (evicted) *evicted = -1;
  TQ_CHECK(free_pages() > 0, "KV page pool exhausted: all {} pages are in use (raise the context or the page count)", num_pages());
  int32_t p;
  if (!free_.empty()) {
    p = free_.back();
    free_.pop_back();
  } else {
    TQ_CHECK(evicted, "the KV page pool holds only cached pages and the caller cannot evict them");
    p = lru_.front();
    lru_.pop_front();
    cached_[size_t(p)] = false;
    *evicted = p;
  }
  refs_[size_t(p)] = 1;
  return p;
}

void PageAllocator::check(int32_t page) const {
  TQ_CHECK(in_range(page), "page {} is outside the pool ({} pages)", page, num_pages());
  TQ_CHECK(refs_[size_t(page)] > 0, "page {} is not allocated", page);
}

void PageAllocator::retain(int32_t page) {
  check(page);
  ++refs_[size_t(page)];
}

void PageAllocator::release(int32_t page) {
  check(page);
  if (--refs_[size_t(page)] > 0) return;
  if (cached_[size_t(page)])
    at_[size_t(page)] = lru_.insert(lru_.end(), page);
  else
    free_.push_back(page);
}

uint32_t PageAllocator::refcount(int32_t page) const {
  TQ_CHECK(in_range(page), "page {} is outside the pool ({} pages)", page, num_pages());
  return refs_[size_t(page)];
}

void PageAllocator::set_cached(int32_t page, bool cached) {
  TQ_CHECK(in_range(page), "page {} is outside the pool ({} pages)", page, num_pages());
  if (cached_[size_t(page)] == cached) return;
  // checked before any change: a refused call leaves the allocator as it was (a free page marked
  // cached by a refused call was later "uncached" by erasing an LRU entry it never had)
  TQ_CHECK(!cached || refs_[size_t(page)] > 0, "page {} is free: only a held page can be marked cached", page);
  cached_[size_t(page)] = cached;
  if (refs_[size_t(page)] > 0) return;
  lru_.erase(at_[size_t(page)]);
  free_.push_back(page);
}

void PageAllocator::revive(int32_t page) {
  TQ_CHECK(in_range(page) && cached_[size_t(page)] && refs_[size_t(page)] == 0, "page {} is not a cached free page", page);
  lru_.erase(at_[size_t(page)]);
  refs_[size_t(page)] = 1;
}

}  // namespace tq
