// Device copies of a cache's codec tables (codebooks, rotation signs or matrices), built from the
// CPU PagedKvCache that owns the metadata, so the GPU uses exactly the reference's rotations.
#pragma once

#include <cstdint>
#include <vector>

#include "tq/cuda/kernels.h"
#include "tq/kv/paged_cache.h"

namespace tq::cuda {

class DeviceCodecs {
 public:
  // Uploads the tables of every layer (cudaMalloc + cudaMemcpy: call at setup, not per step).
  explicit DeviceCodecs(const PagedKvCache& meta);
  ~DeviceCodecs();
  DeviceCodecs(const DeviceCodecs&) = delete;
  DeviceCodecs& operator=(const DeviceCodecs&) = delete;

  // The view of one layer of a device cache laid out like `meta`: device_cache points at the
  // whole cache ([layers][num_pages][kv_heads][block bytes]).
  CacheView view(uint32_t layer, uint8_t* device_cache) const;

 private:
  const float* upload(const std::vector<float>& v);
  const PagedKvCache& meta_;
  std::vector<void*> allocations_;
  std::vector<CodecTables> k_, v_;  // [layers]
};

}  // namespace tq::cuda
