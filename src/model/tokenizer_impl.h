// Internals shared by the tokenizer implementations (not installed).
#pragma once

#include <cstdint>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <vector>

#include "tq/model/tokenizer.h"

namespace tq::model::detail {

std::unique_ptr<Tokenizer> make_spm_from_gguf(const GgufFile& f);
std::unique_ptr<Tokenizer> make_bpe_from_gguf(const GgufFile& f);

// ---- UTF-8 / Unicode helpers (unicode_split.cpp) ----
enum class CharClass : uint8_t { Letter, Number, Space, Other };
// Approximate Unicode general-category classes (see unicode_split.cpp for the covered ranges).
CharClass classify(uint32_t cp);
// Length in bytes of the UTF-8 sequence starting at s[i] when it is well formed, else 1 (the byte
// alone: invalid input is handled byte by byte, never rejected).
size_t utf8_len(std::string_view s, size_t i);
uint32_t utf8_decode(std::string_view s, size_t i, size_t len);  // a sequence utf8_len accepted
void utf8_append(std::string& out, uint32_t cp);

// Throws tq::Error for the byte text[offset], which the vocabulary cannot encode (no token and no
// byte-fallback token), naming the byte, its offset and, when the text is not valid UTF-8 there, that
// cause: a Latin-1 file or a stray byte is the usual culprit, and the user can fix it with iconv.
[[noreturn]] void throw_unencodable_byte(std::string_view text, size_t offset);

// ---- greedy pair merging (SentencePiece and BPE) ----
// Repeatedly merges the adjacent pair of `syms` with the smallest priority (leftmost on ties) until
// no adjacent pair has one. prio(left, right, &p) returns false when the pair cannot merge.
// A linked list + a heap of candidate pairs with version stamps: O(n log n), so long inputs (whole
// books for perplexity) stay fast.
template <typename Prio>
void merge_pairs(std::vector<std::string>& syms, Prio prio) {
  const int n = int(syms.size());
  if (n < 2) return;
  std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));  // linked list of live symbols
  std::vector<uint32_t> ver(static_cast<size_t>(n), 0u);  // bumped when a symbol changes
  for (int i = 0; i < n; ++i) {
    prev[size_t(i)] = i - 1;
    next[size_t(i)] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    double p;
    int left, right;
    uint32_t vl, vr;
    bool operator<(const Cand& o) const {  // std::priority_queue pops the "largest": best = smallest p, then left
      return p != o.p ? p > o.p : left > o.left;
    }
  };
  std::priority_queue<Cand> heap;
  const auto consider = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    double p;
    if (prio(syms[size_t(l)], syms[size_t(r)], &p)) heap.push({p, l, r, ver[size_t(l)], ver[size_t(r)]});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    // stale when either side changed (merged or removed) since the candidate was pushed
    if (ver[size_t(c.left)] != c.vl || ver[size_t(c.right)] != c.vr || next[size_t(c.left)] != c.right) continue;
    syms[size_t(c.left)] += syms[size_t(c.right)];
    syms[size_t(c.right)].clear();
    ++ver[size_t(c.left)];
    ver[size_t(c.right)] = ~0u;  // removed: never matches again (versions never reach this)
    const int nr = next[size_t(c.right)];
    next[size_t(c.left)] = nr;
    if (nr >= 0) prev[size_t(nr)] = c.left;
    consider(prev[size_t(c.left)], c.left);
    consider(c.left, nr);
  }
  std::vector<std::string> out;
  for (int i = 0; i >= 0; i = next[size_t(i)]) out.push_back(std::move(syms[size_t(i)]));
  syms = std::move(out);
}

}  // namespace tq::model::detail
