#include <fmt/format.h>
#include <gtest/gtest.h>

#include "tq/common.h"
#include "tq/kv/cache_format.h"
#include "tq/kv/spec.h"

namespace tq {
namespace {

TEST(KvSpec, ParsesBasesAndOptions) {
  auto s = parse_kv_spec("k3v2");
  EXPECT_EQ(s.format.k.enc, Encoding::kTqMse);
  EXPECT_EQ(s.format.k.bits, 3);
  EXPECT_EQ(s.format.v.bits, 2);
  EXPECT_EQ(s.format.page_size, 16u);
  s = parse_kv_spec("k4v4:prod:nc:rot=dense:seed=5:page=32");
  EXPECT_EQ(s.format.k.enc, Encoding::kTqProd);
  EXPECT_EQ(s.format.v.enc, Encoding::kTqMse);
  EXPECT_TRUE(s.format.norm_correction);
  EXPECT_FALSE(s.format.auto_rotation);
  EXPECT_EQ(s.format.rotation, RotationKind::kDense);
  EXPECT_EQ(s.format.seed, 5u);
  EXPECT_EQ(s.format.page_size, 32u);
  s = parse_kv_spec("k3v2:ip");
  EXPECT_TRUE(s.format.norm_unbiased_k && s.format.norm_unbiased_v);
  EXPECT_FALSE(s.format.norm_correction);
  EXPECT_EQ(s.format.canonical(), "k3v2:ip");
  EXPECT_EQ(parse_kv_spec("k3v2:ip=kv").format.canonical(), "k3v2:ip");
  s = parse_kv_spec("k3v2:ip=k");
  EXPECT_TRUE(s.format.norm_unbiased_k);
  EXPECT_FALSE(s.format.norm_unbiased_v);
  EXPECT_EQ(s.format.canonical(), "k3v2:ip=k");
  s = parse_kv_spec("k3v2:ip=v");
  EXPECT_FALSE(s.format.norm_unbiased_k);
  EXPECT_TRUE(s.format.norm_unbiased_v);
  EXPECT_EQ(s.format.canonical(), "k3v2:ip=v");
  EXPECT_EQ(parse_kv_spec(s.format.canonical()).format.canonical(), "k3v2:ip=v");
  // The codecs: each tensor's config follows its own choice.
  EXPECT_TRUE(codec_config(parse_kv_spec("k3v2:ip=k").format, 64, 0, 0, false).norm_unbiased);
  EXPECT_FALSE(codec_config(parse_kv_spec("k3v2:ip=k").format, 64, 0, 0, true).norm_unbiased);
  EXPECT_FALSE(codec_config(parse_kv_spec("k3v2:ip=v").format, 64, 0, 0, false).norm_unbiased);
  EXPECT_TRUE(codec_config(parse_kv_spec("k3v2:ip=v").format, 64, 0, 0, true).norm_unbiased);
  // 2-bit values take the uniform levels (format.h value_levels_uniform); 2-bit keys, other value
  // widths and trellis-coded values keep theirs.
  EXPECT_TRUE(codec_config(parse_kv_spec("k3v2").format, 64, 0, 0, true).uniform);
  EXPECT_TRUE(codec_config(parse_kv_spec("k2v2:ip").format, 128, 1, 3, true).uniform);
  EXPECT_FALSE(codec_config(parse_kv_spec("k2v2").format, 64, 0, 0, false).uniform);
  EXPECT_FALSE(codec_config(parse_kv_spec("k3v3").format, 64, 0, 0, true).uniform);
  EXPECT_FALSE(codec_config(parse_kv_spec("k3tv2t").format, 64, 0, 0, true).uniform);
  // ip=local: both halves, on sliding-window layers only.
  s = parse_kv_spec("k3v2:ip=local:edge=2/k4v4");
  EXPECT_TRUE(s.format.norm_unbiased_k && s.format.norm_unbiased_v && s.format.norm_unbiased_local);
  EXPECT_EQ(s.canonical(), "k3v2:ip=local:edge=2/k4v4");
  EXPECT_EQ(parse_kv_spec(s.canonical()).canonical(), s.canonical());
  for (const bool value : {false, true}) {
    EXPECT_TRUE(codec_config(s.format, 64, 0, 0, value, true).norm_unbiased);
    EXPECT_FALSE(codec_config(s.format, 64, 0, 0, value, false).norm_unbiased);
    EXPECT_TRUE(codec_config(parse_kv_spec("k3v2:ip").format, 64, 0, 0, value, false).norm_unbiased);  // plain ip: every layer
  }
  for (const char* bad : {"k3v2:ip=q", "k3v2:ip=", "k3v2:ip=vk", "k3v2:ip=global"}) {
    try {
      parse_kv_spec(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("is not a choice of rows"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(parse_kv_spec("k3v2:ip=k:nc"), Error);
  EXPECT_THROW(parse_kv_spec("k3v2:ip:nc"), Error);
  EXPECT_THROW(parse_kv_spec("k3v2:nc:ip"), Error);
  EXPECT_THROW(parse_kv_spec("fp16:ip"), Error);
  s = parse_kv_spec("fp8");
  EXPECT_EQ(s.format.k.enc, Encoding::kFp8E4M3);
  EXPECT_EQ(s.format.v.enc, Encoding::kFp8E4M3);
  EXPECT_EQ(parse_kv_specs("fp16,k4v4,k3v2").size(), 3u);
}

// "default" in a list (every command's --kv) is tq run's spec; alone, parse_kv_spec refuses it.
// ip=local needs to know which of a cache's layers slide: each cache gets its layers' flags in its
// own order (edge and main caches number their layers apart), and a cache told nothing refuses it.
TEST(KvSpec, UnbiasedNormOnSlidingLayers) {
  const std::vector<bool> sliding{true, true, false, true, true, false, true};  // [7 layers]
  const KvSpec s = parse_kv_spec("k3v2:ip=local:edge=2/k4v4");
  const std::vector<bool> edge = s.cache_layers(sliding, true), main = s.cache_layers(sliding, false);
  EXPECT_EQ(edge, (std::vector<bool>{true, true, false, true}));  // layers 0, 1, 5, 6
  EXPECT_EQ(main, (std::vector<bool>{false, true, true}));        // layers 2, 3, 4
  const CacheFormat fm(3, 2, 64, s.main_format(), main), fe(4, 2, 64, s.edge_format(), edge);
  for (uint32_t l = 0; l < 7; ++l) {
    const CacheFormat& f = s.is_edge_layer(l, 7) ? fe : fm;
    const uint32_t local = s.local_layer(l, 7);
    for (uint32_t h = 0; h < 2; ++h) {
      EXPECT_EQ(f.k_codec(local, h)->config().norm_unbiased, sliding[l]) << "layer " << l;
      EXPECT_EQ(f.v_codec(local, h)->config().norm_unbiased, sliding[l]) << "layer " << l;
    }
  }
  try {
    CacheFormat(3, 2, 64, s.main_format());
    ADD_FAILURE() << "ip=local was accepted without the layers' kinds";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ip=local"), std::string::npos) << e.what();
  }
  EXPECT_THROW(CacheFormat(3, 2, 64, s.main_format(), {true}), Error);  // flags for another layer count
  const CacheFormat plain(3, 2, 64, parse_kv_spec("k3v2:ip").format);  // plain ip needs no flags: every layer
  for (uint32_t l = 0; l < 3; ++l) EXPECT_TRUE(plain.k_codec(l, 0)->config().norm_unbiased);
}

TEST(KvSpec, DefaultInAListIsTqRunsSpec) {
  const auto specs = parse_kv_specs("fp16,default");
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_EQ(specs[1].canonical(), parse_kv_spec(kDefaultKvSpec).canonical());
  // Alone too (tq run --kv default): the spec it names, with its own text.
  EXPECT_EQ(parse_kv_spec("default").canonical(), parse_kv_spec(kDefaultKvSpec).canonical());
  EXPECT_EQ(parse_kv_spec("default").text, kDefaultKvSpec);
  EXPECT_THROW(parse_kv_spec("defaults"), Error);
}

TEST(KvSpec, AutoRotation) {
  const auto s = parse_kv_spec("k3v2");
  EXPECT_EQ(s.format.rotation_for(128), RotationKind::kHadamard);
  EXPECT_EQ(s.format.rotation_for(80), RotationKind::kDense);   // pads to 96
  EXPECT_EQ(s.format.rotation_for(112), RotationKind::kHadamard);  // pads to 128
  // A fractional width's row: both parts Hadamard where both pad to powers of two, else both dense.
  EXPECT_EQ(s.format.rotation_for(128, true), RotationKind::kHadamard);  // 64 + 64
  EXPECT_EQ(s.format.rotation_for(160, true), RotationKind::kDense);     // 96 + 64
  EXPECT_EQ(s.format.rotation_for(96), RotationKind::kDense);            // pads to 96
  EXPECT_EQ(s.format.rotation_for(96, true), RotationKind::kHadamard);   // 64 + 32
}

TEST(KvSpec, BitsPerElement) {
  EXPECT_DOUBLE_EQ(parse_kv_spec("k3v2").bits_per_element(128), 2.625);  // (48+32+2+2)*8/256
  EXPECT_DOUBLE_EQ(parse_kv_spec("fp16").bits_per_element(128), 16.0);
  EXPECT_DOUBLE_EQ(parse_kv_spec("fp8").bits_per_element(128), 8.0);
  // Issue 2: 32 layers x 8 KV heads x 128, K3/V2 is at least 6x smaller than fp16.
  const double ratio = 16.0 / parse_kv_spec("k3v2").bits_per_element(128);
  EXPECT_GE(ratio, 6.0);
}

// Trellis-coded widths (Nt): the rows of a plain width of the same bits, another encoding; the GPU
// refuses them by name until its kernels read them.
TEST(KvSpec, TrellisCodedWidths) {
  const KvSpec s = parse_kv_spec("k3tv2");
  EXPECT_EQ(s.format.k.enc, Encoding::kTqTcq);
  EXPECT_EQ(s.format.k.bits, 3);
  EXPECT_EQ(s.format.v.enc, Encoding::kTqMse);
  EXPECT_EQ(parse_kv_spec("k3v2:edge=2/k4tv4t").policy.edge_k.enc, Encoding::kTqTcq);
  for (const char* t : {"k3tv2t", "k1tv7t:ip", "k3tv2t:ip:edge=2/k4tv4t:sink=4:window=64:centre", "k4tv3.5"})
    EXPECT_EQ(parse_kv_spec(t).canonical(), t);
  for (const uint32_t d : {64u, 80u, 128u, 256u})
    EXPECT_DOUBLE_EQ(parse_kv_spec("k3tv2t").bits_per_element(d), parse_kv_spec("k3v2").bits_per_element(d));
  // The GPU's kernels read K and V both trellis-coded, 2t or 3t each; others are refused by name.
  for (const char* ok : {"k3tv2t", "k2tv2t:ip", "k3tv3t", "k2tv3t"}) {
    const KvFormat f = parse_kv_spec(ok).format;
    EXPECT_EQ(gpu_kernels_unsupported(f.k, f.v, 128), "") << ok;
  }
  const auto why = [](const char* spec) {
    const KvFormat f = parse_kv_spec(spec).format;
    return gpu_kernels_unsupported(f.k, f.v, 128);
  };
  EXPECT_NE(why("k3v2t").find("trellis-coded K or V alone (K 3, V 2t bits)"), std::string::npos) << why("k3v2t");
  EXPECT_NE(why("k3tv2").find("(K 3t, V 2 bits)"), std::string::npos) << why("k3tv2");
  EXPECT_NE(why("k4tv4t").find("2t and 3t bits, got K 4t, V 4t"), std::string::npos) << why("k4tv4t");
  EXPECT_NE(why("k1tv2t").find("got K 1t, V 2t"), std::string::npos) << why("k1tv2t");
}

// Each malformed spec is refused with a message that names the bad value and the spec itself.
class BadSpec : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};
TEST_P(BadSpec, ClearErrorNamingTheValue) {
  const auto& [spec, must_mention] = GetParam();
  try {
    parse_kv_spec(spec);
    FAIL() << "accepted '" << spec << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(must_mention), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(spec), std::string::npos) << e.what();
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
                                           std::pair{"fp32:ksim=int5", "int5"}, std::pair{"k3v2:centre=1", "'centre=1'"},
                                           std::pair{"k3v2:centr", "centre"},
                                           // fractional widths (test_fractional.cpp)
                                           std::pair{"k2.7v2", "'2.7'"}, std::pair{"k2.5v2.25", "'2.25'"}, std::pair{"k8.5v2", "8.5"},
                                           std::pair{"k0.5v2", "0.5"}, std::pair{"k2.v2", "'2.'"}, std::pair{"k.5v2", "''"},
                                           std::pair{"k2.5v", "k2.5v"}, std::pair{"k2.5v2:prod", "whole K width"},
                                           std::pair{"kx.5v2", "'x'"}, std::pair{"k3v2:edge=2/k9.5v4", "9.5"},
                                           std::pair{"k3v2:outliers=fixed", "fractional widths"},
                                           std::pair{"k3v2:outliers=prompt", "fractional widths"},
                                           // a second value of a knob would silently override the first
                                           std::pair{"k3v2:prod:prod", "'prod' is given twice"},
                                           std::pair{"k3v2:window=64:window=8", "'window' is given twice"},
                                           std::pair{"k3v2:centre:center", "'center' is given twice"},
                                           // ip=k on prod keys would do nothing (their estimate is unbiased already)
                                           std::pair{"k3v2:prod:ip=k", "'ip=k' does nothing to prod keys"},
                                           std::pair{"k3v2:ip=k:prod", "'ip=k' does nothing to prod keys"},
                                           std::pair{"k2.5v2:outliers=max", "'max'"}, std::pair{"k8tv2", "'8t'"},
                                           std::pair{"k0tv2", "'0t'"}, std::pair{"ktv2", "got 't'"}, std::pair{"k3t.5v2", "'3t.5'"},
                                           std::pair{"k3tv2:prod", "not k3t"}, std::pair{"k2.5tv2", "'2.5t'"}));

TEST(KvSpec, ANulByteIsNamedBeforeItCutsTheMessage) {
  try {
    parse_kv_spec(std::string("k3v2:pa\0ge=4", 12));
    FAIL() << "accepted a NUL byte";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot hold a NUL byte (at offset 7 of 'k3v2:pa')"), std::string::npos) << e.what();
  }
}

TEST(KvSpec, PageBytesRefusesShapesNoModelHas) {
  EXPECT_THROW(parse_kv_spec("k3v2").page_bytes(0xFFFFFFFFu, 0xFFFFFFFFu, 256), Error);  // was a 4-billion-layer loop, then a wrapped size
  EXPECT_THROW(parse_kv_spec("k3v2").page_bytes(2, 0, 128), Error);
  EXPECT_GT(parse_kv_spec("k3v2").page_bytes(32, 8, 128), 0u);
}

TEST(KvSpec, CanonicalRoundTrip) {
  for (const char* s : {"fp16", "bf16", "fp8", "fp32", "k3v2", "k4v4:prod", "k2v2:nc", "k3v2:rot=dense", "k3v2:page=32"})
    EXPECT_EQ(parse_kv_spec(s).canonical(), s);
  for (const char* s : {"k3v2:edge=2/k4v4:sink=4:window=64", "fp32:ksim=int4", "k2v2:nc:edge=1/fp16", "k3v2:centre",
                        "fp16:centre", "k3v2:edge=2/k4v4:sink=4:window=64:centre"})
    EXPECT_EQ(parse_kv_spec(s).canonical(), s);
}

// A seed names other rotations, other bytes: it travels in the canonical text (the auto spec's
// result, the resolved --kv, Python's KvSpec equality and the vLLM adapter dropped it), and the
// default seed is not written out.
TEST(KvSpec, CanonicalKeepsTheSeed) {
  EXPECT_EQ(parse_kv_spec("k3v2:seed=12345").canonical(), "k3v2:seed=12345");
  EXPECT_EQ(parse_kv_spec(parse_kv_spec("k3v2:seed=12345:edge=2/k4v4").canonical()).format.seed, 12345u);
  EXPECT_EQ(parse_kv_spec(fmt::format("k3v2:seed={}", KvFormat{}.seed)).canonical(), "k3v2");
  EXPECT_NE(parse_kv_spec("k3v2:seed=5").canonical(), parse_kv_spec("k3v2").canonical());
  EXPECT_EQ(parse_kv_spec("k3v2:prod:ip").canonical(), "k3v2:prod:ip");  // ip on the values: allowed
  // a float base whose edge layers are TurboQuant: the seed is theirs
  EXPECT_EQ(parse_kv_spec("fp16:edge=2/k4v4:seed=5").canonical(), "fp16:seed=5:edge=2/k4v4");
  EXPECT_EQ(parse_kv_spec(parse_kv_spec("fp16:layers=0/k4v4:seed=5").canonical()).format.seed, 5u);
  EXPECT_EQ(parse_kv_spec("fp16:seed=5").canonical(), "fp16");  // no rotation takes it
  // ip=k on prod keys does something where edge layers' MSE keys take it
  EXPECT_EQ(parse_kv_spec("k3v2:prod:ip=k:edge=1/k4v4").canonical(), "k3v2:prod:ip=k:edge=1/k4v4");
}

// centre: a policy knob (the pages' layout is unchanged; what their K rows mean is the store's),
// taken on any base, in any position, spelt either way; the canonical spelling is "centre".
TEST(KvSpec, KeyCentre) {
  EXPECT_FALSE(parse_kv_spec("k3v2").policy.key_centre);
  const auto s = parse_kv_spec("k3v2:centre:sink=4");
  EXPECT_TRUE(s.policy.key_centre);
  EXPECT_EQ(s.format.canonical(), "k3v2");
  EXPECT_EQ(s.policy.knobs(), (std::vector<std::string>{"sink=4", "centre"}));
  EXPECT_EQ(s.canonical(), "k3v2:sink=4:centre");
  EXPECT_EQ(parse_kv_spec("k4v4:center").canonical(), "k4v4:centre");
  for (const char* b : {"fp32", "fp16", "bf16", "fp8", "k2.5v2"}) EXPECT_TRUE(parse_kv_spec(std::string(b) + ":centre").policy.key_centre) << b;
}

TEST(KvSpec, FormatApartFromPolicy) {
  const auto s = parse_kv_spec("k3v2:nc:edge=2/k4v4:sink=4:window=64");
  EXPECT_EQ(s.policy.edge_layers, 2u);
  EXPECT_EQ(s.policy.sink, 4u);
  EXPECT_EQ(s.policy.window, 64u);
  EXPECT_EQ(s.format.canonical(), "k3v2:nc");
  EXPECT_EQ(s.policy.knobs(), (std::vector<std::string>{"edge=2/k4v4", "sink=4", "window=64"}));
  EXPECT_TRUE(parse_kv_spec("k3v2:nc:rot=dense:page=8:seed=3").policy.empty());
  // Layers 0, 1, 28, 29 of 30 are edge layers: k4v4 with the spec's other format options.
  for (uint32_t l : {0u, 1u, 28u, 29u}) {
    EXPECT_TRUE(s.is_edge_layer(l, 30));
    const KvFormat e = s.layer_format(l, 30);
    EXPECT_EQ(e.k.bits, 4) << l;
    EXPECT_EQ(e.v.bits, 4) << l;
    EXPECT_TRUE(e.norm_correction);
    EXPECT_EQ(e.canonical(), "k4v4:nc");
  }
  EXPECT_FALSE(s.is_edge_layer(2, 30));
  EXPECT_EQ(s.layer_format(2, 30).canonical(), "k3v2:nc");
  EXPECT_EQ(s.layer_format(27, 30).canonical(), "k3v2:nc");
  EXPECT_EQ(parse_kv_spec("fp32:ksim=int4").policy.key_sim, "int4");
  // The edge cache holds layers 0, 1, 28, 29 at 0..3; the main cache 2..27 at 0..25.
  EXPECT_EQ(s.edge_layer_count(30), 4u);
  EXPECT_EQ(s.local_layer(0, 30), 0u);
  EXPECT_EQ(s.local_layer(1, 30), 1u);
  EXPECT_EQ(s.local_layer(28, 30), 2u);
  EXPECT_EQ(s.local_layer(29, 30), 3u);
  EXPECT_EQ(s.local_layer(2, 30), 0u);
  EXPECT_EQ(s.local_layer(27, 30), 25u);
  EXPECT_EQ(parse_kv_spec("k3v2").local_layer(7, 30), 7u);
  EXPECT_EQ(parse_kv_spec("k3v2").edge_layer_count(30), 0u);
  // edge=2 on fewer than 4 layers: every layer once, in order (the default on a toy model).
  for (uint32_t L : {1u, 2u, 3u}) {
    EXPECT_EQ(s.edge_layer_count(L), L);
    for (uint32_t l = 0; l < L; ++l) {
      EXPECT_TRUE(s.is_edge_layer(l, L));
      EXPECT_EQ(s.local_layer(l, L), l) << l << " of " << L;
    }
  }
}

// Entry points that implement the format only refuse every policy knob by name, and nothing else.
TEST(KvSpec, RefusePolicyNamesTheKnob) {
  for (const char* knob : {"edge=1/fp16", "sink=4", "window=8"}) {
    const std::string spec = std::string("k3v2:") + knob;
    try {
      refuse_policy(parse_kv_spec(spec), "the test");
      FAIL() << "accepted " << spec;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(knob), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("the test"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("'k3v2'"), std::string::npos) << e.what();  // what to pass instead
    }
  }
  EXPECT_THROW(refuse_policy(parse_kv_spec("fp16:ksim=int4"), "x"), Error);
  try {
    refuse_policy(parse_kv_spec("k3v2:centre"), "tq_cache_create");
    FAIL() << "accepted k3v2:centre";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'centre'"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(refuse_policy(parse_kv_spec("k4v2:prod:nc:rot=dense:seed=9:page=7"), "x"));
}

}  // namespace
}  // namespace tq
