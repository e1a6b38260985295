// ggml block formats: geometry, exact dequantization of hand-built blocks, dot_rows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "quant_packers.h"
#include "tq/common.h"
#include "tq/model/ggml_quants.h"

namespace tq::model {
namespace {

using testing::random_row;

const GgmlType kDequantizable[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                                   GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

std::string type_param_name(const ::testing::TestParamInfo<GgmlType>& info) { return ggml_type_name(info.param); }

// ---- geometry: ggml-common.h sizes ----
struct Geometry {
  uint32_t id;
  const char* name;
  uint32_t block_elems, block_bytes;
};
class GgmlGeometry : public ::testing::TestWithParam<Geometry> {};

TEST_P(GgmlGeometry, MatchesGgml) {
  const Geometry g = GetParam();
  const GgmlTypeInfo* ti = ggml_type_info(g.id);
  ASSERT_NE(ti, nullptr);
  EXPECT_STREQ(ti->name, g.name);
  EXPECT_EQ(ti->block_elems, g.block_elems);
  EXPECT_EQ(ti->block_bytes, g.block_bytes);
  EXPECT_EQ(ggml_row_bytes(ti->type, 4 * g.block_elems), 4 * g.block_bytes);
}

INSTANTIATE_TEST_SUITE_P(Types, GgmlGeometry,
                         ::testing::Values(Geometry{0, "f32", 1, 4}, Geometry{1, "f16", 1, 2}, Geometry{2, "q4_0", 32, 18},
                                           Geometry{3, "q4_1", 32, 20}, Geometry{8, "q8_0", 32, 34},
                                           Geometry{12, "q4_K", 256, 144}, Geometry{13, "q5_K", 256, 176},
                                           Geometry{14, "q6_K", 256, 210}, Geometry{30, "bf16", 1, 2},
                                           Geometry{10, "q2_K", 256, 84}, Geometry{11, "q3_K", 256, 110},
                                           Geometry{6, "q5_0", 32, 22}, Geometry{23, "iq4_xs", 256, 136}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(GgmlGeometry, UnknownAndRemovedIds) {
  for (const uint32_t id : {4u, 5u, 31u, 32u, 33u, 36u, 39u, 99u, 0xffffffffu}) EXPECT_EQ(ggml_type_info(id), nullptr) << id;
}

TEST(GgmlGeometry, RowLengthMustBeWholeBlocks) {
  EXPECT_THROW(ggml_row_bytes(GgmlType::Q4_K, 128), Error);
  EXPECT_THROW(ggml_row_bytes(GgmlType::Q8_0, 33), Error);
  EXPECT_EQ(ggml_row_bytes(GgmlType::F16, 3), 6u);
}

// ---- exact dequantization of random blocks built by the test encoders ----
class Dequant : public ::testing::TestWithParam<GgmlType> {};

TEST_P(Dequant, ExactValues) {
  std::mt19937 rng(1234);
  for (int rep = 0; rep < 20; ++rep) {
    std::vector<float> expected;
    const auto bytes = random_row(GetParam(), 512, rng, expected);
    ASSERT_EQ(bytes.size(), ggml_row_bytes(GetParam(), 512));
    std::vector<float> got(512);
    dequantize_row(GetParam(), bytes.data(), got.data(), got.size());
    for (size_t i = 0; i < 512; ++i) ASSERT_EQ(got[i], expected[i]) << "element " << i << " rep " << rep;
  }
}

TEST_P(Dequant, UnalignedSource) {  // blocks are read byte-wise: any address works
  std::mt19937 rng(7);
  std::vector<float> expected;
  const auto bytes = random_row(GetParam(), 256, rng, expected);
  std::vector<uint8_t> shifted(bytes.size() + 1);
  std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
  std::vector<float> got(256);
  dequantize_row(GetParam(), shifted.data() + 1, got.data(), 256);
  EXPECT_EQ(got, expected);
}

// dot_rows == dequantize-then-dot (double reference).
TEST_P(Dequant, DotRowsMatchesDequantizedDot) {
  const GgmlType t = GetParam();
  std::mt19937 rng(99);
  const size_t n_rows = 64, n_cols = 2048;
  std::vector<uint8_t> w;                   // [n_rows][row bytes]
  std::vector<float> wf;                    // [n_rows][n_cols]
  for (size_t r = 0; r < n_rows; ++r) {
    const auto row = random_row(t, n_cols, rng, wf);
    w.insert(w.end(), row.begin(), row.end());
  }
  std::vector<float> x(n_cols);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& v : x) v = u(rng);
  std::vector<float> y1(n_rows);
  dot_rows(t, w.data(), n_rows, n_cols, x.data(), y1.data());
  for (size_t r = 0; r < n_rows; ++r) {
    double ref = 0.0, mag = 0.0;
    for (size_t c = 0; c < n_cols; ++c) {
      ref += double(wf[r * n_cols + c]) * double(x[c]);
      mag += std::fabs(double(wf[r * n_cols + c]) * double(x[c]));
    }
    EXPECT_NEAR(y1[r], ref, 1e-5 * mag + 1e-6) << "row " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Types, Dequant, ::testing::ValuesIn(kDequantizable), type_param_name);

// ---- golden blocks: bytes set by hand, values worked out from ggml's definitions ----
std::vector<float> deq(GgmlType t, const std::vector<uint8_t>& b) {
  std::vector<float> y(ggml_type_info(t).block_elems * b.size() / ggml_type_info(t).block_bytes);
  dequantize_row(t, b.data(), y.data(), y.size());
  return y;
}

TEST(GoldenBlock, PlainTypes) {
  EXPECT_EQ(deq(GgmlType::F16, {0x00, 0x3C, 0x00, 0xC0}), (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(deq(GgmlType::BF16, {0x80, 0x3F, 0x40, 0xC0}), (std::vector<float>{1.0f, -3.0f}));
}

TEST(GoldenBlock, Q8_0) {
  std::vector<uint8_t> b(34, 0);
  b[0] = 0x00, b[1] = 0x34;  // d = 0.25
  b[2 + 5] = 0x80;           // q[5] = -128
  b[2 + 31] = 0x7f;          // q[31] = 127
  const auto y = deq(GgmlType::Q8_0, b);
  EXPECT_EQ(y[5], -32.0f);
  EXPECT_EQ(y[31], 31.75f);
  EXPECT_EQ(y[0], 0.0f);
}

TEST(GoldenBlock, Q4_0AndQ4_1) {
  std::vector<uint8_t> b(18, 0x88);  // all codes 8 -> 0
  b[0] = 0x00, b[1] = 0x38;          // d = 0.5
  b[2] = 0x1F;                       // element 0: 15, element 16: 1
  auto y = deq(GgmlType::Q4_0, b);
  EXPECT_EQ(y[0], 3.5f);
  EXPECT_EQ(y[16], -3.5f);
  EXPECT_EQ(y[1], 0.0f);
  std::vector<uint8_t> c(20, 0);
  c[0] = 0x00, c[1] = 0x38;  // d = 0.5
  c[2] = 0x00, c[3] = 0xBC;  // m = -1
  c[4] = 0x1F;
  y = deq(GgmlType::Q4_1, c);
  EXPECT_EQ(y[0], 6.5f);
  EXPECT_EQ(y[16], -0.5f);
  EXPECT_EQ(y[1], -1.0f);
}

TEST(GoldenBlock, Q4_K) {
  std::vector<uint8_t> b(144, 0);
  b[0] = 0x00, b[1] = 0x3C;  // d = 1
  b[2] = 0x00, b[3] = 0x3C;  // dmin = 1
  uint8_t* sc = b.data() + 4;
  sc[1] = 0x80 | 5;  // sub-block 1: scale 5; top bits 0b10 -> high bits of sub-block 5's scale
  sc[9] = 0x37;      // sub-block 5: scale low nibble 7, min low nibble 3
  sc[4] = 2;         // sub-block 0: min 2
  uint8_t* qs = b.data() + 16;
  qs[64 + 3] = 0xA0;  // group 2, l = 3, high nibble 10 -> element 128 + 32 + 3 = 163 (sub-block 5)
  qs[32 + 1] = 0x04;  // group 1, l = 1, low nibble 4 -> element 65 (sub-block 2: scale 0)
  qs[1] = 0x30;       // group 0, high nibble 3 -> element 33 (sub-block 1)
  const auto y = deq(GgmlType::Q4_K, b);
  EXPECT_EQ(y[163], 39.0f * 10.0f - 3.0f);  // scale (7 | 2 << 4) = 39, min 3
  EXPECT_EQ(y[160], -3.0f);
  EXPECT_EQ(y[33], 15.0f);  // 5 * 3 - 0
  EXPECT_EQ(y[0], -2.0f);   // 0 * q - 2
  EXPECT_EQ(y[65], 0.0f);
}

TEST(GoldenBlock, Q5_K) {
  std::vector<uint8_t> b(176, 0);
  b[0] = 0x00, b[1] = 0x3C;  // d = 1, dmin = 0
  b[4 + 2] = 4;              // sub-block 2 (elements 64..95) scale 4
  b[16 + 6] = 0x04;          // qh[6] bit 2: 5th bit of element 64 + 6
  b[48 + 32 + 6] = 0x03;     // qs group 1, l = 6, low nibble 3
  const auto y = deq(GgmlType::Q5_K, b);
  EXPECT_EQ(y[70], 4.0f * 19.0f);
  EXPECT_EQ(y[71], 0.0f);
}

TEST(GoldenBlock, Q6_K) {
  std::vector<uint8_t> b(210, 0);
  b[208] = 0x00, b[209] = 0x3C;  // d = 1
  b[192 + 5] = 0xFD;             // scale 5 (elements 80..95) = -3
  b[17] = 0x90;                  // ql[17] high nibble 9: element 64 + 17 = 81
  b[128 + 17] = 0x20;            // qh[17] bits 4-5 = 2: element 81 high bits
  const auto y = deq(GgmlType::Q6_K, b);
  EXPECT_EQ(y[81], -3.0f * float((9 | (2 << 4)) - 32));
  EXPECT_EQ(y[80], -3.0f * -32.0f);
  EXPECT_EQ(y[17], 0.0f);  // scale 1 = 0
}

TEST(Dequant, ErrorsNameTheProblem) {
  std::vector<uint8_t> b(64, 0);
  float y[64];
  try {
    dequantize_row(GgmlType::IQ3_S, b.data(), y, 256);  // (refused before anything is read)
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("iq3_s"), std::string::npos) << e.what();
  }
  EXPECT_THROW(dequantize_row(GgmlType::Q8_0, b.data(), y, 31), Error);
  EXPECT_THROW(dot_rows(GgmlType::IQ2_XXS, b.data(), 1, 256, y, y), Error);
}

}  // namespace
}  // namespace tq::model
