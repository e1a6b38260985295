// The device side of QuantizeStoreUnitRow (test_quantize_store.cpp): float(x / n) as
// quantize_store computes it (numeric.h's unit_coord_by_inverse, else the division), and by the
// reciprocal's product alone (what the check exists to refuse).
#include <cstdint>

#include "tq/numeric.h"

namespace {

__global__ void unit_coords(const float* x, const double* n, uint32_t count, float* y, float* product, uint8_t* decided) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const double inv = 1.0 / n[i];
  float v = 0.0f;
  decided[i] = tq::unit_coord_by_inverse(x[i], inv, v);
  y[i] = decided[i] ? v : float(double(x[i]) / n[i]);
  product[i] = float(double(x[i]) * inv);
}

}  // namespace

namespace tq::test {

// x, n: [count] inputs; y: [count] the store's float; product: [count] the product's; decided: [count] 0/1.
cudaError_t unit_coords_on_device(const float* x, const double* n, uint32_t count, float* y, float* product, uint8_t* decided) {
  unit_coords<<<(count + 255) / 256, 256>>>(x, n, count, y, product, decided);
  const cudaError_t e = cudaGetLastError();
  return e != cudaSuccess ? e : cudaDeviceSynchronize();
}

}  // namespace tq::test
