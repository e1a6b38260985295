// KvStore: the page pool, the edge-layer cache, side buffers and quantize-on-write.
// Attention over the pages is in attention.cpp.
#include <fmt/format.h>

#include <cstring>

#include "tq/check.h"
#include "tq/backend/cpu/kv_store.h"
#include "tq/numeric.h"

namespace tq::engine {

KvStore::KvStore(const KvShape& shape, const KvSpec& spec) : shape_(shape), spec_(spec), alloc_(shape.num_pages) {
  TQ_CHECK(shape.layers >= 1, "the model has no layers");
  TQ_CHECK(shape.max_chunk >= 1, "max_chunk must be at least 1");
  const uint32_t edge = spec.edge_layers;
  TQ_CHECK(2 * edge <= shape.layers, "KV spec '{}': edge={} needs at least {} layers, the model has {}", spec.text, edge, 2 * edge,
           shape.layers);
  uint32_t n_main = 0, n_edge = 0;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    const bool e = edge > 0 && (l < edge || l + edge >= shape.layers);
    is_edge_.push_back(e);
    local_.push_back(e ? n_edge++ : n_main++);
  }
  // Both caches are indexed by the same page ids, so each holds num_pages pages per layer.
  if (n_main) main_ = std::make_unique<PagedKvCache>(CacheShape{n_main, shape.kv_heads, shape.head_dim, shape.num_pages},
                                                     spec.layer_spec(edge, shape.layers));
  if (n_edge) edge_ = std::make_unique<PagedKvCache>(CacheShape{n_edge, shape.kv_heads, shape.head_dim, shape.num_pages},
                                                     spec.layer_spec(0, shape.layers));
  if (!spec.key_sim.empty()) key_sim_ = make_baseline(spec.key_sim, shape.head_dim);
}

const PagedKvCache& KvStore::cache_of(uint32_t layer, uint32_t* local) const {
  TQ_CHECK(layer < shape_.layers, "layer {} is outside the cache ({} layers)", layer, shape_.layers);
  *local = local_[layer];
  return is_edge_[layer] ? *edge_ : *main_;
}

void KvStore::init_sequence(SeqKv& s) const {
  const size_t row = size_t(2) * shape_.kv_heads * shape_.head_dim;  // K and V of one token
  s.block_table.clear();
  s.len = 0;
  s.sink.assign(size_t(shape_.layers) * spec_.sink * row, 0);
  s.recent.assign(size_t(shape_.layers) * ring() * row, 0);
}

void KvStore::release_sequence(SeqKv& s) {
  for (int32_t p : s.block_table) alloc_.release(p);
  s.block_table.clear();
  s.len = 0;
}

void KvStore::reserve(SeqKv& s, uint32_t n) {
  const uint32_t ps = spec_.page_size;
  const size_t need = (size_t(s.len) + n + ps - 1) / ps;
  const size_t had = s.block_table.size();
  try {
    while (s.block_table.size() < need) s.block_table.push_back(alloc_.allocate());
  } catch (...) {
    for (size_t i = had; i < s.block_table.size(); ++i) alloc_.release(s.block_table[i]);
    s.block_table.resize(had);
    throw;
  }
  s.len += n;
}

int64_t KvStore::slot(const SeqKv& s, uint32_t pos) const {
  TQ_CHECK(pos < s.len, "position {} is beyond the sequence ({} positions reserved)", pos, s.len);
  return int64_t(s.block_table[pos / spec_.page_size]) * spec_.page_size + pos % spec_.page_size;
}

void KvStore::write(uint32_t layer, SeqKv& s, uint32_t pos, const float* k, const float* v) {
  TQ_CHECK(layer < shape_.layers, "layer {} is outside the cache ({} layers)", layer, shape_.layers);
  const uint32_t local = local_[layer];
  PagedKvCache& cache = is_edge_[layer] ? *edge_ : *main_;
  const uint32_t H = shape_.kv_heads, D = shape_.head_dim;
  const size_t row = size_t(H) * D;
  const float* kw = k;
  std::vector<float> ksim;  // [kv_heads][head_dim] simulated keys
  if (key_sim_ && !is_edge_[layer]) {
    ksim.resize(row);
    std::vector<uint8_t> packed(key_sim_->bytes(1));
    for (uint32_t h = 0; h < H; ++h) {
      key_sim_->quantize(k + size_t(h) * D, 1, packed.data());
      key_sim_->dequantize(packed.data(), 1, &ksim[size_t(h) * D]);
    }
    kw = ksim.data();
  }
  cache.write(local, slot(s, pos), kw, v);
  // Side buffers keep the unquantized token (fp16), as a full-precision cache would.
  const auto put = [&](uint16_t* dst) {
    for (size_t i = 0; i < row; ++i) dst[i] = f32_to_f16(k[i]);
    for (size_t i = 0; i < row; ++i) dst[row + i] = f32_to_f16(v[i]);
  };
  if (pos < spec_.sink) put(&s.sink[(size_t(layer) * spec_.sink + pos) * 2 * row]);
  if (spec_.window) put(&s.recent[(size_t(layer) * ring() + pos % ring()) * 2 * row]);
}

size_t KvStore::page_bytes() const {
  size_t b = 0;
  for (const PagedKvCache* c : {main_.get(), edge_.get()})
    if (c) b += size_t(c->layout().bytes) * c->shape().layers * c->shape().kv_heads;
  return b;
}

size_t KvStore::bytes_used(const SeqKv& s) const {
  return s.block_table.size() * page_bytes() + (s.sink.size() + s.recent.size()) * sizeof(uint16_t);
}

double KvStore::bits_per_element() const {
  const double elems_per_page = 2.0 * shape_.layers * shape_.kv_heads * shape_.head_dim * spec_.page_size;
  return 8.0 * double(page_bytes()) / elems_per_page;
}

}  // namespace tq::engine
