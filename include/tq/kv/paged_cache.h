// Host storage of the packed paged-KV format: the pages of every layer, written token by token
// (quantize on write) and read back through the format's codecs. Sequences own pages through
// block tables (kv/page_allocator.h); slot = page * page_size + offset, and a slot of -1 means
// "skip". A view (PagedKvCache::view) does the same on bytes someone else owns, e.g. the uint8
// tensor of the Python package's torch ops, so that they write and read the pages with this code.
#pragma once

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "tq/codec/float_rows.h"
#include "tq/kv/cache_format.h"

namespace tq {

struct CacheShape {
  uint32_t layers = 1;
  uint32_t kv_heads = 1;
  uint32_t head_dim = 128;
  uint32_t num_pages = 1;  // pages per layer (the most of any layer when layers differ: num_pages(layer))
};

class PagedKvCache {
 public:
  // num_pages pages of `format`. Throws tq::Error when there are none or they and the format's codec
  // tables would take more than the 64 GiB allowed on the CPU.
  PagedKvCache(const CacheFormat& format, uint32_t num_pages);
  // layer_pages[l] pages for layer l: [layer 0: pages 0][layer 1: pages 1]...; each page laid out
  // as in the uniform cache. The window rings (kv/window_ring.h) give sliding-window layers fewer.
  PagedKvCache(const CacheFormat& format, const std::vector<uint32_t>& layer_pages);
  // The same, building the format (throws on a bad shape or a format the head dim cannot use); the
  // size is checked first, the codec tables counted before they are built.
  PagedKvCache(const CacheShape& shape, const KvFormat& format);
  // Throws what the constructor from a shape would, building nothing: a shape the format cannot
  // take, or pages and codec tables past the 64 GiB allowed on the CPU (counted, not allocated).
  static void check_size(const CacheShape& shape, const KvFormat& format);
  // The pages at `data` ([layers][num_pages][kv_heads][layout().bytes], format.bytes(num_pages)
  // bytes that outlive the view), not owned and not cleared.
  static PagedKvCache view(const CacheFormat& format, uint8_t* data, uint32_t num_pages);
  // The bytes are owned or viewed through data_: a copy would point at the original's.
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;
  PagedKvCache(PagedKvCache&&) = default;  // a moved vector keeps its buffer, so data_ stays valid

  const CacheFormat& format() const { return format_; }
  const CacheShape& shape() const { return shape_; }
  const BlockLayout& layout() const { return format_.layout(); }
  uint32_t page_size() const { return format_.page_size(); }
  size_t bytes() const { return bytes_; }
  uint32_t num_pages(uint32_t layer) const { return layer_pages_.empty() ? shape_.num_pages : layer_pages_.at(layer); }
  const uint8_t* data() const { return data_; }

  // [layout().bytes] bytes of the (layer, page, kv_head) block.
  uint8_t* block(uint32_t layer, uint32_t page, uint32_t head);
  const uint8_t* block(uint32_t layer, uint32_t page, uint32_t head) const;

  // Fractional-width K (value false) or V: the outlier channels of (layer, head), before any row of
  // that layer is written (CacheFormat::set_outliers).
  void set_outliers(uint32_t layer, uint32_t head, bool value, const std::vector<uint16_t>& channels) {
    format_.set_outliers(layer, head, value, channels);
  }

  // Quantize on write: k, v: [kv_heads][head_dim] of one token. slot -1 is skipped.
  void write(uint32_t layer, int64_t slot, const float* k, const float* v);
  // Dequantized token: k, v: [kv_heads][head_dim].
  void read(uint32_t layer, int64_t slot, float* k, float* v) const;
  // The bytes a write() to `slot` of `layer` changes (every head's codes, QJL signs and norms of
  // that offset), appended to `to`; restore_slot puts them back from `from` and returns the end of
  // them. A caller writing many tokens keeps them to undo the writes when a later row is refused.
  void save_slot(uint32_t layer, int64_t slot, std::vector<uint8_t>& to) const;
  const uint8_t* restore_slot(uint32_t layer, int64_t slot, const uint8_t* from);

 private:
  struct ViewTag {};
  PagedKvCache(const CacheFormat& format, uint32_t num_pages, ViewTag);
  void check_slot(uint32_t layer, int64_t slot) const;
  // (offset in the block, bytes) of the rows of token offset `off`: K codes, QJL signs, norms,
  // prod's residual norms, V codes, V norms.
  std::array<std::pair<uint32_t, uint32_t>, 6> slot_pieces(uint32_t off) const;
  void write_heads(uint32_t layer, uint32_t page, uint32_t off, const float* k, const float* v);  // write()'s encoding, every head

  CacheFormat format_;
  CacheShape shape_;
  std::vector<uint32_t> layer_pages_;  // [layers] pages of each layer (owning caches); empty (views): num_pages each
  std::vector<size_t> layer_offset_;   // [layers] byte offset of each layer's pages (owning caches)
  std::vector<uint8_t> owned_;  // the bytes of an owning cache (empty for a view)
  uint8_t* data_ = nullptr;     // [layers][num_pages][kv_heads][layout().bytes]
  size_t bytes_ = 0;
};

}  // namespace tq
