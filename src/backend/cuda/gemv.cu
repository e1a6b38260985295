// The products of decode steps (a few rows against a large weight matrix): y = x W^T read each
// weight once, so their time is the weight bytes over the memory bandwidth. One warp a weight row,
// 16-byte streaming loads, several in flight per lane; the few activation rows stay in L1.
#include <cstdint>

#include "layers.h"

namespace tq::cuda::layers {
namespace {

constexpr int kWarps = 8;   // a block: 8 weight rows
constexpr int kUnroll = 8;  // 16-byte weight loads in flight per lane

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

// w: [rows][cols] bf16, x: [N][cols] bf16, y: [N][rows] fp32; cols % 8 == 0.
template <int N>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const uint4* __restrict__ w, uint32_t rows, uint32_t vecs, const uint4* __restrict__ x,
                                                         float* __restrict__ y) {
  const uint32_t row = blockIdx.x * kWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;
  const uint4* wr = w + size_t(row) * vecs;  // vecs = cols / 8 16-byte vectors a row
  float acc[N] = {};
  uint32_t v = lane;
  for (; v + 32 * (kUnroll - 1) < vecs; v += 32 * kUnroll) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) wv[u] = __ldcs(wr + v + 32 * u);  // read once: do not keep in cache
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int n = 0; n < N; ++n) acc[n] = dot8(wv[u], __ldg(x + size_t(n) * vecs + v + 32 * u), acc[n]);
  }
  for (; v < vecs; v += 32) {
    const uint4 wv = __ldcs(wr + v);
#pragma unroll
    for (int n = 0; n < N; ++n) acc[n] = dot8(wv, __ldg(x + size_t(n) * vecs + v), acc[n]);
  }
#pragma unroll
  for (int n = 0; n < N; ++n) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[n] += __shfl_xor_sync(0xffffffffu, acc[n], o);
  }
  if (lane < N) {  // lane n writes activation row n (the unrolled test keeps acc in registers)
#pragma unroll
    for (int n = 0; n < N; ++n)
      if (lane == uint32_t(n)) y[size_t(n) * rows + row] = acc[n];
  }
}

template <int N>
void launch(const bf16_t* w, uint32_t rows, uint32_t cols, const bf16_t* x, float* y, Stream s) {
  const unsigned blocks = (rows + kWarps - 1) / kWarps;
  gemv_kernel<N><<<blocks, kWarps * 32, 0, s>>>(reinterpret_cast<const uint4*>(w), rows, cols / 8, reinterpret_cast<const uint4*>(x), y);
}

}  // namespace

void gemv(const bf16_t* w, uint32_t rows, uint32_t cols, const bf16_t* x, uint32_t n, float* y, Stream s) {
  switch (n) {
    case 1: return launch<1>(w, rows, cols, x, y, s);
    case 2: return launch<2>(w, rows, cols, x, y, s);
    case 3: return launch<3>(w, rows, cols, x, y, s);
    case 4: return launch<4>(w, rows, cols, x, y, s);
    case 5: return launch<5>(w, rows, cols, x, y, s);
    case 6: return launch<6>(w, rows, cols, x, y, s);
    case 7: return launch<7>(w, rows, cols, x, y, s);
    case 8: return launch<8>(w, rows, cols, x, y, s);
    default: break;  // callers take cuBLAS beyond kGemvMaxRows (gemv_takes)
  }
}

}  // namespace tq::cuda::layers
