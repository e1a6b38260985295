// The online-softmax state shared by the CUDA kernels and the CPU attention
// (tq/kv/online_softmax.h): any way of cutting a row of scores into blocks and partial states,
// merged in any order, gives the one-pass softmax's max, sum and weights.
#include "tq/kv/online_softmax.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "tq/rng.h"

namespace tq {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kUlp = 0x1p-24;  // float's unit roundoff
const auto exp2_f = [](float x) { return std::exp2(x); };

// The one-pass reference in double: max, sum of 2^(s - max), weights 2^(s - max) / sum.
struct Reference {
  double m = -std::numeric_limits<double>::infinity(), d = 0;
  std::vector<double> w;
  explicit Reference(const std::vector<float>& s) : w(s.size(), 0.0) {
    for (float x : s) m = std::max(m, double(x));
    if (m == -std::numeric_limits<double>::infinity()) return;
    for (float x : s) d += std::exp2(double(x) - m);
    for (size_t i = 0; i < s.size(); ++i) w[i] = std::exp2(double(s[i]) - m) / d;
  }
};

// A partial state over scores [lo, hi) and the weights 2^(s - m) its output would hold for them
// (a stand-in for the kernels' output accumulators, rescaled with the same factors).
struct Part {
  SoftmaxState st;
  size_t lo = 0, hi = 0;
  std::vector<float> w;  // [hi - lo]
};

// Scores [lo, hi) in blocks of the given sizes, as a kernel loop takes its tiles.
Part run_blocks(const std::vector<float>& s, size_t lo, size_t hi, Rng& r, size_t max_block) {
  Part p;
  p.lo = lo;
  p.hi = hi;
  p.w.assign(hi - lo, 0.0f);
  for (size_t b0 = lo; b0 < hi;) {
    const size_t b1 = std::min(hi, b0 + 1 + size_t(r.next() % max_block));
    float bmax = -kInf;
    for (size_t i = b0; i < b1; ++i) bmax = std::fmax(bmax, s[i]);
    const SoftmaxState::Step step = p.st.update(bmax, exp2_f);
    for (size_t i = lo; i < b0; ++i) p.w[i - lo] *= step.scale;
    for (size_t i = b0; i < b1; ++i) {
      p.w[i - lo] = std::exp2(s[i] - step.base);
      p.st.add(p.w[i - lo]);
    }
    b0 = b1;
  }
  return p;
}

// Merges b into a (weights concatenated, rescaled by the merge's factors).
void merge_into(Part& a, const Part& b) {
  const SoftmaxState::MergeScales f = a.st.merge(b.st, exp2_f);
  std::vector<float> w(std::max(a.hi, b.hi) - std::min(a.lo, b.lo), 0.0f);
  const size_t lo = std::min(a.lo, b.lo);
  for (size_t i = a.lo; i < a.hi; ++i) w[i - lo] = a.w[i - a.lo] * f.self;
  for (size_t i = b.lo; i < b.hi; ++i) w[i - lo] = b.w[i - b.lo] * f.other;
  a.lo = lo;
  a.hi = std::max(a.hi, b.hi);
  a.w = std::move(w);
}

// Checks a merged state and its weights against the reference.
//
// Tolerance, in units of 2^-24: a weight 2^(s - m) / d goes through 2^x of a rounded difference
// (relative error ln 2 |x| 2^-24 for |x| = base - s) and rescales 2^(m_old - m_new) whose
// exponents add up to at most m - base (the same again), so 2 ln2 (m - s) for its numerator,
// plus one rounding per rescale (at most one per block and per merge: < n + parts). The sum d
// adds n such numerators: each term's error w_i 2 ln2 (m - s_i) is at most 2 ln 2 / (e ln 2) < 1
// of d (x 2^-x peaks at 1 / (e ln 2)), plus n roundings of the additions. A weight too small for
// a normal float (an exact weight below 2^-126) can be lost entirely: an absolute 2^-126.
void expect_matches(const std::vector<float>& s, const Part& got, const char* what) {
  const Reference ref(s);
  const size_t n = s.size();
  ASSERT_EQ(got.lo, 0u);
  ASSERT_EQ(got.hi, n);
  if (ref.d == 0) {  // nothing visible: m = -inf, d = 0, every weight 0 (not NaN)
    EXPECT_EQ(got.st.m, -kInf) << what;
    EXPECT_EQ(got.st.d, 0.0f) << what;
    EXPECT_EQ(got.st.inv_sum(), 0.0f) << what;
  } else {
    EXPECT_EQ(double(got.st.m), ref.m) << what;  // a max is exact
    const double tol_d = (3.0 * n + 8) * kUlp;
    EXPECT_NEAR(got.st.d, ref.d, tol_d * ref.d) << what;
  }
  const float inv = got.st.inv_sum();
  for (size_t i = 0; i < n; ++i) {
    const float w = got.w[i] * inv;
    ASSERT_FALSE(std::isnan(w)) << what << ": weight " << i;
    if (s[i] == -kInf) {
      EXPECT_EQ(w, 0.0f) << what << ": masked score " << i;
      continue;
    }
    const double rel = (2 * std::log(2.0) * (ref.m - double(s[i])) + 5.0 * n + 16) * kUlp;
    EXPECT_NEAR(w, ref.w[i], rel * ref.w[i] + 0x1p-126) << what << ": weight " << i << " score " << s[i];
  }
}

// Cuts [0, n) into `parts` pieces at random points, runs each in random blocks, merges them in a
// random order (each merge of two neighbours) and checks the result; also combines the pieces
// all at once against the max of all, as the kernels' epilogues and split merge do (weight,
// rescaled_sum).
void check_all_ways(const std::vector<float>& s, uint64_t seed, const char* what) {
  Rng r(seed);
  const size_t n = s.size();
  for (int trial = 0; trial < 24; ++trial) {
    const size_t parts = 1 + r.next() % std::min<size_t>(6, n);
    std::vector<size_t> cuts{0, n};
    while (cuts.size() < parts + 1) {
      const size_t c = 1 + r.next() % (n - 1 + (n == 1));
      if (std::find(cuts.begin(), cuts.end(), c) == cuts.end() && c < n) cuts.push_back(c);
      if (n == 1) break;
    }
    std::sort(cuts.begin(), cuts.end());
    std::vector<Part> ps;
    for (size_t k = 0; k + 1 < cuts.size(); ++k) ps.push_back(run_blocks(s, cuts[k], cuts[k + 1], r, 1 + trial % 17));

    // All at once against the max of all.
    float m_all = -kInf, d_all = 0.0f;
    for (const Part& p : ps) m_all = softmax_max(m_all, p.st.m);
    Part flat;
    flat.hi = n;
    flat.w.assign(n, 0.0f);
    for (const Part& p : ps) {
      d_all += SoftmaxState::rescaled_sum(p.st.m, p.st.d, m_all, exp2_f);
      const float f = SoftmaxState::weight(p.st.m, m_all, exp2_f);
      for (size_t i = p.lo; i < p.hi; ++i) flat.w[i] = p.w[i - p.lo] * f;
    }
    flat.st.m = m_all;
    flat.st.d = d_all;
    expect_matches(s, flat, what);

    // Pairwise, neighbours in a random order (either one absorbing the other).
    while (ps.size() > 1) {
      const size_t k = r.next() % (ps.size() - 1);
      if (r.next() & 1) {
        merge_into(ps[k], ps[k + 1]);
      } else {
        merge_into(ps[k + 1], ps[k]);
        ps[k] = std::move(ps[k + 1]);
      }
      ps.erase(ps.begin() + long(k) + 1);
    }
    expect_matches(s, ps[0], what);
  }
}

std::vector<float> random_scores(Rng& r, size_t n, double lo, double hi) {
  std::vector<float> s(n);
  for (float& x : s) x = float(lo + (hi - lo) * r.uniform());
  return s;
}

TEST(OnlineSoftmax, AnySplitAndOrderEqualsOnePass) {
  Rng r(1);
  for (size_t n : {1u, 2u, 3u, 16u, 97u, 257u}) {
    check_all_ways(random_scores(r, n, -8, 8), n, "scores in [-8, 8)");
    check_all_ways(random_scores(r, n, -60, 60), 100 + n, "scores in [-60, 60)");
  }
}

TEST(OnlineSoftmax, MaskedScoresAndAllMaskedBlocks) {
  Rng r(2);
  for (size_t n : {2u, 16u, 97u, 257u}) {
    auto s = random_scores(r, n, -20, 20);
    for (float& x : s)
      if (r.next() % 3 == 0) x = -kInf;  // scattered masks
    s[0] = -kInf;
    check_all_ways(s, 200 + n, "a third masked");
    // A masked run at the start and at the end: whole blocks and whole parts see nothing.
    for (size_t i = 0; i < n / 2; ++i) s[i] = -kInf;
    s[n - 1] = -kInf;
    check_all_ways(s, 300 + n, "masked halves");
    // Everything masked: m = -inf, d = 0, weights 0 everywhere, whatever the order.
    std::fill(s.begin(), s.end(), -kInf);
    check_all_ways(s, 400 + n, "all masked");
  }
}

TEST(OnlineSoftmax, HugeAndTinyScores) {
  Rng r(3);
  for (size_t n : {2u, 17u, 97u}) {
    auto s = random_scores(r, n, -1, 1);
    for (float& x : s) x *= 1e30f;  // differences overflow 2^x both ways: weights exactly 0 or 1
    check_all_ways(s, 500 + n, "scores of 1e30");
    s[n / 2] = std::numeric_limits<float>::max();
    s[0] = -std::numeric_limits<float>::max();  // s - m = -inf in float: weight 0, not NaN
    check_all_ways(s, 600 + n, "scores of float max");
    for (float& x : s) x = float(1e-40 * (r.uniform() - 0.5));  // denormals: all weights 1 / n
    check_all_ways(s, 700 + n, "denormal scores");
    s = random_scores(r, n, -400, 400);  // most weights underflow float, some denormal
    check_all_ways(s, 800 + n, "scores in [-400, 400)");
  }
}

// advance() is update() with the sum left for add_scaled(), which rescales it and adds a block's
// sum in one rounding: the same max and step as update(), and d * scale + p rounded once.
TEST(OnlineSoftmax, AdvanceThenAddScaledIsOneRounding) {
  SoftmaxState a, b;
  a.update(1.0f, exp2_f);
  a.add(1.0f + 0x1p-23f);
  b = a;
  const SoftmaxState::Step sa = a.update(2.5f, exp2_f), sb = b.advance(2.5f, exp2_f);
  EXPECT_EQ(sb.scale, sa.scale);
  EXPECT_EQ(sb.base, sa.base);
  EXPECT_EQ(b.m, a.m);
  EXPECT_EQ(b.d, 1.0f + 0x1p-23f);  // left as it was
  b.add_scaled(sb.scale, 0.5f);
  EXPECT_EQ(b.d, std::fma(1.0f + 0x1p-23f, sb.scale, 0.5f));
  // One rounding: (1 + 2^-12)^2 - 1 = 2^-11 + 2^-24 exactly, where rounding the product first
  // (1 + 2^-11 + 2^-24 is a tie, to even: 1 + 2^-11) would leave 2^-11.
  SoftmaxState c;
  c.d = 1.0f + 0x1p-12f;
  c.add_scaled(1.0f + 0x1p-12f, -1.0f);
  EXPECT_EQ(c.d, 0x1p-11f + 0x1p-24f);
}

TEST(OnlineSoftmax, StepAndMergeEdgeCases) {
  SoftmaxState st;
  // A first block with nothing visible: base 0, so 2^(-inf - base) = 0 and no NaN anywhere.
  SoftmaxState::Step step = st.update(-kInf, exp2_f);
  EXPECT_EQ(step.base, 0.0f);
  EXPECT_EQ(step.scale, 0.0f);
  EXPECT_EQ(st.m, -kInf);
  EXPECT_EQ(st.d, 0.0f);
  // Then a visible one: the old (empty) sum is scaled by 2^(-inf) = 0.
  step = st.update(3.0f, exp2_f);
  EXPECT_EQ(step.base, 3.0f);
  EXPECT_EQ(step.scale, 0.0f);
  st.add(1.0f);
  // A lower block leaves the max: scale 1.
  step = st.update(1.0f, exp2_f);
  EXPECT_EQ(step.scale, 1.0f);
  EXPECT_EQ(step.base, 3.0f);
  st.add(0.25f);
  EXPECT_EQ(st.d, 1.25f);
  // A higher one rescales by 2^(3 - 5).
  step = st.update(5.0f, exp2_f);
  EXPECT_EQ(step.scale, 0.25f);
  EXPECT_EQ(st.d, 1.25f * 0.25f);
  // Merging an empty state changes nothing; merging into an empty one copies.
  const SoftmaxState empty;
  SoftmaxState a = st;
  SoftmaxState::MergeScales f = a.merge(empty, exp2_f);
  EXPECT_EQ(f.self, 1.0f);
  EXPECT_EQ(f.other, 0.0f);
  EXPECT_EQ(a.m, st.m);
  EXPECT_EQ(a.d, st.d);
  SoftmaxState b;
  f = b.merge(st, exp2_f);
  EXPECT_EQ(f.self, 0.0f);
  EXPECT_EQ(f.other, 1.0f);
  EXPECT_EQ(b.m, st.m);
  EXPECT_EQ(b.d, st.d);
  SoftmaxState e1, e2;
  f = e1.merge(e2, exp2_f);
  EXPECT_EQ(f.self, 0.0f);
  EXPECT_EQ(f.other, 0.0f);
  EXPECT_EQ(e1.m, -kInf);
  EXPECT_EQ(e1.d, 0.0f);
  EXPECT_EQ(e1.inv_sum(), 0.0f);
  // The natural-log domain works alike with exp.
  SoftmaxState n;
  n.update(2.0f, [](float x) { return std::exp(x); });
  n.add(1.0f);
  const SoftmaxState::Step ns = n.update(3.0f, [](float x) { return std::exp(x); });
  EXPECT_FLOAT_EQ(ns.scale, std::exp(-1.0f));
  EXPECT_FLOAT_EQ(n.d, std::exp(-1.0f));
}

}  // namespace
}  // namespace tq
