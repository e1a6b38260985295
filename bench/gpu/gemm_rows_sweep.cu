// Times the products of a decode or verification step (every weight of a model shape once, the
// runner's order: fused q/k/v, o, fused gate/up, down per layer, then the output) with gemm_rows'
// tilings side by side with the GEMV kernel (one row) and cuBLAS, each as one CUDA graph per step.
// Weights are random bf16 (their values do not change the time). Not part of the build: one nvcc
// command (bench/gpu/gemm_rows_sweep.sh) on the GPU machine.
//   gemm_rows_sweep [layers=32] [hidden=4096] [ffn=14336] [q_heads=32] [kv_heads=8] [vocab=128256]
// Prints, per step length n, the median ms of a step's products over 30 graph replays, and their
// weight bytes over that time.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "gemm_rows_kernel.cuh"
#include "layers.h"

using namespace tq::cuda::layers;

#define CK(x)                                                       \
  do {                                                              \
    cudaError_t e_ = (x);                                           \
    if (e_ != cudaSuccess) {                                        \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                 \
    }                                                               \
  } while (0)

namespace {

struct Mat {
  const bf16_t* w;
  uint32_t rows, cols;
};

template <class T, int TILES>
void launch_rows(const Mat& m, const bf16_t* x, uint32_t n, float* y, cudaStream_t s) {
  gemm_rows_impl::kernel<T, TILES><<<(m.rows + 15) / 16, T::kWarps * 32, 0, s>>>(reinterpret_cast<const uint4*>(m.w), m.rows, m.cols / 8,
                                                                                 reinterpret_cast<const uint4*>(x), n, y);
}

using Product = std::function<void(const Mat&, const bf16_t*, uint32_t, float*, cudaStream_t)>;

template <class T>
Product rows_variant() {
  return [](const Mat& m, const bf16_t* x, uint32_t n, float* y, cudaStream_t s) {
    if (n <= 8)
      launch_rows<T, 1>(m, x, n, y, s);
    else
      launch_rows<T, 2>(m, x, n, y, s);
  };
}

}  // namespace

int main(int argc, char** argv) {
  const auto arg = [&](int i, uint32_t d) { return argc > i ? uint32_t(std::atoi(argv[i])) : d; };
  const uint32_t layers = arg(1, 32), hidden = arg(2, 4096), ffn = arg(3, 14336), qh = arg(4, 32), kvh = arg(5, 8), vocab = arg(6, 128256);
  const uint32_t hd = hidden / qh;
  std::vector<std::pair<uint32_t, uint32_t>> shapes;  // (rows, cols) of one layer's products
  shapes = {{(qh + 2 * kvh) * hd, hidden}, {hidden, qh * hd}, {2 * ffn, hidden}, {hidden, ffn}};
  size_t total = 0;
  for (auto [r, c] : shapes) total += size_t(r) * c * layers;
  total += size_t(vocab) * hidden;
  bf16_t* wbuf = nullptr;
  CK(cudaMalloc(&wbuf, total * 2));
  fill_uniform(wbuf, total, 0.02f, 1, nullptr);
  std::vector<Mat> mats;
  size_t off = 0;
  for (uint32_t l = 0; l < layers; ++l)
    for (auto [r, c] : shapes) mats.push_back({wbuf + off, r, c}), off += size_t(r) * c;
  mats.push_back({wbuf + off, vocab, hidden});
  const uint32_t maxn = 16, maxc = std::max(hidden, ffn), maxr = std::max({vocab, 2 * ffn, (qh + 2 * kvh) * hd});
  bf16_t* x = nullptr;
  float* y = nullptr;
  CK(cudaMalloc(&x, size_t(maxn) * maxc * 2));
  CK(cudaMalloc(&y, size_t(maxn) * maxr * 4));
  fill_uniform(x, size_t(maxn) * maxc, 1.0f, 2, nullptr);
  cublasHandle_t blas;
  cublasCreate(&blas);
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cublasSetStream(blas, s);
  CK(cudaDeviceSynchronize());

  std::vector<std::pair<std::string, Product>> variants = {
      {"gemv (n=1)",
       [](const Mat& m, const bf16_t* xx, uint32_t n, float* yy, cudaStream_t st) {
         if (n == 1) gemv(m.w, m.rows, m.cols, xx, yy, st);
       }},
      {"cublas",
       [&](const Mat& m, const bf16_t* xx, uint32_t n, float* yy, cudaStream_t) {
         const float one = 1, zero = 0;
         cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(m.rows), int(n), int(m.cols), &one, m.w, CUDA_R_16BF, int(m.cols), xx,
                      CUDA_R_16BF, int(m.cols), &zero, yy, CUDA_R_32F, int(m.rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
       }},
      {"rows w8 u4 pf", rows_variant<gemm_rows_impl::Tiling<8, 4, true, 0>>()},
      {"rows w8 u2 pf b4", rows_variant<gemm_rows_impl::Tiling<8, 2, true, 4>>()},
      {"rows w8 u2 pf b5", rows_variant<gemm_rows_impl::Tiling<8, 2, true, 5>>()},
      {"rows w8 u1 pf b8", rows_variant<gemm_rows_impl::Tiling<8, 1, true, 8>>()},
      {"rows w8 u4 pf b3", rows_variant<gemm_rows_impl::Tiling<8, 4, true, 3>>()},
      {"rows w8 u4 b3", rows_variant<gemm_rows_impl::Tiling<8, 4, false, 3>>()},
      {"rows w8 u4 b4", rows_variant<gemm_rows_impl::Tiling<8, 4, false, 4>>()},
      {"rows w16 u2 pf", rows_variant<gemm_rows_impl::Tiling<16, 2, true, 0>>()},
      {"rows w16 u2 pf b2", rows_variant<gemm_rows_impl::Tiling<16, 2, true, 2>>()},
      {"rows w16 u1 pf b4", rows_variant<gemm_rows_impl::Tiling<16, 1, true, 4>>()},
      {"rows w16 u2 b2", rows_variant<gemm_rows_impl::Tiling<16, 2, false, 2>>()},
      {"rows w32 u1 pf b2", rows_variant<gemm_rows_impl::Tiling<32, 1, true, 2>>()},
      {"rows w32 u2 pf b1", rows_variant<gemm_rows_impl::Tiling<32, 2, true, 1>>()},
  };
  const uint32_t ns[] = {1, 2, 4, 8, 9, 16};
  std::printf("products of a step: %u layers, hidden %u, ffn %u, heads %u/%u, vocab %u; %.2f GB of bf16 weights\n", layers, hidden, ffn, qh,
              kvh, vocab, total * 2 / 1e9);
  std::printf("| variant | n | ms (median of 30) | GB/s |\n|---|---|---|---|\n");
  for (auto& [name, fn] : variants) {
    for (uint32_t n : ns) {
      if (name.rfind("gemv", 0) == 0 && n != 1) continue;
      cudaGraph_t graph;
      CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      for (const Mat& m : mats) fn(m, x, n, y, s);
      CK(cudaStreamEndCapture(s, &graph));
      cudaGraphExec_t exec;
      CK(cudaGraphInstantiate(&exec, graph, 0));
      cudaEvent_t a, b;
      cudaEventCreate(&a), cudaEventCreate(&b);
      std::vector<float> ms;
      for (int rep = 0; rep < 33; ++rep) {
        cudaEventRecord(a, s);
        CK(cudaGraphLaunch(exec, s));
        cudaEventRecord(b, s);
        CK(cudaEventSynchronize(b));
        float t = 0;
        cudaEventElapsedTime(&t, a, b);
        if (rep >= 3) ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      const float med = ms[ms.size() / 2];
      std::printf("| %s | %u | %.3f | %.0f |\n", name.c_str(), n, med, total * 2 / (med * 1e-3) / 1e9);
      cudaEventDestroy(a), cudaEventDestroy(b);
      cudaGraphExecDestroy(exec), cudaGraphDestroy(graph);
    }
  }
  return 0;
}
