// The CPU backend's KV storage: host pages for every layer (tq::PagedKvCache, in the format of
// the KV spec), quantize-on-write, and causal attention computed directly over the packed pages.
// Which pages a sequence holds is the block manager's (kv/block_manager.h); this holds the bytes.
//
// The policy of the KV spec (docs/kv-specs.md) lives here, on top of the packed format:
//   edge=N/base  the first and last N layers live in a second PagedKvCache with the edge base;
//                both caches use the same page ids, so one block table serves both.
//   sink, window the first `sink` tokens, and the keys/values within `window` positions of each
//                query, are read from a small per-sequence fp16 side buffer instead of the pages
//                (every token is still written to the pages, so leaving the window costs nothing).
//                Prefix caching copies them to and from tail slots (save_tail, restore_tail).
//   (model)      a model's sliding-window layers keep their pages in per-sequence window rings
//                (kv/window_ring.h) when KvShape::ring is on: only the positions their queries can
//                still see, instead of every position in the pool.
//   ksim         keys quantize-dequantized by a CPU baseline quantizer before they are stored in a
//                float cache: a simulation of that format, for comparisons only.
//   centre       a key centre mu per (layer, KV head), calibrated once (calibrate) and subtracted
//                from every key before it is stored anywhere (pages of either cache, side rows),
//                so every key attention reads is k - mu and each query's logits all move by the
//                same -q.mu: softmax output is unchanged in exact arithmetic.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "tq/backend/cpu/thread_pool.h"
#include "tq/codec/quantizer.h"
#include "tq/kv/paged_cache.h"
#include "tq/kv/spec.h"
#include "tq/kv/window_ring.h"

namespace tq::cpu {

struct KvShape {
  uint32_t layers = 1, kv_heads = 1, head_dim = 64;
  uint32_t num_pages = 1;   // pages in the shared pool (each page holds page_size tokens of every layer)
  uint32_t max_chunk = 64;  // most query tokens per attend() call (sizes the recent-token ring)
  uint32_t tails = 0;       // prefix-cache tail slots (save_tail); with side buffers only
  std::vector<bool> sliding = {};  // [layers] the model's sliding-window layers (empty: none), for `ip=local` and the rings
  uint32_t sliding_window = 0;     // the sliding-window layers' window (positions a query sees), for the rings
  WindowRing ring = {};            // the sliding-window layers' rings (off: they keep every position in the pool)
  uint32_t max_seqs = 1;           // sequence ids 0 .. max_seqs-1 get a window ring (with ring on)
};

// The pages of one sequence, as the block manager has them.
struct SeqPages {
  int seq = 0;                         // block manager id: keys the side buffers
  const std::vector<int32_t>* block_table = nullptr;  // [pages] page ids in position order
};

// The fp16 side rows of one sequence and layer (the KV policy's sink and window), each row
// [2 (K, V)][kv_heads][head_dim]: position t < sink at sink_rows + t rows, a later one at
// ring_rows + (t % ring) rows. KvStore keeps its sink and ring apart; the CUDA SideView's slot is
// [sink + ring] rows, ring_rows = sink_rows + sink rows. A query at position q reads t < sink and
// q - window < t <= q from here instead of the pages. Positions from new_first on (the call's own
// tokens, under SideView's contract that the attention writes them into the slot afterwards) are
// read from new_k / new_v instead, fp16 [positions - new_first][kv_heads][head_dim].
struct SideRows {
  uint32_t sink = 0, window = 0, ring = 0;
  const uint16_t* sink_rows = nullptr;
  const uint16_t* ring_rows = nullptr;
  const uint16_t* new_k = nullptr;
  const uint16_t* new_v = nullptr;
  uint32_t new_first = std::numeric_limits<uint32_t>::max();
  bool active() const { return sink > 0 || window > 0; }
  bool holds(uint32_t t, uint32_t qpos) const { return t < sink || qpos - t < window; }
};

// Causal attention of nq query tokens at positions first .. first+nq-1 (their K/V in the pages)
// over `layer` of `cache` (owned or a view), the sequence's pages in `block_table` (position order),
// side rows where side.active(): q, out [nq][q_heads][head_dim], query head h reads KV head
// h / (q_heads / kv_heads). scale 0: 1/sqrt(head_dim). sliding_window > 0 (a sliding-window layer,
// e.g. Gemma 3's local layers): a query at position p sees only the positions t with p - t <
// sliding_window (llama.cpp's LLAMA_SWA_TYPE_STANDARD, HF's sliding_window mask), itself included.
// KvStore::attend is this on its own pages; the Python package's CPU torch ops call it on a torch
// tensor's bytes.
void attend_pages(const PagedKvCache& cache, uint32_t layer, std::span<const int32_t> block_table, const SideRows& side, uint32_t first,
                  uint32_t nq, uint32_t q_heads, float scale, const float* q, float* out, ThreadPool& pool, uint32_t sliding_window = 0);

class KvStore {
 public:
  // Throws tq::Error on a shape or spec the caches reject (head dim, page counts, edge layers).
  KvStore(const KvShape& shape, const KvSpec& spec);

  const KvShape& shape() const { return shape_; }
  const KvSpec& spec() const { return spec_; }
  uint32_t page_size() const { return spec_.format.page_size; }
  // The cache holding `layer`, and the layer's index inside it.
  const PagedKvCache& cache_of(uint32_t layer, uint32_t* local) const;
  // Whether `layer` keeps its pages in the window rings rather than in the pool.
  bool in_ring(uint32_t layer) const { return !ring_layer_.empty() && ring_layer_.at(layer); }

  // Side buffers (sink, window) and window ring of a new sequence id; a no-op without them.
  void add_sequence(int seq);
  // A step writes positions [first, first + n) of each (seq, first, n). With a window (the side
  // ring) or window rings, throws tq::Error, changing nothing, when a sequence was taken back
  // further than its rings allow (it lost rows the step reads); else notes how far each is
  // written. Call before the step's write()s.
  struct StepSpan {
    int seq;
    uint32_t first, n;
  };
  void begin_step(const std::vector<StepSpan>& step);

  // What a layer fixes at the first call for it:
  // - centre (a spec with `centre`): each KV head's key centre, `centre` ([kv_heads][head_dim]),
  //   which such a spec requires: the runners compute it from the keys before RoPE
  //   (model::rope_centre; a mean of the rotated rows given here would not be it). Throws
  //   tq::Error, fixing nothing, when it is missing or not finite;
  // - fractional-width (split) K or V, from the rows, leaving out rows at position 0 unless they
  //   are all there is (the first token's keys are often far larger than the others': an
  //   attention sink): each (layer, KV head) takes as its outlier channels the
  //   split_outliers(head_dim) channels of largest mean square over those rows (keys less their
  //   centre, as they are stored; ties: the lower channel); a layer never calibrated keeps
  //   channels 0 .. n-1, as every layer under outliers=fixed.
  // A layer calibrated or written before keeps what it has (rows in the pages were coded with
  // it): a layer written uncalibrated keeps a zero centre. No-op for a layer with neither. n rows:
  // pos [n], k, v [n][kv_heads][head_dim]; `centre` is ignored by a spec without the knob.
  void calibrate(uint32_t layer, size_t n, const uint32_t* pos, const float* k, const float* v, const float* centre = nullptr);
  // Whether the layer's outlier channels and key centre are fixed (calibrated or written).
  bool fixed(uint32_t layer) const { return layer_fixed_.at(layer); }

  // The key centre of (layer, KV head): [head_dim], zeros until calibrated; empty without centre.
  std::span<const float> key_centre(uint32_t layer, uint32_t head) const;
  // Bytes of the key centres (fp32, every layer and KV head): a fixed cost per store; 0 without.
  size_t centre_bytes() const { return centre_.size() * sizeof(float); }

  // Quantize on write. k, v: [kv_heads][head_dim] of the token at position pos of s.
  void write(uint32_t layer, const SeqPages& s, uint32_t pos, const float* k, const float* v);

  // Causal attention of nq query tokens at positions first .. first+nq-1 (their K/V written):
  // q, out: [nq][q_heads][head_dim]; query head h reads KV head h / (q_heads / kv_heads).
  // Softmax scale `scale` (0: 1/sqrt(head_dim)); sliding_window as attend_pages. nq <= max_chunk
  // when the spec has a window.
  void attend(uint32_t layer, const SeqPages& s, uint32_t first, uint32_t nq, uint32_t q_heads, const float* q, float* out,
              ThreadPool& pool, float scale = 0.0f, uint32_t sliding_window = 0) const;

  // Bytes of one page of the pool over all its layers and KV heads (both caches; the ring layers not).
  size_t page_bytes() const;
  // Bytes of one page of the ring layers (0 without rings), and of one sequence's window rings.
  size_t ring_page_bytes() const;
  size_t ring_bytes() const { return ring_page_bytes() * shape_.ring.pages; }
  // Bytes of one sequence's side buffers (fixed, whatever its length).
  size_t side_bytes() const;

  // Prefix tails (engine::ModelRunner::save_tail): the sink rows and the rows of positions
  // [end - window, end) of a sequence, and its window rings whole, copied to or from tail slot
  // `slot`. save_tail returns false, copying nothing, when the rings no longer hold the rows before
  // `end` (a sequence written more than a page past it).
  uint32_t tail_slots() const { return uint32_t(tail_count_); }
  size_t tail_bytes() const;
  bool save_tail(int seq, uint32_t end, uint32_t slot);
  void restore_tail(uint32_t slot, int seq, uint32_t end);

 private:
  struct Side {
    std::vector<uint16_t> sink;    // fp16 [layers][sink][2 (K, V)][kv_heads][head_dim]
    std::vector<uint16_t> recent;  // fp16 [layers][ring][2][kv_heads][head_dim]; position p at p % ring
    uint32_t written = 0;          // the end of the positions the sequence's steps wrote (recent holds [written - ring, written))
  };
  // A chunk more than the window (a chunk's rows are written before they attend; a rolled-back
  // chunk's too); with tails, a page more, so the rows before the last page boundary outlive it.
  size_t ring_extra() const { return size_t(shape_.max_chunk) + (tail_count_ ? page_size() : 0); }
  size_t ring() const { return spec_.policy.window ? size_t(spec_.policy.window) + ring_extra() : 0; }
  // Copies the side rows of a prefix of `end` positions between a sequence and a tail slot.
  void copy_tail(int seq, uint32_t end, uint32_t slot, bool save);
  const Side& side(int seq) const;
  Side& side(int seq) { return const_cast<Side&>(static_cast<const KvStore*>(this)->side(seq)); }
  int64_t slot(uint32_t layer, const SeqPages& s, uint32_t pos) const;
  size_t side_tail_bytes() const;  // a tail's side rows (sink + window of every layer); tail_bytes() adds the rings
  // Copies the window rings of seq to or from tail slot `slot`.
  void copy_rings(int seq, uint32_t slot, bool save);

  KvShape shape_;
  KvSpec spec_;
  std::unique_ptr<PagedKvCache> main_, edge_;   // edge_ only with edge layers
  std::unique_ptr<Quantizer> key_sim_;          // ksim: simulated key quantizer, else null
  std::vector<bool> layer_fixed_;               // [layers] outlier channels and key centre set: calibrated or written
  std::vector<float> centre_;                   // fp32 [layers][kv_heads][head_dim] key centres mu (centre), else empty
  std::vector<Side> sides_;                     // [sequence ids] (empty without sink/window)
  size_t tail_count_ = 0;                       // shape.tails with side buffers, else 0
  std::vector<uint16_t> tails_;                 // fp16 [tails][layers][sink + window][2][kv_heads][head_dim]
  std::vector<bool> ring_layer_;                // [layers] kept in the window rings (empty: none)
  std::vector<uint32_t> ring_written_;          // [max_seqs] the end of the positions each sequence's steps wrote
  std::vector<uint8_t> ring_tails_;             // [tails][ring layers][ring pages][kv_heads][block bytes]
};

}  // namespace tq::cpu
