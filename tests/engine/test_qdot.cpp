// The quantized dot products of the CPU backend (backend/cpu/qdot.h) and the matrix product built
// on them, against exact values.
//
// Bounds. Codes: every activation element is within d/2 of d*q (round to nearest), so against the
// unquantized activations a dot may move by at most sum over blocks of d/2 * sum|w| (the activation
// quantization's own error). The reference sums exact integer block dots in double: against the
// exact value of sum w*d*q it is off by double rounding only. The fp32 kernels evaluate the same
// terms with one rounding per product and per addition: at most (terms + 10) * 2^-24 times the sum
// of the terms' magnitudes (the standard bound for recursive summation, with slack for the
// products, the int32 -> float conversion and the horizontal sum). A wrong code, scale, nibble or
// block moves the result by a whole term.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "model/quant_packers.h"
#include "qdot_avx2.h"
#include "qdot_avx512.h"
#include "tq/backend/cpu/matmul.h"
#include "tq/backend/cpu/qdot.h"
#include "tq/check.h"
#include "tq/cpu_features.h"
#include "tq/numeric.h"

namespace tq::cpu {
namespace {

using model::GgmlType;

constexpr GgmlType kTypes[] = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,  GgmlType::Q4_K,  GgmlType::Q5_K,
                               GgmlType::Q6_K, GgmlType::Q5_1, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::IQ4_NL, GgmlType::IQ4_XS};

size_t block_elems(GgmlType t) { return model::ggml_type_info(t).block_elems; }

// A hostile row: random bytes everywhere (any code, nibble, high bit and 6-bit scale), with finite
// fp16 scales of random sign spanning 2^-14 .. 2^4; `extreme` sets every code byte to 0xFF or 0x80.
std::vector<uint8_t> hostile_row(GgmlType t, size_t n, std::mt19937& rng, int extreme) {
  const auto& ti = model::ggml_type_info(t);
  std::vector<uint8_t> row(n / ti.block_elems * ti.block_bytes);
  for (auto& b : row) b = extreme == 0 ? uint8_t(rng()) : extreme == 1 ? 0xFF : 0x80;
  for (size_t b = 0; b < n / ti.block_elems; ++b)
    for (size_t at : model::ggml_scale_fields(t)) {
      const float v = std::ldexp(1.0f + float(rng() % 1024) / 1024.0f, int(rng() % 19) - 14) * (rng() % 2 ? 1.0f : -1.0f);
      const uint16_t h = f32_to_f16(v);
      row[b * ti.block_bytes + at] = uint8_t(h & 0xFF);
      row[b * ti.block_bytes + at + 1] = uint8_t(h >> 8);
    }
  return row;
}

// Activations of several kinds: normal, one large outlier per block, all equal (codes +-127),
// zeros, and tiny values.
std::vector<float> activations(size_t n, std::mt19937& rng, int kind) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) {
    switch (kind) {
      case 0: x[i] = nd(rng); break;
      case 1: x[i] = (i % 32 == 7) ? 1e4f * nd(rng) : nd(rng); break;
      case 2: x[i] = (i % 3 == 0) ? -3.5f : 3.5f; break;
      case 3: x[i] = 0.0f; break;
      default: x[i] = 1e-30f * nd(rng); break;
    }
  }
  return x;
}

struct Quantized {
  std::vector<uint8_t> bytes;
  std::vector<double> deq;    // d * q per element
  std::vector<double> scale;  // d of each element's block
};

Quantized quantize(GgmlType t, const std::vector<float>& x) {
  const ActFormat f = act_format(t);
  Quantized q;
  q.bytes.resize(act_row_bytes(f, x.size()));
  quantize_act_row(f, x.data(), x.size(), q.bytes.data());
  for (size_t i = 0; i < x.size(); ++i) {
    float d;
    int code;
    if (f == ActFormat::kQ8x32) {
      const auto& b = reinterpret_cast<const ActQ8x32*>(q.bytes.data())[i / 32];
      d = b.d, code = b.q[i % 32];
    } else {
      const auto& b = reinterpret_cast<const ActQ8x256*>(q.bytes.data())[i / 256];
      d = b.d, code = b.q[i % 256];
    }
    q.deq.push_back(double(d) * code);
    q.scale.push_back(d);
  }
  return q;
}

TEST(ActQuantization, CodesSumsAndRounding) {
  std::mt19937 rng(11);
  for (ActFormat f : {ActFormat::kQ8x32, ActFormat::kQ8x256})
    for (int kind = 0; kind < 5; ++kind) {
      const size_t n = 512;
      const std::vector<float> x = activations(n, rng, kind);
      std::vector<uint8_t> out(act_row_bytes(f, n));
      quantize_act_row(f, x.data(), n, out.data());
      const size_t be = f == ActFormat::kQ8x32 ? 32 : 256;
      for (size_t b = 0; b < n / be; ++b) {
        const float d = f == ActFormat::kQ8x32 ? reinterpret_cast<const ActQ8x32*>(out.data())[b].d
                                               : reinterpret_cast<const ActQ8x256*>(out.data())[b].d;
        const int8_t* q = f == ActFormat::kQ8x32 ? reinterpret_cast<const ActQ8x32*>(out.data())[b].q
                                                 : reinterpret_cast<const ActQ8x256*>(out.data())[b].q;
        float amax = 0;
        for (size_t j = 0; j < be; ++j) amax = std::max(amax, std::fabs(x[b * be + j]));
        EXPECT_FLOAT_EQ(d, amax / 127.0f);
        int sum = 0;
        for (size_t j = 0; j < be; ++j) {
          ASSERT_GE(q[j], -127);
          // |x - d q| <= d/2, plus the rounding of x * (127 / amax) (a few ulps of the code).
          ASSERT_LE(std::fabs(double(x[b * be + j]) - double(d) * q[j]), double(d) * (0.5 + 1e-5)) << "kind " << kind << " element " << j;
          sum += q[j];
        }
        if (f == ActFormat::kQ8x32) {
          EXPECT_EQ(reinterpret_cast<const ActQ8x32*>(out.data())[b].sum, sum);
        } else {
          for (size_t i = 0; i < 16; ++i) {
            int s = 0;
            for (size_t j = 0; j < 16; ++j) s += q[16 * i + j];
            EXPECT_EQ(reinterpret_cast<const ActQ8x256*>(out.data())[b].bsums[i], s);
          }
        }
      }
    }
}

TEST(ActQuantization, RefusesRowsThatAreNotWholeBlocks) {
  EXPECT_THROW(act_row_bytes(ActFormat::kQ8x32, 48), Error);
  EXPECT_THROW(act_row_bytes(ActFormat::kQ8x256, 512 + 32), Error);
}

class QuantizedDot : public ::testing::TestWithParam<GgmlType> {};

// The reference against values known exactly (test-side encoders), and against the unquantized
// activations within the activation quantization's bound.
TEST_P(QuantizedDot, ReferenceIsExactOnKnownBlocks) {
  const GgmlType t = GetParam();
  std::mt19937 rng(7);
  for (size_t blocks : {1, 2, 5})
    for (int kind = 0; kind < 5; ++kind) {
      const size_t n = blocks * block_elems(t);
      std::vector<float> w;
      const std::vector<uint8_t> row = model::testing::random_row(t, n, rng, w);
      const std::vector<float> x = activations(n, rng, kind);
      const Quantized a = quantize(t, x);
      double exact = 0, mag = 0, unq = 0, qbound = 0;
      for (size_t i = 0; i < n; ++i) {
        exact += double(w[i]) * a.deq[i];
        mag += std::fabs(double(w[i]) * a.deq[i]);
        unq += double(w[i]) * x[i];
        qbound += std::fabs(double(w[i])) * a.scale[i] * (0.5 + 1e-5);
      }
      const DotRef r = vec_dot_ref(t, row.data(), a.bytes.data(), n);
      EXPECT_NEAR(r.value, exact, 1e-12 * (mag + r.abs_sum)) << blocks << " blocks, activations " << kind;
      EXPECT_NEAR(r.value, unq, qbound + 1e-12 * (mag + r.abs_sum)) << blocks << " blocks, activations " << kind;
    }
}

// The kernel the CPU runs (AVX2 here) against the reference, on known and on hostile blocks.
TEST_P(QuantizedDot, KernelMatchesReference) {
  const GgmlType t = GetParam();
  if (!has_avx2_fma()) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU: PortableMatchesReference covers vec_dot";
  std::mt19937 rng(3);
  for (int rowkind = -1; rowkind < 3; ++rowkind)
    for (size_t blocks : {1, 2, 3, 8})
      for (int kind = 0; kind < 5; ++kind) {
        const size_t n = blocks * block_elems(t);
        std::vector<float> w;
        const std::vector<uint8_t> row = rowkind < 0 ? model::testing::random_row(t, n, rng, w) : hostile_row(t, n, rng, rowkind);
        const Quantized a = quantize(t, activations(n, rng, kind));
        const DotRef r = vec_dot_ref(t, row.data(), a.bytes.data(), n);
        const double terms = double(2 * blocks);  // at most two float terms per block
        const float got = vec_dot(t, row.data(), a.bytes.data(), n);
        EXPECT_NEAR(double(got), r.value, (terms + 10) * std::ldexp(1.0, -24) * r.abs_sum)
            << blocks << " blocks, row kind " << rowkind << ", activations " << kind;
      }
}

// The portable path (what runs without AVX2; forced here by the level cap, as TQ_SIMD=portable
// does) against the reference within the same bound, and the four-token product its row dots.
TEST_P(QuantizedDot, PortableMatchesReference) {
  const GgmlType t = GetParam();
  struct Restore {
    SimdLevel cap = simd_level();
    ~Restore() { set_simd_level(cap); }
  } restore;
  set_simd_level(SimdLevel::kPortable);
  ASSERT_FALSE(has_avx2_fma());
  std::mt19937 rng(3);
  for (int rowkind = -1; rowkind < 3; ++rowkind)
    for (size_t blocks : {1, 2, 3, 8})
      for (int kind = 0; kind < 5; ++kind) {
        const size_t n = blocks * block_elems(t);
        std::vector<float> w;
        const std::vector<uint8_t> row = rowkind < 0 ? model::testing::random_row(t, n, rng, w) : hostile_row(t, n, rng, rowkind);
        Quantized a[4];
        for (int j = 0; j < 4; ++j) a[j] = quantize(t, activations(n, rng, (kind + j) % 5));
        const void* ap[4] = {a[0].bytes.data(), a[1].bytes.data(), a[2].bytes.data(), a[3].bytes.data()};
        float four[4];
        vec_dot4(t, row.data(), ap, n, four);
        for (int j = 0; j < 4; ++j) {
          const DotRef r = vec_dot_ref(t, row.data(), ap[j], n);
          const float got = vec_dot(t, row.data(), ap[j], n);
          EXPECT_NEAR(double(got), r.value, (double(2 * blocks) + 10) * std::ldexp(1.0, -24) * r.abs_sum)
              << blocks << " blocks, row kind " << rowkind << ", activations " << (kind + j) % 5;
          ASSERT_EQ(four[j], got);
        }
      }
}

TEST_P(QuantizedDot, NonFiniteActivationGivesNaN) {
  const GgmlType t = GetParam();
  std::mt19937 rng(5);
  const size_t n = 2 * block_elems(t);
  std::vector<float> w;
  const std::vector<uint8_t> row = model::testing::random_row(t, n, rng, w);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> x = activations(n, rng, 0);
    x[n - 3] = bad;
    const Quantized a = quantize(t, x);
    EXPECT_TRUE(std::isnan(vec_dot(t, row.data(), a.bytes.data(), n)));
    EXPECT_TRUE(std::isnan(vec_dot_ref(t, row.data(), a.bytes.data(), n).value));
  }
}

// matmul over a weight matrix of R rows (not a multiple of the 16-row tile) and T tokens, on one
// and two threads: every output is bit for bit its row's one-token kernel dot, however many tokens
// share the pass (speculative verification relies on it).
TEST_P(QuantizedDot, MatmulIsTheRowDots) {
  const GgmlType t = GetParam();
  std::mt19937 rng(9);
  const size_t C = 2 * block_elems(t) * (t == GgmlType::Q8_0 ? 3 : 1), R = 37;
  std::vector<uint8_t> bytes;
  for (size_t r = 0; r < R; ++r) {
    const std::vector<uint8_t> row = hostile_row(t, C, rng, 0);
    bytes.insert(bytes.end(), row.begin(), row.end());
  }
  model::TensorRef w;
  w.name = "test.weight";
  w.type = t;
  w.data = bytes.data();
  w.n_rows = R;
  w.n_cols = C;
  for (size_t T : {1, 3, 4, 9})  // the 4-token kernel, with and without a tail
    for (unsigned threads : {1u, 2u}) {
      ThreadPool pool(threads);
      std::vector<float> x;
      for (size_t i = 0; i < T; ++i) {
        const std::vector<float> xi = activations(C, rng, int(i % 3));
        x.insert(x.end(), xi.begin(), xi.end());
      }
      std::vector<float> y(T * R, std::numeric_limits<float>::quiet_NaN());
      matmul(w, x.data(), T, y.data(), pool);
      for (size_t i = 0; i < T; ++i) {
        const Quantized a = quantize(t, std::vector<float>(x.begin() + long(i * C), x.begin() + long((i + 1) * C)));
        for (size_t r = 0; r < R; ++r)
          ASSERT_EQ(y[i * R + r], vec_dot(t, bytes.data() + r * w.row_bytes(), a.bytes.data(), C)) << "token " << i << " row " << r;
      }
    }
}

// The AVX-512 kernels against the AVX2 ones: the same bits, one token (512-bit, with and without
// VNNI) and four (VNNI on ymm, where the CPU has it), for block counts odd and even (the odd last
// block goes alone into the low half), on random and hostile rows and every kind of activation.
// The K-quants (one-token kernels only): Avx512KQuantsGiveTheAvx2Bits.
TEST_P(QuantizedDot, Avx512GivesTheAvx2Bits) {
  const GgmlType t = GetParam();
  if (hardware_simd_level() < SimdLevel::kAvx512) GTEST_SKIP() << "no AVX-512 F/BW/VL on this CPU";
  struct Kernels {
    float (*one)(const uint8_t*, const ActQ8x32*, size_t);
    float (*one_wide)(const uint8_t*, const ActQ8x32*, size_t, bool);
    void (*four)(const uint8_t*, const ActQ8x32* const*, size_t, float*);
    void (*four_vnni)(const uint8_t*, const ActQ8x32* const*, size_t, float*);
  };
  Kernels k{};
  switch (t) {
    case GgmlType::Q8_0: k = {detail::dot_q8_0_avx2, detail::dot_q8_0_avx512, detail::dot4_q8_0_avx2, detail::dot4_q8_0_avx512vnni}; break;
    case GgmlType::Q4_0: k = {detail::dot_q4_0_avx2, detail::dot_q4_0_avx512, detail::dot4_q4_0_avx2, detail::dot4_q4_0_avx512vnni}; break;
    case GgmlType::Q4_1: k = {detail::dot_q4_1_avx2, detail::dot_q4_1_avx512, detail::dot4_q4_1_avx2, detail::dot4_q4_1_avx512vnni}; break;
    case GgmlType::Q5_0: k = {detail::dot_q5_0_avx2, detail::dot_q5_0_avx512, detail::dot4_q5_0_avx2, detail::dot4_q5_0_avx512vnni}; break;
    case GgmlType::Q5_1: k = {detail::dot_q5_1_avx2, detail::dot_q5_1_avx512, detail::dot4_q5_1_avx2, detail::dot4_q5_1_avx512vnni}; break;
    case GgmlType::IQ4_NL: k = {detail::dot_iq4_nl_avx2, detail::dot_iq4_nl_avx512, detail::dot4_iq4_nl_avx2, detail::dot4_iq4_nl_avx512vnni}; break;
    default: GTEST_SKIP() << model::ggml_type_name(t) << ": no 32-element AVX-512 kernel (K-quants: Avx512KQuantsGiveTheAvx2Bits)";
  }
  const auto bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  std::mt19937 rng(17);
  for (bool vnni : {false, true}) {
    if (vnni && !has_avx512_vnni()) continue;
    for (int rowkind = -1; rowkind < 3; ++rowkind)
      for (size_t blocks : {1, 2, 3, 8, 9, 18})
        for (int kind = 0; kind < 5; ++kind) {
          const size_t n = blocks * 32;
          std::vector<float> w;
          const std::vector<uint8_t> row = rowkind < 0 ? model::testing::random_row(t, n, rng, w) : hostile_row(t, n, rng, rowkind);
          Quantized a[4];
          const ActQ8x32* ap[4];
          for (int j = 0; j < 4; ++j) {
            std::vector<float> x = activations(n, rng, (kind + j) % 5);
            if (kind == 4 && j == 3) x[n / 2] = std::numeric_limits<float>::quiet_NaN();
            a[j] = quantize(t, x);
            ap[j] = reinterpret_cast<const ActQ8x32*>(a[j].bytes.data());
          }
          float narrow[4], wide[4];
          k.four(row.data(), ap, blocks, narrow);
          if (vnni) k.four_vnni(row.data(), ap, blocks, wide);
          for (int j = 0; j < 4; ++j) {
            if (vnni) {
              ASSERT_EQ(bits(wide[j]), bits(narrow[j])) << "4 tokens, " << blocks << " blocks, row " << rowkind << ", token " << j;
            }
            ASSERT_EQ(bits(k.one_wide(row.data(), ap[j], blocks, vnni)), bits(k.one(row.data(), ap[j], blocks)))
                << "vnni " << vnni << ", " << blocks << " blocks, row kind " << rowkind << ", activations " << (kind + j) % 5;
          }
        }
  }
}

// The K-quants' AVX-512 kernels against the AVX2 ones: the same bits, with and without VNNI, on
// random and hostile rows (every code, fifth bit, 6-bit scale and min; q6_K's signed scales) and
// every kind of activation, NaN included; and the AVX2 four-token kernels (which AVX-512 CPUs run
// too) against the one-token ones.
TEST_P(QuantizedDot, Avx512KQuantsGiveTheAvx2Bits) {
  const GgmlType t = GetParam();
  if (hardware_simd_level() < SimdLevel::kAvx512) GTEST_SKIP() << "no AVX-512 F/BW/VL on this CPU";
  float (*narrow)(const uint8_t*, const ActQ8x256*, size_t) = nullptr;
  float (*wide)(const uint8_t*, const ActQ8x256*, size_t, bool) = nullptr;
  void (*four)(const uint8_t*, const ActQ8x256* const*, size_t, float*) = nullptr;
  switch (t) {
    case GgmlType::Q4_K: narrow = detail::dot_q4_K_avx2, wide = detail::dot_q4_K_avx512, four = detail::dot4_q4_K_avx2; break;
    case GgmlType::Q5_K: narrow = detail::dot_q5_K_avx2, wide = detail::dot_q5_K_avx512, four = detail::dot4_q5_K_avx2; break;
    case GgmlType::Q6_K: narrow = detail::dot_q6_K_avx2, wide = detail::dot_q6_K_avx512, four = detail::dot4_q6_K_avx2; break;
    case GgmlType::Q2_K: narrow = detail::dot_q2_K_avx2, wide = detail::dot_q2_K_avx512, four = detail::dot4_q2_K_avx2; break;
    case GgmlType::Q3_K: narrow = detail::dot_q3_K_avx2, wide = detail::dot_q3_K_avx512, four = detail::dot4_q3_K_avx2; break;
    default: GTEST_SKIP() << model::ggml_type_name(t) << ": no 256-element AVX-512 kernel (32-element types: Avx512GivesTheAvx2Bits)";
  }
  const auto bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  std::mt19937 rng(19);
  for (bool vnni : {false, true}) {
    if (vnni && !has_avx512_vnni()) continue;
    for (int rowkind = -1; rowkind < 3; ++rowkind)
      for (size_t blocks : {1, 2, 3, 8})
        for (int kind = 0; kind < 6; ++kind) {
          const size_t n = blocks * 256;
          std::vector<float> w;
          const std::vector<uint8_t> row = rowkind < 0 ? model::testing::random_row(t, n, rng, w) : hostile_row(t, n, rng, rowkind);
          Quantized a[4];
          const ActQ8x256* ap[4];
          for (int j = 0; j < 4; ++j) {
            std::vector<float> x = activations(n, rng, (kind + j) % 5);
            if (kind == 5 && j == 0) x[n - 5] = std::numeric_limits<float>::quiet_NaN();
            a[j] = quantize(t, x);
            ap[j] = reinterpret_cast<const ActQ8x256*>(a[j].bytes.data());
          }
          float four_out[4];
          four(row.data(), ap, blocks, four_out);
          for (int j = 0; j < 4; ++j) {
            const uint32_t one = bits(narrow(row.data(), ap[j], blocks));
            ASSERT_EQ(bits(wide(row.data(), ap[j], blocks, vnni)), one)
                << "vnni " << vnni << ", " << blocks << " blocks, row kind " << rowkind << ", activations " << kind << ", token " << j;
            ASSERT_EQ(bits(four_out[j]), one) << "4 tokens, " << blocks << " blocks, row kind " << rowkind << ", token " << j;
          }
        }
  }
}

// matmul_many (a layer's q, k, v in one parallel section) and matmul_swiglu (gate, up and SwiGLU
// in one) give matmul's bits: with rows counts that are not multiples of the tile, with a weight
// of another activation format (the one-after-the-other path), on one and two threads.
TEST_P(QuantizedDot, FusedProductsAreTheMatmuls) {
  const GgmlType t = GetParam();
  std::mt19937 rng(21);
  const size_t C = 256 * 2;
  const auto weight = [&](GgmlType type, size_t R, std::vector<uint8_t>& bytes) {
    for (size_t r = 0; r < R; ++r) {
      const std::vector<uint8_t> row = hostile_row(type, C, rng, 0);
      bytes.insert(bytes.end(), row.begin(), row.end());
    }
    model::TensorRef w;
    w.name = "test.weight";
    w.type = type;
    w.data = bytes.data();
    w.n_rows = R;
    w.n_cols = C;
    return w;
  };
  const GgmlType other = t == GgmlType::Q4_K ? GgmlType::Q8_0 : GgmlType::Q4_K;
  std::vector<uint8_t> b0, b1, b2, b3;
  const model::TensorRef wq = weight(t, 37, b0), wk = weight(t, 5, b1), wv = weight(t, 21, b2), wx = weight(other, 9, b3);
  for (size_t T : {1, 4, 6})
    for (unsigned threads : {1u, 2u}) {
      ThreadPool pool(threads);
      std::vector<float> x;
      for (size_t i = 0; i < T; ++i) {
        const std::vector<float> xi = activations(C, rng, int(i % 3));
        x.insert(x.end(), xi.begin(), xi.end());
      }
      for (bool mixed : {false, true}) {
        const model::TensorRef* ws[3] = {&wq, &wk, mixed ? &wx : &wv};
        std::vector<float> ys[3], want[3];
        float* yp[3];
        for (int i = 0; i < 3; ++i) {
          ys[i].assign(T * ws[i]->n_rows, -1.0f), want[i] = ys[i], yp[i] = ys[i].data();
          matmul(*ws[i], x.data(), T, want[i].data(), pool);
        }
        matmul_many(ws, x.data(), T, yp, pool);
        for (int i = 0; i < 3; ++i) ASSERT_EQ(ys[i], want[i]) << "weight " << i << ", " << T << " tokens, mixed " << mixed;
      }
      const model::TensorRef& up = wv;  // 21 rows: SwiGLU pairs rows of the same count
      const model::TensorRef gate = [&] {
        model::TensorRef g = wq;
        g.n_rows = up.n_rows;
        return g;
      }();
      std::vector<float> g(T * 21), u(T * 21), wg(T * 21), wu(T * 21);
      matmul(gate, x.data(), T, wg.data(), pool);
      matmul(up, x.data(), T, wu.data(), pool);
      for (size_t i = 0; i < wg.size(); ++i) wg[i] = wg[i] * (1.0f / (1.0f + std::exp(-wg[i]))) * wu[i];
      matmul_swiglu(gate, up, x.data(), T, g.data(), u.data(), pool);
      ASSERT_EQ(g, wg) << T << " tokens, " << threads << " threads";
    }
}

INSTANTIATE_TEST_SUITE_P(Types, QuantizedDot, ::testing::ValuesIn(kTypes),
                         [](const auto& info) { return std::string(model::ggml_type_name(info.param)); });

}  // namespace
}  // namespace tq::cpu

namespace tq::cpu {
namespace {

// The AVX2 activation quantizer against the scalar one: the same bytes (scale, codes, sums), for
// every kind of activation, NaN and infinity included.
TEST(ActQuantization, SimdGivesTheScalarBytes) {
  if (!has_avx2_fma()) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU: only the scalar quantizer runs";
  std::mt19937 rng(13);
  for (ActFormat f : {ActFormat::kQ8x32, ActFormat::kQ8x256})
    for (int kind = 0; kind < 7; ++kind) {
      std::vector<float> x = activations(1024, rng, kind % 5);
      if (kind == 5) x[300] = std::numeric_limits<float>::quiet_NaN();
      if (kind == 6) x[700] = -std::numeric_limits<float>::infinity();
      std::vector<uint8_t> fast(act_row_bytes(f, x.size())), slow(fast.size());
      quantize_act_row(f, x.data(), x.size(), fast.data());
      set_simd_enabled(false);
      quantize_act_row(f, x.data(), x.size(), slow.data());
      set_simd_enabled(true);
      EXPECT_EQ(fast, slow) << "kind " << kind;
    }
}

}  // namespace
}  // namespace tq::cpu
