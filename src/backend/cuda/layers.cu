#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "layers.h"

namespace tq::cuda::layers {
namespace {

__device__ __forceinline__ bf16_t to_b(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
__device__ __forceinline__ float from_b(bf16_t x) { return __bfloat162float(__ushort_as_bfloat16(x)); }

__global__ void embed_kernel(const bf16_t* __restrict__ table, const int32_t* __restrict__ tokens, uint32_t dim, float scale,
                             float* __restrict__ x) {
  const size_t r = blockIdx.x;
  const bf16_t* src = table + size_t(tokens[r]) * dim;
  for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x) x[r * dim + i] = scale == 1.0f ? from_b(src[i]) : from_b(src[i]) * scale;
}

// The sum of v over the warp, for every lane (butterflies of distance 16 down to 1).
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The sum of v over the block (blockDim.x a multiple of 32), for every thread; once a kernel (its
// shared slot is read after the last barrier).
__device__ float block_sum(float v) {
  __shared__ float part[32];
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = warp_sum(threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0f);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  return part[0];
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
  const float inv = rsqrtf(block_sum(ss) / float(dim) + eps);
  for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x) out[size_t(blockIdx.x) * dim + i] = to_b(w[i] * (inv * xr[i]));
}

// The same for rows of whole float4s (dim % 4 == 0): each thread holds V of them in registers
// between the sum and the scaling, so the row is read once; blockDim = dim / 4 / V rounded up to
// a warp (up to 1024 threads), so a single row is not one slow thread chain.
template <int V>
__global__ void add_rmsnorm_vec_kernel(float* __restrict__ x, const float* __restrict__ add, const int32_t* __restrict__ rows, uint32_t dim,
                                       const float* __restrict__ w, float eps, bf16_t* __restrict__ out) {
  const size_t r = rows ? size_t(rows[blockIdx.x]) : blockIdx.x;
  const uint32_t n4 = dim / 4;
  float4* xr = reinterpret_cast<float4*>(x + r * dim);
  const float4* ar = add ? reinterpret_cast<const float4*>(add + r * dim) : nullptr;
  float4 v[V];
  float ss = 0;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const uint32_t i = threadIdx.x + j * blockDim.x;
    if (i >= n4) continue;
    v[j] = xr[i];
    if (ar) {
      const float4 a = ar[i];
      v[j].x += a.x, v[j].y += a.y, v[j].z += a.z, v[j].w += a.w;
      xr[i] = v[j];
    }
    ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
  }
  const float inv = rsqrtf(block_sum(ss) / float(dim) + eps);
  const float4* w4 = reinterpret_cast<const float4*>(w);
  uint2* o = reinterpret_cast<uint2*>(out + size_t(blockIdx.x) * dim);  // 4 bf16 a store
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const uint32_t i = threadIdx.x + j * blockDim.x;
    if (i >= n4) continue;
    const float4 g = w4[i];
    const uint32_t lo = uint32_t(to_b(g.x * (inv * v[j].x))) | uint32_t(to_b(g.y * (inv * v[j].y))) << 16;
    const uint32_t hi = uint32_t(to_b(g.z * (inv * v[j].z))) | uint32_t(to_b(g.w * (inv * v[j].w))) << 16;
    o[i] = make_uint2(lo, hi);
  }
}

// One block a row (token).
__global__ void qkv_rope_kernel(const float* __restrict__ qkv, const float* __restrict__ bias, const int32_t* __restrict__ pos,
                                uint32_t hq, uint32_t hkv, uint32_t hd, uint32_t rope_dim, const float* __restrict__ cs,
                                const float* __restrict__ sn, bool adjacent, const float* __restrict__ centre, float* __restrict__ q,
                                float* __restrict__ k, float* __restrict__ v) {
  const uint32_t r = blockIdx.x, width = (hq + 2 * hkv) * hd, half = rope_dim / 2;
  const float* src = qkv + size_t(r) * width;
  const float* c = cs + size_t(pos[r]) * half;
  const float* s = sn + size_t(pos[r]) * half;
  const auto dst = [&](uint32_t h, uint32_t e) -> float* {  // head h of the fused row: q heads, k heads, v heads
    if (h < hq) return q + (size_t(r) * hq + h) * hd + e;
    if (h < hq + hkv) return k + (size_t(r) * hkv + h - hq) * hd + e;
    return v + (size_t(r) * hkv + h - hq - hkv) * hd + e;
  };
  // Rotated pairs of the q and k heads (the bias first, as the model adds it to the product).
  for (uint32_t t = threadIdx.x; t < (hq + hkv) * half; t += blockDim.x) {
    const uint32_t h = t / half, i = t % half, i0 = adjacent ? 2 * i : i, i1 = adjacent ? 2 * i + 1 : i + half;
    const size_t at = size_t(h) * hd;
    float a0 = src[at + i0], a1 = src[at + i1];
    if (bias) a0 += bias[at + i0], a1 += bias[at + i1];
    float r0 = a0 * c[i] - a1 * s[i], r1 = a0 * s[i] + a1 * c[i];
    if (centre && h >= hq) {  // a key: less its centre, after RoPE (as the CPU runner's store)
      const float* mu = centre + size_t(h - hq) * hd;
      r0 -= mu[i0], r1 -= mu[i1];
    }
    *dst(h, i0) = r0;
    *dst(h, i1) = r1;
  }
  // Everything else: coordinates past rope_dim, and the v heads.
  for (uint32_t t = threadIdx.x; t < width; t += blockDim.x) {
    const uint32_t h = t / hd, e = t % hd;
    if (h < hq + hkv && e < rope_dim) continue;
    float x = bias ? src[t] + bias[t] : src[t];
    if (centre && h >= hq && h < hq + hkv) x -= centre[size_t(h - hq) * hd + e];
    *dst(h, e) = x;
  }
}

// One block a row, in place: the CPU runner's w * (x / rms), 1 / sqrt(ss / dim + eps).
__global__ void rmsnorm_rows_kernel(float* __restrict__ x, uint32_t dim, const float* __restrict__ w, float eps) {
  float* xr = x + size_t(blockIdx.x) * dim;
  float ss = 0;
  for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  const float inv = 1.0f / sqrtf(block_sum(ss) / float(dim) + eps);
  for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x) xr[i] = w[i] * (inv * xr[i]);
}

// One warp a (row, q or k head): the sum of squares in fp32 by shuffles, then the CPU runner's
// w * (x / rms) (CpuModelRunner::rmsnorm: 1 / sqrt(ss / n + eps), not rsqrtf's approximation).
__global__ void qk_norm_kernel(float* __restrict__ qkv, uint32_t n, uint32_t hq, uint32_t hkv, uint32_t hd, const float* __restrict__ qw,
                               const float* __restrict__ kw, float eps) {
  const uint32_t heads = hq + hkv, lane = threadIdx.x % 32;
  const size_t job = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;  // (row, head), the same for the whole warp
  if (job >= size_t(n) * heads) return;
  const uint32_t r = uint32_t(job / heads), h = uint32_t(job % heads);
  float* x = qkv + size_t(r) * (hq + 2 * hkv) * hd + size_t(h) * hd;
  const float* w = h < hq ? qw : kw;
  float ss = 0;
  for (uint32_t i = lane; i < hd; i += 32) ss += x[i] * x[i];
  ss = warp_sum(ss);
  const float inv = 1.0f / sqrtf(ss / float(hd) + eps);
  for (uint32_t i = lane; i < hd; i += 32) x[i] = w[i] * (inv * x[i]);
}

// One thread a key element (h, e): the mean of element e and of its RoPE partner, in double in row
// order as the CPU runner sums them, then e's row of the pair's 2x2 map. Explicit roundings: no
// fused multiply-add, as model::rope_centre computes on the host.
__global__ void key_centre_kernel(const float* __restrict__ qkv, const float* __restrict__ bias, const int32_t* __restrict__ pos,
                                  uint32_t n, uint32_t hq, uint32_t hkv, uint32_t hd, uint32_t rope_dim, bool adjacent,
                                  const double* __restrict__ a, const double* __restrict__ b, float* __restrict__ centre) {
  const uint32_t t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= hkv * hd) return;
  const uint32_t h = t / hd, e = t % hd, width = (hq + 2 * hkv) * hd, half = rope_dim / 2;
  uint32_t used = 0;
  for (uint32_t r = 0; r < n; ++r) used += pos[r] != 0;
  const bool all = used == 0;  // only position 0: take it rather than nothing
  const auto mean = [&](uint32_t el) {
    const size_t col = size_t(hq + h) * hd + el;
    double sum = 0;
    for (uint32_t r = 0; r < n; ++r)
      if (all || pos[r] != 0) sum += double(bias ? qkv[size_t(r) * width + col] + bias[col] : qkv[size_t(r) * width + col]);
    return sum / double(all ? n : used);
  };
  float mu;
  if (e >= rope_dim) {
    mu = float(mean(e));
  } else {
    const uint32_t i = adjacent ? e / 2 : e % half, i0 = adjacent ? 2 * i : i, i1 = adjacent ? 2 * i + 1 : i + half;
    const double m0 = mean(i0), m1 = mean(i1);
    mu = e == i0 ? float(__dsub_rn(__dmul_rn(a[i], m0), __dmul_rn(b[i], m1))) : float(__dadd_rn(__dmul_rn(b[i], m0), __dmul_rn(a[i], m1)));
  }
  centre[t] = mu;
}

template <bool kGelu>
__global__ void gated_ffn_kernel(const float* __restrict__ gu, uint32_t hidden, size_t n, bf16_t* __restrict__ h) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const size_t r = i / hidden, j = i % hidden;
    const float g = gu[2 * r * hidden + j], u = gu[(2 * r + 1) * hidden + j];
    if constexpr (kGelu) {  // HF's gelu_pytorch_tanh (the CPU's geglu)
      constexpr float kSqrt2OverPi = 0.7978845608028654f, kA = 0.044715f;
      h[i] = to_b(0.5f * g * (1.0f + tanhf(kSqrt2OverPi * g * (1.0f + kA * g * g))) * u);
    } else {
      h[i] = to_b(g / (1.0f + __expf(-g)) * u);
    }
  }
}

__device__ __forceinline__ float hash_uniform(uint64_t seed, size_t i) {  // splitmix64 -> [-1, 1)
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (uint64_t(i) + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return float(int64_t(z >> 40) - (int64_t(1) << 23)) * 0x1.0p-23f;
}
template <class T>
__global__ void fill_uniform_kernel(T* __restrict__ p, size_t n, float scale, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float v = scale * hash_uniform(seed, i);
    if constexpr (sizeof(T) == 2)
      p[i] = to_b(v);
    else
      p[i] = v;
  }
}
__global__ void to_bf16_kernel(const float* __restrict__ x, size_t n, bf16_t* __restrict__ y) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) y[i] = to_b(x[i]);
}
__global__ void fill_kernel(float* __restrict__ p, size_t n, float value) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) p[i] = value;
}

unsigned blocks_for(size_t n) { return unsigned(std::min<size_t>((n + 255) / 256, 4096)); }

}  // namespace

void embed(const bf16_t* table, const int32_t* tokens, uint32_t n, uint32_t dim, float scale, float* x, Stream s) {
  embed_kernel<<<n, 256, 0, s>>>(table, tokens, dim, scale, x);
}
void rmsnorm_rows(float* x, uint32_t n, uint32_t dim, const float* w, float eps, Stream s) {
  if (n) rmsnorm_rows_kernel<<<n, 256, 0, s>>>(x, dim, w, eps);
}
void add_rmsnorm(float* x, const float* add, const int32_t* rows, uint32_t n, uint32_t dim, const float* w, float eps, bf16_t* out,
                 Stream s) {
  const uint32_t n4 = dim / 4, per = (n4 + 1023) / 1024;  // float4s a thread
  if (dim % 4 != 0 || per > 4) {
    add_rmsnorm_kernel<<<n, 256, 0, s>>>(x, add, rows, dim, w, eps, out);
    return;
  }
  const unsigned threads = ((n4 + per - 1) / per + 31) / 32 * 32;
  switch (per) {
    case 1: add_rmsnorm_vec_kernel<1><<<n, threads, 0, s>>>(x, add, rows, dim, w, eps, out); break;
    case 2: add_rmsnorm_vec_kernel<2><<<n, threads, 0, s>>>(x, add, rows, dim, w, eps, out); break;
    case 3: add_rmsnorm_vec_kernel<3><<<n, threads, 0, s>>>(x, add, rows, dim, w, eps, out); break;
    default: add_rmsnorm_vec_kernel<4><<<n, threads, 0, s>>>(x, add, rows, dim, w, eps, out); break;
  }
}
void qk_norm(float* qkv, uint32_t n, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim, const float* q_w, const float* k_w, float eps,
             Stream s) {
  if (n == 0) return;
  const size_t warps = size_t(n) * (q_heads + kv_heads);
  qk_norm_kernel<<<unsigned((warps + 3) / 4), 128, 0, s>>>(qkv, n, q_heads, kv_heads, head_dim, q_w, k_w, eps);
}
void qkv_rope(const float* qkv, const float* bias, const int32_t* pos, uint32_t n, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim,
              uint32_t rope_dim, const float* cos, const float* sin, bool adjacent, const float* centre, float* q, float* k, float* v,
              Stream s) {
  // 1024 threads: a decode step's row is one block, whose loops are its latency.
  qkv_rope_kernel<<<n, 1024, 0, s>>>(qkv, bias, pos, q_heads, kv_heads, head_dim, rope_dim, cos, sin, adjacent, centre, q, k, v);
}
void key_centre(const float* qkv, const float* bias, const int32_t* pos, uint32_t n, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim,
                uint32_t rope_dim, bool adjacent, const double* a, const double* b, float* centre, Stream s) {
  const uint32_t width = kv_heads * head_dim;
  key_centre_kernel<<<(width + 127) / 128, 128, 0, s>>>(qkv, bias, pos, n, q_heads, kv_heads, head_dim, rope_dim, adjacent, a, b, centre);
}
void gated_ffn(const float* gu, uint32_t n, uint32_t hidden, bool gelu, bf16_t* h, Stream s) {
  if (gelu)
    gated_ffn_kernel<true><<<blocks_for(size_t(n) * hidden), 256, 0, s>>>(gu, hidden, size_t(n) * hidden, h);
  else
    gated_ffn_kernel<false><<<blocks_for(size_t(n) * hidden), 256, 0, s>>>(gu, hidden, size_t(n) * hidden, h);
}
void fill_uniform(bf16_t* p, size_t n, float scale, uint64_t seed, Stream s) {
  fill_uniform_kernel<<<blocks_for(n), 256, 0, s>>>(p, n, scale, seed);
}
void fill_uniform(float* p, size_t n, float scale, uint64_t seed, Stream s) {
  fill_uniform_kernel<<<blocks_for(n), 256, 0, s>>>(p, n, scale, seed);
}
void fill(float* p, size_t n, float value, Stream s) { fill_kernel<<<blocks_for(n), 256, 0, s>>>(p, n, value); }
void to_bf16(const float* x, size_t n, bf16_t* y, Stream s) { to_bf16_kernel<<<blocks_for(n), 256, 0, s>>>(x, n, y); }

}  // namespace tq::cuda::layers
