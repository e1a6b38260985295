// Helpers for the GPU tests: device buffers, skip-without-GPU, poisoned outputs.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "tq/kv/attention_ref.h"
#include "tq/kv/spec.h"

namespace tq::test {

bool have_gpu();

// The attention tests' case name: spec, head dim, GQA ratio, query tokens, lengths, splits, prefill.
std::string attention_case_name(const std::string& spec, uint32_t head_dim, uint32_t gqa, uint32_t ntok, const std::vector<int32_t>& lens,
                                uint32_t splits, bool prefill);

// x rounded to fp16 / bf16 (to nearest even) and back.
float to_f16(float x);
float to_bf16(float x);

// The worst relative L2 error of an output row of d elements (NaN when a row is not finite).
double worst_row_error(const std::vector<float>& got, const std::vector<float>& ref, uint32_t d);

// The bound of a GPU attention test, after flash-attention's tests: a kernel's worst row error
// against the reference may be at most kPrecisionFactor times that of a computation in the
// precision of the kernel's operands on the same data (same_precision_attention), plus the fp32
// softmax's own rounding, which no operand format changes: the kernels scale a logit x into the
// log2 domain and subtract the running maximum in fp32, a few roundings of |x| 2^-24 each, so a
// weight exp2(x - m) moves by up to about |x|max 2^-22 relative (ln 2 < 1), and so may a row.
inline constexpr double kPrecisionFactor = 2.0;
inline double attention_bound(double same_precision_error, double max_log2_logit) {
  return kPrecisionFactor * same_precision_error + max_log2_logit * 0x1.0p-22;
}
// attention_reference's computation with the roundings of the kernels' operands (decode_kernel.cuh,
// docs/cuda.md), scores and sums in fp32: Q as two fp16 parts (bf16 caches: bf16), or for 2- and
// 3-bit TurboQuant keys the rotated Q in int16 fixed point per row (step max|q| / 32639) against
// the int8 centroids (exact); TurboQuant K and V in the rotated domain with their centroids x sqrt(D) in fp16;
// the softmax weights P (times the value norm) in fp16 (bf16 caches: two bf16 parts). Float K and V
// are what the kernels read (exact). Its error against attention_reference is the error of a
// computation of the kernels' precision on these data.
// With a sink/window side buffer (the KV policy; SideView): positions below `sink` or within
// `window` of a query row's position are read from fp16 rows instead, in fp32 as the side blocks
// do: side_k/side_v(s, t) give sequence s's position t ([kv_heads][head_dim], already fp16 values).
// A sliding window (AttentionBatch::sliding_window) leaves out, as attention_reference does, the
// positions before each row's window, side positions included.
struct SideRows {
  uint32_t sink = 0, window = 0;
  std::function<const float*(uint32_t s, uint32_t t)> k, v;
};
// max_log2_logit, when set, receives the largest |logit| x log2(e) of the computation.
std::vector<float> same_precision_attention(const PagedKvCache& cache, uint32_t layer, const AttentionBatch& a, const SideRows* side = nullptr,
                                            double* max_log2_logit = nullptr);

// The argmax of a row of n logits when its top-2 gap exceeds `gap` times the row's spread
// (max - min); -1 when the row is too close to call.
int clear_argmax(const float* logits, size_t n, float gap);

#define TQ_REQUIRE_GPU() \
  if (!::tq::test::have_gpu()) GTEST_SKIP() << "no CUDA device: GPU tests run on a machine with one (bench/gpu/run_h200.sh)"

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << cudaGetErrorString(cudaGetLastError())

// A device buffer of T, freed on scope exit.
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    if (cudaMalloc(&ptr, sizeof(T) * (n ? n : 1)) != cudaSuccess) ptr = nullptr;
  }
  DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(ptr); }
  void upload(const std::vector<T>& host) { cudaMemcpy(ptr, host.data(), sizeof(T) * n, cudaMemcpyHostToDevice); }
  std::vector<T> download() const {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), ptr, sizeof(T) * n, cudaMemcpyDeviceToHost);
    return h;
  }
  void poison() { cudaMemset(ptr, 0xFF, sizeof(T) * n); }  // NaN for floats
};

}  // namespace tq::test
