// The key centre (KV spec knob `centre`, docs/kv-specs.md): calibration, the invariance of
// attention to it on float caches, and what it buys TurboQuant keys that carry a shared offset.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "engine/stories.h"
#include "model/tiny_models.h"
#include "tq/backend/cpu/kv_store.h"
#include "tq/backend/cpu/runner.h"
#include "tq/engine/engine.h"
#include "tq/engine/key_centre.h"
#include "tq/kv/block_manager.h"

namespace tq::cpu {
namespace {

constexpr double kU32 = 0x1p-24;  // unit roundoff of fp32
constexpr double kU16 = 0x1p-11;  // unit roundoff of fp16

// The mean of rows [first, first + n) of x ([rows][H][D]) per KV head: [H][D]. A centre for the
// store-level tests (the runners give the store model::rope_centre's, tested below).
std::vector<float> row_mean(const std::vector<float>& x, uint32_t first, uint32_t n, uint32_t H, uint32_t D) {
  std::vector<double> sum(size_t(H) * D, 0.0);
  for (uint32_t t = first; t < first + n; ++t)
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += x[size_t(t) * H * D + i];
  std::vector<float> mean(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) mean[i] = float(sum[i] / n);
  return mean;
}

// One sequence of `len` tokens written to every layer of a store of `spec`, after calibrating on
// the first `calib` rows with the mean of rows 1..calib-1 as the key centre (as the CPU runner
// does with its first step). Keys are mu_h + noise with a per-head offset mu_h of scale `offset`
// per channel; values N(0, 1).
struct CentredStore {
  static constexpr uint32_t L = 3, H = 2, QH = 4, D = 64;
  KvShape shape;
  KvStore store;
  BlockManager blocks;
  int seq;
  std::vector<float> k, v;  // [len][H][D]
  std::vector<float> centre;  // [H][D] what calibrate was given
  float vmax = 0;

  CentredStore(const std::string& spec, uint32_t len, uint32_t calib, float offset, uint32_t seed)
      : shape{.layers = L, .kv_heads = H, .head_dim = D, .num_pages = len / 4 + 2, .max_chunk = 64},
        store(shape, parse_kv_spec(spec)),
        blocks(shape.num_pages, store.page_size()),
        seq(blocks.add_sequence()),
        k(size_t(len) * H * D),
        v(k.size()) {
    store.add_sequence(seq);
    blocks.reserve({{seq, len}});
    std::mt19937 rng(seed);
    std::normal_distribution<float> n01;
    std::vector<float> mu(size_t(H) * D);
    for (float& m : mu) m = offset * n01(rng);
    for (uint32_t t = 0; t < len; ++t)
      for (size_t i = 0; i < size_t(H) * D; ++i) {
        k[t * H * D + i] = mu[i] + n01(rng);
        v[t * H * D + i] = n01(rng);
        vmax = std::max(vmax, std::abs(v[t * H * D + i]));
      }
    std::vector<uint32_t> pos(calib);
    for (uint32_t t = 0; t < calib; ++t) pos[t] = t;
    centre = row_mean(k, 1, calib - 1, H, D);
    const SeqPages s = pages();
    for (uint32_t l = 0; l < L; ++l) {
      store.calibrate(l, calib, pos.data(), k.data(), v.data(), centre.data());
      for (uint32_t t = 0; t < len; ++t) store.write(l, s, t, &k[t * H * D], &v[t * H * D]);
    }
  }
  SeqPages pages() const { return SeqPages{seq, &blocks.block_table(seq)}; }
};

TEST(KeyCentre, TheGivenCentreIsFixedOnceAndRequired) {
  const uint32_t D = CentredStore::D, H = CentredStore::H;
  CentredStore f("k3v2:centre", 40, 10, 3.0f, 1);
  for (uint32_t l = 0; l < CentredStore::L; ++l)
    for (uint32_t h = 0; h < H; ++h) {
      const std::span<const float> mu = f.store.key_centre(l, h);
      ASSERT_EQ(mu.size(), D);
      for (uint32_t i = 0; i < D; ++i) EXPECT_EQ(mu[i], f.centre[h * D + i]) << "layer " << l << " head " << h << " channel " << i;
    }
  // Fixed for the store's life: a second call (another step's rows and centre) changes nothing.
  const std::vector<float> before(f.store.key_centre(1, 0).begin(), f.store.key_centre(1, 0).end());
  std::vector<uint32_t> pos{5, 6};
  std::vector<float> other(size_t(2) * H * D, 100.0f);
  f.store.calibrate(1, 2, pos.data(), other.data(), other.data(), other.data());
  EXPECT_EQ(std::vector<float>(f.store.key_centre(1, 0).begin(), f.store.key_centre(1, 0).end()), before);
  EXPECT_EQ(f.store.centre_bytes(), size_t(CentredStore::L) * H * D * sizeof(float));

  // Without the knob: no centre, and one given is ignored. With it, a calibration without one is
  // refused by layer, fixing nothing.
  KvShape shape{.layers = 2, .kv_heads = H, .head_dim = D, .num_pages = 4, .max_chunk = 64};
  KvStore plain(shape, parse_kv_spec("k3v2"));
  plain.calibrate(0, 2, pos.data(), other.data(), other.data(), other.data());
  EXPECT_TRUE(plain.key_centre(0, 0).empty());
  EXPECT_EQ(plain.centre_bytes(), 0u);
  KvStore first(shape, parse_kv_spec("fp16:centre"));
  try {
    first.calibrate(0, 2, pos.data(), f.k.data(), f.v.data());
    FAIL() << "a centred spec calibrated without its centre";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 0"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(first.fixed(0));
  // A layer written before any calibration keeps a zero centre (its rows are stored uncentred).
  BlockManager blocks(shape.num_pages, first.page_size());
  const int seq = blocks.add_sequence();
  first.add_sequence(seq);
  blocks.reserve({{seq, 1}});
  first.write(1, SeqPages{seq, &blocks.block_table(seq)}, 0, f.k.data(), f.v.data());
  first.calibrate(1, 2, pos.data(), f.k.data(), f.v.data(), f.centre.data());
  EXPECT_EQ(first.key_centre(1, 0)[0], 0.0f);
  EXPECT_THROW(first.key_centre(2, 0), Error);
}

// A non-finite centre (from a non-finite key in the first rows) would make every later key
// non-finite: refused by name, and nothing is fixed, so a finite one calibrates the layer afterwards.
TEST(KeyCentre, NonFiniteCentreIsRefused) {
  const uint32_t D = 16;
  KvShape shape{.layers = 1, .kv_heads = 1, .head_dim = D, .num_pages = 2, .max_chunk = 8};
  KvStore store(shape, parse_kv_spec("k3v2:centre"));
  std::vector<float> k(size_t(2) * D, 1.0f), v(k.size(), 0.0f), centre(D, 1.0f);
  centre[5] = std::numeric_limits<float>::infinity();
  const uint32_t pos[2] = {1, 2};
  try {
    store.calibrate(0, 2, pos, k.data(), v.data(), centre.data());
    FAIL() << "accepted an infinite centre";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("channel 5 is inf"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(store.fixed(0));
  centre[5] = 2.0f;
  store.calibrate(0, 2, pos, k.data(), v.data(), centre.data());
  EXPECT_EQ(store.key_centre(0, 0)[5], 2.0f);
}

// Fractional widths choose their outlier channels on the keys as stored, less the centre: a
// channel with a large constant offset is not an outlier once the offset is gone.
TEST(KeyCentre, OutlierChannelsAreChosenOnCentredKeys) {
  const uint32_t D = 64, n = 12;
  KvShape shape{.layers = 1, .kv_heads = 1, .head_dim = D, .num_pages = 2, .max_chunk = 64};
  std::mt19937 rng(5);
  std::normal_distribution<float> n01;
  std::vector<float> k(size_t(n) * D), v(k.size());
  std::vector<uint32_t> pos(n);
  for (uint32_t r = 0; r < n; ++r) {
    pos[r] = r;
    for (uint32_t i = 0; i < D; ++i) {
      // channels 0..31: a constant 40 and little spread; 32..63: no offset, spread 10
      k[r * D + i] = i < 32 ? 40.0f + 0.1f * n01(rng) : 10.0f * n01(rng);
      v[r * D + i] = n01(rng);
    }
  }
  KvStore plain(shape, parse_kv_spec("k2.5v2")), centred(shape, parse_kv_spec("k2.5v2:centre"));
  plain.calibrate(0, n, pos.data(), k.data(), v.data());
  const std::vector<float> mu = row_mean(k, 1, n - 1, 1, D);
  centred.calibrate(0, n, pos.data(), k.data(), v.data(), mu.data());
  uint32_t local = 0;
  for (uint32_t i = 0; i < 32; ++i) {
    EXPECT_EQ(plain.cache_of(0, &local).format().k_codec(0, 0)->channel(i), i);
    EXPECT_EQ(centred.cache_of(0, &local).format().k_codec(0, 0)->channel(i), 32 + i);
  }
}

// The invariance: every key attention reads is k - mu (pages of either cache, sink and window
// rows, sliding-window layers), so a query's logits all move by scale * q.mu and the output is
// that of the uncentred cache, up to rounding. The bound, per query and KV head, over the rows t
// it sees, with A_t = sum_i |q_i| (|k_ti| + |k_ti - mu_i|) and u = 2^-24:
//   logit t, centred minus (uncentred - scale q.mu), is off by at most
//     E = scale * (u_s + gamma + 4u) * max_t A_t
//   u_s: storing k - mu (fp32: u) or both k and k - mu (fp16, and the side buffer's rows:
//   2^-11 + u); gamma = (D + 8) u: the
//   two float dot products (any order of summation, the query's scaling); 4u: subtracting the
//   running maximum (at most 2 max|logit| <= 2 scale max A, in each cache);
//   softmax weights then change by a factor within exp(+-2E), so the output moves by at most
//     (exp(2E) - 1) * vmax, plus 2 (T + 8) u vmax for the two float weighted sums over T rows.
struct InvCase {
  const char* spec;  // the uncentred spec; the centred one adds ":centre"
  uint32_t layer;    // layer attended
  double u_s;        // storage rounding of that layer (see above)
  uint32_t sliding;  // sliding window of the attention (0: none)
};
std::ostream& operator<<(std::ostream& o, const InvCase& c) { return o << c.spec << " layer " << c.layer << " swa " << c.sliding; }

class KeyCentreInvariance : public ::testing::TestWithParam<InvCase> {};
TEST_P(KeyCentreInvariance, FloatCacheOutputIsUnchanged) {
  const InvCase c = GetParam();
  const uint32_t len = 90, nq = 12, D = CentredStore::D, H = CentredStore::H, QH = CentredStore::QH;
  // An offset three times the spread, as real keys carry (bench/results/2026-12-01-gemma3-quality.md).
  CentredStore plain(c.spec, len, 16, 3.0f, 7), centred(std::string(c.spec) + ":centre", len, 16, 3.0f, 7);
  std::mt19937 rng(11);
  std::normal_distribution<float> n01;
  std::vector<float> q(size_t(nq) * QH * D), a(q.size()), b(q.size());  // [nq][QH][D]
  for (float& x : q) x = 0.5f * n01(rng);
  ThreadPool pool(2);
  plain.store.attend(c.layer, plain.pages(), len - nq, nq, QH, q.data(), a.data(), pool, 0.0f, c.sliding);
  centred.store.attend(c.layer, centred.pages(), len - nq, nq, QH, q.data(), b.data(), pool, 0.0f, c.sliding);
  const double scale = 1.0 / std::sqrt(double(D));
  double e_max = 0;
  for (uint32_t j = 0; j < nq; ++j)
    for (uint32_t qh = 0; qh < QH; ++qh) {
      const uint32_t h = qh / (QH / H), p = len - nq + j;
      const std::span<const float> mu = centred.store.key_centre(c.layer, h);
      const float* qv = &q[(size_t(j) * QH + qh) * D];
      double amax = 0;
      for (uint32_t t = 0; t <= p; ++t) {
        double at = 0;
        for (uint32_t i = 0; i < D; ++i) {
          const double kt = plain.k[(size_t(t) * H + h) * D + i];
          at += std::abs(qv[i]) * (std::abs(kt) + std::abs(kt - mu[i]));
        }
        amax = std::max(amax, at);
      }
      e_max = std::max(e_max, scale * (c.u_s + (D + 8) * kU32 + 4 * kU32) * amax);
    }
  const double bound = (std::expm1(2 * e_max) + 2 * (len + 8) * kU32) * plain.vmax;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::abs(a[i] - b[i])));
  EXPECT_LE(worst, bound) << "E " << e_max;
  // Not vacuous: a key read uncentred anywhere moves its logits by scale q.mu (~1.5 here), and
  // outputs by O(1) of the values' scale.
  EXPECT_LT(bound, 0.2) << "E " << e_max;
}
INSTANTIATE_TEST_SUITE_P(FloatCaches, KeyCentreInvariance,
                         ::testing::Values(InvCase{"fp32", 1, kU32, 0}, InvCase{"fp32", 1, kU32, 20},
                                           InvCase{"fp32:sink=3:window=8", 1, kU16 + kU32, 0},
                                           InvCase{"fp32:sink=3:window=8", 2, kU16 + kU32, 24}, InvCase{"fp16", 0, kU16 + kU32, 0},
                                           // edge layers (fp16) and the main cache (fp32) centred alike; sink/window rows in fp16
                                           InvCase{"fp32:edge=1/fp16", 0, kU16 + kU32, 0}, InvCase{"fp32:edge=1/fp16", 1, kU32, 0},
                                           InvCase{"fp32:edge=1/fp16:sink=2:window=16", 1, kU16 + kU32, 0},
                                           InvCase{"fp16:page=5:window=12", 2, kU16 + kU32, 40}));

// Keys with a large shared offset (ten times their spread): TurboQuant's error is relative to the
// norm it codes, so coding k - mu instead of k shrinks what softmax sees of it, the spread over a
// query's rows of (q.k_hat - q.k). Measured through the pages (each row read back) and through
// attention against the exact output.
TEST(KeyCentre, HostileOffsetCostsLessCentred) {
  const uint32_t len = 200, D = CentredStore::D, H = CentredStore::H, QH = CentredStore::QH, layer = 1;
  for (const char* base : {"k3v2", "k4v4", "k2.5v2"}) {
    CentredStore plain(base, len, 64, 10.0f, 3), centred(std::string(base) + ":centre", len, 64, 10.0f, 3);
    std::mt19937 rng(13);
    std::normal_distribution<float> n01;
    std::vector<float> q(size_t(QH) * D);  // one query token
    for (float& x : q) x = n01(rng);
    // Logit error spread, per (query head) over the rows.
    double spread[2] = {0, 0};
    for (int which = 0; which < 2; ++which) {
      CentredStore& f = which ? centred : plain;
      uint32_t local = 0;
      const PagedKvCache& cache = f.store.cache_of(layer, &local);
      std::vector<float> kh(size_t(H) * D), vh(kh.size());
      std::vector<double> err(size_t(QH) * len);  // [QH][len]
      for (uint32_t t = 0; t < len; ++t) {
        const int64_t slot = int64_t(f.blocks.block_table(f.seq)[t / f.store.page_size()]) * f.store.page_size() + t % f.store.page_size();
        cache.read(local, slot, kh.data(), vh.data());
        for (uint32_t qh = 0; qh < QH; ++qh) {
          const uint32_t h = qh / (QH / H);
          const std::span<const float> mu = f.store.key_centre(layer, h);
          double e = 0;
          for (uint32_t i = 0; i < D; ++i) {
            const double stored = f.k[(size_t(t) * H + h) * D + i] - (mu.empty() ? 0.0 : mu[i]);
            e += double(q[qh * D + i]) * (kh[h * D + i] - stored);
          }
          err[size_t(qh) * len + t] = e;
        }
      }
      for (uint32_t qh = 0; qh < QH; ++qh) {
        double m = 0, s = 0;
        for (uint32_t t = 0; t < len; ++t) m += err[size_t(qh) * len + t] / len;
        for (uint32_t t = 0; t < len; ++t) s += std::pow(err[size_t(qh) * len + t] - m, 2) / len;
        spread[which] += s / QH;
      }
    }
    // The offset is ~10x the spread per channel, so |k| ~ 10 |k - mu|: an error several times
    // smaller is the expectation, half is what is asserted.
    EXPECT_LT(std::sqrt(spread[1]), 0.5 * std::sqrt(spread[0]))
        << base << ": logit error spread " << std::sqrt(spread[1]) << " centred, " << std::sqrt(spread[0]) << " not";

    // Attention output against the exact one (double, uncentred keys and exact values): the
    // centred cache is closer.
    std::vector<float> sq(q.size());
    for (size_t i = 0; i < q.size(); ++i) sq[i] = q[i] * 0.3f;  // logits of order 1-10: softmax neither flat nor one-hot
    double out_err[2] = {0, 0};
    ThreadPool pool(2);
    for (int which = 0; which < 2; ++which) {
      CentredStore& f = which ? centred : plain;
      std::vector<float> out(q.size());
      f.store.attend(layer, f.pages(), len - 1, 1, QH, sq.data(), out.data(), pool);
      for (uint32_t qh = 0; qh < QH; ++qh) {
        const uint32_t h = qh / (QH / H);
        std::vector<double> s(len);
        double smax = -1e300;
        for (uint32_t t = 0; t < len; ++t) {
          double d = 0;
          for (uint32_t i = 0; i < D; ++i) d += double(sq[qh * D + i]) * f.k[(size_t(t) * H + h) * D + i];
          s[t] = d / std::sqrt(double(D));
          smax = std::max(smax, s[t]);
        }
        double z = 0;
        std::vector<double> o(D, 0.0);
        for (uint32_t t = 0; t < len; ++t) {
          const double p = std::exp(s[t] - smax);
          z += p;
          for (uint32_t i = 0; i < D; ++i) o[i] += p * f.v[(size_t(t) * H + h) * D + i];
        }
        for (uint32_t i = 0; i < D; ++i) out_err[which] += std::pow(o[i] / z - out[qh * D + i], 2);
      }
    }
    EXPECT_LT(out_err[1], out_err[0]) << base << ": attention output squared error " << out_err[1] << " centred, " << out_err[0] << " not";
  }
}

}  // namespace
}  // namespace tq::cpu

namespace tq::engine {
namespace {

// The engine calibrates the centre with a step of its own (key_centre.h), so that it depends on
// the model and the spec alone: a prompt gets the same logits, bit for bit, whether it is the
// engine's first request or follows another, and the calibration leaves the pool all free.
TEST(KeyCentreEngine, CalibrationStepMakesTheCentreIndependentOfTheRequests) {
  REQUIRE_STORIES();
  const model::Model& m = testing::stories()->m;
  const model::Tokenizer& tok = *testing::stories()->tok;
  const std::vector<int> p = tok.encode("Once upon a time, a little fox found a red ball in the garden.", true);
  const std::vector<int> other = tok.encode("The boat was big and blue. Tim and his mom sailed on the lake all day long!", true);
  const auto logits = [&](const char* spec, bool other_first) {
    Engine e(m, parse_kv_spec(spec), {.threads = 2, .context = 256});
    EXPECT_EQ(e.blocks().allocator().free_pages(), e.blocks().allocator().num_pages()) << "calibration left pages behind";
    if (other_first) {
      const int s = e.add_sequence();
      e.prefill(s, other);
      e.remove_sequence(s);
    }
    const int s = e.add_sequence();
    return e.prefill(s, p, true);
  };
  for (const char* spec : {"k3v2:centre", "k3v2:edge=2/k4v4:sink=4:window=8:centre"}) {
    SCOPED_TRACE(spec);
    EXPECT_EQ(logits(spec, false), logits(spec, true));
  }
  // Not vacuous: the centre changes the codes, hence the logits.
  EXPECT_NE(logits("k3v2:centre", false), logits("k3v2", false));
  // A pool smaller than the step (3 pages of 4 tokens): the step takes what the pool holds.
  Engine small(m, parse_kv_spec("k3v2:centre:page=4"), {.threads = 2, .context = 256, .num_pages = 3});
  EXPECT_EQ(small.blocks().allocator().free_pages(), 3u);
  const int s = small.add_sequence();
  EXPECT_EQ(small.prefill(s, std::vector<int>(p.begin(), p.begin() + 10)).size(), size_t(m.config.vocab_size));
}

// The centre under RoPE (model::rope_centre): a pair that does not turn keeps its whole mean, one
// that turns through whole circles over the positions keeps none of it, and a pair turning a
// quarter circle keeps the mean of its rotations, which is the least-squares fixed vector:
// E_p |R(p) m - mu|^2 is smallest there (checked against nearby vectors). Elements past the rotary
// dims keep their mean; both pair layouts.
TEST(KeyCentreRope, TheCentreIsTheMeanRotationOfTheMeanKey) {
  const uint32_t positions = 64, half = 3, hd = 8;
  std::vector<float> cs(positions * half), sn(cs.size());
  const double turn[half] = {0.0, 2 * M_PI / positions, 0.5 * M_PI / positions};  // none, one circle, a quarter
  for (uint32_t p = 0; p < positions; ++p)
    for (uint32_t i = 0; i < half; ++i) cs[p * half + i] = float(std::cos(p * turn[i])), sn[p * half + i] = float(std::sin(p * turn[i]));
  std::vector<double> a, b;
  model::rope_mean_rotation(cs, sn, half, a, b);
  EXPECT_NEAR(a[0], 1.0, 1e-12);
  EXPECT_NEAR(b[0], 0.0, 1e-12);
  EXPECT_NEAR(a[1], 0.0, 1e-6);
  EXPECT_NEAR(b[1], 0.0, 1e-6);
  const std::vector<double> m{3, -2, 1.5, 4, -1, 2.5, 7, -6};
  for (const bool adjacent : {true, false}) {
    model::ModelConfig c;
    c.head_dim = int(hd), c.rope_dim = int(2 * half);
    c.rope_style = adjacent ? model::RopeStyle::AdjacentPairs : model::RopeStyle::HalfSplit;
    std::vector<float> mu(hd);
    model::rope_centre(c, a.data(), b.data(), m.data(), mu.data());
    const auto pair = [&](uint32_t i) { return adjacent ? std::pair{2 * i, 2 * i + 1} : std::pair{i, i + half}; };
    EXPECT_FLOAT_EQ(mu[pair(0).first], float(m[pair(0).first]));
    EXPECT_FLOAT_EQ(mu[pair(0).second], float(m[pair(0).second]));
    EXPECT_NEAR(mu[pair(1).first], 0.0, 1e-5);
    EXPECT_NEAR(mu[pair(1).second], 0.0, 1e-5);
    EXPECT_FLOAT_EQ(mu[6], 7.0f);
    EXPECT_FLOAT_EQ(mu[7], -6.0f);
    // The quarter-turning pair: mu minimizes the mean squared distance to the rotated means.
    const uint32_t i0 = pair(2).first, i1 = pair(2).second;  // plain names: lambdas below capture them
    const auto cost = [&](double x, double y) {
      double sum = 0;
      for (uint32_t p = 0; p < positions; ++p) {
        const double c0 = cs[p * half + 2], s0 = sn[p * half + 2];
        sum += std::pow(c0 * m[i0] - s0 * m[i1] - x, 2) + std::pow(s0 * m[i0] + c0 * m[i1] - y, 2);
      }
      return sum;
    };
    const double best = cost(mu[i0], mu[i1]);
    for (const auto& [dx, dy] : {std::pair{0.01, 0.0}, {-0.01, 0.0}, {0.0, 0.01}, {0.0, -0.01}}) EXPECT_LT(best, cost(mu[i0] + dx, mu[i1] + dy));
    EXPECT_GT(std::hypot(mu[i0], mu[i1]), 0.5 * std::hypot(m[i0], m[i1]));  // a quarter turn keeps most of it
    EXPECT_LT(std::hypot(mu[i0], mu[i1]), std::hypot(m[i0], m[i1]));
  }
}

// The centre's span is its own option: engines sized for different runs (tq run's context is prompt
// + -n, at least the calibration step's 64 tokens) give the same logits when their span is the
// same, and the table-free mean is the tables' mean, bit for bit.
TEST(KeyCentreEngine, TheSpanNotTheRunSizeFixesTheCentre) {
  REQUIRE_STORIES();
  const model::Model& m = testing::stories()->m;
  const std::vector<int> p = testing::stories()->tok->encode("Once upon a time, a little fox found a red ball in the garden.", true);
  const auto logits = [&](uint32_t context, uint32_t span) {
    Engine e(m, parse_kv_spec("k3v2:centre"), {.threads = 2, .context = context, .centre_span = span});
    return e.prefill(e.add_sequence(), p, true);
  };
  // (Contexts of 64 at least: a smaller one shortens the calibration step itself.)
  EXPECT_EQ(logits(64, 512), logits(300, 512));
  EXPECT_EQ(logits(300, 0), logits(64, 300));  // 0: the context
  EXPECT_NE(logits(64, 0), logits(300, 0));    // not vacuous: the span moves the centre
  EXPECT_THROW(logits(64, (1u << 20) + 1), Error);  // a span that would loop for minutes at start-up
  std::vector<float> cs, sn;
  model::rope_angles(m.config, 300, cs, sn);
  std::vector<double> a, b, a2, b2;
  model::rope_mean_rotation(cs, sn, uint32_t(m.config.rope_dim) / 2, a, b);
  model::rope_mean_rotation(m.config, 300, false, a2, b2);
  EXPECT_EQ(a, a2);
  EXPECT_EQ(b, b2);
}

// The calibration step is kCentreTokens whatever the engine's step (max_chunk): an engine of 16-token
// steps (perplexity --chunk 16, tq serve --max-num-batched-tokens 16) takes the same centre as one
// of 64, so their logits agree, and its forward() still refuses a 17th token.
TEST(KeyCentreEngine, TheCalibrationStepIsWholeWhateverTheEnginesStep) {
  REQUIRE_STORIES();
  const model::Model& m = testing::stories()->m;
  std::vector<int> p = testing::stories()->tok->encode("Once upon a time, a little fox found a red ball in the garden.", true);
  p.resize(12);  // one step for both engines
  const KvSpec spec = parse_kv_spec("k3v2:centre");
  Engine small(m, spec, {.threads = 2, .context = 256, .max_chunk = 16});
  Engine whole(m, spec, {.threads = 2, .context = 256, .max_chunk = 64});
  EXPECT_EQ(small.options().max_chunk, 16u);
  EXPECT_EQ(small.runner().max_chunk(), kCentreTokens);
  const auto& a = dynamic_cast<const cpu::CpuModelRunner&>(small.runner()).kv();
  const auto& b = dynamic_cast<const cpu::CpuModelRunner&>(whole.runner()).kv();
  for (uint32_t l = 0; l < uint32_t(m.config.n_layers); ++l)
    for (uint32_t h = 0; h < uint32_t(m.config.n_kv_heads); ++h) {
      const auto ca = a.key_centre(l, h), cb = b.key_centre(l, h);
      ASSERT_EQ(std::vector<float>(ca.begin(), ca.end()), std::vector<float>(cb.begin(), cb.end())) << "layer " << l << " head " << h;
    }
  EXPECT_EQ(small.prefill(small.add_sequence(), p, true), whole.prefill(whole.add_sequence(), p, true));
  EXPECT_THROW(small.forward({BatchItem{small.add_sequence(), std::vector<int>(17, 1), false}}), Error);
  // Not vacuous: a runner built for 16-token steps calibrates over 16 tokens, another centre.
  EngineOptions o = Engine::resolve(m.config, spec.format.page_size, {.threads = 2, .context = 256, .max_chunk = 16});
  RunnerOptions ro = Engine::runner_options(o, spec);
  ro.max_chunk = 16;
  Engine sixteen(std::make_unique<cpu::CpuModelRunner>(m, spec, ro), spec.format.page_size, o);
  const auto c16 = dynamic_cast<const cpu::CpuModelRunner&>(sixteen.runner()).kv().key_centre(0, 0), c64 = b.key_centre(0, 0);
  EXPECT_NE(std::vector<float>(c16.begin(), c16.end()), std::vector<float>(c64.begin(), c64.end()));
  // An engine step over its runner's is refused, naming both.
  o.max_chunk = 32;
  try {
    Engine over(std::make_unique<cpu::CpuModelRunner>(m, spec, ro), spec.format.page_size, o);
    ADD_FAILURE() << "an engine step of 32 on a runner of 16 was taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("32 tokens (max_chunk) is over its runner's, 16"), std::string::npos) << e.what();
  }
}

TEST(KeyCentreEngine, CalibrationTokens) {
  // No tokenizer: n distinct ids spread over the vocabulary.
  for (const int vocab : {300, 512, 49152}) {
    const std::vector<int> ids = key_centre_tokens(nullptr, vocab, kCentreTokens);
    ASSERT_EQ(ids.size(), kCentreTokens);
    for (int t : ids) EXPECT_TRUE(t >= 0 && t < vocab) << t;
    EXPECT_EQ(std::set<int>(ids.begin(), ids.end()).size(), ids.size()) << "vocab " << vocab;
  }
  EXPECT_EQ(key_centre_tokens(nullptr, 1, 5), std::vector<int>(5, 0));
  EXPECT_EQ(key_centre_tokens(nullptr, 300, 7).size(), 7u);
  // A GGUF without tokenizer metadata (the tests' synthetic models): the spread ids too.
  model::testing::TinyModelSpec bare;
  bare.vocab = 300;
  const model::Model plain = model::testing::load_written(model::testing::tiny_model(bare));
  EXPECT_EQ(key_centre_tokens(&plain, 300, kCentreTokens), key_centre_tokens(nullptr, 300, kCentreTokens));
  // A GGUF with a tokenizer: the passage, BOS first, cut to n.
  const model::testing::BpeVocab vocab = model::testing::small_bpe_vocab(true);
  model::testing::TinyModelSpec spec;
  spec.tokenizer = &vocab;
  spec.vocab = int(vocab.tokens.size());
  const model::Model m = model::testing::load_written(model::testing::tiny_model(spec));
  const auto tok = model::tokenizer_from_gguf(*m.gguf);
  std::vector<int> want = tok->encode(key_centre_text(), tok->add_bos_default());
  ASSERT_GT(want.size(), size_t(kCentreTokens));
  want.resize(kCentreTokens);
  EXPECT_EQ(key_centre_tokens(&m, spec.vocab, kCentreTokens), want);
}

}  // namespace
}  // namespace tq::engine
