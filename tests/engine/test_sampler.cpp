// Sampler: greedy is the argmax (lowest id on ties), the filters keep exactly the tokens their
// definitions say (hand-computed distributions), draws follow the filtered distribution
// (chi-square), bad logits and parameters are refused naming the value, a seed fixes the tokens.
#include "tq/engine/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "tq/common.h"

namespace tq::engine {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

int argmax(const std::vector<float>& x) { return int(std::max_element(x.begin(), x.end()) - x.begin()); }  // first max

// Rows with many ties: small integers.
std::vector<float> tied_row(std::mt19937_64& rng, size_t n) {
  std::vector<float> x(n);
  for (float& v : x) v = float(rng() % 5);
  return x;
}

std::vector<float> probabilities(const SamplingParams& p, const std::vector<float>& logits) {
  std::vector<float> out;
  Sampler(p).probabilities(logits, out);
  return out;
}

void expect_probs(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << "token " << i;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Sampler, GreedyIsTheArgmaxLowestIdOnTies) {
  Sampler s({});
  EXPECT_EQ(s.sample(std::vector<float>{1, 3, 3, 2}), 1);
  EXPECT_EQ(s.sample(std::vector<float>{-kInf, -5, -kInf, -5}), 1);
  EXPECT_EQ(s.sample(std::vector<float>{7}), 0);
  expect_probs(probabilities({}, {1, 3, 3, 2}), {0, 1, 0, 0});
  std::mt19937_64 rng(1);
  for (int i = 0; i < 200; ++i) {
    const std::vector<float> x = tied_row(rng, 1 + rng() % 40);
    EXPECT_EQ(s.sample(x), argmax(x));
  }
}

TEST(Sampler, TopK1IsGreedyAtAnyTemperature) {
  std::mt19937_64 rng(2);
  for (float t : {1e-3f, 0.5f, 1.0f, 10.0f, 1e6f}) {
    Sampler s({.temperature = t, .top_k = 1, .seed = 5});
    for (int i = 0; i < 100; ++i) {
      const std::vector<float> x = tied_row(rng, 2 + rng() % 40);
      EXPECT_EQ(s.sample(x), argmax(x)) << "temperature " << t;
    }
  }
}

// Probabilities 0.5, 0.25, 0.125, 0.125 at ids 1, 3, 0, 2: sorted (ties to the lower id) they are
// ids 1, 3, 0, 2 with cumulative sums 0.5, 0.75, 0.875, 1.
const std::vector<float> kQuarters = {std::log(0.125f), std::log(0.5f), std::log(0.125f), std::log(0.25f)};

TEST(Sampler, TopPKeepsTheSmallestPrefixReachingP) {
  const SamplingParams t1{.temperature = 1};
  expect_probs(probabilities(t1, kQuarters), {0.125, 0.5, 0.125, 0.25});  // unfiltered
  auto top_p = [&](float p) { return probabilities({.temperature = 1, .top_p = p}, kQuarters); };
  expect_probs(top_p(0.4f), {0, 1, 0, 0});                                   // 0.5 reaches 0.4
  expect_probs(top_p(0.6f), {0, 2 / 3.0, 0, 1 / 3.0});                       // 0.5 < 0.6 <= 0.75
  expect_probs(top_p(0.8f), {0.125 / 0.875, 0.5 / 0.875, 0, 0.25 / 0.875});  // id 0 before id 2 (tie)
  expect_probs(top_p(0.9f), {0.125, 0.5, 0.125, 0.25});                      // all four
  // Reaching p exactly ends the prefix (four equal logits: 0.25 each, exact in binary).
  const std::vector<float> flat = {0, 0, 0, 0};
  expect_probs(probabilities({.temperature = 1, .top_p = 0.5f}, flat), {0.5, 0.5, 0, 0});
  expect_probs(probabilities({.temperature = 1, .top_p = 0.75f}, flat), {1 / 3.0, 1 / 3.0, 1 / 3.0, 0});
}

TEST(Sampler, FiltersComeInOrderTemperatureTopKTopPMinP) {
  // Temperature first: twice the logits at temperature 2 are kQuarters' distribution, so top-p
  // 0.6 keeps two tokens (top-p before the temperature would see 0.73, 0.18, ... and keep one).
  std::vector<float> doubled = kQuarters;
  for (float& v : doubled) v *= 2;
  expect_probs(probabilities({.temperature = 2, .top_p = 0.6f}, doubled), {0, 2 / 3.0, 0, 1 / 3.0});
  // top-k before top-p: top-k 2 leaves 2/3, 1/3 and top-p 0.6 then keeps one token (top-p on the
  // unfiltered 0.5, 0.25, ... would keep two).
  expect_probs(probabilities({.temperature = 1, .top_k = 2}, kQuarters), {0, 2 / 3.0, 0, 1 / 3.0});
  expect_probs(probabilities({.temperature = 1, .top_k = 2, .top_p = 0.6f}, kQuarters), {0, 1, 0, 0});
  // top-k 3 at a tie keeps the lower id (0, not 2).
  expect_probs(probabilities({.temperature = 1, .top_k = 3}, kQuarters), {0.125 / 0.875, 0.5 / 0.875, 0, 0.25 / 0.875});
  // min-p 0.3: tokens at least 0.3 as likely as the top one (0.25 / 0.5 is, 0.125 / 0.5 is not).
  expect_probs(probabilities({.temperature = 1, .min_p = 0.3f}, kQuarters), {0, 2 / 3.0, 0, 1 / 3.0});
  // -inf logits are never kept.
  expect_probs(probabilities({.temperature = 1}, {0, -kInf, 0}), {0.5, 0, 0.5});
}

// The filtered distribution from the definitions, in double: softmax(logits / t), the k largest
// (lower id first on ties), renormalized, then the smallest prefix reaching top_p.
std::vector<double> reference(const std::vector<float>& logits, double t, size_t k, double top_p) {
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[size_t(a)] > logits[size_t(b)]; });
  order.resize(std::min(k, order.size()));
  std::vector<double> p(logits.size(), 0.0);
  double sum = 0;
  for (int i : order) sum += p[size_t(i)] = std::exp(double(logits[size_t(i)]) / t);
  double cum = 0;
  for (int i : order) {
    if (cum >= top_p) p[size_t(i)] = 0;  // the prefix already reached top_p
    cum += p[size_t(i)] / sum;
  }
  sum = std::accumulate(p.begin(), p.end(), 0.0);
  for (double& v : p) v /= sum;
  return p;
}

// Pearson's statistic of `counts` against `p` over the tokens with p > 0.
double chi_square(const std::vector<int>& counts, const std::vector<double>& p, int n) {
  double x2 = 0;
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i] > 0) x2 += (counts[i] - n * p[i]) * (counts[i] - n * p[i]) / (n * p[i]);
  return x2;
}

// 100000 draws at temperature 0.8, top-k 8, top-p 0.9 over 10 logits (in shuffled id order): the
// filters keep 5 tokens (cumulative 0.386, 0.593, 0.735, 0.846, 0.905). Pearson's statistic has 4
// degrees of freedom when the draws follow the distribution; 18.47 is its 0.999 quantile, so a
// correct sampler fails this bound for one seed in a thousand (the seed is fixed: the result is
// deterministic). The bound still has power: the same counts against the distribution of the
// wrong temperature (1) or without top-p are far above it, and a filtered token is never drawn.
TEST(Sampler, DrawsFollowTheFilteredDistribution) {
  const std::vector<float> logits = {0.3f, -1.0f, 2.0f, 1.0f, -3.0f, 1.5f, 0.0f, 1.2f, -0.5f, 0.5f};
  const SamplingParams p{.temperature = 0.8f, .top_k = 8, .top_p = 0.9f, .seed = 12345};
  const std::vector<double> want = reference(logits, 0.8, 8, 0.9);
  ASSERT_EQ(std::count_if(want.begin(), want.end(), [](double v) { return v > 0; }), 5);
  std::vector<float> got;
  Sampler(p).probabilities(logits, got);
  expect_probs(got, want);

  constexpr int kDraws = 100000;
  constexpr double kBound = 18.47;  // chi-square, 4 degrees of freedom, 0.999 quantile
  Sampler s(p);
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < kDraws; ++i) counts[size_t(s.sample(logits))] += 1;
  for (size_t i = 0; i < want.size(); ++i)
    if (want[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " was filtered out";
    }
  EXPECT_LT(chi_square(counts, want, kDraws), kBound);
  EXPECT_GT(chi_square(counts, reference(logits, 1.0, 8, 0.9), kDraws), 10 * kBound);  // the check can fail
  EXPECT_GT(chi_square(counts, reference(logits, 0.8, 8, 1.0), kDraws), 10 * kBound);
}

TEST(Sampler, RefusesNonFiniteLogitsNamingThePosition) {
  for (const SamplingParams& p : {SamplingParams{}, SamplingParams{.temperature = 1, .top_p = 0.9f}}) {
    Sampler s(p);
    EXPECT_NE(error_of([&] { s.sample(std::vector<float>{0, 1, kNaN, 2}); }).find("position 2 is nan"), std::string::npos);
    EXPECT_NE(error_of([&] { s.sample(std::vector<float>{kInf, 1}); }).find("position 0 is inf"), std::string::npos);
    std::vector<float> out;
    EXPECT_NE(error_of([&] { s.probabilities(std::vector<float>{0, 0, 0, kNaN}, out); }).find("position 3"), std::string::npos);
    EXPECT_NE(error_of([&] { s.sample(std::vector<float>{-kInf, -kInf}); }).find("all 2 logits are -inf"), std::string::npos);
    EXPECT_NE(error_of([&] { s.sample(std::vector<float>{}); }).find("empty"), std::string::npos);
  }
}

// token_logprobs against a long-double log_softmax on random rows (wide logits, many ties, -inf
// entries): each value within 2 float epsilons of its magnitude, the top tokens in order (ties
// to the lower id), and the probabilities of the whole row summing to 1.
TEST(TokenLogprobs, EqualALongDoubleLogSoftmax) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    const size_t n = 1 + rng() % 3000;
    std::vector<float> x = trial % 2 ? tied_row(rng, n) : std::vector<float>(n);
    if (trial % 2 == 0)
      for (float& v : x) v = float(std::normal_distribution<double>(0, trial % 4 == 0 ? 30.0 : 3.0)(rng));
    if (trial % 5 == 0)
      for (size_t i = 0; i < n; i += 3) x[i] = -kInf;
    if (std::all_of(x.begin(), x.end(), [](float v) { return v == -kInf; })) x[0] = 0;
    long double mx = -INFINITY, sum = 0;
    for (const float v : x) mx = std::max(mx, (long double)v);
    for (const float v : x) sum += std::exp((long double)v - mx);
    const long double lse = mx + std::log(sum);
    const int token = argmax(x), top = int(rng() % 8);
    const TokenLogprobs r = token_logprobs(x, token, top);
    const auto near = [&](float got, int id) {
      const long double want = (long double)x[size_t(id)] - lse;
      if (std::isinf(want)) {
        EXPECT_EQ(got, -kInf) << "trial " << trial << " id " << id;
        return;
      }
      // The float result of a double computation: half an ulp of itself, plus the double sum's error.
      EXPECT_NEAR(got, double(want), 2 * std::numeric_limits<float>::epsilon() * std::max(1.0, std::fabs(double(want))))
          << "trial " << trial << " id " << id;
    };
    near(r.logprob, token);
    ASSERT_EQ(r.top.size(), std::min(size_t(top), n));
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return x[size_t(a)] > x[size_t(b)]; });
    for (size_t i = 0; i < r.top.size(); ++i) {
      EXPECT_EQ(r.top[i].first, order[i]) << "trial " << trial << " rank " << i;
      near(r.top[i].second, r.top[i].first);
    }
    if (!r.top.empty()) {
      EXPECT_EQ(r.top[0].second, r.logprob);  // the argmax is the most likely
    }
    if (trial < 4) {  // the whole row's probabilities sum to 1 (O(n^2): a few rows)
      long double total = 0;
      for (size_t i = 0; i < n; ++i) total += std::exp((long double)token_logprobs(x, int(i), 0).logprob);
      EXPECT_NEAR(double(total), 1.0, 1e-6 * double(n)) << "trial " << trial;
    }
  }
  EXPECT_NE(error_of([] { token_logprobs(std::vector<float>{0, 1}, 2, 0); }).find("token 2"), std::string::npos);
  EXPECT_NE(error_of([] { token_logprobs(std::vector<float>{0, kNaN}, 0, 0); }).find("position 1 is nan"), std::string::npos);
}

TEST(Sampler, RefusesInvalidParametersNamingTheValue) {
  struct Case {
    SamplingParams p;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{.temperature = kNaN}, "temperature must be a finite number >= 0 (0: greedy), got nan"},
      {{.temperature = kInf}, "temperature must be a finite number >= 0 (0: greedy), got inf"},
      {{.temperature = -1}, "temperature must be a finite number >= 0 (0: greedy), got -1"},
      {{.top_k = -1}, "top_k must be >= 0 (0: off), got -1"},
      {{.top_p = 0}, "top_p must be in (0, 1] (1: off), got 0"},
      {{.top_p = 1.5f}, "top_p must be in (0, 1] (1: off), got 1.5"},
      {{.top_p = kNaN}, "top_p must be in (0, 1] (1: off), got nan"},
      {{.min_p = -0.25f}, "min_p must be in [0, 1] (0: off), got -0.25"},
      {{.min_p = 2}, "min_p must be in [0, 1] (0: off), got 2"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(error_of([&] { c.p.validate(); }), c.message);
    EXPECT_EQ(error_of([&] { Sampler s(c.p); }), c.message);
  }
  EXPECT_NO_THROW(SamplingParams({.temperature = 0.7f, .top_k = 40, .top_p = 1, .min_p = 1}).validate());
}

TEST(Sampler, SameSeedSameTokens) {
  const SamplingParams p{.temperature = 1.2f, .top_k = 50, .top_p = 0.95f, .seed = 7};
  std::mt19937_64 rng(3);
  std::vector<std::vector<float>> rows(500);  // [draws][64]
  for (auto& r : rows) {
    r.resize(64);
    for (float& v : r) v = float(rng() % 1000) / 250.0f;
  }
  Sampler a(p), b(p), other({.temperature = 1.2f, .top_k = 50, .top_p = 0.95f, .seed = 8});
  int differ = 0;
  for (const auto& r : rows) {
    const int t = a.sample(r);
    EXPECT_EQ(t, b.sample(r));
    differ += t != other.sample(r);
  }
  EXPECT_GT(differ, 100);  // another seed is another sequence (most draws have tens of candidates)
}

// The draw u picks where it falls in the kept tokens' cumulative probabilities in id order,
// whether or not a filter ranked them (the rule the GPU sampling kernel follows): kQuarters with
// top-k 4 (a filter that keeps all) has cumulative sums 0.125, 0.625, 0.75, 1 at ids 0..3.
TEST(Sampler, TheDrawWalksTheKeptTokensInIdOrder) {
  for (const SamplingParams& p : {SamplingParams{.temperature = 1}, SamplingParams{.temperature = 1, .top_k = 4}}) {
    Sampler s(p);
    const std::vector<std::pair<double, int>> picks = {{0.0, 0}, {0.1, 0}, {0.2, 1}, {0.63, 2}, {0.8, 3}, {std::nextafter(1.0, 0.0), 3}};
    for (const auto& [u, id] : picks) EXPECT_EQ(s.sample(kQuarters, u), id) << "u " << u << " top_k " << p.top_k;
    // top-p 0.6 keeps ids 1 and 3 (2/3, 1/3): still in id order.
    Sampler q({.temperature = 1, .top_p = 0.6f});
    EXPECT_EQ(q.sample(kQuarters, 0.6), 1);
    EXPECT_EQ(q.sample(kQuarters, 0.7), 3);
  }
  Sampler s({.temperature = 1});
  // A token below kMinSampleWeight of the top one (e^-30 < 2^-40) is never drawn, even at u -> 1.
  EXPECT_EQ(s.sample(std::vector<float>{0, -30}, std::nextafter(1.0, 0.0)), 0);
  EXPECT_EQ(s.sample(std::vector<float>{0, -27}, std::nextafter(1.0, 0.0)), 1);  // e^-27 > 2^-40: drawable
  expect_probs(probabilities({.temperature = 1}, {0, -30}), {1, 0});
  EXPECT_NE(error_of([&] { s.sample(kQuarters, 1.0); }).find("draw must be in [0, 1), got 1"), std::string::npos);
  EXPECT_NE(error_of([&] { s.sample(kQuarters, -0.5); }).find("got -0.5"), std::string::npos);
}

// Greedy samplers draw nothing; sampling ones one number a call, the one sample() uses.
TEST(Sampler, DrawIsTheNumberSampleUses) {
  Sampler greedy({.seed = 3});
  EXPECT_EQ(greedy.draw(), 0.0);
  const SamplingParams p{.temperature = 0.9f, .top_k = 20, .seed = 11};
  Sampler a(p), b(p);
  std::mt19937_64 rng(4);
  std::vector<float> row(100);
  for (int i = 0; i < 200; ++i) {
    for (float& v : row) v = float(rng() % 1000) / 200.0f;
    const double u = a.draw();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
    EXPECT_EQ(a.sample(row, u), b.sample(row));
  }
}

}  // namespace
}  // namespace tq::engine
