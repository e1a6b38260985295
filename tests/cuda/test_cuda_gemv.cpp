// The CUDA runner's small-step product kernels against a double host reference: layers::gemv (one
// row) and layers::gemm_rows (1..16 rows on tensor cores), the latter also for batch invariance.
// gemv's fp32 sums of bf16 products (exact in fp32), in another order than the reference's, must
// agree within the recursive-summation bound cols * 2^-24 * sum |w x| (Higham, Accuracy and
// Stability of Numerical Algorithms, 2nd ed., eq. 4.4), on shapes whose row count is and is not a
// multiple of the block's rows, column counts below, at and far above one pass of the warp's
// unrolled loads, and hostile values (zeros, huge and tiny magnitudes, cancellation). Every output
// is poisoned first, so an unwritten one fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda_test_util.h"
#include "layers.h"

namespace tq {
namespace {

using cuda::layers::bf16_t;

bf16_t to_bf16(float f) {  // round to nearest even (finite values)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t(u >> 16);
}
double of_bf16(bf16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<bf16_t> values(size_t n, std::mt19937& rng, bool hostile) {
  std::normal_distribution<float> nd;
  std::vector<bf16_t> v(n);
  for (size_t i = 0; i < n; ++i) {
    float x = nd(rng);
    if (hostile) switch (rng() % 6) {
        case 0: x = 0; break;
        case 1: x *= 1e16f; break;   // large, but sums of 14336 of their products stay finite in fp32
        case 2: x *= 1e-20f; break;  // tiny
        case 3: x = (i % 2 ? 1 : -1) * 3e3f; break;  // cancellation
        default: break;
      }
    v[i] = to_bf16(x);
  }
  return v;
}

// The reference's y[a][r] and sum |w x| over the columns.
std::pair<double, double> reference(const std::vector<bf16_t>& w, const std::vector<bf16_t>& x, uint32_t cols, uint32_t a, uint32_t r) {
  double ref = 0, mag = 0;
  for (uint32_t c = 0; c < cols; ++c) {
    const double p = of_bf16(w[size_t(r) * cols + c]) * of_bf16(x[size_t(a) * cols + c]);
    ref += p, mag += std::abs(p);
  }
  return {ref, mag};
}

TEST(CudaGemv, MatchesTheDoubleReferenceWithinTheSummationBound) {
  TQ_REQUIRE_GPU();
  struct Shape {
    uint32_t rows, cols;
  };
  std::mt19937 rng(5);
  size_t checked = 0;
  for (const Shape& sh : {Shape{1, 8}, Shape{7, 264}, Shape{9, 2048}, Shape{1000, 4096}, Shape{33, 14336}, Shape{130, 8}, Shape{16, 2056}}) {
    {
      const uint32_t n = 1;
      for (bool hostile : {false, true}) {
        ASSERT_TRUE(cuda::layers::gemv_takes(n, sh.cols));
        const std::vector<bf16_t> w = values(size_t(sh.rows) * sh.cols, rng, hostile), x = values(size_t(n) * sh.cols, rng, hostile);
        test::DeviceBuffer<bf16_t> dw(w), dx(x);
        test::DeviceBuffer<float> dy(size_t(n) * sh.rows);
        dy.poison();
        cuda::layers::gemv(dw.ptr, sh.rows, sh.cols, dx.ptr, dy.ptr, nullptr);
        CUDA_OK(cudaDeviceSynchronize());
        const std::vector<float> y = dy.download();
        for (uint32_t a = 0; a < n; ++a)
          for (uint32_t r = 0; r < sh.rows; ++r) {
            const auto [ref, mag] = reference(w, x, sh.cols, a, r);
            const double bound = sh.cols * 0x1.0p-24 * mag + 1e-37;  // + fp32's smallest normal: products of tiny values flush
            const float got = y[size_t(a) * sh.rows + r];
            ASSERT_TRUE(std::abs(got - ref) <= bound) << "rows " << sh.rows << " cols " << sh.cols << " n " << n << (hostile ? " hostile" : "")
                                                      << ": y[" << a << "][" << r << "] = " << got << ", reference " << ref << ", bound " << bound;
            ++checked;
          }
      }
    }
  }
  EXPECT_GT(checked, 2000u);
}

// y = gemm_rows of x's n rows by dw; y poisoned first.
void run_gemm_rows(const test::DeviceBuffer<bf16_t>& dw, uint32_t rows, uint32_t cols, const std::vector<bf16_t>& x, uint32_t n,
                   std::vector<float>& y) {
  test::DeviceBuffer<bf16_t> dx(x);
  test::DeviceBuffer<float> dy(size_t(n) * rows);
  dy.poison();
  cuda::layers::gemm_rows(dw.ptr, rows, cols, dx.ptr, n, dy.ptr, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  y = dy.download();
}

// gemm_rows sums the exact bf16 products in an order of its own (tensor-core MMAs of 16 columns,
// then a warp's chunks, then the block's warps), and the tensor cores' adders are not documented to round to
// nearest: the bound is the recursive-summation one with a whole ulp, cols * 2^-23 * sum |w x|
// (Higham eq. 4.4 with u = 2^-23, any faithful rounding). The largest error against the
// round-to-nearest bound (2^-24) is printed for the record.
TEST(CudaGemmRows, MatchesTheDoubleReferenceWithinTheSummationBound) {
  TQ_REQUIRE_GPU();
  struct Shape {
    uint32_t rows, cols;
  };
  std::mt19937 rng(7);
  size_t checked = 0;
  double worst = 0;  // largest |error| / (cols 2^-24 sum |w x|)
  for (const Shape& sh : {Shape{1, 8}, Shape{7, 264}, Shape{17, 2048}, Shape{1000, 4096}, Shape{33, 14336}, Shape{130, 8}, Shape{16, 2056},
                          Shape{48, 576}}) {
    for (uint32_t n : {1u, 2u, 3u, 8u, 9u, 16u}) {
      for (bool hostile : {false, true}) {
        ASSERT_TRUE(cuda::layers::gemm_rows_takes(n, sh.cols));
        const std::vector<bf16_t> w = values(size_t(sh.rows) * sh.cols, rng, hostile), x = values(size_t(n) * sh.cols, rng, hostile);
        test::DeviceBuffer<bf16_t> dw(w);
        std::vector<float> y;
        ASSERT_NO_FATAL_FAILURE(run_gemm_rows(dw, sh.rows, sh.cols, x, n, y));
        for (uint32_t a = 0; a < n; ++a)
          for (uint32_t r = 0; r < sh.rows; ++r) {
            const auto [ref, mag] = reference(w, x, sh.cols, a, r);
            const double nearest = sh.cols * 0x1.0p-24 * mag + 1e-37, bound = 2 * nearest;  // 1e-37: products of tiny values flush
            const float got = y[size_t(a) * sh.rows + r];
            ASSERT_TRUE(std::abs(got - ref) <= bound) << "rows " << sh.rows << " cols " << sh.cols << " n " << n << (hostile ? " hostile" : "")
                                                      << ": y[" << a << "][" << r << "] = " << got << ", reference " << ref << ", bound " << bound;
            worst = std::max(worst, std::abs(got - ref) / nearest);
            ++checked;
          }
      }
    }
  }
  EXPECT_GT(checked, 50000u);
  std::printf("gemm_rows: %zu outputs, largest error %.3g of the round-to-nearest summation bound\n", checked, worst);
}

// A row's outputs are the same bits whatever the step's row count (1..16, one or two n-tiles) and
// whatever the other rows hold (NaN and inf included): what makes a verification step's logits
// equal to one-token steps'.
TEST(CudaGemmRows, ARowGivesTheSameBitsInAnyStep) {
  TQ_REQUIRE_GPU();
  std::mt19937 rng(11);
  for (const auto& [rows, cols] : {std::pair<uint32_t, uint32_t>{1000, 4096}, {33, 14336}, {7, 264}}) {
    const std::vector<bf16_t> w = values(size_t(rows) * cols, rng, false);
    test::DeviceBuffer<bf16_t> dw(w);
    const std::vector<bf16_t> x = values(size_t(16) * cols, rng, false);
    std::vector<float> all, y;
    ASSERT_NO_FATAL_FAILURE(run_gemm_rows(dw, rows, cols, x, 16, all));
    for (uint32_t n = 1; n <= 16; ++n) {
      ASSERT_NO_FATAL_FAILURE(run_gemm_rows(dw, rows, cols, std::vector<bf16_t>(x.begin(), x.begin() + size_t(n) * cols), n, y));
      ASSERT_EQ(std::memcmp(y.data(), all.data(), y.size() * sizeof(float)), 0) << rows << " x " << cols << ": the first " << n
                                                                                << " rows differ from the 16-row step's";
    }
    // Row 3 of a step whose other rows are hostile, NaN and inf.
    std::vector<bf16_t> odd = values(size_t(16) * cols, rng, true);
    for (size_t i = 0; i < odd.size(); i += 97) odd[i] = i % 2 ? 0x7fc0 : 0x7f80;  // NaN, +inf
    std::copy(x.begin() + 3 * cols, x.begin() + 4 * cols, odd.begin() + 3 * cols);
    for (uint32_t n : {4u, 11u, 16u}) {
      ASSERT_NO_FATAL_FAILURE(run_gemm_rows(dw, rows, cols, std::vector<bf16_t>(odd.begin(), odd.begin() + size_t(n) * cols), n, y));
      ASSERT_EQ(std::memcmp(y.data() + 3 * rows, all.data() + 3 * rows, rows * sizeof(float)), 0)
          << rows << " x " << cols << ", " << n << " rows: row 3 changed with its neighbours";
    }
  }
}

TEST(CudaGemmRows, TakesOnlyWhatItImplements) {
  EXPECT_FALSE(cuda::layers::gemm_rows_takes(0, 64));
  EXPECT_TRUE(cuda::layers::gemm_rows_takes(1, 64));
  EXPECT_TRUE(cuda::layers::gemm_rows_takes(16, 64));
  EXPECT_FALSE(cuda::layers::gemm_rows_takes(17, 64));  // cuBLAS beyond
  EXPECT_FALSE(cuda::layers::gemm_rows_takes(4, 60));   // not whole 16-byte vectors
}

TEST(CudaGemv, TakesOnlyWhatItImplements) {
  EXPECT_FALSE(cuda::layers::gemv_takes(0, 64));
  EXPECT_FALSE(cuda::layers::gemv_takes(2, 64));  // cuBLAS is as fast from two rows on
  EXPECT_FALSE(cuda::layers::gemv_takes(1, 60));  // not whole 16-byte vectors: cuBLAS
  EXPECT_TRUE(cuda::layers::gemv_takes(1, 64));
}

}  // namespace
}  // namespace tq
