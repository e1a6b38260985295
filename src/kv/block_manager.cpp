#include "tq/kv/block_manager.h"

#include <algorithm>
#include <utility>

#include "tq/check.h"

namespace tq {

BlockManager::BlockManager(uint32_t num_pages, uint32_t page_size) : page_size_(page_size), alloc_(num_pages), entries_(num_pages) {
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
    for (uint32_t i = pages_needed(seq, n); i > 0; --i) {
      int32_t evicted = -1;
      s.block_table.push_back(alloc_.allocate(&evicted));
      if (evicted >= 0) uncache(evicted);
    }
    s.len += n;
  }
}

void BlockManager::truncate(int seq, uint32_t new_len) {
  Seq& s = at(seq);
  TQ_CHECK(new_len <= s.len, "cannot truncate sequence {} to {} positions: it has {}", seq, new_len, s.len);
  const size_t keep = (size_t(new_len) + page_size_ - 1) / page_size_;
  if (new_len % page_size_ != 0 && keep <= s.hashes.size()) {
    const int32_t cut = s.block_table[keep - 1];  // a cached page whose tail will be written again
    TQ_CHECK(alloc_.refcount(cut) == 1, "cannot truncate sequence {} to {} positions: page {} is shared with another sequence", seq,
             new_len, cut);
    uncache(cut);
  }
  // Last page first: the LRU list then evicts a cached prefix from its end, which keeps its start
  // (what other requests share) matchable longest.
  for (size_t i = s.block_table.size(); i-- > keep;) alloc_.release(s.block_table[i]);
  s.block_table.resize(keep);
  s.hashes.resize(std::min(s.hashes.size(), size_t(new_len / page_size_)));
  s.len = new_len;
}

void BlockManager::enable_prefix_cache(uint64_t salt, uint32_t tails) {
  caching_ = true;
  salt_ = salt;
  tail_page_.assign(tails, -1);
  tail_used_.assign(tails, 0);
}

uint64_t BlockManager::chain(uint64_t h, std::span<const int> page_tokens) const {
  // splitmix64's finalizer over (hash, token) pairs: every bit of each token reaches every bit.
  for (int t : page_tokens) {
    uint64_t z = h ^ (uint64_t(uint32_t(t)) + 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    h = z ^ (z >> 31);
  }
  return h;
}

std::vector<int32_t> BlockManager::match_prefix(std::span<const int> tokens, uint32_t limit, uint32_t* matched) const {
  std::vector<int32_t> pages;
  if (!caching_) return pages;
  limit = uint32_t(std::min<size_t>(limit, tokens.size()));
  uint64_t h = salt_;
  for (uint32_t i = 0; (i + 1) * size_t(page_size_) <= limit; ++i) {
    const std::span<const int> page = tokens.subspan(size_t(i) * page_size_, page_size_);
    const uint64_t next = chain(h, page);
    const auto it = cache_.find(next);
    if (it == cache_.end()) break;
    const Entry& e = *entries_[size_t(it->second)];
    if (e.parent != h || !std::equal(page.begin(), page.end(), e.tokens.begin())) break;
    pages.push_back(it->second);
    h = next;
  }
  if (matched) *matched = uint32_t(pages.size());
  if (needs_tails()) {  // a sequence starting past the last tail would lack side rows
    while (!pages.empty() && entries_[size_t(pages.back())]->tail < 0) pages.pop_back();
  }
  return pages;
}

int BlockManager::add_sequence(std::span<const int> tokens, uint32_t limit) { return add_cached_sequence(match_prefix(tokens, limit)); }

int BlockManager::add_cached_sequence(std::span<const int32_t> pages) {
  for (int32_t p : pages)
    TQ_CHECK(caching_ && p >= 0 && size_t(p) < entries_.size() && entries_[size_t(p)], "page {} holds no cached prefix", p);
  if (needs_tails() && !pages.empty())  // checked before anything is held, so a refusal changes nothing
    TQ_CHECK(entries_[size_t(pages.back())]->tail >= 0, "page {} ends a cached prefix without a tail", pages.back());
  const int seq = add_sequence();
  Seq& s = at(seq);
  for (int32_t p : pages) {
    if (alloc_.refcount(p) == 0)
      alloc_.revive(p);
    else
      alloc_.retain(p);
    s.block_table.push_back(p);
    s.hashes.push_back(entries_[size_t(p)]->hash);
  }
  s.len = uint32_t(pages.size()) * page_size_;
  if (needs_tails() && !pages.empty()) tail_used_[size_t(entries_[size_t(pages.back())]->tail)] = ++tail_clock_;
  return seq;
}

void BlockManager::cache_full_pages(int seq, std::span<const int> tokens) {
  if (!caching_) return;
  Seq& s = at(seq);
  TQ_CHECK(tokens.size() >= s.len, "sequence {} has {} positions but {} tokens were given", seq, s.len, tokens.size());
  for (size_t i = s.hashes.size(); (i + 1) * page_size_ <= s.len; ++i) {
    const uint64_t parent = i ? s.hashes[i - 1] : salt_;
    const std::span<const int> page = tokens.subspan(i * page_size_, page_size_);
    const uint64_t h = chain(parent, page);
    const int32_t p = s.block_table[i];
    const auto held = cache_.find(h);
    if (held != cache_.end()) {
      // Another sequence cached this prefix first (this page stays private), or a page with other
      // tokens or another parent holds the hash: a collision. Hashing past it would give this
      // sequence's later pages the chain of the other prefix, and a request with that prefix would
      // match them: caching stops here, while the other page keeps the hash.
      const Entry& e = *entries_[size_t(held->second)];
      if (e.parent != parent || !std::equal(page.begin(), page.end(), e.tokens.begin())) return;
    } else if (!entries_[size_t(p)]) {
      cache_.emplace(h, p);
      entries_[size_t(p)] = Entry{h, parent, std::vector<int>(page.begin(), page.end())};
      alloc_.set_cached(p, true);
    }
    s.hashes.push_back(h);
  }
}

uint32_t BlockManager::tails_used() const {
  return uint32_t(std::count_if(tail_page_.begin(), tail_page_.end(), [](int32_t p) { return p >= 0; }));
}

int32_t BlockManager::tail_of(int32_t page) const {
  TQ_CHECK(page >= 0 && size_t(page) < entries_.size(), "no page {}", page);
  const std::optional<Entry>& e = entries_[size_t(page)];
  return e ? e->tail : -1;
}

int32_t BlockManager::attach_tail(int seq, std::span<const int> tokens, uint32_t end) {
  const Seq& s = at(seq);
  TQ_CHECK(needs_tails(), "prefix caching keeps no tails");
  TQ_CHECK(end > 0 && end % page_size_ == 0 && end <= s.len, "sequence {}: a tail ends at a page boundary within its {} positions, not at {}",
           seq, s.len, end);
  TQ_CHECK(tokens.size() >= end, "sequence {}: a tail at {} needs the tokens before it, {} were given", seq, end, tokens.size());
  const size_t i = end / page_size_ - 1;
  if (i >= s.hashes.size()) return -1;
  const auto cached = cache_.find(s.hashes[i]);  // the page cached for this prefix: its own, or another's
  if (cached == cache_.end()) return -1;
  const int32_t page = cached->second;
  std::optional<Entry>& e = entries_[size_t(page)];
  const std::span<const int> page_tokens = tokens.subspan(i * page_size_, page_size_);
  if (!e || e->parent != (i ? s.hashes[i - 1] : salt_) || !std::equal(page_tokens.begin(), page_tokens.end(), e->tokens.begin())) return -1;
  if (e->tail >= 0) {
    tail_used_[size_t(e->tail)] = ++tail_clock_;
    return -1;
  }
  size_t slot = 0;  // a free slot, else the least recently used
  for (size_t k = 0; k < tail_page_.size(); ++k) {
    if (tail_page_[k] < 0) {
      slot = k;
      break;
    }
    if (tail_used_[k] < tail_used_[slot]) slot = k;
  }
  if (tail_page_[slot] >= 0) entries_[size_t(tail_page_[slot])]->tail = -1;
  e->tail = int32_t(slot);
  tail_page_[slot] = page;
  tail_used_[slot] = ++tail_clock_;
  return int32_t(slot);
}

void BlockManager::detach_tail(int32_t slot) {
  TQ_CHECK(slot >= 0 && size_t(slot) < tail_page_.size(), "no tail slot {}", slot);
  const int32_t page = tail_page_[size_t(slot)];
  if (page >= 0) entries_[size_t(page)]->tail = -1;
  tail_page_[size_t(slot)] = -1;
}

void BlockManager::uncache(int32_t page) {
  std::optional<Entry>& e = entries_[size_t(page)];
  if (!e) return;
  if (e->tail >= 0) tail_page_[size_t(e->tail)] = -1;
  const auto it = cache_.find(e->hash);
  if (it != cache_.end() && it->second == page) cache_.erase(it);
  e.reset();
  alloc_.set_cached(page, false);
}

}  // namespace tq
