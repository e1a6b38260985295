#include <gtest/gtest.h>

#include "tq/common.h"
#include "tq/kv/spec.h"

namespace tq {
namespace {

TEST(KvSpec, ParsesBasesAndOptions) {
  auto s = parse_kv_spec("k3v2");
  EXPECT_EQ(s.k.enc, Encoding::kTqMse);
  EXPECT_EQ(s.k.bits, 3);
  EXPECT_EQ(s.v.bits, 2);
  EXPECT_EQ(s.page_size, 16u);
  s = parse_kv_spec("k4v4:prod:nc:rot=dense:seed=5:page=32");
  EXPECT_EQ(s.k.enc, Encoding::kTqProd);
  EXPECT_EQ(s.v.enc, Encoding::kTqMse);
  EXPECT_TRUE(s.norm_correction);
  EXPECT_FALSE(s.auto_rotation);
  EXPECT_EQ(s.rotation, RotationKind::kDense);
  EXPECT_EQ(s.seed, 5u);
  EXPECT_EQ(s.page_size, 32u);
  s = parse_kv_spec("fp8");
  EXPECT_EQ(s.k.enc, Encoding::kFp8E4M3);
  EXPECT_EQ(s.v.enc, Encoding::kFp8E4M3);
  EXPECT_EQ(parse_kv_specs("fp16,k4v4,k3v2").size(), 3u);
}

TEST(KvSpec, AutoRotation) {
  const auto s = parse_kv_spec("k3v2");
  EXPECT_EQ(s.rotation_for(128), RotationKind::kHadamard);
  EXPECT_EQ(s.rotation_for(80), RotationKind::kDense);   // pads to 96
  EXPECT_EQ(s.rotation_for(112), RotationKind::kHadamard);  // pads to 128
}

TEST(KvSpec, BitsPerElement) {
  EXPECT_DOUBLE_EQ(parse_kv_spec("k3v2").bits_per_element(128), 2.625);  // (48+32+2+2)*8/256
  EXPECT_DOUBLE_EQ(parse_kv_spec("fp16").bits_per_element(128), 16.0);
  EXPECT_DOUBLE_EQ(parse_kv_spec("fp8").bits_per_element(128), 8.0);
  // Issue 2: 32 layers x 8 KV heads x 128, K3/V2 is at least 6x smaller than fp16.
  const double ratio = 16.0 / parse_kv_spec("k3v2").bits_per_element(128);
  EXPECT_GE(ratio, 6.0);
}

class BadSpec : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};
TEST_P(BadSpec, ClearErrorNamingTheValue) {
  const auto& [spec, must_mention] = GetParam();
  try {
    parse_kv_spec(spec);
    FAIL() << "accepted '" << spec << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(must_mention), std::string::npos) << e.what();
  }
}
INSTANTIATE_TEST_SUITE_P(All, BadSpec,
                         ::testing::Values(std::pair{"", "empty"}, std::pair{"k9v2", "got 9"}, std::pair{"k0v2", "got 0"},
                                           std::pair{"k3", "k3"}, std::pair{"k3v", "k3v"}, std::pair{"kxv2", "'x'"},
                                           std::pair{"int4", "int4"}, std::pair{"k3v2:foo", "'foo'"},
                                           std::pair{"k3v2:page=0", "got 0"}, std::pair{"k3v2:page=5000", "5000"},
                                           std::pair{"k3v2:rot=givens", "givens"}, std::pair{"fp16:prod", "prod"},
                                           std::pair{"k3v2:seed=-1", "-1"}, std::pair{"k3v2:page=1x", "1x"},
                                           std::pair{"k3v2:edge=2", "edge=2/k4v4"}, std::pair{"k3v2:edge=0/k4v4", "got 0"},
                                           std::pair{"k3v2:edge=2/k9v4", "got 9"}, std::pair{"k3v2:sink=x", "'x'"},
                                           std::pair{"k3v2:window=99999", "99999"}, std::pair{"k3v2:ksim=int4", "fp32 or fp16"},
                                           std::pair{"fp32:ksim=int5", "int5"}));

TEST(KvSpec, CanonicalRoundTrip) {
  for (const char* s : {"fp16", "bf16", "fp8", "fp32", "k3v2", "k4v4:prod", "k2v2:nc", "k3v2:rot=dense", "k3v2:page=32"})
    EXPECT_EQ(parse_kv_spec(s).canonical(), s);
  for (const char* s : {"k3v2:edge=2/k4v4:sink=4:window=64", "fp32:ksim=int4", "k2v2:nc:edge=1/fp16"})
    EXPECT_EQ(parse_kv_spec(s).canonical(), s);
}

TEST(KvSpec, QualityKnobs) {
  const auto s = parse_kv_spec("k3v2:nc:edge=2/k4v4:sink=4:window=64");
  EXPECT_EQ(s.edge_layers, 2u);
  EXPECT_EQ(s.sink, 4u);
  EXPECT_EQ(s.window, 64u);
  // Layers 0, 1, 28, 29 of 30 are edge layers: k4v4 with the spec's other options, knobs cleared.
  for (uint32_t l : {0u, 1u, 28u, 29u}) {
    const KvSpec e = s.layer_spec(l, 30);
    EXPECT_EQ(e.k.bits, 4) << l;
    EXPECT_EQ(e.v.bits, 4) << l;
    EXPECT_TRUE(e.norm_correction);
    EXPECT_EQ(e.canonical(), "k4v4:nc");
  }
  EXPECT_EQ(s.layer_spec(2, 30).canonical(), "k3v2:nc");
  EXPECT_EQ(s.layer_spec(27, 30).canonical(), "k3v2:nc");
  EXPECT_EQ(parse_kv_spec("fp32:ksim=int4").layer_spec(0, 1).key_sim, "int4");
}

}  // namespace
}  // namespace tq
