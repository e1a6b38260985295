// The device side of a CacheFormat: its codec tables (codebooks, rotation signs or matrices)
// uploaded once, and device storage of its pages. Both own what they allocate and free it on
// destruction, also when construction throws half-way.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tq/cuda/kernels.h"
#include "tq/kv/cache_format.h"

namespace tq::cuda {

// Frees a cudaMalloc'ed pointer.
struct DeviceFree {
  void operator()(void* p) const;
};
using DevicePtr = std::unique_ptr<void, DeviceFree>;
// cudaMalloc of `bytes` (zeroed when `zero`); throws tq::Error naming `what` and the size.
DevicePtr device_alloc(size_t bytes, const char* what, bool zero = false);

class DeviceFormat {
 public:
  // Uploads the tables of every layer (cudaMalloc + cudaMemcpy: call at setup, not per step).
  explicit DeviceFormat(const CacheFormat& format);

  const CacheFormat& format() const { return format_; }
  // The view of one layer of device pages laid out by this format: `pages` points at storage of
  // `num_pages` pages ([layers][num_pages][kv_heads][block bytes]).
  CacheView view(uint32_t layer, uint8_t* pages, uint32_t num_pages) const;
  // The same with `layer_pages` pointing at that layer's own `num_pages` pages ([num_pages][kv_heads][block bytes]).
  CacheView layer_view(uint32_t layer, uint8_t* layer_pages, uint32_t num_pages) const;

 private:
  const float* upload(const std::vector<float>& v);
  CacheFormat format_;
  std::vector<DevicePtr> tables_;
  std::vector<CodecTables> k_, v_;  // [layers]
};

// Device pages of a format: num_pages pages of every layer, zeroed; or layer_pages[l] pages of
// layer l, layer after layer (the window rings give sliding-window layers fewer: kv/window_ring.h).
class DeviceKvCache {
 public:
  // Throws tq::Error (before allocating) when num_pages is 0, or when cudaMalloc fails.
  DeviceKvCache(const CacheFormat& format, uint32_t num_pages);
  DeviceKvCache(const CacheFormat& format, const std::vector<uint32_t>& layer_pages);

  const CacheFormat& format() const { return tables_.format(); }
  uint32_t num_pages(uint32_t layer) const { return layer_pages_.at(layer); }
  size_t bytes() const { return bytes_; }
  uint8_t* data() const { return static_cast<uint8_t*>(pages_.get()); }
  // Layer `layer`'s pages, or with `first`, pages [first, num_pages(layer)) of it.
  uint8_t* layer_data(uint32_t layer, uint32_t first = 0) const;
  CacheView view(uint32_t layer) const { return tables_.layer_view(layer, layer_data(layer), num_pages(layer)); }

 private:
  DeviceFormat tables_;
  std::vector<uint32_t> layer_pages_;  // [layers]
  std::vector<size_t> layer_offset_;   // [layers] bytes before each layer's pages
  size_t bytes_ = 0;
  DevicePtr pages_;
};

}  // namespace tq::cuda
