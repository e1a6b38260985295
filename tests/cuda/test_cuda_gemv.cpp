// The CUDA runner's GEMV kernel (layers::gemv, the products of batch-1 decode steps) against a double
// host reference. Its fp32 sums of bf16 products (exact in fp32) in another order than the
// reference's must agree within the recursive-summation bound cols * 2^-24 * sum |w x| (Higham,
// Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 4.4), on shapes whose row count is
// and is not a multiple of the block's 8 rows, column counts below, at and far above one pass of
// the warp's unrolled loads, and hostile values (zeros, huge and tiny
// magnitudes, cancellation). Every output is poisoned first, so an unwritten one fails.
#include <gtest/gtest.h>

#include <cmath>
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
            double ref = 0, mag = 0;
            for (uint32_t c = 0; c < sh.cols; ++c) {
              const double p = of_bf16(w[size_t(r) * sh.cols + c]) * of_bf16(x[size_t(a) * sh.cols + c]);
              ref += p, mag += std::abs(p);
            }
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

TEST(CudaGemv, TakesOnlyWhatItImplements) {
  EXPECT_FALSE(cuda::layers::gemv_takes(0, 64));
  EXPECT_FALSE(cuda::layers::gemv_takes(2, 64));  // cuBLAS is as fast from two rows on
  EXPECT_FALSE(cuda::layers::gemv_takes(1, 60));  // not whole 16-byte vectors: cuBLAS
  EXPECT_TRUE(cuda::layers::gemv_takes(1, 64));
}

}  // namespace
}  // namespace tq
