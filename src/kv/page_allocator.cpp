#include "tq/kv/page_allocator.h"

#include <fmt/format.h>

#include "tq/check.h"

namespace tq {

PageAllocator::PageAllocator(uint32_t num_pages) : refs_(num_pages, 0) {
  TQ_CHECK(num_pages >= 1, "the page pool needs at least one page");
  free_.reserve(num_pages);
  for (uint32_t i = num_pages; i-- > 0;) free_.push_back(int32_t(i));
}

int32_t PageAllocator::allocate() {
  TQ_CHECK(!free_.empty(), "KV page pool exhausted: all {} pages are in use (raise the context or the page count)", num_pages());
  const int32_t p = free_.back();
  free_.pop_back();
  refs_[size_t(p)] = 1;
  return p;
}

void PageAllocator::check(int32_t page) const {
  TQ_CHECK(page >= 0 && uint32_t(page) < num_pages(), "page {} is outside the pool ({} pages)", page, num_pages());
  TQ_CHECK(refs_[size_t(page)] > 0, "page {} is not allocated", page);
}

void PageAllocator::retain(int32_t page) {
  check(page);
  ++refs_[size_t(page)];
}

void PageAllocator::release(int32_t page) {
  check(page);
  if (--refs_[size_t(page)] == 0) free_.push_back(page);
}

uint32_t PageAllocator::refcount(int32_t page) const {
  TQ_CHECK(page >= 0 && uint32_t(page) < num_pages(), "page {} is outside the pool ({} pages)", page, num_pages());
  return refs_[size_t(page)];
}

}  // namespace tq
