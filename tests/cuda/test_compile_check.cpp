// A compile-check build (-DTQ_CUDA_COMPILE_CHECK=ON, as scripts/test.sh configures where no GPU is:
// the kernels compiled at -O1) must refuse to run its kernels, GPU or not. Runs without a GPU, so
// CI, whose build this is, runs it; other builds skip it.
#include <gtest/gtest.h>

#include <string>

#include "launch_common.h"
#include "tq/check.h"

namespace tq::cuda {
namespace {

TEST(CompileCheckBuild, RefusesToRunItsKernels) {
#if TQ_CUDA_COMPILE_CHECK
  // Every launcher plans from the device's properties first: asking for them throws, naming the option.
  try {
    (void)device_sm_count();
    FAIL() << "a compile-check build queried the device for a launch";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("TQ_CUDA_COMPILE_CHECK"), std::string::npos) << e.what();
  }
#else
  GTEST_SKIP() << "not a compile-check build (-DTQ_CUDA_COMPILE_CHECK=ON)";
#endif
}

}  // namespace
}  // namespace tq::cuda
