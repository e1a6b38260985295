// The page pool's allocator: a free list and a reference count per page (a page shared by two
// sequences, e.g. a common prompt prefix, returns to the pool when its last owner releases it).
//
// Prefix caching (block_manager.h) marks pages that hold a cached prefix. Such a page, released by
// its last owner, keeps its bytes: it waits on an LRU list, still counted free, so that a later
// request with the same prefix can revive() it. allocate() takes never-cached pages first and then
// evicts the least recently released cached page (vLLM's free block queue, nano-vllm's hash table).
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <vector>

namespace tq {

class PageAllocator {
 public:
  explicit PageAllocator(uint32_t num_pages);

  uint32_t num_pages() const { return uint32_t(refs_.size()); }
  // Pages allocate() can hand out: never-cached free pages and cached pages nobody holds.
  uint32_t free_pages() const { return uint32_t(free_.size() + lru_.size()); }
  uint32_t cached_free_pages() const { return uint32_t(lru_.size()); }
  // A free page with refcount 1. Throws tq::Error when none is left. When it had to evict a cached
  // page, *evicted is that page (its cache entry must go), else -1.
  int32_t allocate(int32_t* evicted = nullptr);
  void retain(int32_t page);   // one more owner
  void release(int32_t page);  // one owner fewer; at 0, to the free list (or the LRU list when cached)
  uint32_t refcount(int32_t page) const;

  // Whether a page holds a cached prefix. Unmarking a free cached page moves it to the free list.
  void set_cached(int32_t page, bool cached);
  bool cached(int32_t page) const { return in_range(page) && cached_[size_t(page)]; }
  // A cached page nobody holds gets its first owner again (off the LRU list, refcount 1).
  void revive(int32_t page);

 private:
  bool in_range(int32_t page) const { return page >= 0 && uint32_t(page) < num_pages(); }
  void check(int32_t page) const;
  std::vector<int32_t> free_;                    // stack of never-cached free page ids, lowest id on top
  std::vector<uint32_t> refs_;                   // [num_pages]
  std::vector<bool> cached_;                     // [num_pages]
  std::list<int32_t> lru_;                       // cached pages at refcount 0, least recently released first
  std::vector<std::list<int32_t>::iterator> at_; // [num_pages] position in lru_ (valid while listed)
};

}  // namespace tq
