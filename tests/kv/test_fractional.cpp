// Fractional widths in KV specs (k2.5v2, k3.5v2.5, ...): the grammar, the sizes, the pages.
#include <gtest/gtest.h>

#include <cstring>

#include "test_util.h"
#include "tq/common.h"
#include "tq/kv/kv_size.h"
#include "tq/kv/paged_cache.h"
#include "tq/numeric.h"

namespace tq {
namespace {

TEST(FractionalSpec, ParsesHalfWidths) {
  auto s = parse_kv_spec("k3.5v2.5");
  EXPECT_EQ(s.format.k.enc, Encoding::kTqSplit);
  EXPECT_EQ(s.format.k.bits, 3);
  EXPECT_EQ(s.format.v.enc, Encoding::kTqSplit);
  EXPECT_EQ(s.format.v.bits, 2);
  s = parse_kv_spec("k2.5v2:nc:rot=dense:page=32");
  EXPECT_EQ(s.format.k.enc, Encoding::kTqSplit);
  EXPECT_EQ(s.format.v.enc, Encoding::kTqMse);
  EXPECT_TRUE(s.format.norm_correction);
  s = parse_kv_spec("k3v2:edge=2/k4.5v4.5");
  EXPECT_EQ(s.policy.edge_k.enc, Encoding::kTqSplit);
  EXPECT_EQ(s.policy.edge_v.bits, 4);
  EXPECT_FALSE(parse_kv_spec("k2.5v2").policy.fixed_outliers);
  EXPECT_TRUE(parse_kv_spec("k2.5v2:outliers=fixed").policy.fixed_outliers);
  EXPECT_FALSE(parse_kv_spec("k2.5v2:outliers=prompt").policy.fixed_outliers);
  for (const char* t : {"k2.5v2", "k3.5v2.5", "k4v3.5", "k1.5v1.5:nc", "k7.5v7.5:rot=dense", "k3v2:edge=2/k3.5v3.5:sink=4",
                        "k2.5v2:outliers=fixed", "k3v2:edge=1/k4v3.5:outliers=fixed"})
    EXPECT_EQ(parse_kv_spec(t).canonical(), t);
}

// Malformed fractional widths: BadSpec (test_spec.cpp) holds them with the other malformed specs.

// Sizes: two fp16 norms per row; at head dim 128, 64 channels at N+1 bits and 64 at N.
TEST(FractionalSpec, BytesAndBitsPerElement) {
  EXPECT_DOUBLE_EQ(parse_kv_spec("k2.5v2.5").bits_per_element(128), 2.75);  // (24+16+4) x 2 x 8 / 256
  EXPECT_DOUBLE_EQ(parse_kv_spec("k3.5v2.5").bits_per_element(128), 3.25);  // (56+4 + 40+4) x 8 / 256
  EXPECT_DOUBLE_EQ(parse_kv_spec("k2.5v2").bits_per_element(128), 2.4375);  // (40+4 + 32+2) x 8 / 256
  EXPECT_DOUBLE_EQ(parse_kv_spec("k2.5v2.5").bits_per_element(64), 3.0);    // (12+8+4) x 2 x 8 / 128
  EXPECT_DOUBLE_EQ(parse_kv_spec("k3.5v3.5").bits_per_element(64), 4.0);    // (16+12+4) x 2 x 8 / 128
  const BlockLayout L = block_layout({Encoding::kTqSplit, 3}, {Encoding::kTqSplit, 2}, 128, 16);
  EXPECT_EQ(L.k_row, 56u);  // 64 x 4 bits + 64 x 3 bits
  EXPECT_EQ(L.v_row, 40u);
  EXPECT_EQ(L.k_norm_row, 4u);
  EXPECT_EQ(L.v_norms - L.k_norms, 16u * 4);
  EXPECT_EQ(L.bytes, 16u * (56 + 40 + 4 + 4));
  // kv-size: SmolLM2-135M's shape (30 layers, 3 KV heads, head dim 64) and Llama-3-8B's.
  const KvSize s = kv_size(parse_kv_spec("k2.5v2.5"), 30, 3, 64);
  EXPECT_DOUBLE_EQ(s.bytes_per_token, 30.0 * 3 * 48);
  EXPECT_DOUBLE_EQ(s.bits_per_element, 3.0);
  const KvSize l = kv_size(parse_kv_spec("k3.5v2.5"), 32, 8, 128);
  EXPECT_DOUBLE_EQ(l.bytes_per_token, 32.0 * 8 * 104);
  EXPECT_NEAR(l.ratio_vs_fp16, 512.0 / 104, 1e-12);
  EXPECT_THROW(kv_size(parse_kv_spec("k2.5v2"), 1, 1, 1), Error);  // nothing to split
}

// Pages: rows go in and come back within the parts' distortion, the two norms of a row sit next
// to each other, and the cache's codecs are the split ones.
// kv_size refuses what CacheFormat cannot build: a forced Hadamard rotation of a dimension that
// does not pad to a power of two (tq kv-size sized k3v2:rot=hadamard at head dim 80), of either part
// of a split row too; the same specs at dims that pad to powers of two are sized (a split row's
// parts at theirs).
TEST(FractionalSpec, KvSizeRefusesRotationsTheCachesCannotBuild) {
  for (const auto& [spec, d] : {std::pair{"k3v2:rot=hadamard", 80u}, std::pair{"k4v2:rot=hadamard:edge=1/k4v4", 96u},
                                std::pair{"k2.5v2:rot=hadamard", 160u}}) {
    EXPECT_THROW(kv_size(parse_kv_spec(spec), 4, 2, d), Error) << spec << " d" << d;
    EXPECT_THROW(PagedKvCache(CacheShape{4, 2, d, 1}, parse_kv_spec(spec).format), Error) << spec << " d" << d;
  }
  for (const auto& [spec, d] : {std::pair{"k3v2:rot=hadamard", 128u}, std::pair{"k2.5v2:rot=hadamard", 128u}, std::pair{"k3v2", 80u},
                                // head dim 96 pads to 96, but a split row's parts to 64 and 32
                                std::pair{"k2.5v2.5:rot=hadamard", 96u}}) {
    EXPECT_NO_THROW(kv_size(parse_kv_spec(spec), 4, 2, d)) << spec << " d" << d;
    EXPECT_NO_THROW(PagedKvCache(CacheShape{4, 2, d, 1}, parse_kv_spec(spec).format)) << spec << " d" << d;
  }
}

TEST(FractionalPages, RoundTripAndNormPairs) {
  for (const char* text : {"k2.5v2.5", "k3.5v2:page=7", "k1.5v3.5:nc"}) {
    const KvFormat f = parse_kv_spec(text).format;
    const CacheShape shape{2, 3, 64, 3};
    PagedKvCache cache(shape, f);
    const uint32_t n = 2 * f.page_size + 1;
    const auto k = test::outlier_rows(n, 3 * 64, 1), v = test::gaussian(n, 3 * 64, 2);
    for (uint32_t t = 0; t < n; ++t) cache.write(1, t, &k[t * 192], &v[t * 192]);
    std::vector<float> kr(192), vr(192);
    // 4x the expected distortion of the rest's width in 32 dimensions: the weaker part of a split
    // row (parts of 32 channels here), and looser than a whole width's in 64.
    const auto bound = [](TensorCode c) { return 4 * codebook(32, c.bits).expected_mse; };
    for (uint32_t t = 0; t < n; ++t) {
      cache.read(1, t, kr.data(), vr.data());
      for (uint32_t h = 0; h < 3; ++h) {
        const double ek = test::sq_dist(&k[t * 192 + h * 64], &kr[h * 64], 64) / test::sq_norm(&k[t * 192 + h * 64], 64);
        const double ev = test::sq_dist(&v[t * 192 + h * 64], &vr[h * 64], 64) / test::sq_norm(&v[t * 192 + h * 64], 64);
        EXPECT_LT(ek, bound(f.k)) << text << " token " << t << " head " << h;
        EXPECT_LT(ev, bound(f.v)) << text << " token " << t << " head " << h;
      }
    }
    // Token 1 of page 0, head 2: its K norms are the fp16 norms of channels 0..31 and 32..63
    // (default outliers), at bytes 4..7 of the K norm section (without nc, which stores ratios).
    if (!f.norm_correction && f.k.enc == Encoding::kTqSplit) {
      const uint8_t* b = cache.block(1, 0, 2);
      uint16_t norms[2];
      std::memcpy(norms, b + cache.layout().k_norms + 1 * 4, 4);
      const float* row = &k[1 * 192 + 2 * 64];
      EXPECT_EQ(norms[0], f32_to_f16(float(std::sqrt(test::sq_norm(row, 32)))));
      EXPECT_EQ(norms[1], f32_to_f16(float(std::sqrt(test::sq_norm(row + 32, 32)))));
    }
    EXPECT_EQ(cache.format().k_codec(1, 2)->split(), f.k.enc == Encoding::kTqSplit);
  }
}

TEST(FractionalPages, SetOutliersReplacesOneCodecCopiesKeepTheirs) {
  PagedKvCache cache(CacheShape{2, 2, 64, 1}, parse_kv_spec("k2.5v2").format);
  const CacheFormat before = cache.format();
  std::vector<uint16_t> ch;
  for (uint16_t i = 0; i < 32; ++i) ch.push_back(uint16_t(63 - 2 * i));  // the odd channels
  cache.set_outliers(1, 0, false, ch);
  EXPECT_EQ(cache.format().k_codec(1, 0)->channel(0), 1u);
  EXPECT_EQ(cache.format().k_codec(1, 0)->channel(31), 63u);
  EXPECT_EQ(cache.format().k_codec(1, 0)->channel(32), 0u);  // then the rest, ascending
  EXPECT_EQ(cache.format().k_codec(1, 1)->channel(0), 0u);   // other heads keep the default
  EXPECT_EQ(before.k_codec(1, 0)->channel(0), 0u);           // a copy made before keeps its channels
  // Values are stored at a whole width here: nothing to choose.
  EXPECT_THROW(cache.set_outliers(1, 0, true, ch), Error);
  EXPECT_THROW(cache.set_outliers(2, 0, false, ch), Error);
  EXPECT_THROW(cache.set_outliers(1, 0, false, {1, 2, 3}), Error);
}

}  // namespace
}  // namespace tq
