// The block manager: which pages each sequence holds, in position order (its block table), and
// how many positions it has. It sees token counts and pages, never tensors (nano-vllm's
// BlockManager, vLLM's KV cache manager): the KV storage of a backend holds the bytes.
//
// Prefix caching (off until enable_prefix_cache): a full page is identified by a 64-bit hash
// chained over the salt (the KV spec) and every token from position 0 to the page's end, so equal
// hashes mean equal prefixes; the page also keeps its own tokens and its parent's hash, compared on
// every match (and caching a sequence's pages stops at one whose hash another page with other
// tokens holds), so a hash collision can only miss, never share wrong bytes. The engine mixes a
// per-process random key into the salt, so clients cannot aim for a collision either. Sequences that start
// with a cached prefix hold its pages (reference counts) and compute only the rest. Only full pages
// are shared and a sequence writes only past its shared pages, so shared bytes never change: packed
// pages are shared as they are, never copied, dequantized or re-quantized. Unreferenced cached pages
// stay in the pool until allocation evicts them, least recently released first (page_allocator.h).
//
// Tails (specs with sink/window side buffers, engine::ModelRunner::save_tail): a sequence that
// starts from cached pages also needs the fp16 side rows a cold run would have there, which the
// pages do not carry. A cached page may carry a tail, the runner's snapshot of those rows at the
// page's end, in one of a fixed number of slots; with tails on, a match ends at the last matched
// page that has one. Slots are reused least recently used first (attached or hit), and a page's
// tail goes when the page leaves the cache.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
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
  // Drops positions [new_len, len): pages past the new end go back to the pool (rollback). A
  // cached page cut into is no longer cached (its tail will be written again); cutting into one that
  // another sequence shares throws tq::Error.
  void truncate(int seq, uint32_t new_len);

  // Prefix caching, keyed by `salt` (a hash of the KV spec: pages of another format never match);
  // with tails > 0, matches need tails, in that many slots.
  void enable_prefix_cache(uint64_t salt, uint32_t tails = 0);
  bool prefix_cache() const { return caching_; }
  // The pages of the longest cached prefix of tokens[0, limit) in whole pages, in position order
  // (not held: add_sequence(tokens, limit) takes them). Empty without prefix caching. With tails,
  // cut back to the last page that has one; `matched` (when given) gets the pages before that cut.
  std::vector<int32_t> match_prefix(std::span<const int> tokens, uint32_t limit, uint32_t* matched = nullptr) const;
  // A new sequence that holds the pages match_prefix(tokens, limit) finds: len() = their positions.
  int add_sequence(std::span<const int> tokens, uint32_t limit);
  // A new sequence that holds `pages`, what match_prefix just answered (no page changed since):
  // the scheduler matches once to see what an admission costs, then admits with the answer.
  int add_cached_sequence(std::span<const int32_t> pages);
  // Caches the sequence's pages that are full and not cached yet; tokens: its tokens, at least
  // [0, len). A page whose prefix is cached already (another sequence computed it at the same time)
  // stays private. A no-op without prefix caching.
  void cache_full_pages(int seq, std::span<const int> tokens);
  uint32_t cached_pages() const { return uint32_t(cache_.size()); }  // pages with a cache entry, held or not

  bool needs_tails() const { return !tail_page_.empty(); }
  uint32_t tail_slots() const { return uint32_t(tail_page_.size()); }
  uint32_t tails_used() const;
  // Gives the cached page of the sequence's prefix that ends at position `end` (a page boundary
  // within its length) a tail slot, the least recently used one when none is free (its page loses
  // its tail). That page is the sequence's own, or the one another sequence cached for the same
  // tokens when the sequence computed its own copy (a request that matched them but found no tail:
  // its rows are what a hit there needs, since the same tokens give the same rows). Returns the
  // slot for the caller to fill, or -1 when there is nothing to fill: the page has a tail already
  // (it becomes the most recently used), or the sequence's pages there are not cached yet.
  // tokens: the sequence's, at least [0, end); the cached page must hold the same ones.
  int32_t attach_tail(int seq, std::span<const int> tokens, uint32_t end);
  // Takes back a slot attach_tail just gave (the runner could not fill it): its page has no tail.
  void detach_tail(int32_t slot);
  // The tail slot of a cached page, or -1.
  int32_t tail_of(int32_t page) const;

 private:
  struct Seq {
    std::vector<int32_t> block_table;
    uint32_t len = 0;
    std::vector<uint64_t> hashes;  // [cached or matched full pages] chain hashes, a prefix of block_table
  };
  struct Entry {
    uint64_t hash = 0, parent = 0;  // this page's chain hash and the previous page's (the salt for page 0)
    std::vector<int> tokens;        // [page_size]
    int32_t tail = -1;              // tail slot, or -1
  };
  Seq& at(int seq);
  const Seq& at(int seq) const;
  uint64_t chain(uint64_t parent, std::span<const int> page_tokens) const;
  void uncache(int32_t page);

  uint32_t page_size_;
  PageAllocator alloc_;
  std::vector<std::optional<Seq>> seqs_;  // empty: removed
  bool caching_ = false;
  uint64_t salt_ = 0;
  std::unordered_map<uint64_t, int32_t> cache_;  // chain hash -> page
  std::vector<std::optional<Entry>> entries_;    // [num_pages] the cache entry of each page
  std::vector<int32_t> tail_page_;               // [tail slots] the page each slot is the tail of, or -1
  std::vector<uint64_t> tail_used_;              // [tail slots] when each was last attached or hit
  uint64_t tail_clock_ = 0;
};

}  // namespace tq
