#include "tq/kv/paged_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "tq/check.h"
#include "tq/numeric.h"

namespace tq {
namespace {

// A cache in host memory: its pages and its format's codec tables, in bytes, refused past 64 GiB.
void check_host_bytes(double pages, double tables) {
  constexpr double gib = double(1ull << 30);
  if (pages + tables > 64 * gib)
    throw SizeError(fmt::format("the cache would take {:.1f} GiB ({:.1f} GiB of pages, {:.1f} GiB of codec tables); more than the 64 GiB "
                                "allowed on the CPU",
                                (pages + tables) / gib, pages / gib, tables / gib));
}

// The format of a cache of `shape`, its size checked first: the codec tables are counted before they
// are built (at odd head dims each is a dense rotation: ~4 MiB and ~1 s, minutes for a model).
CacheFormat checked_format(const CacheShape& shape, const KvFormat& format) {
  PagedKvCache::check_size(shape, format);
  return CacheFormat(shape.layers, shape.kv_heads, shape.head_dim, format);
}

}  // namespace

void PagedKvCache::check_size(const CacheShape& shape, const KvFormat& format) {
  CacheFormat::check_shape(shape.layers, shape.kv_heads, shape.head_dim, format);
  const double pages = double(block_layout(format.k, format.v, shape.head_dim, format.page_size).bytes) * shape.kv_heads * shape.layers *
                       shape.num_pages;
  check_host_bytes(pages, double(CacheFormat::table_bytes(shape.layers, shape.kv_heads, shape.head_dim, format)));
}

PagedKvCache::PagedKvCache(const CacheFormat& format, uint32_t num_pages)
    : PagedKvCache(format, std::vector<uint32_t>(format.layers(), num_pages)) {}

PagedKvCache::PagedKvCache(const CacheFormat& format, const std::vector<uint32_t>& layer_pages)
    : format_(format), shape_{format.layers(), format.kv_heads(), format.head_dim(), 0}, layer_pages_(layer_pages) {
  TQ_CHECK(layer_pages.size() == format.layers(), "{} page counts for a cache of {} layers", layer_pages.size(), format.layers());
  double total = 0;  // bytes, checked before they are counted in size_t or allocated
  for (uint32_t l = 0; l < format.layers(); ++l) {
    TQ_CHECK(layer_pages[l] >= 1, "the cache needs at least one page, got {} (layer {})", layer_pages[l], l);
    total += double(format.layer_page_bytes()) * layer_pages[l];
    shape_.num_pages = std::max(shape_.num_pages, layer_pages[l]);
  }
  check_host_bytes(total, double(format.table_bytes()));
  for (uint32_t n : layer_pages) layer_offset_.push_back(bytes_), bytes_ += format.layer_page_bytes() * n;
  owned_.assign(bytes_, 0);
  data_ = owned_.data();
}

PagedKvCache::PagedKvCache(const CacheFormat& format, uint32_t num_pages, ViewTag)
    : format_(format), shape_{format.layers(), format.kv_heads(), format.head_dim(), num_pages}, bytes_(format.bytes(num_pages)) {}

PagedKvCache PagedKvCache::view(const CacheFormat& format, uint8_t* data, uint32_t num_pages) {
  TQ_CHECK(num_pages >= 1, "the cache needs at least one page, got {}", num_pages);
  TQ_CHECK(data != nullptr, "a view of pages needs their bytes");
  PagedKvCache c(format, num_pages, ViewTag{});
  c.data_ = data;
  return c;
}

PagedKvCache::PagedKvCache(const CacheShape& shape, const KvFormat& format)
    : PagedKvCache(checked_format(shape, format), shape.num_pages) {}

uint8_t* PagedKvCache::block(uint32_t layer, uint32_t page, uint32_t head) {
  return const_cast<uint8_t*>(static_cast<const PagedKvCache*>(this)->block(layer, page, head));
}
const uint8_t* PagedKvCache::block(uint32_t layer, uint32_t page, uint32_t head) const {
  TQ_CHECK(layer < shape_.layers && page < num_pages(layer) && head < shape_.kv_heads,
           "block ({}, {}, {}) is outside the cache ({} layers, {} pages, {} KV heads)", layer, page, head, shape_.layers,
           layer < shape_.layers ? num_pages(layer) : shape_.num_pages, shape_.kv_heads);
  if (layer_offset_.empty()) return data_ + format_.block_offset(layer, page, head, shape_.num_pages);  // a view
  return data_ + layer_offset_[layer] + (size_t(page) * shape_.kv_heads + head) * format_.layout().bytes;
}

void PagedKvCache::check_slot(uint32_t layer, int64_t slot) const {
  TQ_CHECK(layer < shape_.layers, "layer {} is outside the cache ({} layers)", layer, shape_.layers);
  TQ_CHECK(slot >= 0 && slot < int64_t(num_pages(layer)) * format_.page_size(), "slot {} is outside layer {} of the cache ({} pages of {} tokens)",
           slot, layer, num_pages(layer), format_.page_size());
}

std::array<std::pair<uint32_t, uint32_t>, 6> PagedKvCache::slot_pieces(uint32_t off) const {
  const BlockLayout& L = format_.layout();
  const uint32_t k_rnorm = format_.format().k.enc == Encoding::kTqProd ? 2 : 0;
  return {{{L.k_codes + off * L.k_row, L.k_row},
           {L.k_qjl + off * L.k_qjl_row, L.k_qjl_row},
           {L.k_norms + off * L.k_norm_row, L.k_norm_row},
           {L.k_rnorms + off * k_rnorm, k_rnorm},
           {L.v_codes + off * L.v_row, L.v_row},
           {L.v_norms + off * L.v_norm_row, L.v_norm_row}}};
}

void PagedKvCache::save_slot(uint32_t layer, int64_t slot, std::vector<uint8_t>& to) const {
  check_slot(layer, slot);
  const uint32_t page = uint32_t(slot / format_.page_size()), off = uint32_t(slot % format_.page_size());
  for (uint32_t h = 0; h < shape_.kv_heads; ++h)
    for (const auto& [at, n] : slot_pieces(off)) to.insert(to.end(), block(layer, page, h) + at, block(layer, page, h) + at + n);
}

const uint8_t* PagedKvCache::restore_slot(uint32_t layer, int64_t slot, const uint8_t* from) {
  check_slot(layer, slot);
  const uint32_t page = uint32_t(slot / format_.page_size()), off = uint32_t(slot % format_.page_size());
  for (uint32_t h = 0; h < shape_.kv_heads; ++h)
    for (const auto& [at, n] : slot_pieces(off)) {
      std::memcpy(block(layer, page, h) + at, from, n);
      from += n;
    }
  return from;
}

void PagedKvCache::write(uint32_t layer, int64_t slot, const float* k, const float* v) {
  if (slot == -1) return;
  check_slot(layer, slot);
  const uint32_t page = uint32_t(slot / format_.page_size()), off = uint32_t(slot % format_.page_size());
  // A row the encoders refuse (a non-finite value, a norm past fp16) throws after the rows before
  // it were written: the slot's bytes of every head are kept and put back, so a refused write
  // stores nothing (docs/format.md), not a token of mixed old and new rows.
  thread_local std::vector<uint8_t> saved;  // [kv_heads][the pieces' bytes]: a write per token and layer, so no allocation each
  saved.clear();
  save_slot(layer, slot, saved);
  try {
    write_heads(layer, page, off, k, v);
  } catch (...) {
    restore_slot(layer, slot, saved.data());
    throw;
  }
}

void PagedKvCache::write_heads(uint32_t layer, uint32_t page, uint32_t off, const float* k, const float* v) {
  const uint32_t d = shape_.head_dim;
  const BlockLayout& L = format_.layout();
  for (uint32_t h = 0; h < shape_.kv_heads; ++h) {
    uint8_t* b = block(layer, page, h);
    if (const TurboQuant* kc = format_.k_codec(layer, h)) {
      kc->encode(k + size_t(h) * d, RowRef{reinterpret_cast<uint32_t*>(b + L.k_codes + off * L.k_row), b + L.k_qjl + off * L.k_qjl_row,
                                           reinterpret_cast<uint16_t*>(b + L.k_norms + off * L.k_norm_row),
                                           reinterpret_cast<uint16_t*>(b + L.k_rnorms) + off});
    } else {
      store_float_row(format_.format().k.enc, k + size_t(h) * d, d, format_.k_scale(), b + L.k_codes + off * L.k_row);
    }
    if (const TurboQuant* vc = format_.v_codec(layer, h)) {
      vc->encode(v + size_t(h) * d, RowRef{reinterpret_cast<uint32_t*>(b + L.v_codes + off * L.v_row), nullptr,
                                           reinterpret_cast<uint16_t*>(b + L.v_norms + off * L.v_norm_row), nullptr});
    } else {
      store_float_row(format_.format().v.enc, v + size_t(h) * d, d, format_.v_scale(), b + L.v_codes + off * L.v_row);
    }
  }
}

void PagedKvCache::read(uint32_t layer, int64_t slot, float* k, float* v) const {
  check_slot(layer, slot);
  const uint32_t page = uint32_t(slot / format_.page_size()), off = uint32_t(slot % format_.page_size()), d = shape_.head_dim;
  const BlockLayout& L = format_.layout();
  for (uint32_t h = 0; h < shape_.kv_heads; ++h) {
    const uint8_t* b = block(layer, page, h);
    if (const TurboQuant* kc = format_.k_codec(layer, h)) {
      kc->decode(ConstRowRef{reinterpret_cast<const uint32_t*>(b + L.k_codes + off * L.k_row), b + L.k_qjl + off * L.k_qjl_row,
                             reinterpret_cast<const uint16_t*>(b + L.k_norms + off * L.k_norm_row),
                             reinterpret_cast<const uint16_t*>(b + L.k_rnorms) + off},
                 k + size_t(h) * d);
    } else {
      load_float_row(format_.format().k.enc, b + L.k_codes + off * L.k_row, d, format_.k_scale(), k + size_t(h) * d);
    }
    if (const TurboQuant* vc = format_.v_codec(layer, h)) {
      vc->decode(ConstRowRef{reinterpret_cast<const uint32_t*>(b + L.v_codes + off * L.v_row), nullptr,
                             reinterpret_cast<const uint16_t*>(b + L.v_norms + off * L.v_norm_row), nullptr},
                 v + size_t(h) * d);
    } else {
      load_float_row(format_.format().v.enc, b + L.v_codes + off * L.v_row, d, format_.v_scale(), v + size_t(h) * d);
    }
  }
}

}  // namespace tq
