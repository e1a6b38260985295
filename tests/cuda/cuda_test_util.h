// Helpers for the GPU tests: device buffers, skip-without-GPU, poisoned outputs.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace tq::test {

bool have_gpu();

#define TQ_REQUIRE_GPU() \
  if (!::tq::test::have_gpu()) GTEST_SKIP() << "no CUDA device: GPU tests run on a machine with one (bench/gpu/run_h200.sh)"

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << cudaGetErrorString(cudaGetLastError())

// A device buffer of T, freed on scope exit.
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    if (cudaMalloc(&ptr, sizeof(T) * (n ? n : 1)) != cudaSuccess) ptr = nullptr;
  }
  DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(ptr); }
  void upload(const std::vector<T>& host) { cudaMemcpy(ptr, host.data(), sizeof(T) * n, cudaMemcpyHostToDevice); }
  std::vector<T> download() const {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), ptr, sizeof(T) * n, cudaMemcpyDeviceToHost);
    return h;
  }
  void poison() { cudaMemset(ptr, 0xFF, sizeof(T) * n); }  // NaN for floats
};

}  // namespace tq::test
