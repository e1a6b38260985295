// The block manager: which pages each sequence holds, in position order (its block table), and
// how many positions it has. It sees token counts and pages, never tensors (nano-vllm's
// BlockManager, vLLM's KV cache manager): the KV storage of a backend holds the bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "tq/kv/page_allocator.h"

namespace tq {

class BlockManager {
 public:
  // A pool of num_pages pages of page_size tokens.
  BlockManager(uint32_t num_pages, uint32_t page_size);

  uint32_t page_size() const { return page_size_; }
  const PageAllocator& allocator() const { return alloc_; }

  int add_sequence();      // a new empty sequence; returns its id (ids of removed ones are reused)
  void remove(int seq);    // its pages go back to the pool
  void reset(int seq);     // empty again (pages released)
  bool contains(int seq) const;

  uint32_t len(int seq) const;
  // [pages] page ids in position order: position p is in page block_table[p / page_size].
  const std::vector<int32_t>& block_table(int seq) const;
  // Slot of position `pos` (page * page_size + offset); pos < len(seq).
  int64_t slot(int seq, uint32_t pos) const;
  // Pages that reserving n more positions would take from the pool.
  uint32_t pages_needed(int seq, uint32_t n) const;

  // Positions [len, len + n) of each (seq, n), allocating pages as needed, all or nothing: when
  // the pool runs out, throws tq::Error and no sequence changes.
  void reserve(const std::vector<std::pair<int, uint32_t>>& requests);
  // Drops positions [new_len, len): pages past the new end go back to the pool (rollback).
  void truncate(int seq, uint32_t new_len);

 private:
  struct Seq {
    std::vector<int32_t> block_table;
    uint32_t len = 0;
  };
  Seq& at(int seq);
  const Seq& at(int seq) const;

  uint32_t page_size_;
  PageAllocator alloc_;
  std::vector<std::optional<Seq>> seqs_;  // empty: removed
};

}  // namespace tq
