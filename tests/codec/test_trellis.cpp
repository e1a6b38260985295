// Trellis-coded rows (TqConfig::tcq, format.h kTqTcq): the Viterbi encoder against an exhaustive
// search, the window decoder against Marcellin and Fischer's trellis walked state by state, and the
// codec's paths against each other.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "test_util.h"
#include "tq/check.h"
#include "tq/cpu_features.h"
#include "tq/codec/codebook.h"
#include "tq/codec/distortion.h"
#include "tq/codec/trellis.h"
#include "tq/codec/turboquant.h"
#include "tq/numeric.h"
#include "tq/rng.h"

namespace tq {
namespace {

// Marcellin and Fischer's 4-state trellis as their paper draws it, an independent reference for
// the format's window formula: from state s, branch t draws on subset kSubset[s][t] and leads to
// kNext[s][t]. Tail-biting: a row starts in the state its walk ends in.
constexpr uint32_t kSubset[4][2] = {{0, 2}, {1, 3}, {2, 0}, {3, 1}};
constexpr uint32_t kNext[4][2] = {{0, 1}, {2, 3}, {0, 1}, {2, 3}};

// The state a walk of the branch bits t(0..n) from state s ends in.
template <class Branch>
uint32_t walk_end(uint32_t s, size_t n, Branch t) {
  for (size_t i = 0; i < n; ++i) s = kNext[s][t(i)];
  return s;
}

// The tail-biting start of a row of branch bits: walked from any state until the walk ends where it
// began (after two walks at most: the end of a walk of two or more steps is its last two branches).
template <class Branch>
uint32_t tail_biting_start(size_t n, Branch t) {
  uint32_t s = 0;
  for (uint32_t e = walk_end(s, n, t); e != s; e = walk_end(s, n, t)) s = e;
  return s;
}

std::vector<float> walk(const std::vector<uint8_t>& codes, const std::vector<float>& levels, uint32_t bits) {
  std::vector<float> out(codes.size());
  const auto branch = [&](size_t i) { return uint32_t(codes[i]) >> (bits - 1); };
  uint32_t s = tail_biting_start(codes.size(), branch);
  for (size_t i = 0; i < codes.size(); ++i) {
    const uint32_t t = branch(i), j = codes[i] & ((1u << (bits - 1)) - 1);
    out[i] = levels[4 * j + kSubset[s][t]];
    s = kNext[s][t];
  }
  return out;
}

double sq_error(const float* y, const std::vector<float>& c) {
  double e = 0;
  for (size_t i = 0; i < c.size(); ++i) e += (double(y[i]) - c[i]) * (double(y[i]) - c[i]);
  return e;
}

// Random ascending levels (distinct), 2^(bits + 1) of them.
std::vector<float> random_levels(uint32_t bits, Rng& rng) {
  std::vector<float> l(2u << bits);
  for (float& v : l) v = float(rng.normal());
  std::sort(l.begin(), l.end());
  for (size_t i = 1; i < l.size(); ++i) l[i] = std::max(l[i], std::nextafter(l[i - 1], 1e9f));
  return l;
}

// n random codes of `bits` bits.
std::vector<uint8_t> random_codes(size_t n, uint32_t bits, Rng& rng) {
  std::vector<uint8_t> codes(n);
  for (uint8_t& c : codes) c = uint8_t(rng.next() % (1u << bits));
  return codes;
}

// The least squared error over every branch sequence of n coordinates: the branches fix each
// coordinate's subset (from the tail-biting start), and then each coordinate's best level is its
// subset's nearest.
double exhaustive(const float* y, uint32_t n, const std::vector<float>& levels) {
  double best = std::numeric_limits<double>::infinity();
  for (uint32_t path = 0; path < (1u << n); ++path) {
    uint32_t s = tail_biting_start(n, [&](size_t i) { return (path >> i) & 1u; });
    double e = 0;
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t t = (path >> i) & 1u, k = kSubset[s][t];
      double near = std::numeric_limits<double>::infinity();
      for (size_t m = k; m < levels.size(); m += 4) near = std::min(near, (double(y[i]) - levels[m]) * (double(y[i]) - levels[m]));
      e += near;
      s = kNext[s][t];
    }
    best = std::min(best, e);
  }
  return best;
}

TEST(Trellis, ViterbiFindsTheBestPathOfAnExhaustiveSearch) {
  Rng rng(5);
  for (uint32_t bits = 1; bits <= 4; ++bits)
    for (int trial = 0; trial < 60; ++trial) {
      const uint32_t n = trial < 4 ? 1 + trial : 11;  // rows of 1..4 coordinates too: the wrap's short cases
      const std::vector<float> levels = random_levels(bits, rng);
      float y[11];
      for (float& v : y) {
        // Hostile values among the random ones: far outside the levels, on a level, on a midpoint.
        const uint32_t kind = uint32_t(rng.next() % 6), m = uint32_t(rng.next() % (levels.size() - 1));
        v = kind == 0 ? 1e6f * (rng.next() % 2 ? 1 : -1)
            : kind == 1 ? levels[m]
            : kind == 2 ? 0.5f * (levels[m] + levels[m + 1])
                        : float(1.5 * rng.normal());
      }
      std::vector<uint8_t> codes(n);
      const double got = tcq_encode(y, n, levels.data(), bits, codes.data());
      const double want = exhaustive(y, n, levels);
      for (const uint8_t c : codes) ASSERT_LT(c, 1u << bits);
      const std::vector<float> dec = walk(codes, levels, bits);
      // The path's error in float sums (Viterbi) and in double (here): a few float roundings of the total.
      const double tol = 1e-6 * std::max(1.0, want) * n;
      EXPECT_NEAR(sq_error(y, dec), want, tol) << "bits " << bits << " trial " << trial;
      EXPECT_NEAR(got, want, tol) << "bits " << bits << " trial " << trial;
    }
}

// The AVX2 forward pass (widths 1..3) gives the scalar steps' codes and error bit for bit, on rows
// of random values with hostile ones among them: on a level, on a midpoint (a tie), zero; on the
// real unions and on random levels. One row in eight also has a value far outside (whose squared
// error overflows to +inf, and every path's cost with it), late in the row, so that most rows'
// searches stay finite and their ties and add-compare-selects are compared.
TEST(Trellis, TheSimdSearchIsTheScalarOne) {
  if (!cpu::has_avx2_fma()) GTEST_SKIP() << "no AVX2 on this CPU";
  Rng rng(31);
  for (uint32_t bits = 1; bits <= 3; ++bits)
    for (int trial = 0; trial < 300; ++trial) {
      const uint32_t n = trial % 3 == 0 ? 128 : 1 + uint32_t(rng.next() % 300);
      const std::vector<float> levels = trial % 2 ? random_levels(bits, rng) : tcq_codebook(128, bits).centroids;
      std::vector<float> y(n);
      for (float& v : y) {
        const uint32_t kind = uint32_t(rng.next() % 8), m = uint32_t(rng.next() % (levels.size() - 1));
        v = kind == 1 ? levels[m] : kind == 2 ? 0.5f * (levels[m] + levels[m + 1]) : kind == 3 ? 0.0f : float(0.2 * rng.normal());
      }
      if (trial % 8 == 7) y[n - 1 - n / 8] = 1e30f * (trial % 16 == 7 ? 1 : -1);
      std::vector<uint8_t> simd(n), scalar(n);
      const double e_simd = tcq_encode(y.data(), n, levels.data(), bits, simd.data());
      cpu::set_simd_enabled(false);
      const double e_scalar = tcq_encode(y.data(), n, levels.data(), bits, scalar.data());
      cpu::set_simd_enabled(true);
      ASSERT_EQ(simd, scalar) << bits << " bits, trial " << trial;
      ASSERT_EQ(e_simd, e_scalar) << bits << " bits, trial " << trial;
    }
}

TEST(Trellis, WindowDecodeEqualsTheWalk) {
  Rng rng(9);
  for (uint32_t bits = 1; bits <= 7; ++bits) {
    const std::vector<float> levels = random_levels(bits, rng);
    const std::vector<uint8_t> codes = random_codes(300, bits, rng);
    std::vector<float> out(codes.size());
    tcq_decode(codes.data(), uint32_t(codes.size()), levels.data(), bits, out.data());
    EXPECT_EQ(out, walk(codes, levels, bits)) << bits;
  }
}

// A row read group by group as plain (bits + 1)-bit codes of union indices (tcq_index_group, the
// carries from tcq_last_branch; into the first group, the last group's) gives tcq_decode's levels.
TEST(Trellis, GroupsReadAsPlainIndexCodes) {
  Rng rng(13);
  for (uint32_t bits = 1; bits <= 7; ++bits) {
    const std::vector<float> levels = random_levels(bits, rng);
    const std::vector<uint8_t> codes = random_codes(128, bits, rng);
    std::vector<uint32_t> words(4 * bits);
    pack_row(codes.data(), 128, bits, words.data());
    std::vector<float> want(128), got(128);
    tcq_decode(codes.data(), 128, levels.data(), bits, want.data());
    uint32_t t1 = tcq_last_branch(&words[3 * bits], bits, 0), t2 = tcq_last_branch(&words[3 * bits], bits, 1);
    for (uint32_t g = 0; g < 4; ++g) {
      uint32_t idx_words[8];
      uint8_t idx[32];
      tcq_index_group(&words[g * bits], bits, t1, t2, idx_words);
      unpack_group(idx_words, bits + 1, idx);
      for (uint32_t i = 0; i < 32; ++i) got[g * 32 + i] = levels[idx[i]];
      t1 = tcq_last_branch(&words[g * bits], bits, 0);
      t2 = tcq_last_branch(&words[g * bits], bits, 1);
      EXPECT_EQ(t1, uint32_t(codes[g * 32 + 31]) >> (bits - 1)) << bits;
      EXPECT_EQ(t2, uint32_t(codes[g * 32 + 30]) >> (bits - 1)) << bits;
    }
    EXPECT_EQ(got, want) << bits;
  }
}

// Readers of trellis codes an octet at a time (the GPU kernels' way; the CPU's AVX2 decode takes a
// group's four at once): format.h's tcq_octet_index on the octet's codes as selector nibbles, its
// carry from the octet before it by tcq_carry_into (the kernels' tcq_carry): in the same group or,
// for octet 0, in the group before (at the row's start, the row's last group: tcq_row_carry). From any first octet of either of two groups, that gives
// tcq_index_group's indices, on random and hostile words.
TEST(Trellis, OctetsReadAloneWithTheirCarries) {
  Rng rng(17);
  for (uint32_t bits = 1; bits <= 3; ++bits)
    for (int trial = 0; trial < 400; ++trial) {
      const uint32_t kind = uint32_t(trial % 5);
      uint32_t row[6];  // two groups of `bits` words
      for (uint32_t i = 0; i < 2 * bits; ++i)
        row[i] = kind == 0 ? 0u : kind == 1 ? ~0u : kind == 2 ? (i % 2 ? 0xaaaaaaaau : 0x55555555u) : uint32_t(rng.next());
      for (uint32_t g = 0; g < 2; ++g) {
        const uint32_t* group = row + g * bits;
        const uint32_t* before = row + (1 - g) * bits;  // the group before, around the row of two
        const uint32_t t1 = tcq_last_branch(before, bits, 0), t2 = tcq_last_branch(before, bits, 1);
        uint32_t want_words[4];
        uint8_t want[32], codes[32];
        tcq_index_group(group, bits, t1, t2, want_words);
        unpack_group(want_words, bits + 1, want);
        unpack_group(group, bits, codes);
        for (uint32_t og0 = 0; og0 < 4; ++og0) {
          uint32_t prev = tcq_carry_into(group, og0, g == 0, 2, bits);  // the branch word carried into octet og0
          if (g == 0 && og0 == 0) {
            EXPECT_EQ(prev, tcq_row_carry(row, 2, bits));
          }
          for (uint32_t o = og0; o < 4; ++o) {
            uint32_t sel = 0;
            for (uint32_t k = 0; k < 8; ++k) sel |= uint32_t(codes[8 * o + k]) << (4 * k);
            const uint32_t idx = tcq_octet_index(sel, bits, prev);
            for (uint32_t k = 0; k < 8; ++k)
              ASSERT_EQ((idx >> (4 * k)) & 15u, want[8 * o + k])
                  << bits << " bits, group " << g << ", from octet " << og0 << ", coordinate " << 8 * o + k << ", trial " << trial;
          }
        }
      }
    }
}

TEST(Trellis, RefusesWidthsAndLengthsOutsideItsRange) {
  const std::vector<float> levels(512, 0.0f);
  float y[4] = {};
  uint8_t c[4];
  EXPECT_THROW(tcq_encode(y, 4, levels.data(), 0, c), Error);
  EXPECT_THROW(tcq_encode(y, 4, levels.data(), 8, c), Error);
  std::vector<float> big(2000);
  std::vector<uint8_t> cb(2000);
  EXPECT_THROW(tcq_encode(big.data(), 2000, levels.data(), 2, cb.data()), Error);
  TqConfig cfg;
  cfg.tcq = true;
  cfg.bits = 8;
  EXPECT_THROW(TurboQuant{cfg}, Error);
  cfg.bits = 3;
  cfg.prod = true;
  EXPECT_THROW(TurboQuant{cfg}, Error);
  cfg.prod = false;
  cfg.split = true;
  EXPECT_THROW(TurboQuant{cfg}, Error);
}

// The union of a b-bit trellis row is the (b + 1)-bit codebook, its 4-bit one moved onto the
// 1/32 grid in z-units (the GPU's int8 operands) like the 2- and 3-bit codebooks.
TEST(Trellis, UnionCodebooks) {
  for (const uint32_t d : {64u, 128u, 256u}) {
    EXPECT_EQ(tcq_codebook(d, 1).centroids, codebook(d, 2).centroids);
    EXPECT_EQ(tcq_codebook(d, 2).centroids, codebook(d, 3).centroids);
    EXPECT_EQ(tcq_codebook(d, 4).centroids, codebook(d, 5).centroids);
    const Codebook& u = tcq_codebook(d, 3);
    const Codebook& c = codebook(d, 4);
    ASSERT_EQ(u.centroids.size(), 16u);
    const double z = std::sqrt(double(d));
    for (size_t j = 0; j < 16; ++j) {
      const double h = u.centroids[j] * z * kCentroidGrid;
      EXPECT_NEAR(h, std::nearbyint(h), 1e-3) << d << " " << j;
      EXPECT_LE(std::fabs(u.centroids[j] - c.centroids[j]) * z, 0.5 / kCentroidGrid + 1e-6) << d << " " << j;
      if (j) {
        EXPECT_FLOAT_EQ(u.boundaries[j - 1], 0.5f * (u.centroids[j - 1] + u.centroids[j]));
      }
    }
  }
  EXPECT_THROW(tcq_codebook(128, 8), Error);
  EXPECT_THROW(tcq_codebook(128, 0), Error);
}

TqConfig tcq_config(uint32_t dim, uint32_t bits) {
  TqConfig cfg;
  cfg.dim = dim;
  cfg.bits = bits;
  cfg.tcq = true;
  cfg.rotation = is_pow2(padded_dim(dim)) ? RotationKind::kHadamard : RotationKind::kDense;
  cfg.seed = 17;
  return cfg;
}

struct TcqRow {
  std::vector<uint32_t> codes;
  uint16_t norm = 0;
  explicit TcqRow(const TurboQuant& t) : codes(code_row_bytes(t.dim(), t.code_bits()) / 4) {}
  RowRef ref() { return {codes.data(), nullptr, &norm, nullptr}; }
  ConstRowRef cref() const { return {codes.data(), nullptr, &norm, nullptr}; }
};

// A row's codes are the trellis path of its rotated unit vector over the (bits + 1)-bit codebook,
// and every way of reading them (decode scalar and AVX2, dot, dot_fast, accumulate) agrees.
TEST(TrellisRows, CodecPathsAgree) {
  for (const uint32_t dim : {64u, 80u, 128u})
    for (uint32_t bits = 1; bits <= 7; ++bits) {
      const TurboQuant tq(tcq_config(dim, bits));
      ASSERT_EQ(tq.tensor_code().enc, Encoding::kTqTcq);
      ASSERT_EQ(&tq.codebook()->centroids, &tcq_codebook(tq.padded_dim(), bits).centroids);
      const uint32_t pd = tq.padded_dim();
      std::vector<float> x = test::outlier_rows(12, dim, 100 + bits);
      const std::vector<float> q = test::gaussian(3, dim, 200 + bits);
      std::fill(x.begin() + 11 * dim, x.end(), 0.0f);  // a zero row
      for (size_t r = 0; r < 12; ++r) {
        TcqRow row(tq);
        tq.encode(&x[r * dim], row.ref());
        // The codes are what the Viterbi search gives the rotated unit row.
        std::vector<float> y(pd, 0.0f);
        double nn = 0;
        for (uint32_t i = 0; i < dim; ++i) nn += double(x[r * dim + i]) * x[r * dim + i];
        const double norm = std::sqrt(nn);
        if (norm > 0)
          for (uint32_t i = 0; i < dim; ++i) y[i] = float(x[r * dim + i] / norm);
        tq.rotation().forward(y.data(), y.data());
        std::vector<uint8_t> want(pd), got(pd);
        tcq_encode(y.data(), pd, tq.codebook()->centroids.data(), bits, want.data());
        unpack_row(row.codes.data(), dim, bits, got.data());
        ASSERT_EQ(got, want) << dim << " " << bits << " " << r;
        EXPECT_EQ(row.norm, f32_to_f16(float(norm)));

        std::vector<float> rot(pd), acc(pd, 0.0f), scalar(pd);
        tq.decode_rotated(row.cref(), rot.data());
        EXPECT_EQ(rot, walk(want, tq.codebook()->centroids, bits));
        cpu::set_simd_enabled(false);  // the scalar decode (the AVX2 one above, where the CPU has it)
        tq.decode_rotated(row.cref(), scalar.data());
        cpu::set_simd_enabled(true);
        EXPECT_EQ(scalar, rot);
        tq.accumulate_rotated(row.cref(), 0.5f, acc.data());
        for (uint32_t i = 0; i < pd; ++i) EXPECT_EQ(acc[i], 0.5f * f16_to_f32(row.norm) * rot[i]);
        for (size_t k = 0; k < 3; ++k) {
          TurboQuant::Query pq;
          tq.prepare(&q[k * dim], pq);
          float ref = 0;  // the scalar reference's order: coordinate by coordinate
          for (uint32_t i = 0; i < pd; ++i) ref += pq.rot[i] * rot[i];
          EXPECT_EQ(tq.dot(pq, row.cref()), ref * f16_to_f32(row.norm));
          const float fast = tq.dot_fast(pq, row.cref());
          // dot_fast sums in 8 lanes: within a float summation error of the scalar order.
          double mag = 0;
          for (uint32_t i = 0; i < pd; ++i) mag += std::fabs(double(pq.rot[i]) * rot[i]);
          EXPECT_NEAR(fast, ref * f16_to_f32(row.norm), 4 * pd * 6e-8 * mag * f16_to_f32(row.norm) + 1e-30);
          // The engine scores a key tile's decoded rows (dot_decoded) or the rows themselves
          // (dot_fast, fused at 2 and 3 bits; at other widths it is dot_decoded): the same bits.
          if (tq.can_score_decoded() && (bits == 2 || bits == 3)) {
            EXPECT_EQ(fast, tq.dot_decoded(pq, rot.data(), row.cref())) << bits << " bits, d " << dim;
          }
        }
      }
    }
}

// Rows of any words (random, all ones, all zeros, alternating: patterns no encoder may write,
// every carry between octets and groups) read alike by the scalar decode and the AVX2 one, and
// scored alike by dot_fast (fused at 2 and 3 bits) and by dot_decoded over the decoded row.
TEST(TrellisRows, AnyWordsReadAlikeEveryWay) {
  Rng rng(23);
  for (const uint32_t dim : {64u, 128u, 256u})
    for (uint32_t bits = 1; bits <= 7; ++bits) {
      const TurboQuant tq(tcq_config(dim, bits));
      const uint32_t pd = tq.padded_dim();
      const std::vector<float> q = test::gaussian(1, dim, 300 + bits);
      TurboQuant::Query pq;
      tq.prepare(q.data(), pq);
      for (int r = 0; r < 12; ++r) {
        TcqRow row(tq);
        row.norm = f32_to_f16(1.5f);
        for (size_t i = 0; i < row.codes.size(); ++i)
          row.codes[i] = r == 0 ? 0u : r == 1 ? ~0u : r == 2 ? (i % 2 ? 0xaaaaaaaau : 0x55555555u) : uint32_t(rng.next());
        std::vector<float> simd(pd), scalar(pd);
        tq.decode_rotated(row.cref(), simd.data());
        cpu::set_simd_enabled(false);
        tq.decode_rotated(row.cref(), scalar.data());
        cpu::set_simd_enabled(true);
        ASSERT_EQ(simd, scalar) << bits << " bits, d " << dim << ", row " << r;
        if (tq.can_score_decoded() && (bits == 2 || bits == 3)) {  // the fused dot (other widths: dot_decoded itself)
          EXPECT_EQ(tq.dot_fast(pq, row.cref()), tq.dot_decoded(pq, simd.data(), row.cref())) << bits << " bits, d " << dim << ", row " << r;
        }
      }
    }
}

// Trellis coding beats the scalar codebook of the same bits (the point of it): on random unit rows
// at d = 128 the squared error is at least 0.5 dB lower at 1..4 bits (measured 0.2-1.4 dB: tq
// distortion --bits 1,1t,2,2t,3,3t,4,4t), and the unbiased norm keeps <x~, x> = ||x||^2.
TEST(TrellisRows, BeatTheScalarCodebookAndKeepTheUnbiasedNorm) {
  for (uint32_t bits = 2; bits <= 4; ++bits) {
    TqConfig scalar = tcq_config(128, bits);
    scalar.tcq = false;
    const DistortionStats s = measure_distortion(*make_turboquant(scalar), 3000, 3);
    const DistortionStats t = measure_distortion(*make_turboquant(tcq_config(128, bits)), 3000, 3);
    EXPECT_LT(t.mse, s.mse * std::pow(10.0, -0.05)) << bits;
  }
  TqConfig ip = tcq_config(128, 3);
  ip.norm_unbiased = true;
  const TurboQuant tq(ip);
  const std::vector<float> x = test::outlier_rows(20, 128, 77);
  for (size_t r = 0; r < 20; ++r) {
    TcqRow row(tq);
    tq.encode(&x[r * 128], row.ref());
    std::vector<float> dec(128);
    tq.decode(row.cref(), dec.data());
    double xx = 0, dx = 0;
    for (uint32_t i = 0; i < 128; ++i) {
      xx += double(x[r * 128 + i]) * x[r * 128 + i];
      dx += double(dec[i]) * x[r * 128 + i];
    }
    EXPECT_NEAR(dx / xx, 1.0, 2e-3) << r;  // the fp16 norm's rounding (2^-11) and the float decode
  }
}

// The tail-biting trellis leaves no bias in a row's first coordinates: started in state 0 (the
// format before 2026-12-05), a row's first coordinates came out off centre on average (state 0's
// subsets are lopsided), the same direction in every row, which attention over 10^5 rows did not
// average away. Over 6000 Gaussian rows of d = 128 (z-units: N(0, 1) coordinates against the union
// scaled by sqrt(d)), the mean error of each of coordinates 0..3 at 1t..3t stays within 4 standard
// errors of zero (its own rows' spread). Started in state 0 the same rows gave coordinate 0 -0.160
// z-units at 1t (16 standard errors; coordinate 1 +0.067, 7) and -0.029 at 2t (5.5).
TEST(TrellisRows, FirstCoordinatesAreUnbiased) {
  constexpr uint32_t d = 128, rows = 6000;
  Rng rng(41);
  for (uint32_t bits = 1; bits <= 3; ++bits) {
    const std::vector<float>& levels = tcq_codebook(d, bits).centroids;
    const double z = std::sqrt(double(d));
    double sum[4] = {}, sq[4] = {};
    std::vector<float> y(d), dec(d);
    std::vector<uint8_t> codes(d);
    for (uint32_t r = 0; r < rows; ++r) {
      for (float& v : y) v = float(rng.normal() / z);
      tcq_encode(y.data(), d, levels.data(), bits, codes.data());
      tcq_decode(codes.data(), d, levels.data(), bits, dec.data());
      for (int i = 0; i < 4; ++i) {
        const double e = (double(dec[i]) - y[i]) * z;
        sum[i] += e;
        sq[i] += e * e;
      }
    }
    for (int i = 0; i < 4; ++i) {
      const double mean = sum[i] / rows, se = std::sqrt((sq[i] / rows - mean * mean) / rows);
      EXPECT_LT(std::fabs(mean), 4 * se) << bits << "t, coordinate " << i << ": mean error " << mean << " z-units, standard error " << se;
    }
  }
}

}  // namespace
}  // namespace tq
