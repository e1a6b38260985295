// The page pool's allocator: a free list and a reference count per page (a page shared by two
// sequences, e.g. a common prompt prefix, returns to the pool when its last owner releases it).
#pragma once

#include <cstdint>
#include <vector>

namespace tq {

class PageAllocator {
 public:
  explicit PageAllocator(uint32_t num_pages);

  uint32_t num_pages() const { return uint32_t(refs_.size()); }
  uint32_t free_pages() const { return uint32_t(free_.size()); }
  // A free page with refcount 1. Throws tq::Error when none is left.
  int32_t allocate();
  void retain(int32_t page);   // one more owner
  void release(int32_t page);  // one owner fewer; back on the free list at 0
  uint32_t refcount(int32_t page) const;

 private:
  void check(int32_t page) const;
  std::vector<int32_t> free_;   // stack of free page ids, lowest id on top
  std::vector<uint32_t> refs_;  // [num_pages]
};

}  // namespace tq
