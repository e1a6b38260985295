// The format of a paged KV cache as a value: shape, encodings, page layout and the codecs'
// tables, with no storage. Host pages (PagedKvCache), device pages (cuda::DeviceKvCache), the C
// API and the kernels' CacheView are all built from one, so every byte position has one
// definition (format.h) and every rotation one seed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "tq/codec/turboquant.h"
#include "tq/format.h"
#include "tq/kv/spec.h"

namespace tq {

class CacheFormat {
 public:
  // Throws tq::Error on a bad shape (layers, KV heads, head dim, page size) or a format the head
  // dim cannot use (e.g. a Hadamard rotation of a non-power-of-two padded dim).
  // sliding: [layers] whether each layer of this cache is one of the model's sliding-window
  // layers (KvSpec::cache_layers), which `ip=local` needs; without it that format is refused.
  CacheFormat(uint32_t layers, uint32_t kv_heads, uint32_t head_dim, const KvFormat& format, std::vector<bool> sliding = {});
  // The constructor's checks of the shape (layers, KV heads, head dim, page size), building nothing.
  static void check_shape(uint32_t layers, uint32_t kv_heads, uint32_t head_dim, const KvFormat& format);
  // The bytes of the codec tables a format of this (checked) shape holds, counted without building
  // them (TurboQuant::table_bytes of each layer's and KV head's K and V codec): PagedKvCache counts
  // them in its size check before they are built.
  static size_t table_bytes(uint32_t layers, uint32_t kv_heads, uint32_t head_dim, const KvFormat& format);
  size_t table_bytes() const { return table_bytes(layers_, kv_heads_, head_dim_, format_); }

  uint32_t layers() const { return layers_; }
  uint32_t kv_heads() const { return kv_heads_; }
  uint32_t head_dim() const { return head_dim_; }
  uint32_t page_size() const { return format_.page_size; }
  const KvFormat& format() const { return format_; }
  const BlockLayout& layout() const { return layout_; }

  // Storage of `num_pages` pages is [layers][num_pages][kv_heads][layout().bytes].
  size_t bytes(uint32_t num_pages) const { return size_t(layout_.bytes) * layers_ * num_pages * kv_heads_; }
  size_t block_offset(uint32_t layer, uint32_t page, uint32_t head, uint32_t num_pages) const {
    return ((size_t(layer) * num_pages + page) * kv_heads_ + head) * layout_.bytes;
  }
  // Bytes of one page over every layer and KV head, and of one layer's page over every KV head.
  size_t page_bytes() const { return bytes(1); }
  size_t layer_page_bytes() const { return size_t(layout_.bytes) * kv_heads_; }

  // Codec of the keys / values of one (layer, kv_head); null for float encodings.
  const TurboQuant* k_codec(uint32_t layer, uint32_t head) const;
  const TurboQuant* v_codec(uint32_t layer, uint32_t head) const;
  // The seed of the rotations of one (layer, kv_head, K or V).
  uint64_t seed_for(uint32_t layer, uint32_t head, bool value) const;

  // Split (fractional-width) K (value false) or V: the outlier channels of one (layer, kv_head),
  // split_outliers(head_dim) distinct channels (default: 0 .. n-1, codec_config). They are part of
  // what the bytes mean, so they may change only before any row of that layer is written (the
  // caller's contract: KvStore::calibrate). Copies made before keep the channels they had.
  void set_outliers(uint32_t layer, uint32_t head, bool value, const std::vector<uint16_t>& channels);

  // Per-tensor fp8 scales (1 unless set): stored value = x / scale.
  float k_scale() const { return k_scale_; }
  float v_scale() const { return v_scale_; }
  void set_fp8_scales(float k_scale, float v_scale);

 private:
  using Codecs = std::vector<std::shared_ptr<const TurboQuant>>;  // [layers * kv_heads]
  uint32_t layers_, kv_heads_, head_dim_;
  KvFormat format_;
  std::vector<bool> sliding_;  // [layers] or empty
  bool is_sliding(uint32_t layer) const { return !sliding_.empty() && sliding_[layer]; }
  BlockLayout layout_;
  float k_scale_ = 1.0f, v_scale_ = 1.0f;
  std::shared_ptr<const Codecs> k_codecs_, v_codecs_;  // shared by copies: the tables are immutable
};

// The TurboQuant codec of K (value false) or V of (layer, head) in pages of `format`: what
// CacheFormat builds, so that a quantizer outside the cache (the Python module's) writes the same
// codes. sliding: whether the layer is a sliding-window one (`ip=local`). Throws tq::Error when
// that tensor is stored as floats.
TqConfig codec_config(const KvFormat& format, uint32_t head_dim, uint32_t layer, uint32_t head, bool value, bool sliding = false);

}  // namespace tq
