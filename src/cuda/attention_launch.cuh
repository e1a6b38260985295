// The launchers of the attention kernels, one head dim at a time: attention_d64.cu, attention_d128.cu
// and attention_d256.cu each compile one dim's kernels (dispatch_dim<D>), so a build with cores to
// spare compiles the three in parallel (the GPU machine's: 70 s instead of about 3 minutes), and
// decode_attention.cu (validation, plans) reaches them through the extern templates at the end. The kernels:
// decode_kernel.cuh (attention over one split), decode_query.cuh (query rotation), decode_merge.cuh
// (split merge), prefill_kernel.cuh and prefill_ws.cuh (chunked prefill; the second is Hopper's);
// docs/cuda.md describes the design.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "decode_kernel.cuh"
#include "decode_merge.cuh"
#include "launch_common.h"
#include "prefill_kernel.cuh"
#include "prefill_ws.cuh"
#include "tq/check.h"
#include "tq/cuda/kernels.h"

namespace tq::cuda::attention {

using namespace decode;  // the kernels and their pieces

// Compact kernels: where a kernel's H200 tiles exceed the 99 KB of shared memory a block of sm_86,
// 89 and 120 (float caches' decode rings at D >= 128, prefill's tiles at D = 256), a compact
// variant exists (unstaged decode loads, 16-token prefill tiles; kDecodeHasCompact,
// kPrefillHasCompact) and runs where the full one does not fit, or is not compiled (variants.h).
using prefill::kPrefillHasCompact;

// Whether this GPU (device_smem_per_block: its limit, or TQ_CUDA_SMEM_KB's) runs the compact ones.
template <int D, Kind KIND>
bool decode_compact_here() {
  if constexpr (kDecodeHasCompact<D, KIND>)
    return choose_compact(kernels_arch(), sizeof(Smem<D, KIND, 0, 0>) > size_t(device_smem_per_block()));
  return false;
}
template <int D>
bool prefill_compact_here() {
  if constexpr (kPrefillHasCompact<D>) return choose_compact(kernels_arch(), prefill::smem_bytes<D>() > size_t(device_smem_per_block()));
  return false;
}
// Whether prefill takes Hopper's warp-specialized kernel (prefill_ws.cuh): where the warpgroup
// MMAs run (warpgroup_mma) and its shared memory fits a block (TQ_CUDA_SMEM_KB may lower the limit).
template <int D>
bool prefill_ws_here() {
  return warpgroup_mma() && prefill::ws_smem_bytes<D>() <= size_t(device_smem_per_block());
}

// What a launch is: decode, decode right after a quantize_store of the same step (its prologue
// may then read everything but the cache before the store ends), or chunked prefill.
enum class Mode { kDecode, kDecodeAfterStore, kPrefill };

// A launch's shape: decode_attention.cu's make_plan or make_prefill_plan.
struct Plan {
  int D, splits, tokens_per_split;
  int mtiles;  // 8-row m-tiles per (sequence, KV head): the rows (GQA group x query tokens), rounded up to whole blocks
  int R = 1;   // decode: m-tiles a block (1 or 2: make_plan); mtiles is a multiple of it
  bool km = false;  // decode: keys as M, blocks of at most 4 rows (decode_kernel.cuh's KM; R = 1)
  int side;  // side blocks after the packed splits (decode_side.cuh): decode side_decode_blocks, prefill 1; 0 without
  bool ws = false;      // prefill: Hopper's warp-specialized kernel (prefill_ws.cuh) instead of prefill_kernel
  int block_rows = 64;  // prefill: query rows a block (prefill::kWsRows or kBlockRows)
  size_t ws_o_bytes, ws_ml_bytes, ws_q_bytes;  // the workspace: [ws_o][ws_ml][ws_q]
  size_t workspace_bytes() const { return ws_o_bytes + ws_ml_bytes + ws_q_bytes; }
};

// Launches `kernel` (kThreads a block) as a programmatic dependent launch where the GPU has them
// (launch_common.h): it may be scheduled while the previous kernel in the stream drains, and waits
// for it in dev::wait_prerequisites before touching memory (dev::allow_dependents in the previous
// one lets it start even earlier). Elsewhere, a plain launch.
template <class... Params, class... Args>
void launch_after(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Stream stream, Args... args) {
  const cudaError_t e = launch_dependent(kernel, grid, block, smem, stream, args...);
  TQ_CHECK(e == cudaSuccess, "decode_attention: {} launch failed: {}", what, cudaGetErrorString(e));
}

// Raises a kernel's dynamic shared-memory limit when it needs more than the default 48 KB (a
// host-side setting, capture-safe). A GPU with less shared memory a block than that was refused
// by validate (attention_unsupported); a kernel over the limit here is a wrong choice of variant
// (which TQ_CUDA_SMEM_KB makes visible on a GPU that would still run it).
template <class Kernel>
void allow_smem(Kernel kernel, size_t smem) {
  TQ_CHECK(smem <= size_t(device_smem_per_block()), "decode_attention: a kernel of {} bytes of shared memory a block chosen where {} are allowed",
           smem, device_smem_per_block());
  if (smem <= 48 * 1024) return;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  TQ_CHECK(e == cudaSuccess, "decode_attention: {} bytes of shared memory per block refused: {}", smem, cudaGetErrorString(e));
}

// The split merge, a programmatic dependent of the attention grid: a warp a row where rows have
// few partials, a block a row otherwise (decode_merge.cuh).
template <int D, bool TQ>
void merge(const DecodeParams& p, const Plan& pl, Stream stream, const float* ws_o, const float2* ws_ml) {
  const size_t rows = size_t(p.num_seqs) * p.num_q_tokens * p.q_heads;
  if (pl.splits + pl.side <= kWarpMergeParts)
    launch_after("merge", merge_rows_kernel<D, TQ>, dim3(unsigned((rows + kWarps - 1) / kWarps)), dim3(kThreads), 0, stream, p, pl.splits,
                 pl.side, ws_o, ws_ml);
  else
    launch_after("merge", merge_kernel<D, TQ>, dim3(unsigned(rows)), dim3(kThreads), 0, stream, p, pl.splits, pl.side, ws_o, ws_ml);
}

// The shared memory a decode block is launched with: its Smem, raised for packed caches where
// the GPU would hold more blocks an SM than their registers are compiled for (resident_blocks),
// so that it holds that many. k3v2 at D = 256 (160 registers, 2 blocks compiled) fits 3 an SM,
// and ran slower so at every shape measured (the plan's splits for 3 an SM against those for 2;
// bench/results/2026-12-06-h100-decode-copies.md). Float caches keep what fits.
template <int D, Kind KIND, int KB, int VB, int R, bool C>
size_t decode_smem() {
  constexpr size_t smem = sizeof(Smem<D, KIND, KB, VB, R, C>);
  return KIND == Kind::kTq ? smem_holding(resident_blocks<D, KIND, KB, VB, R, C>(), smem) : smem;
}

// Calls f(R, C) with the decode kernel a cache of this kind takes: R m-tiles a block (packed
// caches up to D = 128 take the plan's, others 1) and the compact variant where it runs here.
template <int D, Kind KIND, class F>
void with_decode_variant(int R, F&& f) {
  using Full = std::false_type;
  if constexpr (KIND == Kind::kTq && D <= 128) {
    if (R == 2)
      f(std::integral_constant<int, 2>{}, Full{});
    else
      f(std::integral_constant<int, 1>{}, Full{});
  } else if constexpr (kDecodeHasCompact<D, KIND>) {
    if (decode_compact_here<D, KIND>())
      f(std::integral_constant<int, 1>{}, std::true_type{});
    else
      f(std::integral_constant<int, 1>{}, Full{});
  } else {
    f(std::integral_constant<int, 1>{}, Full{});
  }
}

template <int D, Kind KIND, int KB, int VB>
void launch(const DecodeParams& p, const Plan& pl, Mode mode, Stream stream) {
  float* ws_o = static_cast<float*>(p.workspace);
  float2* ws_ml = reinterpret_cast<float2*>(static_cast<uint8_t*>(p.workspace) + pl.ws_o_bytes);
  float* ws_q = reinterpret_cast<float*>(static_cast<uint8_t*>(p.workspace) + pl.ws_o_bytes + pl.ws_ml_bytes);
  // Dense rotations rotate each query once, in a kernel of their own; the decode and prefill
  // kernels rotate the others themselves (decode: one launch less, ~3 us of a batch-1 step in a
  // CUDA graph on the H200; prefill: the fp32 rows' round trip through the workspace too).
  const bool dense = KIND == Kind::kTq && p.cache.kt.signs == nullptr;
  if (dense)  // (prefill_kernel.cuh's rotates_queries: the same rule)
    prepare_queries<D, KIND><<<dim3(p.cache.kv_heads * pl.mtiles, p.num_seqs), kThreads, 0, stream>>>(p, pl.mtiles, ws_q);
  if (mode == Mode::kPrefill) {  // 128-row blocks on Hopper (prefill_ws.cuh), else 64-row ones; then the merge
    // (unless the blocks write the output rows themselves: prefill::writes_output, the kernels' rule)
    const bool direct = prefill::writes_output(p, D, pl.splits, KIND == Kind::kTq);
    const dim3 grid(pl.splits + pl.side, p.cache.kv_heads * (pl.mtiles / (pl.block_rows / kRows)), p.num_seqs);
    const int rtiles = int(grid.y / p.cache.kv_heads);
    if (pl.ws) {
      constexpr size_t smem = prefill::ws_smem_bytes<D, prefill::ws_s8<D, KIND, KB>()>();
      const auto kernel = prefill::prefill_ws_kernel<D, KIND, KB, VB>;
      allow_smem(kernel, smem);
      launch_after("prefill", kernel, grid, dim3(prefill::kWsThreads), smem, stream, p, pl.tokens_per_split, rtiles, ws_o, ws_ml,
                   static_cast<const float*>(ws_q));
      if (!direct) merge<D, KIND == Kind::kTq>(p, pl, stream, ws_o, ws_ml);
      return;
    }
    const auto prefill = [&](auto tokens) {  // a tile's tokens (tile_tokens)
      constexpr int T = decltype(tokens)::value;
      constexpr size_t smem = prefill::smem_bytes<D, T>();
      const auto kernel = prefill::prefill_kernel<D, KIND, KB, VB, T>;
      allow_smem(kernel, smem);
      launch_after("prefill", kernel, grid, dim3(kThreads), smem, stream, p, pl.tokens_per_split, rtiles, ws_o, ws_ml,
                   static_cast<const float*>(ws_q));
    };
    const auto full = [&] { prefill(std::integral_constant<int, prefill::tile_tokens(D)>{}); };
    if constexpr (kPrefillHasCompact<D>) {
      if (prefill_compact_here<D>())
        prefill(std::integral_constant<int, prefill::tile_tokens(D, true)>{});
      else
        full();
    } else {
      full();
    }
    if (!direct) merge<D, KIND == Kind::kTq>(p, pl, stream, ws_o, ws_ml);
    return;
  }
  // Both as programmatic dependent launches: the decode kernel's blocks are scheduled while the
  // previous kernel (e.g. quantize_store) finishes, the merge's while the decode grid drains.
  // (Dense rotations read ws_q, written by prepare_queries just before: never early.)
  with_decode_variant<D, KIND>(pl.R, [&](auto r, auto compact) {
    constexpr int R = decltype(r)::value;
    constexpr bool C = decltype(compact)::value;
    const dim3 grid(pl.splits + pl.side, p.cache.kv_heads * (pl.mtiles / R), p.num_seqs);
    const size_t smem = decode_smem<D, KIND, KB, VB, R, C>();  // (keys as M: the same blocks, shared memory and residency)
    const auto go = [&](auto km) {
      const auto kernel = decode_kernel<D, KIND, KB, VB, R, C, decltype(km)::value>;
      allow_smem(kernel, smem);
      launch_after("decode", kernel, grid, dim3(kThreads), smem, stream, p, pl.tokens_per_split, pl.mtiles / R, ws_o, ws_ml,
                   static_cast<const float*>(dense ? ws_q : nullptr), mode == Mode::kDecodeAfterStore && !dense);
    };
    if constexpr (kDecodeKeysAsM<D, KIND, KB> && R == 1 && !C) {
      if (pl.km) return go(std::true_type{});
    }
    TQ_CHECK(!pl.km, "decode_attention: a plan with the keys as M for a cache whose kernels have none");
    go(std::false_type{});
  });
  merge<D, KIND == Kind::kTq>(p, pl, stream, ws_o, ws_ml);
}

// Blocks of the decode kernel one SM of this GPU holds at once for this cache and R, as the GPU
// schedules them (the occupancy API: registers and shared memory; TQ_CUDA_SMEM_KB may lower the
// shared memory), which make_plan counts the grid's waves in. That can exceed the count the
// kernel's registers are compiled for (resident_blocks): k3v2 at D = 256 is compiled for 2 blocks
// an SM at 160 registers, and 3 fit; a plan that counted 2 took (64, 4K) for two full waves of
// whole sequences, which ran as one and a third (bench/results/2026-12-06-h100-decode-copies.md).
// Asked once per kernel, device and shared memory a block (TQ_CUDA_SMEM_KB is read at every call:
// a process may plan for a 99 KB GPU between calls for this one, and the compact kernels with it).
template <int D, Kind KIND, int KB, int VB>
int decode_residency(int R) {
  constexpr int kDevices = 16;  // GPUs of a process remembered; beyond that, asked each time
  // [device][R - 1]: the count << 32 | the shared memory a block it was asked at; 0 until asked
  static std::atomic<uint64_t> known[kDevices][2];
  int dev = 0;
  TQ_CHECK(cudaGetDevice(&dev) == cudaSuccess, "decode_attention: no CUDA device");
  const uint64_t at = uint64_t(device_smem_per_block());
  const bool kept = dev < kDevices && R >= 1 && R <= 2;
  if (kept) {
    const uint64_t v = known[dev][R - 1].load(std::memory_order_relaxed);
    if (v != 0 && (v & 0xffffffffu) == at) return int(v >> 32);
  }
  int n = 1;
  with_decode_variant<D, KIND>(R, [&](auto r, auto compact) {
    constexpr int Rc = decltype(r)::value;
    constexpr bool C = decltype(compact)::value;
    const size_t smem = decode_smem<D, KIND, KB, VB, Rc, C>();
    allow_smem(decode_kernel<D, KIND, KB, VB, Rc, C>, smem);
    int blocks = 0;
    const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, decode_kernel<D, KIND, KB, VB, Rc, C>, kThreads, smem);
    TQ_CHECK(e == cudaSuccess, "decode_attention: the decode kernel's occupancy: {}", cudaGetErrorString(e));
    n = resident_blocks_here(std::max(blocks, 1), smem);
  });
  if (kept) known[dev][R - 1].store(uint64_t(n) << 32 | at, std::memory_order_relaxed);
  return n;
}

// Calls f(KIND, KB, VB) (integral constants) with the kernels' parameters for a cache.
template <int D, class F>
decltype(auto) visit_cache(const CacheView& c, F&& f) {
  using std::integral_constant;
  const TensorCode k = c.k, v = c.v;
  switch (k.enc) {
    case Encoding::kFp16: return f(integral_constant<Kind, Kind::kF16>{}, integral_constant<int, 0>{}, integral_constant<int, 0>{});
    case Encoding::kBf16: return f(integral_constant<Kind, Kind::kBf16>{}, integral_constant<int, 0>{}, integral_constant<int, 0>{});
    case Encoding::kFp8E4M3: return f(integral_constant<Kind, Kind::kFp8>{}, integral_constant<int, 0>{}, integral_constant<int, 0>{});
    default: break;
  }
  const integral_constant<Kind, Kind::kTq> tq;
  // TurboQuant widths with kernels in this build (gpu_kernels_unsupported refuses the others): K
  // and V each 2, 3 or 4 bits; or both trellis-coded, each 2 or 3 bits (kTcq widths: widths.h).
  if (k.enc == Encoding::kTqTcq) {
    TQ_CHECK(v.enc == Encoding::kTqTcq && k.bits >= 2 && k.bits <= 3 && v.bits >= 2 && v.bits <= 3,
             "decode_attention: trellis-coded K {} bits, V {} bits{} reached the kernels (gpu_kernels_unsupported refuses it)", k.bits,
             v.bits, v.enc == Encoding::kTqTcq ? " trellis-coded" : " plain");
    const auto with_v = [&](auto kb) {
      if (v.bits == 2) return f(tq, kb, integral_constant<int, kTcq + 2>{});
      return f(tq, kb, integral_constant<int, kTcq + 3>{});
    };
    if (k.bits == 2) return with_v(integral_constant<int, kTcq + 2>{});
    return with_v(integral_constant<int, kTcq + 3>{});
  }
  TQ_CHECK(k.bits >= 2 && k.bits <= 4 && v.bits >= 2 && v.bits <= 4, "decode_attention: K {} bits, V {} bits reached the kernels "
           "(gpu_kernels_unsupported refuses them)", k.bits, v.bits);
  const auto with_v = [&](auto kb) {
    if (v.bits == 2) return f(tq, kb, integral_constant<int, 2>{});
    if (v.bits == 3) return f(tq, kb, integral_constant<int, 3>{});
    return f(tq, kb, integral_constant<int, 4>{});
  };
  if (k.bits == 2) return with_v(integral_constant<int, 2>{});
  if (k.bits == 3) return with_v(integral_constant<int, 3>{});
  return with_v(integral_constant<int, 4>{});
}

template <int D>
void dispatch_dim(const DecodeParams& p, const Plan& pl, Mode mode, Stream s) {
  visit_cache<D>(p.cache, [&](auto kind, auto kb, auto vb) { launch<D, decltype(kind)::value, decltype(kb)::value, decltype(vb)::value>(p, pl, mode, s); });
}
template <int D>
int residency_dim(const CacheView& c, int R) {
  return visit_cache<D>(c, [&](auto kind, auto kb, auto vb) { return decode_residency<D, decltype(kind)::value, decltype(kb)::value, decltype(vb)::value>(R); });
}

// Compiled in attention_d<D>.cu.
extern template void dispatch_dim<64>(const DecodeParams&, const Plan&, Mode, Stream);
extern template void dispatch_dim<128>(const DecodeParams&, const Plan&, Mode, Stream);
extern template void dispatch_dim<256>(const DecodeParams&, const Plan&, Mode, Stream);
extern template int residency_dim<64>(const CacheView&, int);
extern template int residency_dim<128>(const CacheView&, int);
extern template int residency_dim<256>(const CacheView&, int);

}  // namespace tq::cuda::attention
