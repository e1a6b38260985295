// The CPU home of the packed paged-KV format: a pool of pages for every layer, written token by
// token (quantize on write) and read back through the codecs. Sequences own pages through block
// tables (see PageAllocator); slot = page * page_size + offset, and a slot of -1 means "skip".
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tq/codec/float_rows.h"
#include "tq/format.h"
#include "tq/kv/spec.h"
#include "tq/codec/turboquant.h"

namespace tq {

struct CacheShape {
  uint32_t layers = 1;
  uint32_t kv_heads = 1;
  uint32_t head_dim = 128;
  uint32_t num_pages = 1;  // pages per layer
};

class PagedKvCache {
 public:
  // Throws tq::Error on a bad shape (head dim, counts) or a spec the head dim cannot use.
  PagedKvCache(const CacheShape& shape, const KvSpec& spec);

  const CacheShape& shape() const { return shape_; }
  const KvSpec& spec() const { return spec_; }
  const BlockLayout& layout() const { return layout_; }
  uint32_t page_size() const { return spec_.page_size; }
  size_t bytes() const { return data_.size(); }
  const uint8_t* data() const { return data_.data(); }

  // [layout().bytes] bytes of the (layer, page, kv_head) block.
  uint8_t* block(uint32_t layer, uint32_t page, uint32_t head);
  const uint8_t* block(uint32_t layer, uint32_t page, uint32_t head) const;

  // Codec of the keys / values of one (layer, kv_head); null for float encodings.
  const TurboQuant* k_codec(uint32_t layer, uint32_t head) const;
  const TurboQuant* v_codec(uint32_t layer, uint32_t head) const;
  // Per-tensor fp8 scales (1 unless set): stored value = x / scale.
  float k_scale() const { return k_scale_; }
  float v_scale() const { return v_scale_; }
  void set_fp8_scales(float k_scale, float v_scale);

  // Quantize on write: k, v: [kv_heads][head_dim] of one token. slot -1 is skipped.
  void write(uint32_t layer, int64_t slot, const float* k, const float* v);
  // Dequantized token: k, v: [kv_heads][head_dim].
  void read(uint32_t layer, int64_t slot, float* k, float* v) const;

  // The seed of the rotations of one (layer, kv_head, K or V): part of the cache's metadata.
  uint64_t seed_for(uint32_t layer, uint32_t head, bool value) const;

 private:
  void check_slot(uint32_t layer, int64_t slot) const;
  size_t codec_index(uint32_t layer, uint32_t head) const { return size_t(layer) * shape_.kv_heads + head; }

  CacheShape shape_;
  KvSpec spec_;
  BlockLayout layout_;
  float k_scale_ = 1.0f, v_scale_ = 1.0f;
  std::vector<std::unique_ptr<TurboQuant>> k_codecs_, v_codecs_;  // [layers * kv_heads]
  std::vector<uint8_t> data_;  // [layers][num_pages][kv_heads][layout_.bytes]
};

}  // namespace tq
