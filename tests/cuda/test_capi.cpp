// The C API honours every format knob of a KV spec and refuses every policy knob by name, before
// anything is allocated (so the refusals are checked on machines without a GPU too).
#include <gtest/gtest.h>

#include <string>

#include "cuda_test_util.h"
#include "tq/format.h"
#include "tq_capi.h"

namespace tq {
namespace {

std::string create_error(const char* spec) {
  char err[512] = "";
  void* h = tq_cache_create(2, 128, 4, spec, err, sizeof err);
  EXPECT_EQ(h, nullptr) << spec;
  tq_cache_destroy(h);
  return err;
}

TEST(CApi, PolicyKnobsAreRefusedByName) {
  for (const char* knob : {"sink=4", "window=64", "edge=2/k4v4", "ksim=int4"}) {
    const std::string spec = std::string(knob == std::string("ksim=int4") ? "fp16:" : "k3v2:") + knob;
    const std::string err = create_error(spec.c_str());
    EXPECT_NE(err.find(knob), std::string::npos) << spec << ": " << err;
    EXPECT_NE(err.find("tq_cache_create"), std::string::npos) << err;
  }
  // The tq run default names its first knob.
  EXPECT_NE(create_error("k3v2:edge=2/k4v4:sink=4:window=64").find("edge=2/k4v4"), std::string::npos);
}

TEST(CApi, BadSpecsAndShapesAreRefusedNamingTheValue) {
  EXPECT_NE(create_error("k9v2").find("K width must be 1..8 bits, got 9"), std::string::npos);
  EXPECT_NE(create_error(nullptr).find("null"), std::string::npos);
  char err[256] = "";
  EXPECT_EQ(tq_cache_create(0, 128, 4, "k3v2", err, sizeof err), nullptr);
  EXPECT_NE(std::string(err).find("KV heads must be 1..1024, got 0"), std::string::npos) << err;
  EXPECT_EQ(tq_cache_create(2, 128, 0, "k3v2", err, sizeof err), nullptr);
  EXPECT_NE(std::string(err).find("at least one page, got 0"), std::string::npos) << err;
}

TEST(CApi, FormatKnobsAreHonoured) {
  TQ_REQUIRE_GPU();
  for (const char* spec : {"k3v2", "k4v4:nc", "k3v2:rot=dense:seed=7", "k2v2:page=32", "fp8", "bf16:page=7"}) {
    char err[512] = "";
    void* h = tq_cache_create(2, 128, 4, spec, err, sizeof err);
    ASSERT_NE(h, nullptr) << spec << ": " << err;
    const bool tq8 = std::string(spec).rfind("fp8", 0) == 0, bf = std::string(spec).rfind("bf16", 0) == 0;
    const uint32_t page = std::string(spec).find("page=32") != std::string::npos ? 32 : bf ? 7 : 16;
    TensorCode k{Encoding::kTqMse, 3}, v{Encoding::kTqMse, 2};
    if (tq8) k = v = {Encoding::kFp8E4M3, 8};
    if (bf) k = v = {Encoding::kBf16, 16};
    if (std::string(spec).rfind("k4v4", 0) == 0) k = v = {Encoding::kTqMse, 4};
    if (std::string(spec).rfind("k2v2", 0) == 0) k = v = {Encoding::kTqMse, 2};
    EXPECT_EQ(tq_cache_block_bytes(h), block_layout(k, v, 128, page).bytes) << spec;
    EXPECT_EQ(tq_cache_bytes(h), uint64_t(block_layout(k, v, 128, page).bytes) * 2 * 4) << spec;
    tq_cache_destroy(h);
  }
}

}  // namespace
}  // namespace tq
