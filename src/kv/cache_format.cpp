#include "tq/kv/cache_format.h"

#include <cmath>

#include "tq/check.h"
#include "tq/rng.h"

namespace tq {

CacheFormat::CacheFormat(uint32_t layers, uint32_t kv_heads, uint32_t head_dim, const KvFormat& format, std::vector<bool> sliding)
    : layers_(layers), kv_heads_(kv_heads), head_dim_(head_dim), format_(format), sliding_(std::move(sliding)) {
  check_shape(layers, kv_heads, head_dim, format);
  TQ_CHECK(sliding_.empty() || sliding_.size() == layers, "cache of {} layers given sliding-window flags for {}", layers, sliding_.size());
  TQ_CHECK(!format.norm_unbiased_local || !sliding_.empty(),
           "KV format '{}': 'ip=local' applies to the model's sliding-window layers, which this cache was not told (a cache made outside "
           "an engine has no model: use 'ip' or none)",
           format.canonical());
  layout_ = block_layout(format.k, format.v, head_dim, format.page_size);
  auto k = std::make_shared<Codecs>(), v = std::make_shared<Codecs>();
  for (uint32_t l = 0; l < layers; ++l)
    for (uint32_t h = 0; h < kv_heads; ++h)
      for (bool value : {false, true}) {
        const TensorCode c = value ? format.v : format.k;
        std::shared_ptr<const TurboQuant> codec;
        if (is_tq(c.enc))
          codec = std::make_shared<const TurboQuant>(codec_config(format, head_dim, l, h, value, is_sliding(l)));
        (value ? *v : *k).push_back(std::move(codec));
      }
  k_codecs_ = std::move(k);
  v_codecs_ = std::move(v);
}

void CacheFormat::check_shape(uint32_t layers, uint32_t kv_heads, uint32_t head_dim, const KvFormat& format) {
  TQ_CHECK(layers >= 1 && layers <= 4096, "cache layers must be 1..4096, got {}", layers);
  TQ_CHECK(kv_heads >= 1 && kv_heads <= 1024, "cache KV heads must be 1..1024, got {}", kv_heads);
  TQ_CHECK(head_dim >= 1 && head_dim <= kMaxHeadDim, "head dim must be 1..{}, got {}", kMaxHeadDim, head_dim);
  TQ_CHECK(format.page_size >= 1 && format.page_size <= kMaxPageSize, "page size must be 1..{}, got {}", kMaxPageSize, format.page_size);
}

size_t CacheFormat::table_bytes(uint32_t layers, uint32_t kv_heads, uint32_t head_dim, const KvFormat& format) {
  // Every (layer, head) codec of a tensor has the tables of layer 0's, head 0's: only seeds differ
  // (and ip=local's norms, which hold no table).
  size_t one = 0;  // a K and a V codec
  for (bool value : {false, true})
    if (is_tq((value ? format.v : format.k).enc)) one += TurboQuant::table_bytes(codec_config(format, head_dim, 0, 0, value));
  return one * layers * kv_heads;
}

uint64_t CacheFormat::seed_for(uint32_t layer, uint32_t head, bool value) const {
  return derive_seed(format_.seed, layer, head, value ? 2 : 1);
}

TqConfig codec_config(const KvFormat& format, uint32_t head_dim, uint32_t layer, uint32_t head, bool value, bool sliding) {
  const TensorCode c = value ? format.v : format.k;
  TQ_CHECK(is_tq(c.enc), "codec_config: {} is stored as floats, not TurboQuant", value ? "V" : "K");
  TqConfig cfg;
  cfg.dim = head_dim;
  cfg.bits = c.bits;
  cfg.prod = c.enc == Encoding::kTqProd;
  cfg.seed = derive_seed(format.seed, layer, head, value ? 2 : 1);
  cfg.norm_correction = format.norm_correction && !cfg.prod;
  cfg.norm_unbiased = (value ? format.norm_unbiased_v : format.norm_unbiased_k) && !cfg.prod && (!format.norm_unbiased_local || sliding);
  cfg.split = c.enc == Encoding::kTqSplit;
  cfg.tcq = c.enc == Encoding::kTqTcq;
  cfg.uniform = value_levels_uniform(value, c);
  cfg.rotation = format.rotation_for(head_dim, cfg.split);  // a split row: both parts Hadamard, or both dense
  return cfg;
}

void CacheFormat::set_outliers(uint32_t layer, uint32_t head, bool value, const std::vector<uint16_t>& channels) {
  TQ_CHECK(layer < layers_ && head < kv_heads_, "codec ({}, {}) is outside the cache ({} layers, {} KV heads)", layer, head, layers_, kv_heads_);
  const TensorCode c = value ? format_.v : format_.k;
  TQ_CHECK(c.enc == Encoding::kTqSplit, "set_outliers: {} is not stored at a fractional width (spec '{}')", value ? "V" : "K",
           format_.canonical());
  TqConfig cfg = codec_config(format_, head_dim_, layer, head, value, is_sliding(layer));
  cfg.outliers = channels;
  auto codecs = std::make_shared<Codecs>(*(value ? v_codecs_ : k_codecs_));  // copy on write: copies keep theirs
  (*codecs)[size_t(layer) * kv_heads_ + head] = std::make_shared<const TurboQuant>(cfg);
  (value ? v_codecs_ : k_codecs_) = std::move(codecs);
}

const TurboQuant* CacheFormat::k_codec(uint32_t layer, uint32_t head) const {
  TQ_CHECK(layer < layers_ && head < kv_heads_, "codec ({}, {}) is outside the cache ({} layers, {} KV heads)", layer, head, layers_, kv_heads_);
  return (*k_codecs_)[size_t(layer) * kv_heads_ + head].get();
}
const TurboQuant* CacheFormat::v_codec(uint32_t layer, uint32_t head) const {
  TQ_CHECK(layer < layers_ && head < kv_heads_, "codec ({}, {}) is outside the cache ({} layers, {} KV heads)", layer, head, layers_, kv_heads_);
  return (*v_codecs_)[size_t(layer) * kv_heads_ + head].get();
}

void CacheFormat::set_fp8_scales(float k_scale, float v_scale) {
  TQ_CHECK(k_scale > 0 && std::isfinite(k_scale) && v_scale > 0 && std::isfinite(v_scale),
           "fp8 scales must be positive and finite, got {} and {}", k_scale, v_scale);
  k_scale_ = k_scale;
  v_scale_ = v_scale;
}

}  // namespace tq
