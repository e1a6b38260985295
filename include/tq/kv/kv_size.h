// The size of a KV cache configuration before any storage exists: what `tq kv-size` prints and
// what the Python module's kv_size() returns, computed once here so the two cannot drift apart.
#pragma once

#include <cstdint>
#include <vector>

#include "tq/kv/spec.h"
#include "tq/kv/window_ring.h"

namespace tq {

// The CPU runner writes a prefill chunk of 64 tokens into the side buffer before they attend, so
// its side buffer holds that many rows beyond sink + window (docs/kv-specs.md); kv-size counts them.
inline constexpr uint32_t kKvSizeSideExtra = 64;

struct KvSize {
  double bits_per_element = 0;      // packed pages over every layer (edge layers in their format), norms and padding included
  double bytes_per_token = 0;       // the same in bytes per token, all layers and KV heads, full pages
  double fp16_bytes_per_token = 0;  // K and V in fp16, 2 bytes each
  double ratio_vs_fp16 = 0;         // fp16_bytes_per_token / bytes_per_token
  uint32_t page_size = 16;
  double page_bytes = 0;  // one page over every layer and KV head
  double side_bytes = 0;  // the fp16 sink/window side buffer: a fixed cost per sequence
  double centre_bytes = 0;  // centre: the fp32 key centres of every layer and KV head, a fixed cost per cache (not per sequence)
  // Sliding-window layers kept in window rings (the engines' default: tq/kv/window_ring.h), when
  // kv_size was given the layers' windows: [layer] the window (0: a global layer) and one page of
  // the layer's bytes.
  std::vector<uint32_t> layer_windows;
  std::vector<double> layer_page_bytes;

  // Bytes of one sequence of `tokens` tokens: whole pages (a partly filled last page costs a full
  // page) plus the side buffer; a sliding-window layer holds its ring's pages where the ring is
  // smaller than the sequence (WindowRing::make, sub-steps of kRingStep, no prefix tails).
  double seq_bytes(uint64_t tokens) const;
  // The sliding-window layers that hold a ring at `tokens` (0 without windows).
  uint32_t ringed_layers(uint64_t tokens) const;
};

// Throws tq::Error naming the value for a shape outside layers 1..1024, KV heads 1..1024, head dim
// 1..kMaxHeadDim.
// windows: empty, or [layers] each layer's sliding window (ModelConfig::layer_window; 0: global),
// whose layers then count at their window rings in seq_bytes.
KvSize kv_size(const KvSpec& spec, uint32_t layers, uint32_t kv_heads, uint32_t head_dim, uint32_t side_extra = kKvSizeSideExtra,
               const std::vector<uint32_t>& windows = {});

}  // namespace tq
