// Window rings: the pages of a model's sliding-window layers (Gemma 3's local layers), kept per
// sequence in a ring of a fixed number of pages instead of in the shared pool, since a query on such
// a layer never sees a position `window` or more before it. Global layers keep every position in
// the pool as before; a sliding-window layer of sequence s keeps its page j (positions
// [j * page_size, (j + 1) * page_size)) in ring page s * pages + j % pages of its own storage.
// The same layout as llama.cpp's separate sliding-window cache (llama-kv-cache-iswa: a cache of
// n_swa + n_ubatch cells per sequence), kept in pages so the attention kernels read it through a
// block table like any other layer.
//
// What a ring must hold: the runners write a sequence's new positions [f, f + n) into the ring of
// a sliding-window layer, then its queries read [f - window + 1, f + n); a step of more than
// `step` (kRingStep, or max_chunk when smaller) new positions is written and attended in sub-steps
// of `step` on those layers, so n <= step. A sequence may be taken back by up to `rollback` = step
// positions it wrote (rejected drafts, a failed step), so the written end e <= f + rollback. The
// positions [f - window + 1, max(e, f + n)) then span window - 1 + step positions, whose pages must
// be distinct ring pages. With prefix tails a sequence's rows must also survive up to a page past
// the last page boundary (save_tail): a page more. The ring's size therefore does not grow with
// the prefill chunk (llama.cpp's n_ubatch), only with the sub-step.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace tq {

// The most new positions of one sequence written into a ring before its queries read: longer
// steps are attended in sub-steps of this many on the sliding-window layers.
inline constexpr uint32_t kRingStep = 256;

struct WindowRing {
  uint32_t pages = 0;      // ring pages per sequence; 0: no rings (every layer in the pool)
  uint32_t page_size = 1;
  uint32_t step = 1;       // the sub-step: most new positions of a sequence written before its queries read
  uint32_t rollback = 0;   // positions a sequence may be taken back behind the end it wrote (= step)

  // The ring for `window`-position sliding windows, or none (pages 0) when there is no window or
  // a ring would not be smaller than a sequence of `context` positions in the pool.
  static WindowRing make(uint32_t window, uint32_t context, uint32_t max_chunk, uint32_t page_size, bool tails) {
    const uint32_t step = std::max(1u, std::min(max_chunk, kRingStep));
    WindowRing r{0, page_size, step, step};
    if (window == 0 || page_size == 0) return r;
    const uint64_t span = uint64_t(window) - 1 + step;  // positions that must be held at once
    const uint64_t pages = (span - 1 + page_size - 1) / page_size + 1 + (tails ? 1 : 0);
    const uint64_t full = (uint64_t(context) + page_size - 1) / page_size;
    if (pages < full) r.pages = uint32_t(pages);
    return r;
  }
  bool on() const { return pages > 0; }
  // Ring page of position pos's page, for sequence seq.
  int32_t page(int seq, uint32_t pos) const { return int32_t(uint32_t(seq) * pages + (pos / page_size) % pages); }
  int64_t slot(int seq, uint32_t pos) const { return int64_t(page(seq, pos)) * page_size + pos % page_size; }
  // The block table of a sliding-window layer for positions [0, len): out[j] = page of page j. The
  // entries of pages before the window hold later positions' pages: no query reads them.
  void table(int seq, uint32_t len, std::vector<int32_t>& out) const {
    out.resize((size_t(len) + page_size - 1) / page_size);
    for (size_t j = 0; j < out.size(); ++j) out[j] = int32_t(uint32_t(seq) * pages + uint32_t(j % pages));
  }
  // Whether a sequence whose steps wrote positions up to `written` (exclusive) can run a step from
  // position `first`: the positions a step reads behind it are still in the ring.
  bool holds(uint32_t written, uint32_t first) const { return first == 0 || uint64_t(first) + rollback >= written; }
  // Whether the ring of a sequence that wrote up to `written` still holds the rows a sequence
  // starting at `end` reads (positions [end - window + 1, end)): a prefix tail can be taken there.
  bool holds_tail(uint32_t written, uint32_t end, uint32_t window) const {
    if (written < end) return false;
    const uint32_t from = end + 1 > window ? end + 1 - window : 0;
    return written == 0 || (written - 1) / page_size - from / page_size < pages;
  }
};

}  // namespace tq
