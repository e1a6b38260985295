#include "tq/cuda/device_format.h"

#include <cuda_runtime.h>

#include <cmath>

#include "tq/check.h"

namespace tq::cuda {

void DeviceFree::operator()(void* p) const { cudaFree(p); }

DevicePtr device_alloc(size_t bytes, const char* what, bool zero) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  // A failed cudaMalloc also leaves its error as the runtime's last error, which the next launch
  // check would report against an unrelated call: cleared here, as the error is thrown now.
  if (e != cudaSuccess) (void)cudaGetLastError();
  TQ_CHECK(e == cudaSuccess, "{}: cudaMalloc of {} bytes failed: {}", what, bytes, cudaGetErrorString(e));
  DevicePtr out(p);
  if (zero) TQ_CHECK(cudaMemset(p, 0, bytes) == cudaSuccess, "{}: cudaMemset of {} bytes failed", what, bytes);
  return out;
}

const float* DeviceFormat::upload(const std::vector<float>& v) {
  tables_.push_back(device_alloc(v.size() * sizeof(float), "DeviceFormat"));
  void* p = tables_.back().get();
  const cudaError_t e = cudaMemcpy(p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice);
  TQ_CHECK(e == cudaSuccess, "DeviceFormat: cudaMemcpy of {} bytes failed: {}", v.size() * sizeof(float), cudaGetErrorString(e));
  return static_cast<const float*>(p);
}

DeviceFormat::DeviceFormat(const CacheFormat& format) : format_(format) {
  // Split rows have two codebooks and rotations per head, which the device tables do not hold.
  TQ_CHECK(format.format().k.enc != Encoding::kTqSplit && format.format().v.enc != Encoding::kTqSplit,
           "KV format '{}': fractional widths (the outlier split) have no GPU kernel yet; run them on the CPU", format.format().canonical());
  for (uint32_t layer = 0; layer < format.layers(); ++layer) {
    for (bool value : {false, true}) {
      CodecTables t;
      const TurboQuant* first = value ? format.v_codec(layer, 0) : format.k_codec(layer, 0);
      if (first) {
        t.bits = first->code_bits();
        t.norm_correction = first->config().norm_correction;
        t.norm_unbiased = first->config().norm_unbiased;
        t.tcq = first->config().tcq;
        // The decode kernel builds 2-bit values from their code bits (dev::subnormal2_pair), so it
        // reads only the format's uniform levels, never a table.
        TQ_CHECK(!value || t.bits != 2 || t.tcq || first->config().uniform,
                 "KV format '{}': 2-bit values of layer {} are not on the uniform levels the GPU decode builds (format.h value_levels_uniform)",
                 format.format().canonical(), layer);
        t.centroids = upload(first->codebook()->centroids);
        t.boundaries = upload(first->codebook()->boundaries);
        // Per-head rotations, concatenated: [kv_heads][pd] signs or [kv_heads][pd][pd] matrices.
        std::vector<float> all;
        const bool hadamard = first->rotation().kind() == RotationKind::kHadamard;
        for (uint32_t h = 0; h < format.kv_heads(); ++h) {
          const TurboQuant* c = value ? format.v_codec(layer, h) : format.k_codec(layer, h);
          const auto& part = hadamard ? c->rotation().signs() : c->rotation().matrix();
          all.insert(all.end(), part.begin(), part.end());
        }
        (hadamard ? t.signs : t.matrix) = upload(all);
      }
      (value ? v_ : k_).push_back(t);
    }
  }
}

CacheView DeviceFormat::view(uint32_t layer, uint8_t* pages, uint32_t num_pages) const {
  TQ_CHECK(layer < format_.layers(), "DeviceFormat::view: layer {} of {}", layer, format_.layers());
  return layer_view(layer, pages + format_.block_offset(layer, 0, 0, num_pages), num_pages);
}

CacheView DeviceFormat::layer_view(uint32_t layer, uint8_t* layer_pages, uint32_t num_pages) const {
  TQ_CHECK(layer < format_.layers(), "DeviceFormat::view: layer {} of {}", layer, format_.layers());
  CacheView v;
  v.data = layer_pages;
  v.num_pages = num_pages;
  v.kv_heads = format_.kv_heads();
  v.head_dim = format_.head_dim();
  v.page_size = format_.page_size();
  v.k = format_.format().k;
  v.v = format_.format().v;
  v.layout = format_.layout();
  v.k_scale = format_.k_scale();
  v.v_scale = format_.v_scale();
  v.kt = k_[layer];
  v.vt = v_[layer];
  v.fwht_scale = float(1.0 / std::sqrt(double(padded_dim(format_.head_dim()))));
  return v;
}

namespace {
// The page counts are checked before the tables are uploaded.
const CacheFormat& with_pages(const CacheFormat& format, const std::vector<uint32_t>& layer_pages) {
  TQ_CHECK(layer_pages.size() == format.layers(), "{} page counts for a device cache of {} layers", layer_pages.size(), format.layers());
  for (uint32_t n : layer_pages) TQ_CHECK(n >= 1, "a device cache needs at least one page, got {}", n);
  return format;
}
}  // namespace

DeviceKvCache::DeviceKvCache(const CacheFormat& format, uint32_t num_pages)
    : DeviceKvCache(format, std::vector<uint32_t>(format.layers(), num_pages)) {}

DeviceKvCache::DeviceKvCache(const CacheFormat& format, const std::vector<uint32_t>& layer_pages)
    : tables_(with_pages(format, layer_pages)), layer_pages_(layer_pages) {
  for (uint32_t n : layer_pages) layer_offset_.push_back(bytes_), bytes_ += format.layer_page_bytes() * n;
  pages_ = device_alloc(bytes_, "DeviceKvCache", true);
}

uint8_t* DeviceKvCache::layer_data(uint32_t layer, uint32_t first) const {
  TQ_CHECK(layer < layer_pages_.size() && first < layer_pages_[layer], "page {} of layer {} is outside the device cache", first, layer);
  return data() + layer_offset_[layer] + size_t(first) * format().layer_page_bytes();
}

}  // namespace tq::cuda
