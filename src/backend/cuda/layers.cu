#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "layers.h"

namespace tq::cuda::layers {
namespace {

__device__ __forceinline__ bf16_t to_b(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
__device__ __forceinline__ float from_b(bf16_t x) { return __bfloat162float(__ushort_as_bfloat16(x)); }

__global__ void embed_kernel(const bf16_t* __restrict__ table, const int32_t* __restrict__ tokens, uint32_t dim, float* __restrict__ x) {
  const size_t r = blockIdx.x;
  const bf16_t* src = table + size_t(tokens[r]) * dim;
  for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x) x[r * dim + i] = from_b(src[i]);
}

// One block a row: the sum of squares by a block reduction in fp32.
__global__ void add_rmsnorm_kernel(float* __restrict__ x, const float* __restrict__ add, const int32_t* __restrict__ rows, uint32_t dim,
                                   const float* __restrict__ w, float eps, bf16_t* __restrict__ out) {
  const size_t r = rows ? size_t(rows[blockIdx.x]) : blockIdx.x;
  float* xr = x + r * dim;
  float ss = 0;
  for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = xr[i];
    if (add) xr[i] = v = v + add[r * dim + i];
    ss += v * v;
  }
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    ss = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x == 0) part[0] = ss;
  }
  __syncthreads();
  const float inv = rsqrtf(part[0] / float(dim) + eps);
  for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x) out[size_t(blockIdx.x) * dim + i] = to_b(w[i] * (inv * xr[i]));
}

__global__ void add_bias_kernel(float* __restrict__ y, const float* __restrict__ b, size_t total, uint32_t width) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) y[i] += b[i % width];
}

__global__ void rope_kernel(float* __restrict__ v, const int32_t* __restrict__ pos, uint32_t heads, uint32_t head_dim, uint32_t rope_dim,
                            const float* __restrict__ cs, const float* __restrict__ sn, bool adjacent) {
  const uint32_t half = rope_dim / 2, r = blockIdx.x;
  const float* c = cs + size_t(pos[r]) * half;
  const float* s = sn + size_t(pos[r]) * half;
  for (uint32_t t = threadIdx.x; t < heads * half; t += blockDim.x) {
    const uint32_t h = t / half, i = t % half;
    float* row = v + (size_t(r) * heads + h) * head_dim;
    const uint32_t i0 = adjacent ? 2 * i : i, i1 = adjacent ? 2 * i + 1 : i + half;
    const float a0 = row[i0], a1 = row[i1];
    row[i0] = a0 * c[i] - a1 * s[i];
    row[i1] = a0 * s[i] + a1 * c[i];
  }
}

__global__ void swiglu_kernel(const float* __restrict__ g, const float* __restrict__ u, size_t n, bf16_t* __restrict__ h) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    h[i] = to_b(g[i] / (1.0f + __expf(-g[i])) * u[i]);
}

__global__ void to_bf16_kernel(const float* __restrict__ x, size_t n, bf16_t* __restrict__ y) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) y[i] = to_b(x[i]);
}

unsigned blocks_for(size_t n) { return unsigned(std::min<size_t>((n + 255) / 256, 4096)); }

}  // namespace

void embed(const bf16_t* table, const int32_t* tokens, uint32_t n, uint32_t dim, float* x, Stream s) {
  embed_kernel<<<n, 256, 0, s>>>(table, tokens, dim, x);
}
void add_rmsnorm(float* x, const float* add, const int32_t* rows, uint32_t n, uint32_t dim, const float* w, float eps, bf16_t* out,
                 Stream s) {
  add_rmsnorm_kernel<<<n, 256, 0, s>>>(x, add, rows, dim, w, eps, out);
}
void add_bias(float* y, const float* b, uint32_t n, uint32_t width, Stream s) {
  add_bias_kernel<<<blocks_for(size_t(n) * width), 256, 0, s>>>(y, b, size_t(n) * width, width);
}
void rope(float* v, const int32_t* pos, uint32_t n, uint32_t heads, uint32_t head_dim, uint32_t rope_dim, const float* cos,
          const float* sin, bool adjacent, Stream s) {
  rope_kernel<<<n, 256, 0, s>>>(v, pos, heads, head_dim, rope_dim, cos, sin, adjacent);
}
void swiglu(const float* g, const float* u, size_t n, bf16_t* h, Stream s) { swiglu_kernel<<<blocks_for(n), 256, 0, s>>>(g, u, n, h); }
void to_bf16(const float* x, size_t n, bf16_t* y, Stream s) { to_bf16_kernel<<<blocks_for(n), 256, 0, s>>>(x, n, y); }

}  // namespace tq::cuda::layers
