#include "tq/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "tq/check.h"

namespace tq::engine {
namespace {

using Candidate = Sampler::Candidate;
constexpr float kInf = std::numeric_limits<float>::infinity();

// The argmax of a row (lowest id on ties), after refusing what no distribution comes from: a
// NaN or +inf logit, an empty row, a row where every token is masked (-inf).
size_t checked_argmax(std::span<const float> x) {
  TQ_CHECK(!x.empty(), "cannot sample from an empty row of logits");
  size_t best = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    TQ_CHECK(!std::isnan(x[i]) && x[i] != kInf, "logit at position {} is {}: cannot sample from non-finite logits", i, x[i]);
    if (x[i] > x[best]) best = i;
  }
  TQ_CHECK(x[best] > -kInf, "all {} logits are -inf: no token can be sampled", x.size());
  return best;
}

// More likely first; the lower id first among equals (this is the tie rule of every cut-off).
bool more_likely(const Candidate& a, const Candidate& b) { return a.w > b.w || (a.w == b.w && a.id < b.id); }

// The tokens that survive temperature, top-k, top-p and min-p, with their softmax weights
// (not normalized); returns the sum of the weights. kept: [tokens kept] in id order.
double filter(const SamplingParams& p, std::span<const float> x, std::vector<Candidate>& kept) {
  const size_t best = checked_argmax(x);
  kept.clear();
  if (p.greedy()) {
    kept.push_back({int(best), 1.0});
    return 1.0;
  }
  for (size_t i = 0; i < x.size(); ++i)
    if (x[i] > -kInf) kept.push_back({int(i), double(x[i])});  // w holds the logit until the softmax
  // top-k on the logits (the temperature does not change their order); a partial sort leaves
  // the k kept ones sorted, which is what top-p and min-p need.
  const bool top_k = p.top_k > 0 && size_t(p.top_k) < kept.size();
  if (top_k) {
    std::partial_sort(kept.begin(), kept.begin() + p.top_k, kept.end(), more_likely);
    kept.resize(size_t(p.top_k));
  } else if (p.top_p < 1.0f || p.min_p > 0.0f) {
    std::sort(kept.begin(), kept.end(), more_likely);
  }
  const double mx = double(x[best]), t = double(p.temperature);
  double total = 0;
  for (Candidate& c : kept) {
    c.w = std::exp((c.w - mx) / t);
    if (c.w < kMinSampleWeight) c.w = 0;  // kept (it still takes a top-k place), never drawn
    total += c.w;
  }
  if (p.top_p < 1.0f) {  // the smallest prefix whose probability reaches top_p
    double sum = 0;
    size_t n = 0;
    do sum += kept[n++].w;
    while (n < kept.size() && sum < double(p.top_p) * total);
    kept.resize(n);
    total = sum;
  }
  if (p.min_p > 0.0f) {  // the most likely token has weight exp(0) = 1: keep w >= min_p
    size_t n = 1;
    while (n < kept.size() && kept[n].w >= double(p.min_p)) ++n;
    kept.resize(n);
    total = 0;
    for (const Candidate& c : kept) total += c.w;
  }
  if (top_k || p.top_p < 1.0f || p.min_p > 0.0f)  // the draw walks the kept tokens in id order
    std::sort(kept.begin(), kept.end(), [](const Candidate& a, const Candidate& b) { return a.id < b.id; });
  return total;
}

}  // namespace

void SamplingParams::validate() const {
  const auto check = [](bool ok, const char* field, const std::string& what) {
    if (!ok) throw InvalidSampling(field, what);
  };
  check(std::isfinite(temperature) && temperature >= 0.0f, "temperature",
        fmt::format("temperature must be a finite number >= 0 (0: greedy), got {}", temperature));
  check(top_k >= 0, "top_k", fmt::format("top_k must be >= 0 (0: off), got {}", top_k));
  check(top_p > 0.0f && top_p <= 1.0f, "top_p", fmt::format("top_p must be in (0, 1] (1: off), got {}", top_p));  // NaN fails both
  check(min_p >= 0.0f && min_p <= 1.0f, "min_p", fmt::format("min_p must be in [0, 1] (0: off), got {}", min_p));
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) { p_.validate(); }

double Sampler::draw() {
  // From the top 53 bits: std::uniform_real_distribution is not the same on every standard
  // library, and a seed should give the same text everywhere.
  return p_.greedy() ? 0.0 : double(rng_() >> 11) * 0x1.0p-53;
}

int Sampler::sample(std::span<const float> logits, double u) {
  const double total = filter(p_, logits, kept_);
  if (p_.greedy()) return kept_[0].id;
  TQ_CHECK(u >= 0.0 && u < 1.0, "a sampling draw must be in [0, 1), got {}", u);
  double r = u * total;
  int last = kept_[0].id;  // rounding can leave r just above the last weight: the last token with w > 0
  for (const Candidate& c : kept_) {
    if (r < c.w) return c.id;
    r -= c.w;
    if (c.w > 0) last = c.id;
  }
  return last;
}

void Sampler::probabilities(std::span<const float> logits, std::vector<float>& p) const {
  std::vector<Candidate> kept;
  const double total = filter(p_, logits, kept);
  p.assign(logits.size(), 0.0f);
  for (const Candidate& c : kept) p[size_t(c.id)] = float(c.w / total);
}

TokenLogprobs token_logprobs(std::span<const float> logits, int token, int top) {
  TQ_CHECK(token >= 0 && size_t(token) < logits.size(), "token {} is outside the row of {} logits", token, logits.size());
  TQ_CHECK(top >= 0, "top must be >= 0, got {}", top);
  const float mx = logits[checked_argmax(logits)];
  double sum = 0;  // in double: 128K terms
  for (const float x : logits) sum += std::exp(double(x) - mx);
  const double lse = mx + std::log(sum);
  TokenLogprobs r;
  r.logprob = float(logits[size_t(token)] - lse);
  const size_t k = std::min(size_t(top), logits.size());
  if (k == 0) return r;
  std::vector<int> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int(i);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                    [&](int a, int b) { return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b); });
  for (size_t i = 0; i < k; ++i) r.top.emplace_back(ids[i], float(logits[size_t(ids[i])] - lse));
  return r;
}

}  // namespace tq::engine
