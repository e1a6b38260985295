#include "cuda_test_util.h"

namespace tq::test {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace tq::test
