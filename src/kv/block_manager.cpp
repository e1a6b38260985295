#include "tq/kv/block_manager.h"

#include <utility>

#include "tq/check.h"

namespace tq {

BlockManager::BlockManager(uint32_t num_pages, uint32_t page_size) : page_size_(page_size), alloc_(num_pages) {
  TQ_CHECK(page_size >= 1, "page size must be at least 1, got {}", page_size);
}

int BlockManager::add_sequence() {
  for (size_t i = 0; i < seqs_.size(); ++i)
    if (!seqs_[i]) {
      seqs_[i].emplace();
      return int(i);
    }
  seqs_.emplace_back(Seq{});
  return int(seqs_.size() - 1);
}

bool BlockManager::contains(int seq) const { return seq >= 0 && size_t(seq) < seqs_.size() && seqs_[size_t(seq)]; }

BlockManager::Seq& BlockManager::at(int seq) {
  TQ_CHECK(contains(seq), "no sequence {}", seq);
  return *seqs_[size_t(seq)];
}
const BlockManager::Seq& BlockManager::at(int seq) const { return const_cast<BlockManager*>(this)->at(seq); }

void BlockManager::reset(int seq) { truncate(seq, 0); }

void BlockManager::remove(int seq) {
  reset(seq);
  seqs_[size_t(seq)].reset();
}

uint32_t BlockManager::len(int seq) const { return at(seq).len; }
const std::vector<int32_t>& BlockManager::block_table(int seq) const { return at(seq).block_table; }

int64_t BlockManager::slot(int seq, uint32_t pos) const {
  const Seq& s = at(seq);
  TQ_CHECK(pos < s.len, "position {} is beyond sequence {} ({} positions reserved)", pos, seq, s.len);
  return int64_t(s.block_table[pos / page_size_]) * page_size_ + pos % page_size_;
}

uint32_t BlockManager::pages_needed(int seq, uint32_t n) const {
  const Seq& s = at(seq);
  const size_t need = (size_t(s.len) + n + page_size_ - 1) / page_size_;
  return need > s.block_table.size() ? uint32_t(need - s.block_table.size()) : 0;
}

void BlockManager::reserve(const std::vector<std::pair<int, uint32_t>>& requests) {
  size_t total = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    for (size_t j = 0; j < i; ++j)
      TQ_CHECK(requests[j].first != requests[i].first, "sequence {} appears twice in one reservation", requests[i].first);
    total += pages_needed(requests[i].first, requests[i].second);
  }
  TQ_CHECK(total <= alloc_.free_pages(), "the KV page pool is exhausted: this step needs {} more pages, {} of {} are free", total,
           alloc_.free_pages(), alloc_.num_pages());
  for (const auto& [seq, n] : requests) {
    Seq& s = at(seq);
    for (uint32_t i = pages_needed(seq, n); i > 0; --i) s.block_table.push_back(alloc_.allocate());
    s.len += n;
  }
}

void BlockManager::truncate(int seq, uint32_t new_len) {
  Seq& s = at(seq);
  TQ_CHECK(new_len <= s.len, "cannot truncate sequence {} to {} positions: it has {}", seq, new_len, s.len);
  const size_t keep = (size_t(new_len) + page_size_ - 1) / page_size_;
  for (size_t i = keep; i < s.block_table.size(); ++i) alloc_.release(s.block_table[i]);
  s.block_table.resize(keep);
  s.len = new_len;
}

}  // namespace tq
