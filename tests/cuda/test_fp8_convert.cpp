// The e4m3 -> fp16 conversion of the fp8 cache's kernels on GPUs before sm_89
// (dev::e4m3x2_to_half2_soft, src/cuda/device_common.cuh): bit for bit the conversion of
// cuda_fp8.h, and the value of the host's e4m3_to_f32 (include/tq/numeric.h), for all 65536
// pairs of bytes.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda_test_util.h"
#include "tq/numeric.h"

namespace tq::test {
cudaError_t e4m3_conversions(uint32_t* soft, uint32_t* ref);  // fp8_convert_kernel.cu
namespace {

TEST(Fp8Convert, SoftwareE4m3MatchesCudaFp8OnEveryPair) {
  TQ_REQUIRE_GPU();
  DeviceBuffer<uint32_t> soft(65536), ref(65536);
  soft.poison();
  ref.poison();
  CUDA_OK(e4m3_conversions(soft.ptr, ref.ptr));
  const std::vector<uint32_t> s = soft.download(), r = ref.download();
  int mismatches = 0;
  for (uint32_t x = 0; x < 65536u; ++x) {
    if (s[x] != r[x] && ++mismatches <= 8) ADD_FAILURE() << std::hex << "bytes 0x" << x << ": 0x" << s[x] << " against cuda_fp8.h's 0x" << r[x];
    for (int half = 0; half < 2; ++half) {  // each half's value is the host's
      const uint8_t byte = uint8_t(x >> (8 * half));
      __half_raw h;
      h.x = uint16_t(s[x] >> (16 * half));
      const float got = __half2float(__half(h)), want = e4m3_to_f32(byte);
      if (std::isnan(want) ? !std::isnan(got) : (got != want || std::signbit(got) != std::signbit(want)))
        if (++mismatches <= 8) ADD_FAILURE() << std::hex << "byte 0x" << int(byte) << ": " << got << " against " << want;
    }
  }
  EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace tq::test
