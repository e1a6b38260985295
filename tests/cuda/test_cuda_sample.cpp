// The CUDA runner's sampling kernel (layers::sample) against engine::Sampler: for the same
// parameters and draw u it must pick the same token. The kernel weighs tokens in float and sums
// masses in fixed point where the Sampler uses double, so the two may differ only where the draw
// or a filter's cut-off sits within 1e-5 of a boundary (a relative precision far coarser than
// either's rounding); such cases are counted and must stay rare. Rows are hostile: ties
// everywhere, -inf masks, +0 against -0, a single finite logit, and rows that must be refused
// (NaN, +inf, only -inf). The vocabularies do and do not fill the block's 1024 threads. Then the
// runner: decode steps sampled on the device (from CUDA graphs) against the Sampler on the logits
// of an eager engine fed the same tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <span>
#include <vector>

#include "cuda_test_util.h"
#include "layers.h"
#include "tiny_models.h"
#include "tq/common.h"
#include "tq/engine/engine.h"
#include "tq/engine/sampler.h"

namespace tq {
namespace {

using engine::Sampler;
using engine::SamplingParams;

// The Sampler's token for draw u, or -1 where it refuses the row.
int host_pick(const SamplingParams& p, std::span<const float> x, double u) {
  try {
    return Sampler(p).sample(x, u);
  } catch (const Error&) {
    return -1;
  }
}

std::vector<bool> kept_set(const SamplingParams& p, std::span<const float> x) {
  std::vector<float> prob;
  Sampler(p).probabilities(x, prob);
  std::vector<bool> k(prob.size());
  for (size_t i = 0; i < prob.size(); ++i) k[i] = prob[i] > 0;
  return k;
}

// Whether float rounding may decide the pick: u within 1e-5 of a cumulative boundary of the kept
// tokens (id order), or a top-p / min-p cut that moves when p moves by 1e-5.
bool near_boundary(const SamplingParams& p, std::span<const float> x, double u) {
  if (p.greedy()) return false;
  std::vector<float> prob;
  Sampler(p).probabilities(x, prob);
  double cum = 0;
  for (float q : prob) {
    if (q <= 0) continue;
    cum += q;
    if (std::abs(u - cum) < 1e-5) return true;
  }
  const std::vector<bool> kept = kept_set(p, x);
  for (double d : {-1e-5, 1e-5}) {
    SamplingParams q = p;
    if (p.top_p < 1) q.top_p = float(std::min(1.0, p.top_p + d));
    if (p.min_p > 0) q.min_p = float(std::clamp(p.min_p + d, 0.0, 1.0));
    if (kept_set(q, x) != kept) return true;
  }
  return false;
}

std::vector<std::vector<float>> hostile_rows(uint32_t vocab, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<std::vector<float>> rows;
  std::vector<float> r(vocab);
  for (float& v : r) v = nd(rng);
  rows.push_back(r);  // smooth logits
  for (float& v : r) v = float(rng() % 5);
  rows.push_back(r);  // ties everywhere
  for (size_t i = 0; i < vocab; ++i) r[i] = i % 3 ? -INFINITY : nd(rng);
  rows.push_back(r);  // two thirds masked
  for (size_t i = 0; i < vocab; ++i) r[i] = rng() % 2 ? 0.0f : -0.0f;
  if (vocab > 2) r[vocab / 2] = -1.0f;
  rows.push_back(r);  // +0 and -0 tie
  std::fill(r.begin(), r.end(), -INFINITY);
  r[vocab - 1] = -7.0f;
  rows.push_back(r);  // one finite logit, the last
  for (float& v : r) v = nd(rng);
  r[vocab / 3] = NAN;
  rows.push_back(r);
  for (float& v : r) v = nd(rng);
  r[vocab - 1] = INFINITY;
  rows.push_back(r);
  std::fill(r.begin(), r.end(), -INFINITY);
  rows.push_back(r);  // nothing to pick
  return rows;
}

class CudaSampling : public ::testing::TestWithParam<uint32_t> {};  // the vocabulary

TEST_P(CudaSampling, PicksTheSamplersToken) {
  TQ_REQUIRE_GPU();
  size_t compared = 0, near = 0;
  {
    const uint32_t vocab = GetParam();
    std::mt19937 rng(vocab);
    const std::vector<std::vector<float>> rows = hostile_rows(vocab, rng);
    const int k = int(vocab);
    const std::vector<SamplingParams> params = {
        {},  // greedy
        {.temperature = 1},
        {.temperature = 1e-3f},
        {.temperature = 50},
        {.temperature = 0.7f, .top_k = 1},
        {.temperature = 0.8f, .top_k = 40},
        {.temperature = 1, .top_k = std::max(k - 1, 1)},
        {.temperature = 1, .top_k = k + 5},
        {.temperature = 1, .top_p = 0.9f},
        {.temperature = 1, .top_p = 1e-6f},
        {.temperature = 0.5f, .min_p = 0.2f},
        {.temperature = 1, .min_p = 1},
        {.temperature = 1.3f, .top_k = 50, .top_p = 0.95f, .min_p = 0.05f},
        {.temperature = 2, .top_k = 7, .top_p = 0.5f},
    };
    const size_t draws = vocab > 100000 ? 4 : 16;
    std::uniform_real_distribution<double> ud(0.0, 1.0);
    for (const SamplingParams& p : params) {
      // Every (row, draw) pair is a row of the launch.
      std::vector<float> logits;
      std::vector<cuda::layers::SampleRow> args;
      std::vector<double> us;
      for (const auto& r : rows)
        for (size_t d = 0; d < draws; ++d) {
          const double u = d == 0 ? 0.0 : d == 1 ? std::nextafter(1.0, 0.0) : ud(rng);
          logits.insert(logits.end(), r.begin(), r.end());
          args.push_back({p.temperature, p.top_k, p.top_p, p.min_p, u});
          us.push_back(u);
        }
      const uint32_t n = uint32_t(args.size());
      test::DeviceBuffer<float> dl(logits);
      test::DeviceBuffer<cuda::layers::SampleRow> da(args);
      test::DeviceBuffer<int32_t> ids(n), again(n);
      ids.poison(), again.poison();
      cuda::layers::sample(dl.ptr, n, vocab, da.ptr, ids.ptr, nullptr);
      cuda::layers::sample(dl.ptr, n, vocab, da.ptr, again.ptr, nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      const std::vector<int32_t> got = ids.download();
      EXPECT_EQ(got, again.download()) << "vocab " << vocab << ": two launches on the same rows differ";
      for (uint32_t i = 0; i < n; ++i) {
        const std::span<const float> x(&logits[size_t(i) * vocab], vocab);
        const int want = host_pick(p, x, us[i]);
        ++compared;
        if (got[i] == want) continue;
        const bool excused = want >= 0 && got[i] >= 0 && near_boundary(p, x, us[i]);
        near += excused;
        EXPECT_TRUE(excused) << "vocab " << vocab << " row " << i / draws << " u " << us[i] << " T " << p.temperature << " top_k "
                             << p.top_k << " top_p " << p.top_p << " min_p " << p.min_p << ": GPU " << got[i] << ", Sampler " << want;
      }
    }
  }
  EXPECT_LT(double(near), 0.01 * double(compared)) << near << " of " << compared << " picks differ at a boundary";
  std::printf("%zu picks compared, %zu differ within 1e-5 of a boundary\n", compared, near);
}

INSTANTIATE_TEST_SUITE_P(Vocab, CudaSampling, ::testing::Values(1u, 31u, 1000u, 49159u, 128256u),
                         [](const auto& i) { return "vocab" + std::to_string(i.param); });

// Three sequences sampled with their own parameters in one step (top-k, top-p with min-p,
// greedy), each from its own seeded Sampler, on a graph-replaying engine; an eager engine fed the
// same tokens gives the logits the Sampler then picks from with the same draws.
TEST(CudaRunnerSampling, SampledStepsMatchTheSamplerOnTheLogits) {
  TQ_REQUIRE_GPU();
  model::testing::TinyModelSpec ms;
  ms.dim = 256, ms.n_heads = 4, ms.n_kv_heads = 2, ms.hidden = 512, ms.n_layers = 2, ms.vocab = 300, ms.realistic = true;
  const model::Model m = model::testing::load_written(model::testing::tiny_model(ms));
  const KvSpec spec = parse_kv_spec("k3v2:sink=4:window=16");
  engine::Engine graphs(m, spec, {.device = engine::Device::kCuda, .context = 256, .max_seqs = 3, .max_chunk = 64});
  engine::Engine eager(m, spec, {.device = engine::Device::kCuda, .context = 256, .max_seqs = 3, .max_chunk = 64, .eager = true});
  const std::vector<SamplingParams> params = {{.temperature = 0.8f, .top_k = 40, .seed = 1},
                                              {.temperature = 1.2f, .top_p = 0.9f, .min_p = 0.02f, .seed = 2},
                                              {}};
  std::vector<Sampler> samplers(params.begin(), params.end());
  std::vector<int> seqs, next;
  for (int s = 0; s < 3; ++s) {
    seqs.push_back(graphs.add_sequence());
    ASSERT_EQ(eager.add_sequence(), seqs.back());
    const std::vector<int> prompt(size_t(3 + 5 * s), 17 + s);
    graphs.prefill(seqs.back(), prompt);
    eager.prefill(seqs.back(), prompt);
    next.push_back(40 + s);
  }
  size_t near = 0, distinct = 0;
  std::vector<bool> seen(300);
  for (int i = 0; i < 60; ++i) {
    std::vector<engine::BatchItem> batch;
    std::vector<engine::SampleArgs> args;
    for (size_t s = 0; s < 3; ++s) batch.push_back({seqs[s], {next[s]}, false}), args.push_back(samplers[s].next_args());
    const std::vector<int> ids = graphs.forward_sample(batch, args);
    const std::vector<float> logits = eager.forward(batch);
    ASSERT_EQ(ids.size(), 3u);
    for (size_t s = 0; s < 3; ++s) {
      const std::span<const float> row(&logits[s * 300], 300);
      const int want = Sampler(params[s]).sample(row, args[s].u);
      if (ids[s] != want) {
        ++near;
        EXPECT_TRUE(near_boundary(params[s], row, args[s].u)) << "step " << i << " sequence " << s << ": GPU " << ids[s] << ", Sampler " << want;
      }
      distinct += !seen[size_t(ids[s])];
      seen[size_t(ids[s])] = true;
    }
    next = ids;
  }
  EXPECT_LE(near, 2u);
  EXPECT_GT(distinct, 20u);  // the sampled sequences do wander (a constant id would pass the rest)
}

}  // namespace
}  // namespace tq
