// quantize_store against the CPU reference (PagedKvCache::write): the same bytes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>

#include "cuda_test_util.h"
#include "test_util.h"
#include "tq/cuda/device_format.h"
#include "tq/kv/paged_cache.h"
#include "tq/cuda/kernels.h"
#include "tq/numeric.h"
#include "tq/rng.h"

namespace tq {
namespace test {
cudaError_t unit_coords_on_device(const float* x, const double* n, uint32_t count, float* y, float* product, uint8_t* decided);  // unit_coord_kernel.cu
}  // namespace test
namespace {

// Rows as a model hands them to quantize_store: x rounded to `dtype` in place (the CPU
// reference takes the rounded floats) and returned as 32-bit words of the type's bits, `shift`
// unused elements first.
std::vector<uint32_t> device_rows(std::vector<float>& x, cuda::DType dtype, uint32_t shift) {
  const size_t esize = dtype == cuda::DType::kF32 ? 4 : 2;
  std::vector<uint32_t> w(((shift + x.size()) * esize + 3) / 4);
  for (size_t i = 0; i < x.size(); ++i) {
    uint32_t b = 0;
    if (dtype == cuda::DType::kF32) b = f32_bits(x[i]);
    else if (dtype == cuda::DType::kBf16) x[i] = bf16_to_f32(uint16_t(b = f32_to_bf16(x[i])));
    else x[i] = f16_to_f32(uint16_t(b = f32_to_f16(x[i])));
    std::memcpy(reinterpret_cast<uint8_t*>(w.data()) + (shift + i) * esize, &b, esize);  // little-endian: the low bytes
  }
  return w;
}

// quantize_store of device_rows' words (`n` tokens from element `shift`) into a zeroed cache laid
// out as `cpu`'s: the cache's bytes and the error flag in `out` (callers wrap it in
// ASSERT_NO_FATAL_FAILURE: a CUDA error stops the test, not only this helper).
struct Stored {
  std::vector<uint8_t> bytes;
  int32_t flag = -1;
};
void store_on_gpu(const PagedKvCache& cpu, const std::vector<uint32_t>& kw, const std::vector<uint32_t>& vw, cuda::DType dtype,
                  uint32_t shift, const std::vector<int64_t>& slots, uint32_t n, Stored& out) {
  const size_t esize = dtype == cuda::DType::kF32 ? 4 : 2;
  cuda::DeviceFormat codecs(cpu.format());
  test::DeviceBuffer<uint8_t> cache(cpu.bytes());
  CUDA_OK(cudaMemset(cache.ptr, 0, cpu.bytes()));
  test::DeviceBuffer<uint32_t> dk(kw), dv(vw);
  test::DeviceBuffer<int64_t> ds(slots);
  test::DeviceBuffer<int32_t> flag(std::vector<int32_t>{0});
  cuda::QuantizeStoreParams p;
  p.cache = codecs.view(0, cache.ptr, cpu.shape().num_pages);
  p.k = reinterpret_cast<const uint8_t*>(dk.ptr) + shift * esize;
  p.v = reinterpret_cast<const uint8_t*>(dv.ptr) + shift * esize;
  p.dtype = dtype;
  p.slot_mapping = ds.ptr;
  p.num_tokens = n;
  p.error_flag = flag.ptr;
  cuda::quantize_store(p, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  out = {cache.download(), flag.download()[0]};
}

// `got` holds the cache's bytes (`cpu`'s count) and none differs from `want`; else the count and
// where the first one sits.
void expect_bytes_equal(const std::vector<uint8_t>& got, const uint8_t* want, const PagedKvCache& cpu) {
  ASSERT_EQ(got.size(), cpu.bytes());
  const size_t block_bytes = cpu.layout().bytes;
  size_t diff = 0, first = got.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i]) {
      ++diff;
      first = std::min(first, i);
    }
  EXPECT_EQ(diff, 0u) << "first differing byte " << first << " (block " << first / block_bytes << ", offset " << first % block_bytes << ")";
}

struct StoreCase {
  std::string spec;
  uint32_t head_dim;
  cuda::DType dtype = cuda::DType::kF16;  // the rows' type, as a model writes them
  uint32_t shift = 0;                     // elements the rows start after an aligned address (0: a lane's vector load)
};
class QuantizeStore : public ::testing::TestWithParam<StoreCase> {};

TEST_P(QuantizeStore, BytesEqualTheCpuReference) {
  TQ_REQUIRE_GPU();
  const auto& [spec_text, d, dtype, shift] = GetParam();
  const KvFormat spec = parse_kv_spec(spec_text).format;
  const uint32_t hkv = 3, ps = spec.page_size, n = 5 * ps + 7, pages = n / ps + 3;  // partly filled last page
  PagedKvCache cpu(CacheShape{1, hkv, d, pages}, spec);
  // Rows of all kinds, rounded to the rows' type (the CPU reference takes them as floats).
  auto k = test::outlier_rows(n, size_t(hkv) * d, 1), v = test::gaussian(n, size_t(hkv) * d, 2, 3.0f);
  std::fill(k.begin() + 3 * hkv * d, k.begin() + 4 * hkv * d, 0.0f);  // a zero token
  for (size_t i = 0; i < hkv * d; ++i) v[7 * hkv * d + i] *= 1000.0f;  // a huge (but fp16-storable) one
  if (dtype == cuda::DType::kF32) {
    // A token whose heads are rows (a, b, 0, ...) where a / |(a, b)| lies so near a float rounding
    // boundary that the reciprocal's product rounds to another float than the division
    // (numeric.h's unit_coord_by_inverse declines them: the kernel's lane divides). Found by a
    // search over random pairs; checked here that they still are such pairs.
    const float pairs[3][2] = {{0x1.ef84p-8f, 0x1.2acc9p+0f}, {-0x1.532dp-4f, 0x1.7575d6p+0f}, {0x1.1ee24p-2f, 0x1.075fbcp+0f}};
    for (uint32_t h = 0; h < hkv; ++h) {
      const float a = pairs[h][0], b = pairs[h][1];
      const double norm = std::sqrt(double(a) * a + double(b) * b);
      float y = 0;
      ASSERT_FALSE(unit_coord_by_inverse(a, 1.0 / norm, y));
      ASSERT_NE(float(double(a) * (1.0 / norm)), float(double(a) / norm));
      for (auto* x : {&k, &v}) {
        float* row = x->data() + (size_t(9) * hkv + h) * d;
        std::fill(row, row + d, 0.0f);
        row[0] = a;
        row[1] = b;
      }
    }
  }
  // The device rows: `shift` unused elements, then the tokens.
  const std::vector<uint32_t> kw = device_rows(k, dtype, shift), vw = device_rows(v, dtype, shift);
  // Slots: shuffled pages, every 11th token skipped.
  std::vector<int64_t> slots(n);
  std::vector<int> perm(pages);
  for (uint32_t i = 0; i < pages; ++i) perm[i] = int(pages - 1 - i);  // pages in reverse order
  for (uint32_t t = 0; t < n; ++t) slots[t] = t % 11 == 5 ? -1 : int64_t(perm[t / ps]) * ps + t % ps;
  for (uint32_t t = 0; t < n; ++t) cpu.write(0, slots[t], &k[size_t(t) * hkv * d], &v[size_t(t) * hkv * d]);

  Stored got;
  ASSERT_NO_FATAL_FAILURE(store_on_gpu(cpu, kw, vw, dtype, shift, slots, n, got));
  EXPECT_EQ(got.flag, 0);
  expect_bytes_equal(got.bytes, cpu.data(), cpu);
}

// The case's name: spec and head dim, then the rows' type and shift where not fp16 from 0.
std::string case_name(const ::testing::TestParamInfo<StoreCase>& i) {
  static const char* kType[] = {"f32", "f16", "bf16"};
  std::string s = i.param.spec + "_d" + std::to_string(i.param.head_dim);
  if (i.param.dtype != cuda::DType::kF16 || i.param.shift)
    s += std::string("_") + kType[int(i.param.dtype)] + (i.param.shift ? "_at" + std::to_string(i.param.shift) : "");
  for (char& ch : s)
    if (!isalnum(ch)) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(All, QuantizeStore,
                         ::testing::Values(StoreCase{"k3v2", 128}, StoreCase{"k3v2", 64}, StoreCase{"k3v2", 256}, StoreCase{"k4v4", 128},
                                           StoreCase{"k2v2", 128}, StoreCase{"k8v1", 128}, StoreCase{"k5v7:nc", 64},
                                           StoreCase{"k3v2:rot=dense", 128}, StoreCase{"k3v2", 80}, StoreCase{"k3v2:page=1", 128},
                                           StoreCase{"k3v2:page=7", 128}, StoreCase{"fp16", 128}, StoreCase{"bf16", 128}, StoreCase{"fp8", 128},
                                           // every lane count per group of the packing (32 / E lanes, E = padded dim / 32)
                                           StoreCase{"k6v3", 32}, StoreCase{"k7v5:nc", 256}, StoreCase{"k4v1", 96},
                                           // the unbiased norm: small and large widths, dense rotation, padding
                                           StoreCase{"k3v2:ip", 128}, StoreCase{"k5v7:ip", 64}, StoreCase{"k4v2:ip:rot=dense", 128},
                                           StoreCase{"k3v4:ip", 80}, StoreCase{"k3v2:ip=k", 128}, StoreCase{"k4v2:ip=v", 64},
                                           // trellis-coded rows: the Viterbi search, beside plain rows, norms of every kind
                                           StoreCase{"k3tv2t", 128}, StoreCase{"k3tv2t:ip", 64}, StoreCase{"k4tv4t:ip", 256},
                                           StoreCase{"k3tv2", 128}, StoreCase{"k2v3t:nc", 128}, StoreCase{"k1tv7t", 32},
                                           StoreCase{"k5tv2t:ip:rot=dense", 96}, StoreCase{"k3tv2t:page=7", 80},
                                           // the rows' types, whole and from unaligned starts (a lane's elements one at a time)
                                           StoreCase{"k3v2", 128, cuda::DType::kBf16}, StoreCase{"k3v2", 128, cuda::DType::kF32},
                                           StoreCase{"k2v2:ip", 64, cuda::DType::kBf16}, StoreCase{"k3v2", 256, cuda::DType::kF32},
                                           StoreCase{"k4v4:nc", 32, cuda::DType::kBf16}, StoreCase{"k3v2", 128, cuda::DType::kBf16, 1},
                                           StoreCase{"k3v2", 128, cuda::DType::kF32, 2}, StoreCase{"k2v3:nc", 64, cuda::DType::kF16, 1},
                                           StoreCase{"bf16", 128, cuda::DType::kBf16}, StoreCase{"fp8", 64, cuda::DType::kF32, 3}),
                         case_name);

// Rows that share a warp (two rows a warp where both kinds have width 2 or 3 at padded dims 32,
// 64 and 128; the others, one): a row past the tokens, a zero row, a NaN row written or skipped
// beside a row that is written, padding columns, KV head counts of 1, 3 and 8. Every row the
// CPU writes has the CPU's bytes; a NaN row whose slot is taken is flagged and left unwritten
// (zero), one whose slot is skipped (-1) is not flagged.
struct PairCase {
  std::string spec;
  uint32_t head_dim, kv_heads, tokens;
  int zero_token = -1;       // that token's K rows all zero
  int nan_token = -1;        // a NaN in that token's K row of head 0
  bool nan_skipped = false;  // and its slot -1
  int skip_every = 0;        // slots -1 where token % skip_every == 1
};
class QuantizeStorePairs : public ::testing::TestWithParam<PairCase> {};

TEST_P(QuantizeStorePairs, RowsBesideEachOtherKeepTheirBytes) {
  TQ_REQUIRE_GPU();
  const PairCase& c = GetParam();
  const KvFormat spec = parse_kv_spec(c.spec).format;
  const uint32_t hkv = c.kv_heads, d = c.head_dim, n = c.tokens, ps = spec.page_size, pages = n / ps + 3;
  PagedKvCache cpu(CacheShape{1, hkv, d, pages}, spec);
  auto k = test::gaussian(n, size_t(hkv) * d, 11, 2.0f), v = test::gaussian(n, size_t(hkv) * d, 12, 3.0f);
  for (auto* x : {&k, &v})
    for (float& e : *x) e = f16_to_f32(f32_to_f16(e));  // the rows' type (fp16)
  if (c.zero_token >= 0) std::fill(k.begin() + size_t(c.zero_token) * hkv * d, k.begin() + size_t(c.zero_token + 1) * hkv * d, 0.0f);
  std::vector<int64_t> slots(n);
  for (uint32_t t = 0; t < n; ++t) slots[t] = c.skip_every && t % c.skip_every == 1 ? -1 : int64_t(pages - 1 - t / ps) * ps + t % ps;
  if (c.nan_token >= 0 && c.nan_skipped) slots[c.nan_token] = -1;
  for (uint32_t t = 0; t < n; ++t) cpu.write(0, slots[t], &k[size_t(t) * hkv * d], &v[size_t(t) * hkv * d]);
  std::vector<uint8_t> want(cpu.data(), cpu.data() + cpu.bytes());
  const BlockLayout& lay = cpu.layout();
  if (c.nan_token >= 0) {  // the CPU wrote the finite row; the GPU gets a NaN in it
    k[size_t(c.nan_token) * hkv * d + 5] = NAN;
    if (!c.nan_skipped) {  // flagged, so its codes and norm stay as the memset left them
      const int64_t slot = slots[c.nan_token];
      const size_t blk = size_t(slot / ps) * hkv * lay.bytes, off = size_t(slot % ps);
      std::fill(want.begin() + blk + lay.k_codes + off * lay.k_row, want.begin() + blk + lay.k_codes + (off + 1) * lay.k_row, 0);
      std::fill(want.begin() + blk + lay.k_norms + off * 2, want.begin() + blk + lay.k_norms + off * 2 + 2, 0);
    }
  }
  Stored got;
  ASSERT_NO_FATAL_FAILURE(
      store_on_gpu(cpu, device_rows(k, cuda::DType::kF16, 0), device_rows(v, cuda::DType::kF16, 0), cuda::DType::kF16, 0, slots, n, got));
  EXPECT_EQ(got.flag, c.nan_token >= 0 && !c.nan_skipped ? 1 : 0);
  expect_bytes_equal(got.bytes, want.data(), cpu);
}

INSTANTIATE_TEST_SUITE_P(All, QuantizeStorePairs,
                         ::testing::Values(PairCase{"k3v2:ip", 128, 1, 7},                       // an odd row count: the last warp's second row past the tokens
                                           PairCase{"k3v2:ip", 128, 1, 8, 3},                    // a zero row beside a row (norm 0 in one half)
                                           PairCase{"k3v2:ip", 128, 1, 8, 2},                    // ... in the other half
                                           PairCase{"k2v3:nc", 32, 3, 87},                       // padded dim 32, nc
                                           PairCase{"k3v2:ip", 40, 3, 21},                       // padding columns (padded 64)
                                           PairCase{"k3v2:ip", 120, 8, 21, -1, -1, false, 5},    // 8 KV heads (shift and mask), skipped slots
                                           PairCase{"k3v2:ip", 128, 1, 9, -1, 3, true},          // a NaN row skipped beside a written row
                                           PairCase{"k3v2:ip", 128, 1, 4, -1, 1, false},         // a NaN row flagged beside a written row
                                           PairCase{"k3v2", 128, 1, 4, -1, 1, false},            // the same without the norm's correction
                                           PairCase{"k3v2:ip:rot=dense", 64, 1, 5},              // the dense rotation, a tail
                                           PairCase{"k3v2:nc", 32, 1, 5, 2},                     // padded dim 32, nc, a zero row, a tail
                                           PairCase{"k4v4:ip", 128, 1, 7, 3, 1, false},          // a row a warp (width 4), the same rows
                                           PairCase{"k3v2:ip", 256, 1, 7, 3, 1, false}),         // a row a warp (padded dim 256)
                         [](const ::testing::TestParamInfo<PairCase>& i) { return "case" + std::to_string(i.index); });

// The unit row's coordinates on the device (unit_coord_kernel.cu), as quantize_store computes
// them: the division's float on quotients placed within 24 double ulps of float midpoints, where
// the reciprocal's product alone gives another float (some of them: the inputs reach the cases).
TEST(QuantizeStoreUnitRow, TheReciprocalGivesTheDivisionsFloat) {
  TQ_REQUIRE_GPU();
  Rng r(60);
  std::vector<float> x;
  std::vector<double> n;
  while (x.size() < 200000) {
    float a = 0;
    double m = 0;
    if (!test::near_midpoint_quotient(r, a, m)) continue;
    x.push_back(a);
    n.push_back(m);
  }
  for (float a : {0.0f, -0.0f, 0x1p-149f, -3e-39f, 1.0f}) {  // zeros, quotients below float's normal range, 1
    x.push_back(a);
    n.push_back(a == 1.0f ? 1.0 : 65504.0);
  }
  const uint32_t count = uint32_t(x.size());
  test::DeviceBuffer<float> dx(x), dy(count), dp(count);
  test::DeviceBuffer<double> dn(n);
  test::DeviceBuffer<uint8_t> dd(count);
  CUDA_OK(test::unit_coords_on_device(dx.ptr, dn.ptr, count, dy.ptr, dp.ptr, dd.ptr));
  const auto y = dy.download(), product = dp.download();
  const auto decided = dd.download();
  size_t wrong = 0, product_wrong = 0, declined = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const float want = float(double(x[i]) / n[i]);
    wrong += f32_bits(y[i]) != f32_bits(want);
    product_wrong += f32_bits(product[i]) != f32_bits(want);
    declined += !decided[i];
    float host = 0;
    EXPECT_EQ(bool(decided[i]), unit_coord_by_inverse(x[i], 1.0 / n[i], host)) << i;  // the host's decision, the same arithmetic
  }
  EXPECT_EQ(wrong, 0u);
  EXPECT_GT(product_wrong, 0u);
  EXPECT_GT(declined, 0u);
  EXPECT_LT(declined, count);
}

// A NaN, an infinity of either sign, or a norm past fp16's in a K or a V row: flagged (1), that
// row's codes and norm not written, for every kernel instance that stores TurboQuant rows (two
// rows a warp at widths 2 and 3, a row a warp at other widths, trellis-coded rows, the dense
// rotation, a padded dim of 96): their finiteness test is the norm's (a NaN or infinite sum).
TEST(QuantizeStoreErrors, NonFiniteAndHugeRowsAreFlaggedAndNotWritten) {
  TQ_REQUIRE_GPU();
  for (const auto& [spec, d] : {std::pair{"k3v2", 128u}, std::pair{"k4v4", 128u}, std::pair{"k3tv2t", 64u}, std::pair{"k3v2:rot=dense", 64u},
                                std::pair{"k8v1:nc", 96u}, std::pair{"k2v3:ip", 32u}}) {
    PagedKvCache cpu(CacheShape{1, 1, d, 2}, parse_kv_spec(spec).format);
    cuda::DeviceFormat codecs(cpu.format());
    test::DeviceBuffer<uint8_t> cache(cpu.bytes());
    const BlockLayout& L = cpu.layout();
    for (const bool in_v : {false, true})
      for (float bad : {NAN, INFINITY, -INFINITY, 60000.0f}) {  // 60000 in every coordinate: norm ~6.8e5 > fp16 max
        SCOPED_TRACE(std::string(spec) + (in_v ? " V " : " K ") + std::to_string(bad));
        CUDA_OK(cudaMemset(cache.ptr, 0, cpu.bytes()));
        std::vector<uint16_t> k(d, f32_to_f16(0.5f)), v(d, f32_to_f16(0.25f));
        auto& row = in_v ? v : k;
        if (bad == 60000.0f) {
          std::fill(row.begin(), row.end(), f32_to_f16(bad));
        } else {
          row[17] = f32_to_f16(bad);
        }
        test::DeviceBuffer<uint16_t> dk(k), dv(v);
        test::DeviceBuffer<int64_t> ds(std::vector<int64_t>{3});
        test::DeviceBuffer<int32_t> flag(std::vector<int32_t>{0});
        cuda::QuantizeStoreParams p;
        p.cache = codecs.view(0, cache.ptr, cpu.shape().num_pages);
        p.k = dk.ptr;
        p.v = dv.ptr;
        p.slot_mapping = ds.ptr;
        p.num_tokens = 1;
        p.error_flag = flag.ptr;
        cuda::quantize_store(p, nullptr);
        CUDA_OK(cudaDeviceSynchronize());
        EXPECT_EQ(flag.download()[0], 1);
        const auto got = cache.download();
        const uint32_t codes = in_v ? L.v_codes : L.k_codes, row_bytes = in_v ? L.v_row : L.k_row, norms = in_v ? L.v_norms : L.k_norms;
        for (uint32_t i = 0; i < row_bytes; ++i) ASSERT_EQ(got[codes + 3 * row_bytes + i], 0) << "the row was written";
        EXPECT_EQ(got[norms + 2 * 3], 0);
        EXPECT_EQ(got[norms + 2 * 3 + 1], 0);
        const uint32_t other = in_v ? L.k_norms : L.v_norms;  // the other kind's row: stored
        EXPECT_NE(got[other + 2 * 3] | got[other + 2 * 3 + 1], 0) << "the other row was not written";
      }
    // Bad parameters are refused on the host, naming the problem.
    cuda::QuantizeStoreParams p;
    p.cache = codecs.view(0, cache.ptr, cpu.shape().num_pages);
    EXPECT_THROW(cuda::quantize_store(p, nullptr), Error);
  }
}

// A slot past the cache's pages is skipped and flagged 2, apart from a row the cache cannot hold
// (1): the runner names a wrong block table, not a non-finite element, where it reads the flag.
TEST(QuantizeStoreErrors, ASlotPastThePagesIsFlaggedApart) {
  TQ_REQUIRE_GPU();
  const uint32_t d = 128;
  const KvFormat f = parse_kv_spec("k3v2").format;
  PagedKvCache cpu(CacheShape{1, 1, d, 2}, f);
  cuda::DeviceFormat codecs(cpu.format());
  test::DeviceBuffer<uint8_t> cache(std::vector<uint8_t>(cpu.bytes(), 0));
  test::DeviceBuffer<uint16_t> dk(std::vector<uint16_t>(d, f32_to_f16(0.5f))), dv(std::vector<uint16_t>(d, f32_to_f16(0.25f)));
  test::DeviceBuffer<int64_t> ds(std::vector<int64_t>{int64_t(2) * f.page_size});  // the first slot of a third page, of two
  test::DeviceBuffer<int32_t> flag(std::vector<int32_t>{0});
  cuda::QuantizeStoreParams p;
  p.cache = codecs.view(0, cache.ptr, 2);
  p.k = dk.ptr, p.v = dv.ptr, p.slot_mapping = ds.ptr, p.num_tokens = 1, p.error_flag = flag.ptr;
  cuda::quantize_store(p, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(flag.download()[0], 2);
  EXPECT_EQ(cache.download(), std::vector<uint8_t>(cpu.bytes(), 0));
}

// Float caches refuse what their format turns into infinity, as the CPU does (store_float_row):
// fp16 beyond 65504, bf16 from about 3.3961e38; fp32 rows (the engine's) carry such values. The
// kernel stored them as inf, which attention then read.
TEST(QuantizeStoreErrors, FloatCachesFlagWhatTheyWouldStoreAsInfinity) {
  TQ_REQUIRE_GPU();
  const uint32_t d = 64;
  for (const auto& [spec, bad, fine] : {std::tuple{"fp16", 70000.0f, 65504.0f}, std::tuple{"bf16", 3.4e38f, 3.38e38f}}) {
    PagedKvCache cpu(CacheShape{1, 1, d, 1}, parse_kv_spec(spec).format);
    cuda::DeviceFormat codecs(cpu.format());
    test::DeviceBuffer<uint8_t> cache(cpu.bytes());
    for (const float x : {bad, fine}) {
      CUDA_OK(cudaMemset(cache.ptr, 0, cpu.bytes()));
      std::vector<float> k(d, 1.0f), v(d, 1.0f);
      v[9] = x;
      std::vector<float> host_k(k), host_v(v);
      bool cpu_refused = false;
      try {
        cpu.write(0, 2, host_k.data(), host_v.data());
      } catch (const Error&) {
        cpu_refused = true;
      }
      test::DeviceBuffer<float> dk(k), dv(v);
      test::DeviceBuffer<int64_t> ds(std::vector<int64_t>{2});
      test::DeviceBuffer<int32_t> flag(std::vector<int32_t>{0});
      cuda::QuantizeStoreParams p;
      p.cache = codecs.view(0, cache.ptr, 1);
      p.k = dk.ptr, p.v = dv.ptr, p.dtype = cuda::DType::kF32;
      p.slot_mapping = ds.ptr;
      p.num_tokens = 1;
      p.error_flag = flag.ptr;
      cuda::quantize_store(p, nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(flag.download()[0], x == bad ? 1 : 0) << spec << " " << x;
      EXPECT_EQ(cpu_refused, x == bad) << spec << " " << x;
      const auto got = cache.download();
      const BlockLayout& L = cpu.layout();
      bool v_written = false;
      for (uint32_t i = 0; i < L.v_row; ++i) v_written |= got[L.v_codes + 2 * L.v_row + i] != 0;
      EXPECT_EQ(v_written, x != bad) << spec << " " << x;
    }
  }
}

}  // namespace
}  // namespace tq
