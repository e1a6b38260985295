#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <string>

#include "test_util.h"
#include "tq/common.h"
#include "tq/kv/paged_cache.h"

namespace tq {
namespace {

class CacheSpec : public ::testing::TestWithParam<std::string> {};

TEST_P(CacheSpec, PartlyFilledPagesRoundTripAndLeaveTheRestUntouched) {
  const KvFormat spec = parse_kv_spec(GetParam()).format;
  const CacheShape shape{2, 3, 64, 4};
  PagedKvCache cache(shape, spec);
  const uint32_t ps = spec.page_size, partial = ps > 1 ? std::min(5u, ps - 1) : 0, n = ps + partial;
  // one full page and `partial` tokens of the next
  const auto k = test::outlier_rows(n, 3 * 64, 1), v = test::gaussian(n, 3 * 64, 2);
  // Tokens go to pages 2 and 0 (a block table out of order), layer 1 only.
  auto slot = [&](uint32_t t) { return int64_t(t < ps ? 2 * ps + t : t - ps); };
  for (uint32_t t = 0; t < n; ++t) cache.write(1, slot(t), &k[t * 192], &v[t * 192]);
  cache.write(1, -1, &k[0], &v[0]);  // skipped
  // Layer 0, pages 1 and 3, and the unwritten rows of page 0 stay zero.
  for (uint32_t h = 0; h < 3; ++h) {
    for (uint32_t p = 0; p < 4; ++p) {
      const uint8_t* b = cache.block(0, p, h);
      for (uint32_t i = 0; i < cache.layout().bytes; ++i) ASSERT_EQ(b[i], 0) << "layer 0 page " << p;
    }
    const uint8_t* b1 = cache.block(1, 1, h);
    for (uint32_t i = 0; i < cache.layout().bytes; ++i) ASSERT_EQ(b1[i], 0);
    const uint8_t* b0 = cache.block(1, 0, h);
    const BlockLayout& L = cache.layout();
    for (uint32_t t = partial; t < ps; ++t)
      for (uint32_t i = 0; i < L.k_row; ++i) ASSERT_EQ(b0[L.k_codes + t * L.k_row + i], 0) << "row " << t;
  }
  // Read back: each token within the format's error.
  std::vector<float> kr(192), vr(192);
  for (uint32_t t = 0; t < n; ++t) {
    cache.read(1, slot(t), kr.data(), vr.data());
    for (uint32_t h = 0; h < 3; ++h) {
      const double ek = test::sq_dist(&k[t * 192 + h * 64], &kr[h * 64], 64) / test::sq_norm(&k[t * 192 + h * 64], 64);
      const double ev = test::sq_dist(&v[t * 192 + h * 64], &vr[h * 64], 64) / test::sq_norm(&v[t * 192 + h * 64], 64);
      if (is_tq(spec.k.enc)) {
        EXPECT_LT(ek, 4 * codebook(64, mse_bits(spec.k) ? mse_bits(spec.k) : 1).expected_mse + 0.5 * (spec.k.enc == Encoding::kTqProd));
        EXPECT_LT(ev, 4 * codebook(64, spec.v.bits).expected_mse);
      } else {
        const double tol = spec.k.enc == Encoding::kFp32 ? 0 : spec.k.enc == Encoding::kFp16 ? 1e-6 : spec.k.enc == Encoding::kBf16 ? 2e-5 : 5e-3;
        EXPECT_LE(ek, tol);
        EXPECT_LE(ev, tol);
      }
    }
  }
}
INSTANTIATE_TEST_SUITE_P(All, CacheSpec, ::testing::Values("fp32", "fp16", "bf16", "fp8", "k3v2", "k4v4", "k2v2", "k8v8", "k3v2:prod", "k3v2:page=1", "k4v2:page=7", "k3tv2t", "k7tv1t:page=5"),
                         [](const auto& i) {
                           std::string s = i.param;
                           for (char& c : s)
                             if (!isalnum(c)) c = '_';
                           return s;
                         });

TEST(PagedKvCache, QuantizeOnWriteEqualsTheCodec) {
  // The bytes in the block are exactly what the layer's codec writes for the token.
  const KvFormat spec = parse_kv_spec("k3v2").format;
  PagedKvCache cache(CacheShape{1, 2, 128, 2}, spec);
  const auto k = test::gaussian(1, 256, 3), v = test::gaussian(1, 256, 4);
  cache.write(0, 19, k.data(), v.data());  // page 1, offset 3
  const TurboQuant* kc = cache.format().k_codec(0, 1);
  std::vector<uint32_t> codes(12);
  uint16_t norm;
  kc->encode(&k[128], RowRef{codes.data(), nullptr, &norm, nullptr});
  const uint8_t* b = cache.block(0, 1, 1);
  EXPECT_EQ(0, std::memcmp(b + cache.layout().k_codes + 3 * 48, codes.data(), 48));
  EXPECT_EQ(0, std::memcmp(b + cache.layout().k_norms + 6, &norm, 2));
  // Different (layer, head, K/V) get different rotation seeds.
  EXPECT_NE(cache.format().seed_for(0, 0, false), cache.format().seed_for(0, 1, false));
  EXPECT_NE(cache.format().seed_for(0, 0, false), cache.format().seed_for(0, 0, true));
}

TEST(PagedKvCache, BadInput) {
  const KvFormat spec = parse_kv_spec("k3v2").format;
  EXPECT_THROW(PagedKvCache(CacheShape{0, 1, 64, 1}, spec), Error);
  EXPECT_THROW(PagedKvCache(CacheShape{1, 1, 2000, 1}, spec), Error);
  EXPECT_THROW(PagedKvCache(CacheShape{1, 1, 80, 1}, parse_kv_spec("k3v2:rot=hadamard").format), Error);
  PagedKvCache cache(CacheShape{1, 1, 64, 2}, spec);
  std::vector<float> x(64, 1.0f);
  EXPECT_THROW(cache.write(0, 32, x.data(), x.data()), Error);
  EXPECT_THROW(cache.write(1, 0, x.data(), x.data()), Error);
  EXPECT_THROW(cache.write(0, -2, x.data(), x.data()), Error);
  x[3] = NAN;
  EXPECT_THROW(cache.write(0, 0, x.data(), x.data()), Error);
  EXPECT_THROW(cache.block(0, 2, 0), Error);
  EXPECT_THROW(PagedKvCache(CacheShape{1, 1, 64, 0}, spec), Error);
}

// The size check counts the codec tables and comes before they are built: at head dim 992 each is a
// dense rotation of ~4 MiB that takes ~1 s, so 4096 layers x 8 heads of them (240 GiB) were hours
// of work before any refusal, and pages that cannot fit were refused only after the tables.
TEST(PagedKvCache, OversizedIsRefusedBeforeTheTablesAreBuilt) {
  const KvFormat spec = parse_kv_spec("k3v2").format;
  EXPECT_EQ(CacheFormat::table_bytes(2, 3, 992, spec), 2u * 3 * 2 * 4 * 992 * 992);  // K and V: a dense rotation each
  EXPECT_EQ(CacheFormat::table_bytes(2, 3, 96, spec), CacheFormat(2, 3, 96, spec).table_bytes());  // dense too, small
  for (const CacheShape& shape : {CacheShape{4096, 8, 992, 1}, CacheShape{32, 8, 992, 1u << 31}}) {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      PagedKvCache cache(shape, spec);
      ADD_FAILURE() << shape.layers << " layers were not refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("GiB of codec tables"), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1)) << shape.layers << " layers";
  }
}

// A refused write stores nothing: heads before the refused row (and the refused row's codes, packed
// before its nc norm check) were overwritten, leaving a token of mixed rows or with its old norm.
TEST(PagedKvCache, ARefusedWriteLeavesTheSlotsBytes) {
  for (const char* name : {"fp16", "bf16", "k3v2", "k1v1:nc", "k3v2:prod", "k2.5v2", "k4v4:ip", "k3tv2t:ip"}) {
    PagedKvCache cache(CacheShape{1, 2, 64, 2}, parse_kv_spec(name).format);
    std::vector<float> k(128), v(128);
    for (size_t i = 0; i < k.size(); ++i) k[i] = float(i % 7) - 3.0f, v[i] = float(i % 5) - 2.0f;
    cache.write(0, 3, k.data(), v.data());
    const std::vector<uint8_t> before(cache.data(), cache.data() + cache.bytes());
    std::vector<float> k2(128, -2.0f), v2(128, -2.0f);
    v2[64 + 5] = NAN;  // head 1's V: after both K rows and head 0's V
    EXPECT_THROW(cache.write(0, 3, k2.data(), v2.data()), Error) << name;
    EXPECT_EQ(std::memcmp(before.data(), cache.data(), before.size()), 0) << name << ": the refused write changed the cache";
  }
  // nc: the row's codes were packed before its stored norm was found past fp16
  PagedKvCache nc(CacheShape{1, 1, 64, 1}, parse_kv_spec("k1v1:nc").format);
  std::vector<float> row(64), big(64);
  for (size_t i = 0; i < 64; ++i) row[i] = float(i % 3) - 1.0f, big[i] = (i % 3 ? 1.0f : -1.0f) * 8125.0f;  // norm 65000
  nc.write(0, 0, row.data(), row.data());
  const std::vector<uint8_t> before(nc.data(), nc.data() + nc.bytes());
  EXPECT_THROW(nc.write(0, 0, big.data(), row.data()), Error);
  EXPECT_EQ(std::memcmp(before.data(), nc.data(), before.size()), 0);
}

TEST(FloatRows, Bf16RefusesWhatItWouldRoundToInfinity) {
  uint8_t out[2];
  const float ok = 3.38e38f, over = 3.4e38f;
  EXPECT_NO_THROW(store_float_row(Encoding::kBf16, &ok, 1, 1.0f, out));
  EXPECT_THROW(store_float_row(Encoding::kBf16, &over, 1, 1.0f, out), Error);
}

// The format is a value: copies share the codec tables, and host storage built from a copy has
// exactly the bytes of storage built from the original.
TEST(CacheFormat, CopiesShareTablesAndLayout) {
  const CacheFormat f(2, 3, 96, parse_kv_spec("k3v2:rot=dense:seed=11").format);
  const CacheFormat g = f;
  EXPECT_EQ(f.k_codec(1, 2), g.k_codec(1, 2));
  EXPECT_EQ(f.bytes(5), size_t(f.layout().bytes) * 2 * 5 * 3);
  EXPECT_EQ(f.block_offset(1, 4, 2, 5), ((size_t(1) * 5 + 4) * 3 + 2) * f.layout().bytes);
  PagedKvCache a(f, 5), b(g, 5);
  const auto k = test::outlier_rows(1, 3 * 96, 7), v = test::gaussian(1, 3 * 96, 8);
  a.write(1, 37, k.data(), v.data());
  b.write(1, 37, k.data(), v.data());
  ASSERT_EQ(a.bytes(), b.bytes());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.bytes()));
  EXPECT_THROW(f.k_codec(2, 0), Error);
  EXPECT_THROW(CacheFormat(1, 0, 64, KvFormat{}), Error);
}

}  // namespace
}  // namespace tq
