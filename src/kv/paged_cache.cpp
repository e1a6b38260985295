#include "tq/kv/paged_cache.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "tq/check.h"
#include "tq/numeric.h"
#include "tq/rng.h"

namespace tq {

PagedKvCache::PagedKvCache(const CacheShape& shape, const KvSpec& spec) : shape_(shape), spec_(spec) {
  TQ_CHECK(shape.layers >= 1 && shape.layers <= 4096, "cache layers must be 1..4096, got {}", shape.layers);
  TQ_CHECK(shape.kv_heads >= 1 && shape.kv_heads <= 1024, "cache KV heads must be 1..1024, got {}", shape.kv_heads);
  TQ_CHECK(shape.head_dim >= 1 && shape.head_dim <= kMaxHeadDim, "head dim must be 1..{}, got {}", kMaxHeadDim, shape.head_dim);
  TQ_CHECK(shape.num_pages >= 1, "the cache needs at least one page, got {}", shape.num_pages);
  TQ_CHECK(spec.page_size >= 1 && spec.page_size <= kMaxPageSize, "page size must be 1..{}, got {}", kMaxPageSize, spec.page_size);
  layout_ = block_layout(spec.k, spec.v, shape.head_dim, spec.page_size);
  const double total = double(layout_.bytes) * shape.layers * shape.num_pages * shape.kv_heads;
  TQ_CHECK(total <= 64.0 * (1ull << 30), "the cache would take {:.1f} GiB; more than the 64 GiB allowed on the CPU", total / (1ull << 30));
  for (uint32_t l = 0; l < shape.layers; ++l)
    for (uint32_t h = 0; h < shape.kv_heads; ++h) {
      for (bool value : {false, true}) {
        const TensorCode c = value ? spec.v : spec.k;
        std::unique_ptr<TurboQuant> codec;
        if (is_tq(c.enc)) {
          TqConfig cfg;
          cfg.dim = shape.head_dim;
          cfg.bits = c.bits;
          cfg.prod = c.enc == Encoding::kTqProd;
          cfg.rotation = spec.rotation_for(shape.head_dim);
          cfg.seed = seed_for(l, h, value);
          cfg.norm_correction = spec.norm_correction && !cfg.prod;
          codec = std::make_unique<TurboQuant>(cfg);
        }
        (value ? v_codecs_ : k_codecs_).push_back(std::move(codec));
      }
    }
  data_.assign(size_t(total), 0);
}

uint64_t PagedKvCache::seed_for(uint32_t layer, uint32_t head, bool value) const {
  return derive_seed(spec_.seed, layer, head, value ? 2 : 1);
}

void PagedKvCache::set_fp8_scales(float k_scale, float v_scale) {
  TQ_CHECK(k_scale > 0 && std::isfinite(k_scale) && v_scale > 0 && std::isfinite(v_scale),
           "fp8 scales must be positive and finite, got {} and {}", k_scale, v_scale);
  k_scale_ = k_scale;
  v_scale_ = v_scale;
}

uint8_t* PagedKvCache::block(uint32_t layer, uint32_t page, uint32_t head) {
  return const_cast<uint8_t*>(static_cast<const PagedKvCache*>(this)->block(layer, page, head));
}
const uint8_t* PagedKvCache::block(uint32_t layer, uint32_t page, uint32_t head) const {
  TQ_CHECK(layer < shape_.layers && page < shape_.num_pages && head < shape_.kv_heads,
           "block ({}, {}, {}) is outside the cache ({} layers, {} pages, {} KV heads)", layer, page, head, shape_.layers,
           shape_.num_pages, shape_.kv_heads);
  return data_.data() + ((size_t(layer) * shape_.num_pages + page) * shape_.kv_heads + head) * layout_.bytes;
}

const TurboQuant* PagedKvCache::k_codec(uint32_t layer, uint32_t head) const { return k_codecs_[codec_index(layer, head)].get(); }
const TurboQuant* PagedKvCache::v_codec(uint32_t layer, uint32_t head) const { return v_codecs_[codec_index(layer, head)].get(); }

void PagedKvCache::check_slot(uint32_t layer, int64_t slot) const {
  TQ_CHECK(layer < shape_.layers, "layer {} is outside the cache ({} layers)", layer, shape_.layers);
  TQ_CHECK(slot >= 0 && slot < int64_t(shape_.num_pages) * spec_.page_size, "slot {} is outside the cache ({} pages of {} tokens)", slot,
           shape_.num_pages, spec_.page_size);
}

void PagedKvCache::write(uint32_t layer, int64_t slot, const float* k, const float* v) {
  if (slot == -1) return;
  check_slot(layer, slot);
  const uint32_t page = uint32_t(slot / spec_.page_size), off = uint32_t(slot % spec_.page_size), d = shape_.head_dim;
  const BlockLayout& L = layout_;
  for (uint32_t h = 0; h < shape_.kv_heads; ++h) {
    uint8_t* b = block(layer, page, h);
    if (const TurboQuant* kc = k_codec(layer, h)) {
      kc->encode(k + size_t(h) * d, RowRef{reinterpret_cast<uint32_t*>(b + L.k_codes + off * L.k_row), b + L.k_qjl + off * L.k_qjl_row,
                                           reinterpret_cast<uint16_t*>(b + L.k_norms) + off,
                                           reinterpret_cast<uint16_t*>(b + L.k_rnorms) + off});
    } else {
      store_float_row(spec_.k.enc, k + size_t(h) * d, d, k_scale_, b + L.k_codes + off * L.k_row);
    }
    if (const TurboQuant* vc = v_codec(layer, h)) {
      vc->encode(v + size_t(h) * d, RowRef{reinterpret_cast<uint32_t*>(b + L.v_codes + off * L.v_row), nullptr,
                                           reinterpret_cast<uint16_t*>(b + L.v_norms) + off, nullptr});
    } else {
      store_float_row(spec_.v.enc, v + size_t(h) * d, d, v_scale_, b + L.v_codes + off * L.v_row);
    }
  }
}

void PagedKvCache::read(uint32_t layer, int64_t slot, float* k, float* v) const {
  check_slot(layer, slot);
  const uint32_t page = uint32_t(slot / spec_.page_size), off = uint32_t(slot % spec_.page_size), d = shape_.head_dim;
  const BlockLayout& L = layout_;
  for (uint32_t h = 0; h < shape_.kv_heads; ++h) {
    const uint8_t* b = block(layer, page, h);
    if (const TurboQuant* kc = k_codec(layer, h)) {
      kc->decode(ConstRowRef{reinterpret_cast<const uint32_t*>(b + L.k_codes + off * L.k_row), b + L.k_qjl + off * L.k_qjl_row,
                             reinterpret_cast<const uint16_t*>(b + L.k_norms) + off,
                             reinterpret_cast<const uint16_t*>(b + L.k_rnorms) + off},
                 k + size_t(h) * d);
    } else {
      load_float_row(spec_.k.enc, b + L.k_codes + off * L.k_row, d, k_scale_, k + size_t(h) * d);
    }
    if (const TurboQuant* vc = v_codec(layer, h)) {
      vc->decode(ConstRowRef{reinterpret_cast<const uint32_t*>(b + L.v_codes + off * L.v_row), nullptr,
                             reinterpret_cast<const uint16_t*>(b + L.v_norms) + off, nullptr},
                 v + size_t(h) * d);
    } else {
      load_float_row(spec_.v.enc, b + L.v_codes + off * L.v_row, d, v_scale_, v + size_t(h) * d);
    }
  }
}

}  // namespace tq
