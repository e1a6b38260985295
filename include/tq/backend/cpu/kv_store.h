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
//   ksim         keys quantize-dequantized by a CPU baseline quantizer before they are stored in a
//                float cache: a simulation of that format, for comparisons only.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tq/backend/cpu/thread_pool.h"
#include "tq/codec/quantizer.h"
#include "tq/kv/paged_cache.h"
#include "tq/kv/spec.h"

namespace tq::cpu {

struct KvShape {
  uint32_t layers = 1, kv_heads = 1, head_dim = 64;
  uint32_t num_pages = 1;   // pages in the shared pool (each page holds page_size tokens of every layer)
  uint32_t max_chunk = 64;  // most query tokens per attend() call (sizes the recent-token ring)
};

// The pages of one sequence, as the block manager has them.
struct SeqPages {
  int seq = 0;                         // block manager id: keys the side buffers
  const std::vector<int32_t>* block_table = nullptr;  // [pages] page ids in position order
};

class KvStore {
 public:
  // Throws tq::Error on a shape or spec the caches reject (head dim, page counts, edge layers).
  KvStore(const KvShape& shape, const KvSpec& spec);

  const KvShape& shape() const { return shape_; }
  const KvSpec& spec() const { return spec_; }
  uint32_t page_size() const { return spec_.format.page_size; }
  // The cache holding `layer`, and the layer's index inside it.
  const PagedKvCache& cache_of(uint32_t layer, uint32_t* local) const;

  // Side buffers (sink, window) of a new sequence id; a no-op without them.
  void add_sequence(int seq);

  // Quantize on write. k, v: [kv_heads][head_dim] of the token at position pos of s.
  void write(uint32_t layer, const SeqPages& s, uint32_t pos, const float* k, const float* v);

  // Causal attention of nq query tokens at positions first .. first+nq-1 (their K/V written):
  // q, out: [nq][q_heads][head_dim]; query head h reads KV head h / (q_heads / kv_heads).
  // Softmax scale 1/sqrt(head_dim). nq <= max_chunk when the spec has a window.
  void attend(uint32_t layer, const SeqPages& s, uint32_t first, uint32_t nq, uint32_t q_heads, const float* q, float* out,
              ThreadPool& pool) const;

  // Bytes of one page over all layers and KV heads (both caches).
  size_t page_bytes() const;
  // Bytes of one sequence's side buffers (fixed, whatever its length).
  size_t side_bytes() const;

 private:
  struct Side {
    std::vector<uint16_t> sink;    // fp16 [layers][sink][2 (K, V)][kv_heads][head_dim]
    std::vector<uint16_t> recent;  // fp16 [layers][ring][2][kv_heads][head_dim]; position p at p % ring
  };
  // One task of attend(): KV head kvh, the queries of tokens j0..j1-1, the positions c0..c1-1.
  // part: [queries][m, d, acc [head_dim], acc_rot [padded dim]] its softmax state and unnormalized
  // outputs (acc_rot: TurboQuant values, still rotated).
  void attend_part(uint32_t layer, const SeqPages& s, uint32_t kvh, uint32_t first, uint32_t j0, uint32_t j1, uint32_t c0, uint32_t c1,
                   uint32_t q_heads, const float* q, float* part) const;
  bool in_side(uint32_t t, uint32_t qpos) const { return t < spec_.policy.sink || qpos - t < spec_.policy.window; }
  size_t ring() const { return spec_.policy.window ? size_t(spec_.policy.window) + shape_.max_chunk : 0; }
  const Side& side(int seq) const;
  Side& side(int seq) { return const_cast<Side&>(static_cast<const KvStore*>(this)->side(seq)); }
  int64_t slot(const SeqPages& s, uint32_t pos) const;

  KvShape shape_;
  KvSpec spec_;
  std::unique_ptr<PagedKvCache> main_, edge_;   // edge_ only with edge layers
  std::unique_ptr<Quantizer> key_sim_;          // ksim: simulated key quantizer, else null
  std::vector<Side> sides_;                     // [sequence ids] (empty without sink/window)
};

}  // namespace tq::cpu
