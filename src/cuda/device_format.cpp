#include "tq/cuda/device_format.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>

#include "tq/check.h"

namespace tq::cuda {

const float* DeviceCodecs::upload(const std::vector<float>& v) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, v.size() * sizeof(float));
  TQ_CHECK(e == cudaSuccess, "DeviceCodecs: cudaMalloc of {} bytes failed: {}", v.size() * sizeof(float), cudaGetErrorString(e));
  allocations_.push_back(p);
  TQ_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess, "DeviceCodecs: cudaMemcpy failed");
  return static_cast<const float*>(p);
}

DeviceCodecs::DeviceCodecs(const PagedKvCache& meta) : meta_(meta) {
  const CacheShape& s = meta.shape();
  for (uint32_t layer = 0; layer < s.layers; ++layer) {
    for (bool value : {false, true}) {
      CodecTables t;
      const TurboQuant* first = value ? meta.v_codec(layer, 0) : meta.k_codec(layer, 0);
      if (first) {
        const uint32_t pd = first->padded_dim();
        t.bits = first->code_bits();
        t.norm_correction = first->config().norm_correction;
        t.centroids = upload(first->codebook()->centroids);
        t.boundaries = upload(first->codebook()->boundaries);
        // Per-head rotations, concatenated: [kv_heads][pd] signs or [kv_heads][pd][pd] matrices.
        std::vector<float> all;
        const bool hadamard = first->rotation().kind() == RotationKind::kHadamard;
        for (uint32_t h = 0; h < s.kv_heads; ++h) {
          const TurboQuant* c = value ? meta.v_codec(layer, h) : meta.k_codec(layer, h);
          const auto& part = hadamard ? c->rotation().signs() : c->rotation().matrix();
          all.insert(all.end(), part.begin(), part.end());
        }
        (hadamard ? t.signs : t.matrix) = upload(all);
        (void)pd;
      }
      (value ? v_ : k_).push_back(t);
    }
  }
}

DeviceCodecs::~DeviceCodecs() {
  for (void* p : allocations_) cudaFree(p);
}

CacheView DeviceCodecs::view(uint32_t layer, uint8_t* device_cache) const {
  const CacheShape& s = meta_.shape();
  TQ_CHECK(layer < s.layers, "DeviceCodecs::view: layer {} of {}", layer, s.layers);
  CacheView v;
  v.data = device_cache + size_t(layer) * s.num_pages * s.kv_heads * meta_.layout().bytes;
  v.num_pages = s.num_pages;
  v.kv_heads = s.kv_heads;
  v.head_dim = s.head_dim;
  v.page_size = meta_.page_size();
  v.k = meta_.spec().k;
  v.v = meta_.spec().v;
  v.layout = meta_.layout();
  v.k_scale = meta_.k_scale();
  v.v_scale = meta_.v_scale();
  v.kt = k_[layer];
  v.vt = v_[layer];
  v.fwht_scale = float(1.0 / std::sqrt(double(padded_dim(s.head_dim))));
  return v;
}

}  // namespace tq::cuda
