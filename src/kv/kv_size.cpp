#include "tq/kv/kv_size.h"

#include <algorithm>
#include <vector>

#include "tq/check.h"
#include "tq/codec/rotation.h"
#include "tq/codec/turboquant.h"
#include "tq/format.h"

namespace tq {

namespace {
// The ring pages of a sliding window at a sequence of `tokens` tokens (0: no ring, every page).
uint32_t ring_pages(uint32_t window, uint64_t tokens, uint32_t page_size) {
  const uint32_t context = uint32_t(std::min<uint64_t>(tokens, UINT32_MAX));
  return WindowRing::make(window, context, kRingStep, page_size, false).pages;
}
}  // namespace

double KvSize::seq_bytes(uint64_t tokens) const {
  const uint64_t pages = tokens / page_size + (tokens % page_size != 0);  // no overflow near 2^64
  if (layer_windows.empty()) return double(pages) * page_bytes + side_bytes;
  double bytes = side_bytes;
  for (size_t l = 0; l < layer_windows.size(); ++l) {
    const uint32_t ring = ring_pages(layer_windows[l], tokens, page_size);
    bytes += double(ring ? ring : pages) * layer_page_bytes[l];
  }
  return bytes;
}

uint32_t KvSize::ringed_layers(uint64_t tokens) const {
  uint32_t n = 0;
  for (const uint32_t w : layer_windows) n += ring_pages(w, tokens, page_size) ? 1 : 0;
  return n;
}

KvSize kv_size(const KvSpec& s, uint32_t layers, uint32_t kv_heads, uint32_t head_dim, uint32_t side_extra,
               const std::vector<uint32_t>& windows) {
  TQ_CHECK(layers >= 1 && layers <= kMaxLayers, "layers must be 1..{}, got {}", kMaxLayers, layers);
  TQ_CHECK(kv_heads >= 1 && kv_heads <= 1024, "KV heads must be 1..1024, got {}", kv_heads);
  TQ_CHECK(head_dim >= 1 && head_dim <= kMaxHeadDim, "head dim must be 1..{}, got {}", kMaxHeadDim, head_dim);
  s.edge_layer_count(layers);  // refuses edge= or layers= the model's layers cannot have
  KvSize out;
  out.fp16_bytes_per_token = 2.0 * 2.0 * head_dim * kv_heads * layers;
  // Every layer in its own format (edge layers differ); bytes per token over all of them.
  for (uint32_t l = 0; l < layers; ++l) {
    const KvFormat f = s.layer_format(l, layers);
    TQ_CHECK(head_dim >= 2 || (f.k.enc != Encoding::kTqSplit && f.v.enc != Encoding::kTqSplit),
             "KV spec '{}': a fractional width splits the head's channels in two, so it needs head dim >= 2, got {}", s.text, head_dim);
    // A rotation CacheFormat could not build is refused here too (kv-size sized rot=hadamard at head dim 80)
    if (!f.auto_rotation && f.rotation == RotationKind::kHadamard)
      for (const TensorCode c : {f.k, f.v})
        TQ_CHECK(!is_tq(c.enc) || hadamard_fits(head_dim, c.enc == Encoding::kTqSplit),
                 "KV spec '{}': the Hadamard rotation needs power-of-two dimensions, but head dim {} pads to {}{} (rot=dense, or rot=auto)",
                 s.text, head_dim, padded_dim(head_dim),
                 c.enc == Encoding::kTqSplit ? fmt::format(" (a fractional width's parts: {} and {})", padded_dim(split_outliers(head_dim)),
                                                           padded_dim(head_dim - split_outliers(head_dim)))
                                             : std::string());
    out.bytes_per_token += bytes_per_token_head(f.k, f.v, head_dim, f.page_size) * kv_heads;
  }
  out.bits_per_element = 8.0 * out.bytes_per_token / (2.0 * head_dim * kv_heads * layers);
  out.ratio_vs_fp16 = out.fp16_bytes_per_token / out.bytes_per_token;
  out.page_size = s.format.page_size;
  out.page_bytes = double(s.page_bytes(layers, kv_heads, head_dim));
  out.side_bytes = double(s.policy.side_tokens(side_extra)) * out.fp16_bytes_per_token;
  if (s.policy.key_centre) out.centre_bytes = 4.0 * head_dim * kv_heads * layers;
  TQ_CHECK(windows.empty() || windows.size() == layers, "kv_size: {} layer windows for {} layers", windows.size(), layers);
  if (!windows.empty()) {
    out.layer_windows = windows;
    for (uint32_t l = 0; l < layers; ++l) out.layer_page_bytes.push_back(double(s.layer_page_bytes(l, layers, kv_heads, head_dim)));
  }
  return out;
}

}  // namespace tq
