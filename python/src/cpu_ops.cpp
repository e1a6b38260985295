// The CPU half of the torch ops (python/turboquant/torch_ops.py): quantize_store and paged
// attention on a uint8 pages tensor in host memory, in the layout the CUDA kernels use
// ([layers, num_pages, kv_heads, block_bytes], docs/format.md), by the library's CPU code. Rows are
// written by PagedKvCache's quantize-on-write (on a view of the tensor's bytes), which is what the
// CUDA quantize_store matches byte for byte (tests/python/test_torch_ops.py); attention is the CPU
// engine's, over the packed pages (cpu::attend_pages), with the KV policy's side rows (sink and
// window) in the CUDA SideView's slot layout and contract: the call reads the step's own rows from
// new_k / new_v and writes them into the slots afterwards. So a cache of the torch ops runs the
// same way on either device, and a CPU-only machine (CI) runs it.
#include <fmt/format.h>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "arrays.h"
#include "bindings.h"
#include "tq/backend/cpu/kv_store.h"
#include "tq/backend/cpu/thread_pool.h"
#include "tq/check.h"
#include "tq/kv/cache_format.h"
#include "tq/kv/paged_cache.h"

namespace tq::py {
namespace {

// One pool for every call, remade when the caller asks for another thread count (torch's
// intra-op thread count, passed by torch_ops): its workers spin a while after each job, so a pool
// per format or per call would leave threads competing with torch's. A pool runs one parallel_for
// at a time and the calls release the GIL, so a call holds the pool, lock and all, until it is done:
// calls from several Python threads take turns (they would share the same workers anyway), and
// none replaces the pool under another. Taken with the GIL released (a holder may wait for it).
struct PoolLease {
  std::unique_lock<std::mutex> lock;
  cpu::ThreadPool* pool;
  cpu::ThreadPool* operator->() const { return pool; }
};
PoolLease pool(unsigned threads) {
  static std::mutex mu;
  static std::unique_ptr<cpu::ThreadPool> p;
  std::unique_lock<std::mutex> lock(mu);
  threads = std::max(1u, threads);
  if (!p || p->size() != threads) p = std::make_unique<cpu::ThreadPool>(threads);
  return {std::move(lock), p.get()};
}

// A KV spec's page format for a model shape, on the host: the codecs of every (layer, KV head).
struct PyCpuFormat {
  KvSpec spec;
  CacheFormat format;

  PyCpuFormat(const KvSpec& s, uint32_t layers, uint32_t kv_heads, uint32_t head_dim)
      : spec((refuse_policy(s, "turboquant.torch_ops"), refuse_split(s, "turboquant.torch_ops"), s)),
        format(layers, kv_heads, head_dim, s.format) {}

  // A view of `pages` (checked: uint8 [layers, num_pages, kv_heads, block_bytes], contiguous, host).
  PagedKvCache view(const char* fn, uint32_t layer, const nb::ndarray<>& pages) const {
    TQ_CHECK(layer < format.layers(), "{}: layer {} is outside the cache's {} layers", fn, layer, format.layers());
    check_cpu(pages, {fn, "pages", "[layers, num_pages, kv_heads, block_bytes]"}, kU8, "uint8",
              {format.layers(), kAny, format.kv_heads(), format.layout().bytes});
    TQ_CHECK(pages.shape(1) >= 1 && pages.shape(1) <= 0xFFFFFFFFull, "{}: pages must have 1..2^32-1 pages, got {}", fn, pages.shape(1));
    return PagedKvCache::view(format, static_cast<uint8_t*>(pages.data()), uint32_t(pages.shape(1)));
  }
};

void quantize_store(const PyCpuFormat& f, uint32_t layer, nb::ndarray<> pages, nb::ndarray<> k, nb::ndarray<> v, nb::ndarray<> slots,
                    unsigned threads) {
  PagedKvCache cache = f.view("quantize_store", layer, pages);
  store_rows("quantize_store", cache, layer, slots, k, v, threads);
}

// The side buffer of one call: the layer's rows of each sequence's slot, and the step's new rows.
struct Side {
  uint16_t* data = nullptr;  // the layer's rows of slot 0: fp16 [sink + ring][2][kv_heads][head_dim]
  size_t slot_stride = 0;    // elements between slots
  size_t slots = 0;
  const int32_t* seq_slot = nullptr;                  // [num_seqs]
  const uint16_t *new_k = nullptr, *new_v = nullptr;  // fp16 [num_seqs][num_q_tokens][kv_heads][head_dim]
  uint32_t sink = 0, window = 0, ring = 0;
};

void attention(const PyCpuFormat& f, uint32_t layer, nb::ndarray<> pages, nb::ndarray<> q, nb::ndarray<> out, nb::ndarray<> block_tables,
               nb::ndarray<> seq_lens, float scale, std::optional<nb::ndarray<>> side, std::optional<nb::ndarray<>> side_slots,
               std::optional<nb::ndarray<>> new_k, std::optional<nb::ndarray<>> new_v, uint32_t sink, uint32_t window, unsigned threads,
               uint32_t sliding_window) {
  const char* fn = "attention";
  const PagedKvCache cache = f.view(fn, layer, pages);
  const uint32_t H = f.format.kv_heads(), D = f.format.head_dim(), ps = f.format.page_size();
  check_cpu(q, {fn, "q", "[num_seqs, num_q_tokens, q_heads, head_dim]"}, kF32, "float32", {kAny, kAny, kAny, D});
  const int64_t seqs = int64_t(q.shape(0)), ntok = int64_t(q.shape(1)), qh = int64_t(q.shape(2));
  check_cpu(out, {fn, "out", "[num_seqs, num_q_tokens, q_heads, head_dim]"}, kF32, "float32", {seqs, ntok, qh, D});
  check_cpu(block_tables, {fn, "block_tables", "[num_seqs, max_pages]"}, kI32, "int32", {seqs, kAny});
  check_cpu(seq_lens, {fn, "seq_lens", "[num_seqs]"}, kI32, "int32", {seqs});
  TQ_CHECK(ntok >= 1, "{}: at least one query token per sequence", fn);
  const size_t max_pages = block_tables.shape(1);
  const auto* bt = static_cast<const int32_t*>(block_tables.data());
  const auto* lens = static_cast<const int32_t*>(seq_lens.data());
  for (int64_t s = 0; s < seqs; ++s)
    TQ_CHECK(lens[s] >= ntok && size_t(lens[s]) <= max_pages * ps,
             "{}: sequence {} has length {}, outside [{}, {}] (its queries .. its pages)", fn, s, lens[s], ntok, max_pages * ps);

  for (int64_t s = 0; s < seqs; ++s) {
    // the pages read: from the first query's window (sliding_window > 0) to the last position
    const uint32_t first = uint32_t(lens[s] - ntok), from = sliding_window && first + 1 > sliding_window ? first + 1 - sliding_window : 0;
    check_block_table(fn, bt + s * max_pages, size_t(s), from, uint32_t(lens[s]), ps, cache.num_pages(layer));
  }

  Side sd;
  if (sink || window) {
    TQ_CHECK(side && side_slots && new_k && new_v, "{}: a side buffer (sink {}, window {}) needs side, side_slots, new_k and new_v", fn,
             sink, window);
    check_cpu(*side, {fn, "side", "[slots, layers, sink + ring, 2, kv_heads, head_dim]"}, kF16, "float16",
              {kAny, f.format.layers(), kAny, 2, H, D});
    check_cpu(*side_slots, {fn, "side_slots", "[num_seqs]"}, kI32, "int32", {seqs});
    check_cpu(*new_k, {fn, "new_k", "[num_seqs, num_q_tokens, kv_heads, head_dim]"}, kF16, "float16", {seqs, ntok, H, D});
    check_cpu(*new_v, {fn, "new_v", "[num_seqs, num_q_tokens, kv_heads, head_dim]"}, kF16, "float16", {seqs, ntok, H, D});
    const size_t rows = side->shape(2);
    TQ_CHECK(rows >= sink && (window == 0 ? rows == sink : rows - sink >= window),
             "{}: side holds {} rows a layer; sink {} and window {} need sink + a ring of at least the window", fn, rows, sink, window);
    const size_t layer_rows = rows * 2 * H * D;
    sd.data = static_cast<uint16_t*>(side->data()) + layer * layer_rows;
    sd.slot_stride = f.format.layers() * layer_rows;
    sd.slots = side->shape(0);
    sd.seq_slot = static_cast<const int32_t*>(side_slots->data());
    for (int64_t s = 0; s < seqs; ++s)
      TQ_CHECK(sd.seq_slot[s] >= 0 && size_t(sd.seq_slot[s]) < sd.slots, "{}: side slot {} of sequence {} is outside the {} slots", fn,
               sd.seq_slot[s], s, sd.slots);
    sd.new_k = static_cast<const uint16_t*>(new_k->data());
    sd.new_v = static_cast<const uint16_t*>(new_v->data());
    sd.sink = sink, sd.window = window, sd.ring = uint32_t(rows - sink);
  }

  const auto* qp = static_cast<const float*>(q.data());
  auto* op = static_cast<float*>(out.data());
  const size_t per_seq = size_t(ntok) * qh * D, new_per_seq = size_t(ntok) * H * D, row = size_t(H) * D;
  nb::gil_scoped_release unlocked;
  const PoolLease lease = pool(threads);
  cpu::ThreadPool& tp = *lease.pool;
  for (int64_t s = 0; s < seqs; ++s) {
    const uint32_t first = uint32_t(lens[s] - ntok);
    cpu::SideRows rows;
    if (sd.data) {
      uint16_t* slot = sd.data + size_t(sd.seq_slot[s]) * sd.slot_stride;
      rows.sink = sd.sink, rows.window = sd.window, rows.ring = sd.ring;
      rows.sink_rows = slot;
      rows.ring_rows = slot + size_t(sd.sink) * 2 * row;
      rows.new_k = sd.new_k + s * new_per_seq;
      rows.new_v = sd.new_v + s * new_per_seq;
      rows.new_first = first;
    }
    cpu::attend_pages(cache, layer, std::span<const int32_t>(bt + s * max_pages, max_pages), rows, first, uint32_t(ntok), uint32_t(qh),
                      scale, qp + s * per_seq, op + s * per_seq, tp, sliding_window);
  }
  // A query with a NaN or Inf attends to NaN, as in torch's SDPA and KvCache.attention: the CPU
  // engine's softmax skips NaN scores (fmax), which gave such a query an output of zeros.
  for (size_t r = 0; r < size_t(seqs) * ntok * qh; ++r)
    if (!std::all_of(qp + r * D, qp + (r + 1) * D, [](float x) { return std::isfinite(x); }))
      std::fill_n(op + r * D, D, std::numeric_limits<float>::quiet_NaN());
  if (!sd.data) return;
  // Every query has read the side rows: the step's rows go into the slots, where the next steps
  // read them (a sink row, or the ring for the last `ring` positions), as the CUDA kernels do.
  for (int64_t s = 0; s < seqs; ++s) {
    const int64_t len = lens[s];
    uint16_t* slot = sd.data + size_t(sd.seq_slot[s]) * sd.slot_stride;
    for (int64_t j = 0; j < ntok; ++j) {
      const int64_t pos = len - ntok + j;
      if (pos >= int64_t(sd.sink) && pos < len - int64_t(sd.ring)) continue;  // not a sink position, older than the ring keeps
      if (pos >= int64_t(sd.sink) && sd.ring == 0) continue;
      const size_t dst_row = pos < int64_t(sd.sink) ? size_t(pos) : sd.sink + size_t(pos % sd.ring);
      uint16_t* dst = slot + dst_row * 2 * row;
      std::copy_n(sd.new_k + s * new_per_seq + j * row, row, dst);
      std::copy_n(sd.new_v + s * new_per_seq + j * row, row, dst + row);
    }
  }
}

}  // namespace

void check_block_table(const char* fn, const int32_t* row, size_t seq, uint32_t from, uint32_t to, uint32_t page_size, uint32_t num_pages) {
  for (uint32_t i = from / page_size; i < (to + page_size - 1) / page_size; ++i)
    TQ_CHECK(row[i] >= 0 && uint32_t(row[i]) < num_pages, "{}: block_tables[{}][{}] is {}, outside the cache's {} pages", fn, seq, i, row[i],
             num_pages);
}

void store_rows(const char* fn, PagedKvCache& cache, uint32_t layer, const nb::ndarray<>& slots, const nb::ndarray<>& k,
                const nb::ndarray<>& v, unsigned threads) {
  check_cpu(slots, {fn, "slots", "[tokens]"}, kI64, "int64", {kAny});
  const int64_t n = int64_t(slots.shape(0));
  const uint32_t H = cache.shape().kv_heads, D = cache.shape().head_dim;
  check_cpu(k, {fn, "k", "[tokens, kv_heads, head_dim]"}, kF32, "float32", {n, H, D});
  check_cpu(v, {fn, "v", "[tokens, kv_heads, head_dim]"}, kF32, "float32", {n, H, D});
  const auto* sl = static_cast<const int64_t*>(slots.data());
  const auto *kp = static_cast<const float*>(k.data()), *vp = static_cast<const float*>(v.data());
  const size_t row = size_t(H) * D;
  const int64_t limit = int64_t(cache.shape().num_pages) * cache.page_size();
  for (int64_t t = 0; t < n; ++t)  // checked before any row is written: all or nothing
    TQ_CHECK(sl[t] == -1 || (sl[t] >= 0 && sl[t] < limit), "{}: slot {} at index {} is outside the cache ({} pages of {} tokens; -1 skips)",
             fn, sl[t], t, cache.shape().num_pages, cache.page_size());
  // A row the encoders refuse (a NaN or Inf, a norm or fp16 element past 65504) throws after the
  // rows before it were written: every slot's bytes are kept first and put back then, so that a
  // refused call stores nothing, as one with a bad slot.
  std::vector<uint8_t> saved;
  for (int64_t t = 0; t < n; ++t)
    if (sl[t] != -1) cache.save_slot(layer, sl[t], saved);
  nb::gil_scoped_release unlocked;
  const auto write = [&](size_t t) {
    try {
      cache.write(layer, sl[t], kp + t * row, vp + t * row);
    } catch (const Error& e) {
      throw Error(fmt::format("{}: row {} (slot {}): {}; nothing was written", fn, t, sl[t], e.what()));
    }
  };
  try {
    if (threads <= 1) {
      for (int64_t t = 0; t < n; ++t) write(size_t(t));
    } else {
      // Tokens are independent (distinct slots), a task each.
      pool(threads)->parallel_for(size_t(n), [&](size_t t0, size_t t1) {
        for (size_t t = t0; t < t1; ++t) write(t);
      });
    }
  } catch (...) {
    // (all of them: repeated slots were saved before any write, so each copy holds the old bytes)
    const uint8_t* from = saved.data();
    for (int64_t t = 0; t < n; ++t)
      if (sl[t] != -1) from = cache.restore_slot(layer, sl[t], from);
    throw;
  }
}

void bind_cpu_ops(nb::module_& m) {
  m.def(
      "check_host_cache",
      [](const KvSpec& s, uint32_t layers, uint32_t kv_heads, uint32_t head_dim, uint32_t num_pages) {
        PagedKvCache::check_size({layers, kv_heads, head_dim, num_pages}, s.format);
      },
      nb::arg("spec"), nb::arg("layers"), nb::arg("kv_heads"), nb::arg("head_dim"), nb::arg("num_pages"),
      "Raises what a host cache of this shape would (a shape the format cannot take, more than 64 GiB of pages and codec tables), "
      "building nothing.");
  nb::class_<PyCpuFormat>(m, "CpuFormat", "A KV spec's page format on the host: the CPU kernels of turboquant.torch_ops.")
      .def(nb::init<const KvSpec&, uint32_t, uint32_t, uint32_t>(), nb::arg("spec"), nb::arg("layers"), nb::arg("kv_heads"),
           nb::arg("head_dim"))
      .def_prop_ro("block_bytes", [](const PyCpuFormat& f) { return f.format.layout().bytes; })
      .def_prop_ro("page_size", [](const PyCpuFormat& f) { return f.format.page_size(); })
      .def("quantize_store", &quantize_store, nb::arg("layer"), nb::arg("pages"), nb::arg("k"), nb::arg("v"), nb::arg("slots"),
           nb::arg("threads") = 1,
           "Quantizes rows into their slots of a host pages tensor (k, v float32 [tokens, kv_heads, head_dim]; slots int64, -1 skips).")
      .def("attention", &attention, nb::arg("layer"), nb::arg("pages"), nb::arg("q"), nb::arg("out"), nb::arg("block_tables"),
           nb::arg("seq_lens"), nb::arg("scale") = 0.0f, nb::arg("side") = nb::none(), nb::arg("side_slots") = nb::none(),
           nb::arg("new_k") = nb::none(), nb::arg("new_v") = nb::none(), nb::arg("sink") = 0, nb::arg("window") = 0, nb::arg("threads") = 1,
           nb::arg("sliding_window") = 0,
           "Paged attention of each sequence's last num_q_tokens queries (float32 q, out [seqs, tokens, q_heads, head_dim]), with the "
           "side rows (fp16 side [slots, layers, sink + ring, 2, kv_heads, head_dim]) where sink or window is set; sliding_window > 0: "
           "each query sees its last sliding_window positions only.");
}

}  // namespace tq::py
