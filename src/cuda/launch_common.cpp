#include "launch_common.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "split_plan.h"
#include "tq/check.h"
#include "tq/kv/spec.h"
#include "variants.h"

namespace tq::cuda {

namespace {
// The properties the launchers read, queried once per device.
struct DeviceProps {
  int sms = 0, major = 0, smem_optin = 0, smem_sm = 0;
};
DeviceProps props() {  // a copy: the vector may grow when another device is queried
  static std::mutex mu;
  static std::vector<DeviceProps> values;  // [device]
#ifdef TQ_CUDA_COMPILE_CHECK
  TQ_CHECK(false, "this build's CUDA kernels were compiled at -O1 only to check that they compile (TQ_CUDA_COMPILE_CHECK=ON, "
                  "as scripts/test.sh builds where there is no GPU): rebuild with -DTQ_CUDA_COMPILE_CHECK=OFF to run them");
#endif
  int dev = 0;
  TQ_CHECK(cudaGetDevice(&dev) == cudaSuccess, "no CUDA device");
  std::lock_guard<std::mutex> lock(mu);
  if (values.size() <= size_t(dev)) values.resize(dev + 1);
  DeviceProps& p = values[dev];
  if (!p.sms) {
    cudaDeviceGetAttribute(&p.major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&p.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cudaDeviceGetAttribute(&p.smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
    cudaDeviceGetAttribute(&p.sms, cudaDevAttrMultiProcessorCount, dev);
  }
  return p;
}

// TQ_CUDA_SMEM_KB: the shared memory a block the kernels plan for, in KB (0 when unset: the device's).
int smem_override_kb() {
  const char* v = std::getenv("TQ_CUDA_SMEM_KB");
  if (!v || !*v) return 0;
  char* end = nullptr;
  const long kb = std::strtol(v, &end, 10);
  TQ_CHECK(*end == '\0' && kb >= 1 && kb <= 1024 * 1024, "TQ_CUDA_SMEM_KB must be a number of KB (e.g. 99), got '{}'", v);
  return int(kb);
}
}  // namespace

int device_sm_count() { return props().sms; }
int device_cc_major() { return props().major; }
int device_smem_per_block() {
  const int kb = smem_override_kb();
  return kb ? std::min(props().smem_optin, kb * 1024) : props().smem_optin;
}

namespace {
int smem_per_sm() {  // TQ_CUDA_SMEM_KB=99 stands for a GPU of 100 KB an SM
  const int kb = smem_override_kb();
  return kb ? std::min(props().smem_sm, (kb + 1) * 1024) : props().smem_sm;
}
}  // namespace

int resident_blocks_here(int compiled_for, size_t smem) {
  return std::max(1, std::min(compiled_for, attention::blocks_fitting(size_t(smem_per_sm()), smem)));
}

size_t smem_holding(int blocks, size_t smem) {
  return attention::smem_holding_in(size_t(smem_per_sm()), blocks, smem, size_t(device_smem_per_block()));
}

namespace {
// TQ_CUDA_PORTABLE=1 (any value but empty or 0): no Hopper-only features. Read once.
bool portable_requested() {
  static const bool portable = [] {
    const char* v = std::getenv("TQ_CUDA_PORTABLE");
    return v && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
  }();
  return portable;
}
}  // namespace

bool dependent_launches() { return !portable_requested() && device_cc_major() >= 9; }
bool warpgroup_mma() { return kernels_arch() == 90 && !(portable_requested() && kPortableOnHopper); }

void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  TQ_CHECK(e == cudaSuccess, "{}: launch failed: {}", what, cudaGetErrorString(e));
}

std::string attention_unsupported(TensorCode k, TensorCode v, uint32_t head_dim) {
  if (std::string why = gpu_kernels_unsupported(k, v, head_dim); !why.empty()) return why;
  // The GPU at hand, when there is one: its shared memory a block must hold the kernels' tiles.
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    cudaGetLastError();  // no driver or device: nothing to check here, and no error left for a later check_launch
  } else if (devices > 0) {
    const int arch = kernels_arch();
    if (arch == 0)
      return fmt::format("this build has no CUDA kernels for this GPU (compute capability {}.x): rebuild with its architecture in "
                         "TQ_CUDA_ARCHS (docs/cuda.md)",
                         device_cc_major());
    const size_t need = attention_smem_bytes(k, head_dim, size_t(device_smem_per_block()), arch);
    if (need > size_t(device_smem_per_block()))
      return fmt::format("a {} cache at head dim {} needs {} KB of shared memory a block in the attention kernels; this GPU (compute "
                         "capability {}) allows {} KB (docs/cuda.md lists what runs where)",
                         k.enc == Encoding::kFp8E4M3 ? "fp8" : is_tq(k.enc) ? "TurboQuant" : "fp16/bf16", head_dim, (need + 1023) / 1024,
                         device_cc_major(), device_smem_per_block() / 1024);
  }
  return "";
}

void validate_cache(const CacheView& c) {
  TQ_CHECK(c.data, "cache view: data is null");
  TQ_CHECK(reinterpret_cast<uintptr_t>(c.data) % kAlign == 0, "cache view: data must be {}-byte aligned (sections are read a 16-byte load)",
           kAlign);
  validate_cache_layout(c);
}

void validate_cache_layout(const CacheView& c) {
  TQ_CHECK(c.kv_heads >= 1 && c.num_pages >= 1 && c.page_size >= 1 && c.page_size <= kMaxPageSize,
           "cache view: kv_heads {}, num_pages {}, page_size {} out of range", c.kv_heads, c.num_pages, c.page_size);
  TQ_CHECK(c.head_dim >= 1 && c.head_dim <= kMaxHeadDim, "cache view: head dim {} out of range", c.head_dim);
  // Every field: the row strides too (a view of twice the K row stride passed, and quantize_store
  // wrote into the V and norm sections and past the block).
  const BlockLayout L = block_layout(c.k, c.v, c.head_dim, c.page_size), &G = c.layout;
  TQ_CHECK(L.k_row == G.k_row && L.k_qjl_row == G.k_qjl_row && L.v_row == G.v_row && L.k_norm_row == G.k_norm_row &&
               L.v_norm_row == G.v_norm_row && L.k_codes == G.k_codes && L.k_qjl == G.k_qjl && L.v_codes == G.v_codes &&
               L.k_norms == G.k_norms && L.k_rnorms == G.k_rnorms && L.v_norms == G.v_norms && L.bytes == G.bytes,
           "cache view: layout does not match block_layout() of its encodings");
  for (const auto& [scale, name] : {std::pair{c.k_scale, "k_scale"}, std::pair{c.v_scale, "v_scale"}})
    TQ_CHECK(std::isfinite(scale) && scale > 0, "cache view: {} must be positive and finite (1 but for fp8), got {}", name, scale);
  TQ_CHECK(uint64_t(c.kv_heads) * L.bytes <= UINT32_MAX, "cache view: a page of {} KV heads x {} bytes exceeds 4 GiB", c.kv_heads,
           L.bytes);  // the kernels address a page with 32-bit offsets
  for (const auto& [code, tab, name] : {std::tuple{c.k, c.kt, "K"}, std::tuple{c.v, c.vt, "V"}}) {
    if (!is_tq(code.enc)) continue;
    TQ_CHECK(tab.centroids && tab.boundaries, "cache view: {} codebook tables are null", name);
    TQ_CHECK((tab.signs != nullptr) != (tab.matrix != nullptr), "cache view: {} needs exactly one of Hadamard signs or a dense matrix", name);
    const uint32_t n = padded_dim(c.head_dim);  // the butterflies run over a power of two (96 read past their rows)
    TQ_CHECK(tab.signs == nullptr || (n & (n - 1)) == 0, "cache view: {} Hadamard signs at padded dim {}, not a power of two", name, n);
    TQ_CHECK(tab.bits == mse_bits(code), "cache view: {} table bits {} differ from the encoding's {}", name, tab.bits, mse_bits(code));
    TQ_CHECK(tab.tcq == (code.enc == Encoding::kTqTcq), "cache view: {} tables are {}trellis-coded, the encoding is {}", name,
             tab.tcq ? "" : "not ", tab.tcq ? "not" : "trellis-coded");
  }
  if (is_tq(c.k.enc) || is_tq(c.v.enc)) {
    const float want = float(1.0 / std::sqrt(double(padded_dim(c.head_dim))));  // as DeviceFormat::view computes it
    TQ_CHECK(c.fwht_scale == want, "cache view: fwht_scale must be float(1/sqrt(padded dim {})) = {}, got {}", padded_dim(c.head_dim), want,
             c.fwht_scale);
  }
}

}  // namespace tq::cuda
