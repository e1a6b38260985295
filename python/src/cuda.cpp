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
#include <nanobind/stl/string.h>

#include <memory>

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

  cuda::DecodeParams shape_only(uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len) const {
    cuda::DecodeParams p;
    p.cache = tables->view(0, nullptr, 1);
    p.num_seqs = num_seqs, p.num_q_tokens = ntok, p.q_heads = q_heads, p.max_pages = max_pages, p.max_seq_len = max_seq_len;
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
          [](const PyCudaFormat& f, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len) {
            DeviceGuard g(f.device);
            return cuda::decode_workspace_bytes(f.shape_only(num_seqs, ntok, q_heads, max_pages, max_seq_len));
          },
          nb::arg("num_seqs"), nb::arg("num_q_tokens"), nb::arg("q_heads"), nb::arg("max_pages"), nb::arg("max_seq_len"))
      .def(
          "prefill_workspace_bytes",
          [](const PyCudaFormat& f, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len) {
            DeviceGuard g(f.device);
            return cuda::prefill_workspace_bytes(f.shape_only(num_seqs, ntok, q_heads, max_pages, max_seq_len));
          },
          nb::arg("num_seqs"), nb::arg("num_q_tokens"), nb::arg("q_heads"), nb::arg("max_pages"), nb::arg("max_seq_len"))
      .def(
          "attention",
          [](const PyCudaFormat& f, bool prefill, uint32_t layer, nb::ndarray<> pages, nb::ndarray<> q, nb::ndarray<> out,
             nb::ndarray<> block_tables, nb::ndarray<> seq_lens, uint32_t max_seq_len, float scale, nb::ndarray<> workspace,
             uintptr_t stream) {
            const char* fn = prefill ? "prefill_attention" : "decode_attention";
            DeviceGuard g(f.device);
            const cuda::DecodeParams p = f.attention(fn, layer, pages, q, out, block_tables, seq_lens, max_seq_len, scale, workspace);
            const size_t need = prefill ? cuda::prefill_workspace_bytes(p) : cuda::decode_workspace_bytes(p);
            TQ_CHECK(workspace.shape(0) >= need, "{}: the workspace has {} bytes, the shape needs {}", fn, workspace.shape(0), need);
            if (prefill) {
              cuda::prefill_attention(p, as_stream(stream));
            } else {
              cuda::decode_attention(p, as_stream(stream));
            }
          },
          nb::arg("prefill"), nb::arg("layer"), nb::arg("pages"), nb::arg("q"), nb::arg("out"), nb::arg("block_tables"),
          nb::arg("seq_lens"), nb::arg("max_seq_len"), nb::arg("scale"), nb::arg("workspace"), nb::arg("stream"));
}
#endif

}  // namespace tq::py
