// The device side of test_fp8_convert.cpp: every pair of e4m3 bytes through the software
// conversion of GPUs before sm_89 and through cuda_fp8.h's conversion (the instruction where the
// GPU has it, as on the H200).
#include <cuda_fp8.h>

#include <cstdint>

#include "device_common.cuh"

namespace {

// soft, ref: [65536] half2 bits, input x at index x.
__global__ void convert_all(uint32_t* soft, uint32_t* ref) {
  const uint32_t x = blockIdx.x * blockDim.x + threadIdx.x;
  if (x >= 65536u) return;
  soft[x] = tq::cuda::dev::e4m3x2_to_half2_soft(uint16_t(x));
  const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(x), __NV_E4M3);
  ref[x] = uint32_t(r.x) | uint32_t(r.y) << 16;
}

}  // namespace

namespace tq::test {

cudaError_t e4m3_conversions(uint32_t* soft, uint32_t* ref) {
  convert_all<<<65536 / 256, 256>>>(soft, ref);
  const cudaError_t e = cudaGetLastError();
  return e != cudaSuccess ? e : cudaDeviceSynchronize();
}

}  // namespace tq::test
