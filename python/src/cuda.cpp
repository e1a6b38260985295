// The CUDA kernels for the torch ops (python/turboquant/torch_ops.py), where the build has CUDA.
// Tensors come in through DLPack without a copy (nanobind ndarray: a torch tensor is accepted as
// it is) and the kernels run on the stream the caller passes (torch's current stream): nothing
// here allocates, copies or synchronizes per call, so the calls can be captured in a CUDA graph.
// The codec tables of a format are uploaded once, when its CudaFormat is made.
#include "bindings.h"

#ifdef TQ_WITH_CUDA
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <memory>
#include <optional>

#include "arrays.h"
#include "tq/check.h"
#include "tq/cuda/device_format.h"
#include "tq/cuda/kernels.h"
#include "tq/kv/cache_format.h"
#endif

namespace tq::py {

#ifndef TQ_WITH_CUDA
void bind_cuda(nb::module_&) {}  // a CPU build: turboquant.torch_ops says the kernels are absent
#else
namespace {

const char* kRowNames = "float16, bfloat16 or float32";

nb::dlpack::dtype f16() { return {uint8_t(nb::dlpack::dtype_code::Float), 16, 1}; }
nb::dlpack::dtype bf16() { return {uint8_t(nb::dlpack::dtype_code::Bfloat), 16, 1}; }
const std::vector<nb::dlpack::dtype>& row_types() {
  static const std::vector<nb::dlpack::dtype> t{f16(), bf16(), nb::dtype<float>()};
  return t;
}
cuda::DType to_dtype(int index) { return index == 0 ? cuda::DType::kF16 : index == 1 ? cuda::DType::kBf16 : cuda::DType::kF32; }

// Sets the current device for a scope (the tables are uploaded to, and kernels launched on, the
// tensors' device), and puts the previous one back.
struct DeviceGuard {
  int previous = -1;
  explicit DeviceGuard(int device) {
    const cudaError_t e = cudaGetDevice(&previous);
    TQ_CHECK(e == cudaSuccess, "no CUDA device: {}", cudaGetErrorString(e));
    if (device != previous) TQ_CHECK(cudaSetDevice(device) == cudaSuccess, "cudaSetDevice({}) failed", device);
  }
  ~DeviceGuard() { cudaSetDevice(previous); }
};

// The device side of a KV spec's format for a model shape: its codec tables on one GPU. The pages
// are a uint8 tensor [layers, num_pages, kv_heads, block_bytes] the caller owns (torch allocates it).
struct PyCudaFormat {
  KvSpec spec;
  int device;
  std::unique_ptr<CacheFormat> format;
  std::unique_ptr<cuda::DeviceFormat> tables;

  PyCudaFormat(const KvSpec& s, uint32_t layers, uint32_t kv_heads, uint32_t head_dim, int device_index) : spec(s), device(device_index) {
    refuse_policy(spec, "turboquant.torch_ops");  // the kernels implement the page format only
    refuse_split(spec, "turboquant.torch_ops");
    format = std::make_unique<CacheFormat>(layers, kv_heads, head_dim, spec.format);
    DeviceGuard g(device);
    tables = std::make_unique<cuda::DeviceFormat>(*format);
  }

  // The view of `layer` of `pages`, after checking the pages tensor's shape and device.
  cuda::CacheView view(const char* fn, uint32_t layer, const nb::ndarray<>& pages) const {
    TQ_CHECK(layer < format->layers(), "{}: layer {} is outside the cache's {} layers", fn, layer, format->layers());
    check_cuda(pages, {fn, "pages", "[layers, num_pages, kv_heads, block_bytes]"}, {nb::dtype<uint8_t>()}, "uint8",
               {format->layers(), kAny, format->kv_heads(), format->layout().bytes}, device);
    return tables->view(layer, static_cast<uint8_t*>(pages.data()), uint32_t(pages.shape(1)));
  }

  cuda::DecodeParams attention(const char* fn, uint32_t layer, const nb::ndarray<>& pages, const nb::ndarray<>& q, const nb::ndarray<>& out,
                               const nb::ndarray<>& block_tables, const nb::ndarray<>& seq_lens, uint32_t max_seq_len, float scale,
                               const nb::ndarray<>& workspace) const {
    cuda::DecodeParams p;
    p.cache = view(fn, layer, pages);
    const int qi = check_cuda(q, {fn, "q", "[num_seqs, num_q_tokens, q_heads, head_dim]"}, row_types(), kRowNames,
                              {kAny, kAny, kAny, format->head_dim()}, device);
    const int64_t seqs = int64_t(q.shape(0)), ntok = int64_t(q.shape(1)), heads = int64_t(q.shape(2));
    const int oi = check_cuda(out, {fn, "out", "[num_seqs, num_q_tokens, q_heads, head_dim]"}, row_types(), kRowNames,
                              {seqs, ntok, heads, format->head_dim()}, device);
    check_cuda(block_tables, {fn, "block_tables", "[num_seqs, max_pages]"}, {nb::dtype<int32_t>()}, "int32", {seqs, kAny}, device);
    check_cuda(seq_lens, {fn, "seq_lens", "[num_seqs]"}, {nb::dtype<int32_t>()}, "int32", {seqs}, device);
    check_cuda(workspace, {fn, "workspace", "[bytes]"}, {nb::dtype<uint8_t>()}, "uint8", {kAny}, device);
    p.q = q.data(), p.q_dtype = to_dtype(qi);
    p.out = out.data(), p.out_dtype = to_dtype(oi);
    p.block_tables = static_cast<const int32_t*>(block_tables.data());
    p.seq_lens = static_cast<const int32_t*>(seq_lens.data());
    p.num_seqs = uint32_t(seqs), p.num_q_tokens = uint32_t(ntok), p.q_heads = uint32_t(heads);
    p.max_pages = uint32_t(block_tables.shape(1)), p.max_seq_len = max_seq_len, p.scale = scale;
    p.workspace = workspace.data();
    return p;
  }

  // The KV policy's side buffer of `layer` (sink, window; SideView in tq/cuda/kernels.h): side is
  // fp16 [slots, layers, sink + ring, 2, kv_heads, head_dim], side_slots int32 [num_seqs] each
  // sequence's slot, new_k / new_v [num_seqs, num_q_tokens, kv_heads, head_dim] the rows the step
  // stored (the kernels read the step's own positions from them, then write them into the slots).
  void set_side(const char* fn, cuda::DecodeParams& p, uint32_t layer, const std::optional<nb::ndarray<>>& side,
                const std::optional<nb::ndarray<>>& side_slots, const std::optional<nb::ndarray<>>& new_k,
                const std::optional<nb::ndarray<>>& new_v, uint32_t sink, uint32_t window) const {
    if (!sink && !window) return;
    TQ_CHECK(side && side_slots && new_k && new_v, "{}: a side buffer (sink {}, window {}) needs side, side_slots, new_k and new_v", fn,
             sink, window);
    const uint32_t H = format->kv_heads(), D = format->head_dim();
    const int64_t seqs = int64_t(p.num_seqs), ntok = int64_t(p.num_q_tokens);
    check_cuda(*side, {fn, "side", "[slots, layers, sink + ring, 2, kv_heads, head_dim]"}, {f16()}, "float16",
               {kAny, format->layers(), kAny, 2, H, D}, device);
    check_cuda(*side_slots, {fn, "side_slots", "[num_seqs]"}, {nb::dtype<int32_t>()}, "int32", {seqs}, device);
    const int ki = check_cuda(*new_k, {fn, "new_k", "[num_seqs, num_q_tokens, kv_heads, head_dim]"}, row_types(), kRowNames,
                              {seqs, ntok, H, D}, device);
    const int vi = check_cuda(*new_v, {fn, "new_v", "[num_seqs, num_q_tokens, kv_heads, head_dim]"}, row_types(), kRowNames,
                              {seqs, ntok, H, D}, device);
    TQ_CHECK(ki == vi, "{}: new_k is {}, new_v is {}: give both the same dtype", fn, dtype_name(new_k->dtype()), dtype_name(new_v->dtype()));
    const size_t rows = side->shape(2);
    TQ_CHECK(rows >= sink && (window == 0 ? rows == sink : rows - sink >= window),
             "{}: side holds {} rows a layer; sink {} and window {} need sink + a ring of at least the window", fn, rows, sink, window);
    const size_t layer_rows = rows * 2 * H * D;
    p.side.data = static_cast<uint16_t*>(side->data()) + layer * layer_rows;
    p.side.slots = static_cast<const int32_t*>(side_slots->data());
    p.side.slot_stride = format->layers() * layer_rows;
    p.side.sink = sink, p.side.window = window, p.side.ring = uint32_t(rows - sink);
    p.side.new_k = new_k->data(), p.side.new_v = new_v->data(), p.side.new_dtype = to_dtype(ki);
  }

  cuda::DecodeParams shape_only(uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len,
                                uint32_t sink, uint32_t window, uint32_t sliding_window) const {
    cuda::DecodeParams p;
    p.cache = tables->view(0, nullptr, 1);
    p.num_seqs = num_seqs, p.num_q_tokens = ntok, p.q_heads = q_heads, p.max_pages = max_pages, p.max_seq_len = max_seq_len;
    p.side.sink = sink, p.side.window = window;  // the side blocks take workspace too
    p.sliding_window = sliding_window;           // and the window sets the split count
    return p;
  }
};

cuda::Stream as_stream(uintptr_t s) { return reinterpret_cast<cuda::Stream>(s); }

}  // namespace

void bind_cuda(nb::module_& m) {
  nb::class_<PyCudaFormat>(m, "CudaFormat", "A KV spec's page format with its codec tables on one GPU (turboquant.torch_ops uses it).")
      .def(nb::init<const KvSpec&, uint32_t, uint32_t, uint32_t, int>(), nb::arg("spec"), nb::arg("layers"), nb::arg("kv_heads"),
           nb::arg("head_dim"), nb::arg("device"))
      .def_prop_ro("block_bytes", [](const PyCudaFormat& f) { return f.format->layout().bytes; })
      .def_prop_ro("page_size", [](const PyCudaFormat& f) { return f.format->page_size(); })
      .def_prop_ro("device", [](const PyCudaFormat& f) { return f.device; })
      .def(
          "quantize_store",
          [](const PyCudaFormat& f, uint32_t layer, nb::ndarray<> pages, nb::ndarray<> k, nb::ndarray<> v, nb::ndarray<> slots,
             uintptr_t stream) {
            const char* fn = "quantize_store";
            cuda::QuantizeStoreParams p;
            p.cache = f.view(fn, layer, pages);
            check_cuda(slots, {fn, "slots", "[tokens]"}, {nb::dtype<int64_t>()}, "int64", {kAny}, f.device);
            const int64_t n = int64_t(slots.shape(0));
            const int ki = check_cuda(k, {fn, "k", "[tokens, kv_heads, head_dim]"}, row_types(), kRowNames,
                                      {n, f.format->kv_heads(), f.format->head_dim()}, f.device);
            const int vi = check_cuda(v, {fn, "v", "[tokens, kv_heads, head_dim]"}, row_types(), kRowNames,
                                      {n, f.format->kv_heads(), f.format->head_dim()}, f.device);
            TQ_CHECK(ki == vi, "{}: k is {}, v is {}: give both the same dtype", fn, dtype_name(k.dtype()), dtype_name(v.dtype()));
            p.k = k.data(), p.v = v.data(), p.dtype = to_dtype(ki);
            p.slot_mapping = static_cast<const int64_t*>(slots.data());
            p.num_tokens = uint32_t(n);
            if (n == 0) return;
            DeviceGuard g(f.device);
            cuda::quantize_store(p, as_stream(stream));
          },
          nb::arg("layer"), nb::arg("pages"), nb::arg("k"), nb::arg("v"), nb::arg("slots"), nb::arg("stream"))
      .def(
          "decode_workspace_bytes",
          [](const PyCudaFormat& f, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len,
             uint32_t sink, uint32_t window, uint32_t sliding_window) {
            DeviceGuard g(f.device);
            return cuda::decode_workspace_bytes(f.shape_only(num_seqs, ntok, q_heads, max_pages, max_seq_len, sink, window, sliding_window));
          },
          nb::arg("num_seqs"), nb::arg("num_q_tokens"), nb::arg("q_heads"), nb::arg("max_pages"), nb::arg("max_seq_len"),
          nb::arg("sink") = 0, nb::arg("window") = 0, nb::arg("sliding_window") = 0)
      .def(
          "prefill_workspace_bytes",
          [](const PyCudaFormat& f, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len,
             uint32_t sink, uint32_t window, uint32_t sliding_window) {
            DeviceGuard g(f.device);
            return cuda::prefill_workspace_bytes(f.shape_only(num_seqs, ntok, q_heads, max_pages, max_seq_len, sink, window, sliding_window));
          },
          nb::arg("num_seqs"), nb::arg("num_q_tokens"), nb::arg("q_heads"), nb::arg("max_pages"), nb::arg("max_seq_len"),
          nb::arg("sink") = 0, nb::arg("window") = 0, nb::arg("sliding_window") = 0)
      .def(
          "attention",
          [](const PyCudaFormat& f, bool prefill, uint32_t layer, nb::ndarray<> pages, nb::ndarray<> q, nb::ndarray<> out,
             nb::ndarray<> block_tables, nb::ndarray<> seq_lens, uint32_t max_seq_len, float scale, nb::ndarray<> workspace,
             uintptr_t stream, std::optional<nb::ndarray<>> side, std::optional<nb::ndarray<>> side_slots,
             std::optional<nb::ndarray<>> new_k, std::optional<nb::ndarray<>> new_v, uint32_t sink, uint32_t window, uint32_t sliding_window) {
            const char* fn = prefill ? "prefill_attention" : "decode_attention";
            DeviceGuard g(f.device);
            cuda::DecodeParams p = f.attention(fn, layer, pages, q, out, block_tables, seq_lens, max_seq_len, scale, workspace);
            f.set_side(fn, p, layer, side, side_slots, new_k, new_v, sink, window);
            p.sliding_window = sliding_window;
            const size_t need = prefill ? cuda::prefill_workspace_bytes(p) : cuda::decode_workspace_bytes(p);
            TQ_CHECK(workspace.shape(0) >= need, "{}: the workspace has {} bytes, the shape needs {}", fn, workspace.shape(0), need);
            if (prefill) {
              cuda::prefill_attention(p, as_stream(stream));
            } else {
              cuda::decode_attention(p, as_stream(stream));
            }
          },
          nb::arg("prefill"), nb::arg("layer"), nb::arg("pages"), nb::arg("q"), nb::arg("out"), nb::arg("block_tables"),
          nb::arg("seq_lens"), nb::arg("max_seq_len"), nb::arg("scale"), nb::arg("workspace"), nb::arg("stream"), nb::arg("side") = nb::none(),
          nb::arg("side_slots") = nb::none(), nb::arg("new_k") = nb::none(), nb::arg("new_v") = nb::none(), nb::arg("sink") = 0,
          nb::arg("window") = 0, nb::arg("sliding_window") = 0);
}
#endif

}  // namespace tq::py
