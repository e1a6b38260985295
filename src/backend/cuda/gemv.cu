// The products of a one-row step (decode at batch 1): y = w x reads each weight once, so its time
// is the weight bytes over the memory bandwidth. One warp a weight row, 16-byte streaming loads,
// eight in flight a lane; the activation row (a few KiB) stays in L1.
#include <cstdint>

#include "layers.h"

namespace tq::cuda::layers {
namespace {

constexpr int kWarps = 8;   // a block: 8 weight rows
constexpr int kUnroll = 8;  // 16-byte weight loads in flight a lane

__device__ __forceinline__ float lo_bf16(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float hi_bf16(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

// acc plus the dot product of the 8 bf16 in w with the 8 bf16 in x.
__device__ __forceinline__ float dot8(uint4 w, uint4 x, float acc) {
  acc = fmaf(lo_bf16(w.x), lo_bf16(x.x), acc), acc = fmaf(hi_bf16(w.x), hi_bf16(x.x), acc);
  acc = fmaf(lo_bf16(w.y), lo_bf16(x.y), acc), acc = fmaf(hi_bf16(w.y), hi_bf16(x.y), acc);
  acc = fmaf(lo_bf16(w.z), lo_bf16(x.z), acc), acc = fmaf(hi_bf16(w.z), hi_bf16(x.z), acc);
  acc = fmaf(lo_bf16(w.w), lo_bf16(x.w), acc), acc = fmaf(hi_bf16(w.w), hi_bf16(x.w), acc);
  return acc;
}

// w: [rows][vecs] and x: [vecs] 16-byte vectors of 8 bf16; y: [rows] fp32.
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const uint4* __restrict__ w, uint32_t rows, uint32_t vecs, const uint4* __restrict__ x,
                                                         float* __restrict__ y) {
  const uint32_t row = blockIdx.x * kWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;
  const uint4* wr = w + size_t(row) * vecs;
  float acc = 0;
  uint32_t v = lane;
  for (; v + 32 * (kUnroll - 1) < vecs; v += 32 * kUnroll) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) wv[u] = __ldcs(wr + v + 32 * u);  // read once: not kept in cache
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc = dot8(wv[u], __ldg(x + v + 32 * u), acc);
  }
  for (; v < vecs; v += 32) acc = dot8(__ldcs(wr + v), __ldg(x + v), acc);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) y[row] = acc;
}

}  // namespace

void gemv(const bf16_t* w, uint32_t rows, uint32_t cols, const bf16_t* x, float* y, Stream s) {
  gemv_kernel<<<(rows + kWarps - 1) / kWarps, kWarps * 32, 0, s>>>(reinterpret_cast<const uint4*>(w), rows, cols / 8,
                                                                   reinterpret_cast<const uint4*>(x), y);
}

}  // namespace tq::cuda::layers
