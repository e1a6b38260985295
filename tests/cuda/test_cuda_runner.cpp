// The CUDA model runner against the CPU runner on the same file: a synthetic GGUF of a Llama
// shape the GPU kernels take (head dim 64 and 128, GQA, qwen2 biases), several KV specs.
//
// Bounds. The GPU runner rounds the weights and each product's input to bf16 (relative error
// 2^-9 each) and sums in another order; the CPU runner keeps fp32. That moves logits by well under
// 1% of their spread here, so with float caches we require KL(cpu || gpu) < 1e-2 nats per position
// (mean < 2e-3), and the same argmax wherever the CPU's top-2 gap exceeds 5% of the logits'
// standard deviation. Packed caches: see LogitsMatchTheCpuRunner. A wrong row, position, head,
// page or cache entry moves logits by O(their spread): KL > 0.1.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "cuda_test_util.h"
#include "tiny_models.h"
#include "tq/backend/cuda/runner.h"
#include "tq/engine/engine.h"

namespace tq {
namespace {

using model::testing::TinyModelSpec;

model::Model tiny(const TinyModelSpec& s) {
  return model::load_gguf(std::make_shared<const model::GgufFile>(model::GgufFile::from_bytes(model::testing::tiny_model(s).bytes())));
}

struct RunnerCase {
  const char* name;
  TinyModelSpec model;
  const char* spec;
};
std::ostream& operator<<(std::ostream& o, const RunnerCase& c) { return o << c.name << " " << c.spec; }

class CudaRunner : public ::testing::TestWithParam<RunnerCase> {};

// Logits of a prompt prefilled in chunks, then decoded token by token, on both runners.
std::vector<float> logits_of(const model::Model& m, const KvSpec& spec, engine::Device d, const std::vector<int>& prompt, size_t decode) {
  engine::Engine e(m, spec, {.device = d, .context = 128, .max_chunk = 24});
  const int s = e.add_sequence();
  std::vector<float> all = e.prefill(s, std::vector<int>(prompt.begin(), prompt.end() - long(decode)), true);
  for (size_t i = prompt.size() - decode; i < prompt.size(); ++i) {
    const std::vector<float> l = e.forward({{s, {prompt[i]}, false}});
    all.insert(all.end(), l.begin(), l.end());
  }
  return all;
}

struct Divergence {
  double kl_mean = 0, kl_max = 0;
  size_t decided = 0, agree = 0;  // positions whose top-2 gap in `a` is clear; of those, same argmax
};

// KL(a || b) per position of two [rows][V] logit arrays, and the argmax agreement where a's top-2
// gap exceeds 5% of its logits' standard deviation.
Divergence divergence(const std::vector<float>& A, const std::vector<float>& B, size_t V) {
  Divergence d;
  const size_t rows = A.size() / V;
  for (size_t r = 0; r < rows; ++r) {
    const float* a = &A[r * V];
    const float* b = &B[r * V];
    double ma = -1e30, mb = -1e30, mean = 0, var = 0, sa = 0, sb = 0, kl = 0;
    for (size_t i = 0; i < V; ++i) ma = std::max(ma, double(a[i])), mb = std::max(mb, double(b[i])), mean += a[i];
    mean /= double(V);
    for (size_t i = 0; i < V; ++i) sa += std::exp(a[i] - ma), sb += std::exp(b[i] - mb), var += (a[i] - mean) * (a[i] - mean);
    for (size_t i = 0; i < V; ++i) kl += std::exp(a[i] - ma) / sa * ((a[i] - ma - std::log(sa)) - (b[i] - mb - std::log(sb)));
    d.kl_mean += kl / double(rows), d.kl_max = std::max(d.kl_max, kl);
    std::vector<size_t> idx(V);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + 2, idx.end(), [&](size_t x, size_t y) { return a[x] > a[y]; });
    if (a[idx[0]] - a[idx[1]] > 0.05 * std::sqrt(var / double(V))) {
      ++d.decided;
      d.agree += size_t(std::max_element(b, b + V) - b) == idx[0];
    }
  }
  return d;
}

// Float caches: the runners differ by bf16 rounding only (bounds at the top). Packed caches: the
// GPU's K/V rows differ from the CPU's by that rounding, which moves some of them across a
// codebook boundary, so the two caches hold two draws of the quantization noise. Two draws are at
// most about twice as far apart as one draw is from full precision (independent errors add their
// variances): KL(cpu || gpu) must stay within 3x the quantization's own KL against an fp32 cache
// on the CPU, plus the float bound.
TEST_P(CudaRunner, LogitsMatchTheCpuRunner) {
  TQ_REQUIRE_GPU();
  const RunnerCase c = GetParam();
  const model::Model m = tiny(c.model);
  const KvSpec spec = parse_kv_spec(c.spec);
  std::mt19937 rng(7);
  std::vector<int> prompt(60);
  for (int& t : prompt) t = int(rng() % uint32_t(c.model.vocab));
  const size_t V = size_t(c.model.vocab);
  const std::vector<float> cpu = logits_of(m, spec, engine::Device::kCpu, prompt, 12);
  const std::vector<float> gpu = logits_of(m, spec, engine::Device::kCuda, prompt, 12);
  ASSERT_EQ(cpu.size(), gpu.size());
  for (size_t i = 0; i < gpu.size(); ++i) ASSERT_TRUE(std::isfinite(gpu[i])) << "logit " << i;
  const Divergence d = divergence(cpu, gpu, V);
  RecordProperty("kl_mean", std::to_string(d.kl_mean));
  RecordProperty("kl_max", std::to_string(d.kl_max));
  if (!is_tq(spec.format.k.enc) && spec.policy.edge_layers == 0) {
    EXPECT_LT(d.kl_max, 1e-2);
    EXPECT_LT(d.kl_mean, 2e-3);
    EXPECT_EQ(d.agree, d.decided) << "top-1 differs where the CPU's top-2 gap is clear";
    EXPECT_GT(d.decided, cpu.size() / V / 2);
  } else {
    const Divergence q = divergence(logits_of(m, parse_kv_spec("fp32"), engine::Device::kCpu, prompt, 12), cpu, V);
    RecordProperty("quantization_kl_mean", std::to_string(q.kl_mean));
    EXPECT_LT(d.kl_mean, 3 * q.kl_mean + 2e-3) << "the quantization's own KL: " << q.kl_mean;
    EXPECT_LT(d.kl_max, 3 * q.kl_max + 1e-2) << "the quantization's own KL: " << q.kl_max;
    EXPECT_GT(q.kl_mean, 0.0);
  }
}

TinyModelSpec shape(int dim, int heads, int kv_heads, int layers, bool bias, const char* arch) {
  TinyModelSpec s;
  s.arch = arch;
  s.dim = dim, s.n_heads = heads, s.n_kv_heads = kv_heads, s.hidden = 2 * dim, s.n_layers = layers, s.vocab = 300, s.bias = bias;
  s.realistic = true;
  return s;
}

INSTANTIATE_TEST_SUITE_P(All, CudaRunner,
                         ::testing::Values(RunnerCase{"d64_gqa2", shape(256, 4, 2, 2, false, "llama"), "fp16"},
                                           RunnerCase{"d64_gqa2", shape(256, 4, 2, 2, false, "llama"), "k4v4"},
                                           RunnerCase{"d64_gqa2", shape(256, 4, 2, 2, false, "llama"), "k3v2"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), "k3v2:edge=1/k4v4"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), "bf16:page=7"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), "fp8"}),
                         [](const auto& i) {
                           std::string s = std::string(i.param.name) + "_" + i.param.spec;
                           for (char& ch : s)
                             if (!isalnum(ch)) ch = '_';
                           return s;
                         });

// What the runner does not implement is refused by name before any device call (so this runs
// without a GPU too).
TEST(CudaRunnerRefuses, PolicyKnobsAndFormatsWithoutKernels) {
  model::ModelConfig c;
  c.n_layers = 4, c.dim = 256, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64, c.vocab_size = 300;
  std::string why;
  for (const auto& [spec, expect] : std::vector<std::pair<const char*, const char*>>{{"k3v2:sink=4", "'sink=4'"},
                                                                                      {"k3v2:edge=1/k4v4:window=64", "'window=64'"},
                                                                                      {"fp16:ksim=int4", "'ksim=int4'"},
                                                                                      {"fp32", "fp32 caches"},
                                                                                      {"k3v2:prod", "prod keys"},
                                                                                      {"k5v2", "k5v2"},
                                                                                      {"k3v2:edge=1/fp32", "layer 0"},
                                                                                      {"k3v2:edge=3/k4v4", "edge=3"}}) {
    EXPECT_FALSE(cuda::can_run(c, parse_kv_spec(spec), &why)) << spec;
    EXPECT_NE(why.find(expect), std::string::npos) << spec << ": " << why;
  }
  c.head_dim = 8;
  EXPECT_FALSE(cuda::can_run(c, parse_kv_spec("fp16"), &why));
  EXPECT_NE(why.find("head dim 8"), std::string::npos) << why;
  EXPECT_THROW(engine::choose_device("cuda", c, {parse_kv_spec("fp16")}), Error);
  EXPECT_EQ(engine::choose_device("auto", c, {parse_kv_spec("fp16")}), engine::Device::kCpu);
  EXPECT_THROW(engine::choose_device("gpu", c, {}), Error);
}

}  // namespace
}  // namespace tq
