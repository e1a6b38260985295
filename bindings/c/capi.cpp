// The C API over the CUDA kernels (tq_capi.h), for scripts that load the library with ctypes and
// hand it device pointers (bench/gpu/bench_decode.py measures it next to PyTorch in one process).
#include "tq_capi.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstring>
#include <memory>

#include "tq/cuda/dense_prompt.h"
#include "tq/cuda/device_format.h"
#include "tq/cuda/kernels.h"
#include "tq/kv/cache_format.h"
#include "tq/kv/spec.h"
#include "tq/check.h"

namespace {

using Handle = tq::cuda::DeviceKvCache;  // one layer of device pages and its codec tables

int fail(char* err, int n, const char* msg) {
  if (err && n > 0) {
    std::strncpy(err, msg, size_t(n) - 1);
    err[n - 1] = 0;
  }
  return -1;
}

template <class F>
int guarded(char* err, int n, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    return fail(err, n, e.what());
  }
}

Handle& handle_of(void* handle) {
  TQ_CHECK(handle != nullptr, "the cache handle is null (tq_cache_create failed, or was not called)");
  return *static_cast<Handle*>(handle);
}

tq::cuda::DType dtype_of(int dtype, const char* name) {
  TQ_CHECK(dtype >= 0 && dtype <= 2, "{} {} is not a dtype: 0 = fp32, 1 = fp16, 2 = bf16", name, dtype);
  return tq::cuda::DType(dtype);
}

}  // namespace

extern "C" {

uint32_t tq_capi_version(void) { return TQ_CAPI_VERSION; }

void* tq_cache_create(uint32_t kv_heads, uint32_t head_dim, uint32_t num_pages, const char* spec, char* err, int errlen) {
  std::unique_ptr<Handle> h;
  guarded(err, errlen, [&] {
    TQ_CHECK(spec != nullptr, "tq_cache_create: the KV spec is null");
    const tq::KvSpec s = tq::parse_kv_spec(spec);
    // The kernels read one layer of pages: the engine's policy knobs (sink, window, edge, ksim)
    // are refused by name rather than dropped, before anything is allocated.
    tq::refuse_policy(s, "tq_cache_create");
    TQ_CHECK(s.format.k.enc != tq::Encoding::kTqSplit && s.format.v.enc != tq::Encoding::kTqSplit,
             "KV spec '{}': tq_cache_create has no GPU kernels for fractional widths (the outlier split); use whole widths such as k3v2",
             s.text);
    const tq::CacheFormat format(1, kv_heads, head_dim, s.format);
    h = std::make_unique<Handle>(format, num_pages);
  });
  return h.release();
}

void tq_cache_destroy(void* handle) { delete static_cast<Handle*>(handle); }

uint64_t tq_cache_bytes(void* handle) { return handle ? static_cast<Handle*>(handle)->bytes() : 0; }
uint32_t tq_cache_block_bytes(void* handle) { return handle ? static_cast<Handle*>(handle)->format().layout().bytes : 0; }

static tq::cuda::QuantizeStoreParams store_params(void* handle, const void* k, const void* v, int dtype, const int64_t* slots,
                                                  uint32_t num_tokens) {
  tq::cuda::QuantizeStoreParams p;
  p.cache = handle_of(handle).view(0);
  p.k = k;
  p.v = v;
  p.dtype = dtype_of(dtype, "dtype");
  p.slot_mapping = slots;
  p.num_tokens = num_tokens;
  return p;
}

int tq_quantize_store(void* handle, const void* k, const void* v, int dtype, const int64_t* slots, uint32_t num_tokens, void* stream,
                      char* err, int errlen) {
  return guarded(err, errlen, [&] {
    tq::cuda::quantize_store(store_params(handle, k, v, dtype, slots, num_tokens), static_cast<tq::cuda::Stream>(stream));
  });
}

static tq::cuda::DecodeParams decode_params(void* handle, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages,
                                            uint32_t max_seq_len, uint32_t splits) {
  tq::cuda::DecodeParams p;
  p.cache = handle_of(handle).view(0);
  p.num_seqs = num_seqs;
  p.num_q_tokens = ntok;
  p.q_heads = q_heads;
  p.max_pages = max_pages;
  p.max_seq_len = max_seq_len;
  p.num_splits = splits;
  return p;
}

// 0 for a shape the kernels refuse: tq_decode / tq_prefill then say why.
uint64_t tq_decode_workspace(void* handle, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len,
                             uint32_t splits) {
  uint64_t bytes = 0;
  guarded(nullptr, 0, [&] { bytes = tq::cuda::decode_workspace_bytes(decode_params(handle, num_seqs, ntok, q_heads, max_pages, max_seq_len, splits)); });
  return bytes;
}

uint64_t tq_prefill_workspace(void* handle, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len,
                              uint32_t splits) {
  uint64_t bytes = 0;
  guarded(nullptr, 0, [&] { bytes = tq::cuda::prefill_workspace_bytes(decode_params(handle, num_seqs, ntok, q_heads, max_pages, max_seq_len, splits)); });
  return bytes;
}

static tq::cuda::DecodeParams attention_params(void* handle, const void* q, int q_dtype, void* out, int out_dtype,
                                               const int32_t* block_tables, const int32_t* seq_lens, uint32_t num_seqs, uint32_t ntok,
                                               uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len, uint32_t splits, void* workspace,
                                               uint64_t workspace_bytes) {
  // The library's own check (checked_plan) reads 0 as "not given": here it is a caller's slip.
  TQ_CHECK(workspace_bytes > 0, "workspace_bytes is 0: pass the workspace's size (at least tq_decode_workspace() or "
           "tq_prefill_workspace() for the shape)");
  tq::cuda::DecodeParams p = decode_params(handle, num_seqs, ntok, q_heads, max_pages, max_seq_len, splits);
  p.q = q;
  p.q_dtype = dtype_of(q_dtype, "q_dtype");
  p.out = out;
  p.out_dtype = dtype_of(out_dtype, "out_dtype");
  p.block_tables = block_tables;
  p.seq_lens = seq_lens;
  p.workspace = workspace;
  p.workspace_bytes = workspace_bytes;
  return p;
}

static int attention(bool prefill, void* handle, const void* q, int q_dtype, void* out, int out_dtype, const int32_t* block_tables,
                     const int32_t* seq_lens, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len,
                     uint32_t splits, void* workspace, uint64_t workspace_bytes, void* stream, char* err, int errlen) {
  return guarded(err, errlen, [&] {
    const tq::cuda::DecodeParams p = attention_params(handle, q, q_dtype, out, out_dtype, block_tables, seq_lens, num_seqs, ntok, q_heads,
                                                      max_pages, max_seq_len, splits, workspace, workspace_bytes);
    if (prefill) {
      tq::cuda::prefill_attention(p, static_cast<tq::cuda::Stream>(stream));
    } else {
      tq::cuda::decode_attention(p, static_cast<tq::cuda::Stream>(stream));
    }
  });
}

int tq_decode(void* handle, const void* q, int q_dtype, void* out, int out_dtype, const int32_t* block_tables, const int32_t* seq_lens,
              uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len, uint32_t splits, void* workspace,
              uint64_t workspace_bytes, void* stream, char* err, int errlen) {
  return attention(false, handle, q, q_dtype, out, out_dtype, block_tables, seq_lens, num_seqs, ntok, q_heads, max_pages, max_seq_len,
                   splits, workspace, workspace_bytes, stream, err, errlen);
}

// The same arguments; a chunk of ntok new queries per sequence (prefill_attention).
int tq_prefill(void* handle, const void* q, int q_dtype, void* out, int out_dtype, const int32_t* block_tables, const int32_t* seq_lens,
               uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len, uint32_t splits, void* workspace,
               uint64_t workspace_bytes, void* stream, char* err, int errlen) {
  return attention(true, handle, q, q_dtype, out, out_dtype, block_tables, seq_lens, num_seqs, ntok, q_heads, max_pages, max_seq_len,
                   splits, workspace, workspace_bytes, stream, err, errlen);
}

// quantize_store of num_tokens new rows, then decode, as one step (quantize_store_and_decode).
int tq_store_and_decode(void* handle, const void* k, const void* v, int dtype, const int64_t* slots, uint32_t num_tokens, const void* q,
                        int q_dtype, void* out, int out_dtype, const int32_t* block_tables, const int32_t* seq_lens, uint32_t num_seqs,
                        uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len, uint32_t splits, void* workspace,
                        uint64_t workspace_bytes, void* stream, char* err, int errlen) {
  return guarded(err, errlen, [&] {
    tq::cuda::quantize_store_and_decode(store_params(handle, k, v, dtype, slots, num_tokens),
                                        attention_params(handle, q, q_dtype, out, out_dtype, block_tables, seq_lens, num_seqs, ntok, q_heads,
                                                         max_pages, max_seq_len, splits, workspace, workspace_bytes),
                                        static_cast<tq::cuda::Stream>(stream));
  });
}

static tq::cuda::DensePromptParams dense_params(uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim,
                                               int dtype, float scale) {
  tq::cuda::DensePromptParams p;
  p.dtype = dtype_of(dtype, "dtype");
  p.num_seqs = num_seqs, p.ntok = ntok, p.q_heads = q_heads, p.kv_heads = kv_heads, p.head_dim = head_dim, p.scale = scale;
  return p;
}

int tq_dense_prompt_available(char* err, int errlen) {
  std::string why;
  if (tq::cuda::dense_prompt_available(&why)) return 1;
  fail(err, errlen, why.c_str());
  return 0;
}

int64_t tq_dense_prompt_workspace(uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim, int dtype,
                                  float scale, char* err, int errlen) {
  int64_t bytes = -1;
  guarded(err, errlen, [&] {
    bytes = int64_t(tq::cuda::dense_prompt_workspace_bytes(dense_params(num_seqs, ntok, q_heads, kv_heads, head_dim, dtype, scale)));
  });
  return bytes;
}

int tq_dense_prompt(const void* q, const void* k, const void* v, void* out, int dtype, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads,
                    uint32_t kv_heads, uint32_t head_dim, float scale, void* workspace, uint64_t workspace_bytes, void* stream, char* err,
                    int errlen) {
  return guarded(err, errlen, [&] {
    tq::cuda::DensePromptParams p = dense_params(num_seqs, ntok, q_heads, kv_heads, head_dim, dtype, scale);
    p.q = q, p.k = k, p.v = v, p.out = out, p.workspace = workspace, p.workspace_bytes = workspace_bytes;
    tq::cuda::dense_prompt_attention(p, static_cast<tq::cuda::Stream>(stream));
  });
}

}  // extern "C"
