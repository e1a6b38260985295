// KvStore: the main and edge-layer caches, side buffers and quantize-on-write. Attention over the
// pages is in attention.cpp.
#include "tq/backend/cpu/kv_store.h"

#include <algorithm>
#include <cmath>

#include "tq/check.h"
#include "tq/numeric.h"

namespace tq::cpu {

KvStore::KvStore(const KvShape& shape, const KvSpec& spec) : shape_(shape), spec_(spec) {
  TQ_CHECK(shape.layers >= 1, "the model has no layers");
  TQ_CHECK(shape.max_chunk >= 1, "max_chunk must be at least 1");
  const uint32_t n_edge = spec.edge_layer_count(shape.layers), n_main = shape.layers - n_edge;
  TQ_CHECK(shape.sliding.empty() || shape.sliding.size() == shape.layers, "{} sliding-window flags for {} layers", shape.sliding.size(),
           shape.layers);
  const std::vector<bool> sliding = shape.sliding.empty() ? std::vector<bool>(shape.layers, false) : shape.sliding;
  const bool rings = shape.ring.on() && std::find(sliding.begin(), sliding.end(), true) != sliding.end();
  if (rings) {
    TQ_CHECK(shape.max_seqs >= 1 && shape.ring.page_size == spec.format.page_size,
             "window rings of {}-token pages for {} sequences in a cache of {}-token pages", shape.ring.page_size, shape.max_seqs,
             spec.format.page_size);
    TQ_CHECK(uint64_t(shape.max_seqs) * shape.ring.pages <= uint64_t(INT32_MAX),
             "{} sequences of {} window-ring pages are more pages than a cache can number (2^31 - 1)", shape.max_seqs, shape.ring.pages);
    ring_layer_ = sliding;
    ring_written_.assign(shape.max_seqs, 0);
  }
  // Both caches are indexed by the same page ids, so each holds num_pages pages per pool layer;
  // a ring layer holds max_seqs rings instead.
  const auto pages = [&](const std::vector<bool>& ring) {
    std::vector<uint32_t> n(ring.size(), shape.num_pages);
    for (size_t l = 0; l < n.size(); ++l)
      if (rings && ring[l]) n[l] = shape.max_seqs * shape.ring.pages;
    return n;
  };
  if (n_main)
    main_ = std::make_unique<PagedKvCache>(
        CacheFormat(n_main, shape.kv_heads, shape.head_dim, spec.main_format(), spec.cache_layers(sliding, false)),
        pages(spec.cache_layers(sliding, false)));
  if (n_edge)
    edge_ = std::make_unique<PagedKvCache>(
        CacheFormat(n_edge, shape.kv_heads, shape.head_dim, spec.edge_format(), spec.cache_layers(sliding, true)),
        pages(spec.cache_layers(sliding, true)));
  if (!spec.policy.key_sim.empty()) key_sim_ = make_baseline(spec.policy.key_sim, shape.head_dim);
  layer_fixed_.assign(shape.layers, false);
  if (spec.policy.key_centre) centre_.assign(size_t(shape.layers) * shape.kv_heads * shape.head_dim, 0.0f);
  if (spec.policy.sink || spec.policy.window || rings) tail_count_ = shape.tails;
  if (spec.policy.sink || spec.policy.window) tails_.assign(tail_count_ * side_tail_bytes() / sizeof(uint16_t), 0);
  if (rings) ring_tails_.assign(tail_count_ * ring_bytes(), 0);
}

const PagedKvCache& KvStore::cache_of(uint32_t layer, uint32_t* local) const {
  TQ_CHECK(layer < shape_.layers, "layer {} is outside the cache ({} layers)", layer, shape_.layers);
  *local = spec_.local_layer(layer, shape_.layers);
  return spec_.is_edge_layer(layer, shape_.layers) ? *edge_ : *main_;
}

void KvStore::add_sequence(int seq) {
  TQ_CHECK(seq >= 0, "sequence id {} is negative", seq);
  if (!ring_written_.empty()) {
    TQ_CHECK(size_t(seq) < ring_written_.size(), "sequence id {} has no window ring: the store was built for {} sequences (max_seqs)", seq,
             ring_written_.size());
    ring_written_[size_t(seq)] = 0;
  }
  if (spec_.policy.sink == 0 && spec_.policy.window == 0) return;
  if (size_t(seq) >= sides_.size()) sides_.resize(size_t(seq) + 1);
  const size_t row = size_t(2) * shape_.kv_heads * shape_.head_dim;  // K and V of one token
  Side& s = sides_[size_t(seq)];
  s.sink.assign(size_t(shape_.layers) * spec_.policy.sink * row, 0);
  s.recent.assign(size_t(shape_.layers) * ring() * row, 0);
}

const KvStore::Side& KvStore::side(int seq) const {
  TQ_CHECK(seq >= 0 && size_t(seq) < sides_.size(), "sequence {} has no side buffers (add_sequence first)", seq);
  return sides_[size_t(seq)];
}

void KvStore::begin_step(const std::vector<StepSpan>& step) {
  const bool window = spec_.policy.window > 0;
  if (ring_written_.empty() && !window) return;
  for (const StepSpan& s : step) {  // every sequence checked before any is recorded: a refusal changes nothing
    // The side ring holds [written - ring, written): the window before `first` must still be there.
    if (window)
      TQ_CHECK(s.first == 0 || side(s.seq).written <= uint64_t(s.first) + ring_extra(),
               "sequence {}: taken back from position {} to {}, further than the {} positions its side ring keeps beyond the window; "
               "reset it and prefill it again",
               s.seq, side(s.seq).written, s.first, ring_extra());
    if (ring_written_.empty()) continue;
    TQ_CHECK(s.seq >= 0 && size_t(s.seq) < ring_written_.size(),
             "sequence id {} has no window ring: the store was built for {} sequences (max_seqs)", s.seq, ring_written_.size());
    TQ_CHECK(shape_.ring.holds(ring_written_[size_t(s.seq)], s.first),
             "sequence {}: taken back from position {} to {}, further than the {} positions its window ring keeps beyond the window; "
             "reset it and prefill it again",
             s.seq, ring_written_[size_t(s.seq)], s.first, shape_.ring.rollback);
  }
  for (const StepSpan& s : step) {
    const auto note = [&](uint32_t& written) { written = s.first == 0 ? s.first + s.n : std::max(written, s.first + s.n); };
    if (window) note(side(s.seq).written);
    if (!ring_written_.empty()) note(ring_written_[size_t(s.seq)]);
  }
}

int64_t KvStore::slot(uint32_t layer, const SeqPages& s, uint32_t pos) const {
  if (in_ring(layer)) {
    TQ_CHECK(s.seq >= 0 && size_t(s.seq) < ring_written_.size(), "sequence id {} has no window ring (max_seqs {})", s.seq,
             ring_written_.size());
    return shape_.ring.slot(s.seq, pos);
  }
  const uint32_t ps = page_size();
  TQ_CHECK(s.block_table && pos / ps < s.block_table->size(), "position {} is beyond the pages of sequence {}", pos, s.seq);
  return int64_t((*s.block_table)[pos / ps]) * ps + pos % ps;
}

std::span<const float> KvStore::key_centre(uint32_t layer, uint32_t head) const {
  TQ_CHECK(layer < shape_.layers && head < shape_.kv_heads, "layer {} KV head {} is outside the cache ({} layers, {} KV heads)", layer,
           head, shape_.layers, shape_.kv_heads);
  if (centre_.empty()) return {};
  return std::span<const float>(centre_).subspan((size_t(layer) * shape_.kv_heads + head) * shape_.head_dim, shape_.head_dim);
}

void KvStore::calibrate(uint32_t layer, size_t n, const uint32_t* pos, const float* k, const float* v, const float* centre) {
  TQ_CHECK(layer < shape_.layers, "layer {} is outside the cache ({} layers)", layer, shape_.layers);
  if (layer_fixed_[layer] || n == 0) return;
  const uint32_t local = spec_.local_layer(layer, shape_.layers);
  PagedKvCache& cache = spec_.is_edge_layer(layer, shape_.layers) ? *edge_ : *main_;
  const uint32_t H = shape_.kv_heads, D = shape_.head_dim;
  const bool all = std::all_of(pos, pos + n, [](uint32_t p) { return p == 0; });  // only position 0: take it rather than nothing
  // The key centre first: the outlier channels below are chosen on the keys as they are stored.
  std::vector<float> mu(size_t(H) * D, 0.0f);  // [kv_heads][head_dim]
  if (spec_.policy.key_centre) {
    TQ_CHECK(centre, "layer {}: a spec with a key centre is calibrated with the centre (model::rope_centre of the keys before RoPE)",
             layer);
    for (uint32_t h = 0; h < H; ++h)
      for (uint32_t i = 0; i < D; ++i) {
        const float m = centre[size_t(h) * D + i];
        TQ_CHECK(std::isfinite(m), "layer {} KV head {}: the key centre of channel {} is {} (the first keys written are not all finite)",
                 layer, h, i, m);
        mu[size_t(h) * D + i] = m;
      }
    std::copy(mu.begin(), mu.end(), centre_.begin() + ptrdiff_t(size_t(layer) * H * D));
  }
  layer_fixed_[layer] = true;
  if (spec_.policy.fixed_outliers) return;
  for (bool value : {false, true}) {
    if ((value ? cache.format().format().v : cache.format().format().k).enc != Encoding::kTqSplit) continue;
    const float* x = value ? v : k;
    for (uint32_t h = 0; h < H; ++h) {
      const float* c = value ? nullptr : &mu[size_t(h) * D];  // keys: less their centre (zeros without one)
      std::vector<double> ms(D, 0.0);  // [D] sum of squares per channel
      for (size_t r = 0; r < n; ++r) {
        if (!all && pos[r] == 0) continue;
        const float* row = x + (r * H + h) * D;
        for (uint32_t i = 0; i < D; ++i) {
          const double e = c ? double(row[i]) - c[i] : double(row[i]);
          ms[i] += e * e;
        }
      }
      std::vector<uint16_t> order(D);
      for (uint32_t i = 0; i < D; ++i) order[i] = uint16_t(i);
      std::stable_sort(order.begin(), order.end(), [&](uint16_t a, uint16_t b) { return ms[a] > ms[b]; });
      order.resize(split_outliers(D));
      cache.set_outliers(local, h, value, order);
    }
  }
}

void KvStore::write(uint32_t layer, const SeqPages& s, uint32_t pos, const float* k, const float* v) {
  TQ_CHECK(layer < shape_.layers, "layer {} is outside the cache ({} layers)", layer, shape_.layers);
  layer_fixed_[layer] = true;  // rows coded with the layer's channels and centre are in the pages now
  const bool edge = spec_.is_edge_layer(layer, shape_.layers);
  const uint32_t local = spec_.local_layer(layer, shape_.layers);
  PagedKvCache& cache = edge ? *edge_ : *main_;
  const uint32_t H = shape_.kv_heads, D = shape_.head_dim;
  const size_t row = size_t(H) * D;
  std::vector<float> kc;  // [kv_heads][head_dim] k - mu: the key as every reader of this store sees it
  if (!centre_.empty()) {
    const float* mu = &centre_[size_t(layer) * row];
    kc.resize(row);
    for (size_t i = 0; i < row; ++i) kc[i] = k[i] - mu[i];
    k = kc.data();
  }
  const float* kw = k;
  std::vector<float> ksim;  // [kv_heads][head_dim] simulated keys
  if (key_sim_ && !edge) {
    ksim.resize(row);
    std::vector<uint8_t> packed(key_sim_->bytes(1));
    for (uint32_t h = 0; h < H; ++h) {
      key_sim_->quantize(k + size_t(h) * D, 1, packed.data());
      key_sim_->dequantize(packed.data(), 1, &ksim[size_t(h) * D]);
    }
    kw = ksim.data();
  }
  cache.write(local, slot(layer, s, pos), kw, v);
  if (spec_.policy.sink == 0 && spec_.policy.window == 0) return;
  // Side buffers keep the unquantized token (fp16), as a full-precision cache would.
  Side& sd = side(s.seq);
  const auto put = [&](uint16_t* dst) {
    for (size_t i = 0; i < row; ++i) dst[i] = f32_to_f16(k[i]);
    for (size_t i = 0; i < row; ++i) dst[row + i] = f32_to_f16(v[i]);
  };
  const uint32_t sink = spec_.policy.sink;
  if (pos < sink) put(&sd.sink[(size_t(layer) * sink + pos) * 2 * row]);
  if (spec_.policy.window) put(&sd.recent[(size_t(layer) * ring() + pos % ring()) * 2 * row]);
}

size_t KvStore::page_bytes() const {
  size_t b = 0;
  for (const PagedKvCache* c : {main_.get(), edge_.get()})
    if (c) b += c->format().page_bytes();
  return b - ring_page_bytes();
}

size_t KvStore::ring_page_bytes() const {
  size_t b = 0;
  for (uint32_t l = 0; l < shape_.layers; ++l) {
    if (!in_ring(l)) continue;
    uint32_t local = 0;
    const PagedKvCache& c = cache_of(l, &local);
    b += c.format().layer_page_bytes();
  }
  return b;
}

size_t KvStore::side_bytes() const {
  const size_t row = size_t(2) * shape_.kv_heads * shape_.head_dim;
  return size_t(spec_.policy.side_tokens(ring_extra())) * shape_.layers * row * sizeof(uint16_t);
}

size_t KvStore::side_tail_bytes() const {
  const size_t row = size_t(2) * shape_.kv_heads * shape_.head_dim;
  return size_t(spec_.policy.sink + spec_.policy.window) * shape_.layers * row * sizeof(uint16_t);
}

size_t KvStore::tail_bytes() const { return side_tail_bytes() + ring_bytes(); }

bool KvStore::save_tail(int seq, uint32_t end, uint32_t slot) {
  if (spec_.policy.window) {  // the window before `end` must still be in the side ring (sink rows stay once written)
    const uint32_t written = side(seq).written;
    if (written < end || written - end > ring_extra()) return false;
  }
  if (!ring_written_.empty()) {
    TQ_CHECK(seq >= 0 && size_t(seq) < ring_written_.size(), "sequence id {} has no window ring (max_seqs {})", seq, ring_written_.size());
    if (!shape_.ring.holds_tail(ring_written_[size_t(seq)], end, shape_.sliding_window)) return false;
  }
  copy_tail(seq, end, slot, true);
  return true;
}

void KvStore::restore_tail(uint32_t slot, int seq, uint32_t end) {
  copy_tail(seq, end, slot, false);
  if (spec_.policy.window) side(seq).written = end;  // as if its own steps had written [0, end)
  // As if its own steps had written up to a sub-step past `end`: the ring holds the rows before end
  // for a step from end on, and nothing older (holds() then refuses a step from before end).
  if (!ring_written_.empty()) ring_written_[size_t(seq)] = end + shape_.ring.rollback;
}

void KvStore::copy_rings(int seq, uint32_t slot, bool save) {
  uint8_t* tail = ring_tails_.data() + size_t(slot) * ring_bytes();
  for (uint32_t l = 0; l < shape_.layers; ++l) {
    if (!in_ring(l)) continue;
    uint32_t local = 0;
    PagedKvCache& c = const_cast<PagedKvCache&>(cache_of(l, &local));
    uint8_t* ring = c.block(local, uint32_t(shape_.ring.page(seq, 0)), 0);  // the sequence's ring pages, contiguous
    const size_t n = c.format().layer_page_bytes() * shape_.ring.pages;
    if (save)
      std::copy(ring, ring + n, tail);
    else
      std::copy(tail, tail + n, ring);
    tail += n;
  }
}

void KvStore::copy_tail(int seq, uint32_t end, uint32_t slot, bool save) {
  TQ_CHECK(slot < tail_count_, "tail slot {} is outside the {} this store holds", slot, tail_count_);
  TQ_CHECK(end % page_size() == 0, "a prefix tail ends at a page boundary, not at {}", end);
  if (!ring_layer_.empty()) copy_rings(seq, slot, save);
  if (spec_.policy.sink == 0 && spec_.policy.window == 0) return;
  Side& sd = side(seq);
  const size_t row = size_t(2) * shape_.kv_heads * shape_.head_dim;  // K and V of one token
  const uint32_t sink = spec_.policy.sink, window = spec_.policy.window;
  const size_t per_layer = size_t(sink + window) * row;  // a tail's rows of one layer
  uint16_t* tail = tails_.data() + slot * (side_tail_bytes() / sizeof(uint16_t));
  const auto copy = [&](uint16_t* side_row, uint16_t* tail_row) {
    if (save)
      std::copy(side_row, side_row + row, tail_row);
    else
      std::copy(tail_row, tail_row + row, side_row);
  };
  // The sink rows whole: those at or past `end` belong to the saver's later tokens, but a sequence
  // writes each position's row before any query reads it, so restoring them changes nothing.
  const uint32_t first = end > window ? end - window : 0;  // window row w holds position end - window + w
  for (uint32_t l = 0; l < shape_.layers; ++l) {
    uint16_t* tl = tail + l * per_layer;
    for (uint32_t t = 0; t < sink; ++t) copy(&sd.sink[(size_t(l) * sink + t) * row], tl + size_t(t) * row);
    for (uint32_t t = first; t < end; ++t)
      copy(&sd.recent[(size_t(l) * ring() + t % ring()) * row], tl + size_t(sink + window - (end - t)) * row);
  }
}

}  // namespace tq::cpu
