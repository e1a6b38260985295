// The CUDA model runner against the CPU runner on the same file: synthetic GGUFs of small Llama
// shapes the GPU kernels take (head dim 64 and 128, GQA, qwen2 biases), several KV specs, and of
// real shapes (llama-3.2-1b, qwen2.5-0.5b, qwen3-0.6b).
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
#include <random>
#include <span>

#include "cuda_test_util.h"
#include "layers.h"
#include "tiny_models.h"
#include "tq/backend/cuda/runner.h"
#include "tq/cuda/dense_prompt.h"
#include "tq/engine/engine.h"
#include "tq/engine/eval.h"
#include "tq/engine/sampler.h"
#include "tq/model/shapes.h"

namespace tq {
namespace {

using model::testing::TinyModelSpec;

model::Model tiny(const TinyModelSpec& s) {
  return model::testing::load_written(model::testing::tiny_model(s));
}

struct RunnerCase {
  const char* name;
  TinyModelSpec model;
  const char* spec;
};
std::ostream& operator<<(std::ostream& o, const RunnerCase& c) { return o << c.name << " " << c.spec; }

class CudaRunner : public ::testing::TestWithParam<RunnerCase> {};

// Logits of a prompt prefilled in chunks, then decoded token by token, on both runners.
std::vector<float> logits_of(const model::Model& m, const KvSpec& spec, engine::Device d, const std::vector<int>& prompt, size_t decode,
                             uint32_t context = 128, uint32_t chunk = 24) {
  engine::Engine e(m, spec, {.device = d, .context = context, .max_chunk = chunk});
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
// on the CPU, plus the float bound. Records the KLs as test properties (`tag` before their names).
Divergence check_against_cpu(const model::Model& m, const KvSpec& spec, const std::vector<int>& prompt, size_t V, const std::string& tag,
                             uint32_t context = 128, uint32_t chunk = 24) {
  const std::vector<float> cpu = logits_of(m, spec, engine::Device::kCpu, prompt, 12, context, chunk);
  const std::vector<float> gpu = logits_of(m, spec, engine::Device::kCuda, prompt, 12, context, chunk);
  EXPECT_EQ(cpu.size(), gpu.size());
  if (cpu.size() != gpu.size()) return {};
  for (size_t i = 0; i < gpu.size(); ++i)
    if (!std::isfinite(gpu[i])) {
      ADD_FAILURE() << "GPU logit " << i << " is " << gpu[i];
      return {};
    }
  const Divergence d = divergence(cpu, gpu, V);
  ::testing::Test::RecordProperty(tag + "kl_mean", std::to_string(d.kl_mean));
  ::testing::Test::RecordProperty(tag + "kl_max", std::to_string(d.kl_max));
  if (!is_tq(spec.format.k.enc) && spec.policy.edge_layers == 0) {
    EXPECT_LT(d.kl_max, 1e-2);
    EXPECT_LT(d.kl_mean, 2e-3);
    EXPECT_EQ(d.agree, d.decided) << "top-1 differs where the CPU's top-2 gap is clear";
    EXPECT_GT(d.decided, cpu.size() / V / 2);
  } else {
    const Divergence q = divergence(logits_of(m, parse_kv_spec("fp32"), engine::Device::kCpu, prompt, 12, context, chunk), cpu, V);
    ::testing::Test::RecordProperty(tag + "quantization_kl_mean", std::to_string(q.kl_mean));
    EXPECT_LT(d.kl_mean, 3 * q.kl_mean + 2e-3) << "the quantization's own KL: " << q.kl_mean;
    EXPECT_LT(d.kl_max, 3 * q.kl_max + 1e-2) << "the quantization's own KL: " << q.kl_max;
    EXPECT_GT(q.kl_mean, 0.0);
  }
  return d;
}

// Each small shape and spec against the CPU runner (check_against_cpu).
TEST_P(CudaRunner, LogitsMatchTheCpuRunner) {
  TQ_REQUIRE_GPU();
  const RunnerCase c = GetParam();
  const model::Model m = tiny(c.model);
  const KvSpec spec = parse_kv_spec(c.spec);
  std::mt19937 rng(7);
  std::vector<int> prompt(60);
  for (int& t : prompt) t = int(rng() % uint32_t(c.model.vocab));
  const size_t V = size_t(c.model.vocab);
  check_against_cpu(m, spec, prompt, V, "");
}

TinyModelSpec shape(int dim, int heads, int kv_heads, int layers, bool bias, const char* arch) {
  TinyModelSpec s;
  s.arch = arch;
  s.dim = dim, s.n_heads = heads, s.n_kv_heads = kv_heads, s.hidden = 2 * dim, s.n_layers = layers, s.vocab = 300, s.bias = bias;
  s.realistic = true;
  return s;
}
// Qwen3's layout: heads of 128 wider than dim / heads (q_dim 1024 from dim 256, as Qwen3-0.6B's
// 2048 from 1024), per-head q/k norms, no biases.
TinyModelSpec qwen3_shape() {
  TinyModelSpec s = shape(256, 8, 2, 4, false, "qwen3");
  s.head_dim = 128;
  return s;
}

// Gemma 3's layout (Gemma-3-270M's head dim 256 and one KV head, smaller): q/k norms, the norms
// of the attention and FFN outputs, GELU, the embedding scale, and five sliding-window layers of
// six with their own RoPE base; a window of 16 the 60-token prompt outgrows. `scaled`: the global
// layers' linear RoPE scaling (the larger Gemma 3 models').
TinyModelSpec gemma3_shape(bool scaled = false) {
  TinyModelSpec s = shape(256, 4, 1, 6, false, "gemma3");
  s.head_dim = 256;
  s.sliding_window = 16;
  if (scaled) s.rope_scaling = "linear";
  return s;
}

INSTANTIATE_TEST_SUITE_P(All, CudaRunner,
                         ::testing::Values(RunnerCase{"d64_gqa2", shape(256, 4, 2, 2, false, "llama"), "fp16"},
                                           RunnerCase{"d64_gqa2", shape(256, 4, 2, 2, false, "llama"), "k4v4"},
                                           RunnerCase{"d64_gqa2", shape(256, 4, 2, 2, false, "llama"), "k3v2"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), "k3v2:edge=1/k4v4"},
                                           // A layer set (what auto: writes): the middle layers in the second cache.
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), "k3v2:layers=1-2/k4v4"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), "bf16:page=7"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), "fp8"},
                                           // The KV policy's side buffer: windows the prompt outgrows, and tq run's default until 2026-12-01.
                                           RunnerCase{"d64_gqa2", shape(256, 4, 2, 2, false, "llama"), "fp16:sink=4:window=8"},
                                           RunnerCase{"d64_gqa2", shape(256, 4, 2, 2, false, "llama"), "k3v2:sink=4:window=16"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), "k4v4:window=5"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), "k3v2:sink=4:window=64:edge=2/k4v4"},
                                           // The key centre: fixed by each engine's calibration step, subtracted from
                                           // every key after RoPE (qwen2's bias before it), side rows included.
                                           RunnerCase{"d64_gqa2", shape(256, 4, 2, 2, false, "llama"), "fp16:centre"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), "k3v2:centre"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"),
                                                      "k3v2:sink=4:window=64:edge=2/k4v4:centre"},
                                           // tq run's default: the centre and the unbiased norm (ip) besides.
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), kDefaultKvSpec},
                                           // qwen3: the q/k norms before the centre and RoPE.
                                           RunnerCase{"d128_qwen3", qwen3_shape(), "fp16"},
                                           RunnerCase{"d128_qwen3", qwen3_shape(), "k3v2"},
                                           RunnerCase{"d128_qwen3", qwen3_shape(), "fp16:centre"},
                                           RunnerCase{"d128_qwen3", qwen3_shape(), kDefaultKvSpec},
                                           // gemma3: sliding-window layers, post-norms, GELU, embedding scale.
                                           RunnerCase{"d256_gemma3", gemma3_shape(), "fp16"},
                                           RunnerCase{"d256_gemma3", gemma3_shape(), "k3v2"},
                                           RunnerCase{"d256_gemma3", gemma3_shape(), "k4v4:centre"},
                                           RunnerCase{"d256_gemma3_scaled", gemma3_shape(true), "bf16"},
                                           RunnerCase{"d256_gemma3", gemma3_shape(), "k3v2:ip=local:edge=1/k4v4:sink=4:window=8:centre"},
                                           RunnerCase{"d256_gemma3", gemma3_shape(), kDefaultKvSpec},
                                           // Trellis-coded rows (read as union indices), alone and in the default's Nt form.
                                           RunnerCase{"d64_gqa2", shape(256, 4, 2, 2, false, "llama"), "k3tv2t"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"), "k2tv3t:ip"},
                                           RunnerCase{"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2"),
                                                      "k3tv2t:ip:edge=2/k4v4:sink=4:window=64:centre"},
                                           RunnerCase{"d256_gemma3", gemma3_shape(), "k3tv3t:ip=local:edge=1/k4v4:sink=4:window=8:centre"}),
                         [](const auto& i) {
                           std::string s = std::string(i.param.name) + "_" + i.param.spec;
                           for (char& ch : s)
                             if (!isalnum(ch)) ch = '_';
                           return s;
                         });

// Real shapes (named_shape: head dim 64 and qwen3's 128 wider than dim / heads, GQA 2, 4 and 7,
// vocabularies of 128K and 152K, 16 to 28 layers, qwen2 biases, qwen3 q/k norms, tied classifiers) as synthetic GGUF files written by the tests' own
// writer (F32 weights at a trained model's scale, a fixed seed), GPU runner against CPU runner
// with the bounds of LogitsMatchTheCpuRunner, for a float cache and tq run's default policy. The
// prompt (100 tokens, chunks of 24) passes the default spec's window of 64.
class CudaRunnerRealShape : public ::testing::TestWithParam<const char*> {};

TEST_P(CudaRunnerRealShape, LogitsMatchTheCpuRunner) {
  TQ_REQUIRE_GPU();
  const model::ModelConfig c = model::named_shape(GetParam());
  TinyModelSpec s;
  s.arch = c.arch == model::Arch::Qwen2 ? "qwen2" : c.arch == model::Arch::Qwen3 ? "qwen3" : "llama";
  s.dim = c.dim, s.n_heads = c.n_heads, s.n_kv_heads = c.n_kv_heads, s.hidden = c.hidden_dim, s.n_layers = c.n_layers;
  s.vocab = c.vocab_size, s.tied = c.tied_embeddings, s.bias = c.has_qkv_bias, s.realistic = true, s.context = 256;
  if (c.dim / c.n_heads != c.head_dim) s.head_dim = c.head_dim;  // qwen3's wider heads
  const model::Model m = tiny(s);
  ASSERT_EQ(m.config.head_dim, c.head_dim);
  std::mt19937 rng(9);
  std::vector<int> prompt(112);
  for (int& t : prompt) t = int(rng() % uint32_t(c.vocab_size));
  const size_t V = size_t(c.vocab_size);
  // tq run's default, before 2026-12-01, and the default's trellis-coded form
  for (const char* spec_text : {"fp16", "k3v2:edge=2/k4v4:sink=4:window=64", kDefaultKvSpec, "k3tv2t:ip:edge=2/k4v4:sink=4:window=64:centre"}) {
    SCOPED_TRACE(spec_text);
    const KvSpec spec = parse_kv_spec(spec_text);
    const Divergence d = check_against_cpu(m, spec, prompt, V, spec.canonical() + "_");
    std::printf("%s %s: KL mean %.3g max %.3g, top-1 %zu of %zu\n", GetParam(), spec_text, d.kl_mean, d.kl_max, d.agree, d.decided);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaRunnerRealShape, ::testing::Values("llama-3.2-1b", "qwen2.5-0.5b", "qwen3-0.6b"), [](const auto& i) {
  std::string n = i.param;
  for (char& ch : n)
    if (!isalnum(ch)) ch = '_';
  return n;
});

// Greedy decode steps replayed from CUDA graphs give the tokens of eager steps: each step's ids
// against the argmax of the eager engine's logits on the same tokens. A long prefill in the middle
// grows the attention workspace, which drops the captured graphs (they point at the old buffer):
// later steps must still agree. A graph is planned for its length bucket and an eager step for its
// own length, so their decode splits differ; in batch-invariant mode that changes no bit (the
// extra splits are empty), and every step's id must be the argmax. Otherwise the split sums round
// differently, a bf16 attention output can move by an ulp (2^-8 relative) and the two layers carry
// that into the logits (a top-2 gap of 1.4e-3 of their range has flipped): there only steps whose
// gap is clear, 1e-2 of the range (as the speculative and serving graph tests), count.
TEST(CudaRunnerGraphs, GreedyStepsMatchEagerLogits) {
  TQ_REQUIRE_GPU();
  const model::Model m = tiny([] {
    TinyModelSpec s;
    s.dim = 256, s.n_heads = 4, s.n_kv_heads = 2, s.hidden = 512, s.n_layers = 2, s.vocab = 300, s.realistic = true;
    return s;
  }());
  struct Case {
    const char* spec;
    bool invariant;
  };
  for (const Case& k : {Case{"k3v2", true}, Case{"k3v2", false}, Case{"k3v2:sink=4:window=16", false}, Case{"k3v2:sink=4:window=16:centre", false}}) {
    const char* spec_text = k.spec;
    SCOPED_TRACE(std::string(spec_text) + (k.invariant ? " batch-invariant" : ""));
    const KvSpec spec = parse_kv_spec(spec_text);
    const engine::EngineOptions o{.device = engine::Device::kCuda, .context = 512, .max_seqs = 3, .max_chunk = 400, .batch_invariant = k.invariant};
    engine::EngineOptions eo = o;
    eo.eager = true;
    engine::Engine graphs(m, spec, o);
    engine::Engine eager(m, spec, eo);
    EXPECT_NE(graphs.runner().describe().find("CUDA graphs"), std::string::npos) << graphs.runner().describe();
    std::mt19937 rng(11);
    const auto prompt = [&](size_t n) {
      std::vector<int> p(n);
      for (int& t : p) t = int(rng() % 300);
      return p;
    };
    std::vector<int> seqs;
    for (size_t n : {5u, 17u}) {
      const std::vector<int> p = prompt(n);
      seqs.push_back(graphs.add_sequence());
      ASSERT_EQ(eager.add_sequence(), seqs.back());
      graphs.prefill(seqs.back(), p);
      eager.prefill(seqs.back(), p);
    }
    std::vector<int> next = {1, 2};
    size_t decided = 0, steps = 0;
    for (int i = 0; i < 40; ++i) {
      if (i == 20) {  // a third sequence, prefilled in one long chunk
        const std::vector<int> p = prompt(390);
        seqs.push_back(graphs.add_sequence());
        ASSERT_EQ(eager.add_sequence(), seqs.back());
        graphs.prefill(seqs.back(), p);
        eager.prefill(seqs.back(), p);
        next.push_back(3);
      }
      std::vector<engine::BatchItem> batch;
      for (size_t s = 0; s < seqs.size(); ++s) batch.push_back({seqs[s], {next[s]}, false});
      const std::vector<int> ids = graphs.forward_greedy(batch);
      const std::vector<float> logits = eager.forward(batch);
      ASSERT_EQ(ids.size(), seqs.size());
      for (size_t s = 0; s < seqs.size(); ++s) {
        const float* row = &logits[s * 300];
        const int want = test::clear_argmax(row, 300, k.invariant ? 0.0f : 1e-2f);
        ++steps;
        if (want >= 0) {
          ++decided;
          const float lo = *std::min_element(row, row + 300);
          EXPECT_EQ(ids[s], want) << "step " << i << " sequence " << s << ": eager logits " << row[want] << " there, " << row[ids[s]]
                                  << " at the graph's id, range " << row[want] - lo;
        }
      }
      next = ids;
    }
    EXPECT_GT(decided, k.invariant ? steps - 2 : steps * 3 / 4);
  }
}

// Window rings (kv/window_ring.h) on the GPU: Gemma 3's sliding-window layers keep only the pages
// their queries can still see, in a ring per sequence. Against the same engine with every position
// in the pool (swa_full): the same logits bits through chunked prefill, a prefix-cache hit restored
// from its tail, a rollback within a chunk and decode steps from their CUDA graphs; the pool's pages
// carry the global layer only.
TEST(CudaRunnerWindowRing, LogitsAreTheBitsOfEveryPositionKept) {
  TQ_REQUIRE_GPU();
  const model::Model m = tiny(gemma3_shape());
  std::mt19937 rng(13);
  std::vector<int> a(150), b(90);
  for (int& t : a) t = int(rng() % 300);
  for (int& t : b) t = int(rng() % 300);
  for (const char* spec_text : {"k3v2", "fp16", "k4v4:centre", kDefaultKvSpec}) {
    SCOPED_TRACE(spec_text);
    const KvSpec spec = parse_kv_spec(spec_text);
    const auto run = [&](bool swa_full, std::vector<int>* ids, size_t* page_bytes) {
      engine::Engine e(m, spec, {.device = engine::Device::kCuda, .context = 256, .max_seqs = 3, .max_chunk = 24, .prefix_tails = 2,
                                 .swa_full = swa_full});
      *page_bytes = e.runner().page_bytes();
      EXPECT_EQ(e.runner().ring_bytes() > 0, !swa_full) << e.runner().describe();
      EXPECT_EQ(e.enable_prefix_cache(), "");
      const int sa = e.add_sequence(), sb = e.add_sequence();
      std::vector<float> out = e.prefill(sa, std::vector<int>(a.begin(), a.begin() + 100), true);
      const std::vector<float> pb = e.prefill(sb, std::vector<int>(b.begin(), b.begin() + 40), true);
      out.insert(out.end(), pb.begin(), pb.end());
      // A prefix hit on a third sequence id: 96 cached positions, its rings from the tail at 96.
      // (Without rings or side buffers there is nothing to keep: no tail, the hit needs none.)
      EXPECT_EQ(e.cache_prefix(sa, std::vector<int>(a.begin(), a.begin() + 100)), !swa_full || spec.policy.window > 0);
      const int hit = e.add_sequence(a, 120);
      EXPECT_EQ(e.seq_len(hit), 96u);
      const std::vector<float> h = e.prefill(hit, std::vector<int>(a.begin() + 96, a.begin() + 110), true);
      out.insert(out.end(), h.begin(), h.end());
      e.forward({{sa, std::vector<int>(b.begin(), b.begin() + 8), false}});  // drafts written, then taken back
      e.truncate(sa, 100);
      std::vector<int> next = {a[100], b[40]};
      for (int i = 0; i < 40; ++i) {  // greedy steps: replayed from their graphs
        next = e.forward_greedy({{sa, {next[0]}, false}, {sb, {next[1]}, false}});
        ids->insert(ids->end(), next.begin(), next.end());
      }
      const std::vector<float> l = e.forward({{sa, {next[0]}, false}, {sb, {next[1]}, false}});
      out.insert(out.end(), l.begin(), l.end());
      return out;
    };
    std::vector<int> ring_ids, full_ids;
    size_t ring_page = 0, full_page = 0;
    const std::vector<float> ring = run(false, &ring_ids, &ring_page), full = run(true, &full_ids, &full_page);
    EXPECT_EQ(ring_ids, full_ids);
    ASSERT_EQ(ring.size(), full.size());
    size_t differ = 0;
    for (size_t i = 0; i < ring.size(); ++i) differ += ring[i] != full[i];
    EXPECT_EQ(differ, 0u) << "logits that differ from swa_full's";
    EXPECT_LT(ring_page, full_page);  // the global layer only (with the default spec's edge layers: the same format)
  }
}

// Prompt chunks of 320 tokens, beyond kRingStep: the sliding-window layers write and attend them in
// sub-steps of 256 on both runners (the CPU's bits are those of every position kept:
// test_window_ring.cpp), the GPU's logits against the CPU's as for every runner case.
TEST(CudaRunnerWindowRing, LongChunksInSubStepsMatchTheCpuRunner) {
  TQ_REQUIRE_GPU();
  TinyModelSpec g = gemma3_shape();
  g.context = 512;
  const model::Model m = tiny(g);
  std::mt19937 rng(17);
  std::vector<int> prompt(420);
  for (int& t : prompt) t = int(rng() % 300);
  for (const char* spec_text : {"fp16", "k3v2", kDefaultKvSpec}) {
    SCOPED_TRACE(spec_text);
    engine::Engine e(m, parse_kv_spec(spec_text), {.device = engine::Device::kCuda, .context = 512, .max_chunk = 320});
    EXPECT_GT(e.runner().ring_bytes(), 0u) << e.runner().describe();
    check_against_cpu(m, parse_kv_spec(spec_text), prompt, 300, "", 512, 320);
  }
}

// Random weights of a named shape run (finite logits, ids in the vocabulary), and --gpu-memory
// sizes the pool from the device's memory, or refuses a fraction too small for one sequence.
TEST(CudaRunnerRandom, NamedShapeAndGpuMemory) {
  TQ_REQUIRE_GPU();
  const model::ModelConfig c = model::named_shape("smollm2-135m");
  const KvSpec spec = parse_kv_spec("k3v2");
  auto r = cuda::make_random_model_runner(c, spec, {.context = 1024, .num_pages = 256, .max_chunk = 64}, 5);
  EXPECT_EQ(r->num_pages(), 256u);
  BlockManager blocks(r->num_pages(), 16);
  std::vector<int> seqs{blocks.add_sequence(), blocks.add_sequence()};
  std::vector<int> tokens(40, 7);
  blocks.reserve({{seqs[0], 40}});
  const std::vector<float> l = r->forward({{seqs[0], tokens.data(), 40, 0, &blocks.block_table(seqs[0]), true}});
  ASSERT_EQ(l.size(), 40u * c.vocab_size);
  for (size_t i = 0; i < l.size(); ++i) ASSERT_TRUE(std::isfinite(l[i])) << i;
  std::vector<int> next{1, 2};
  for (int i = 0; i < 5; ++i) {
    blocks.reserve({{seqs[0], 1}, {seqs[1], 1}});
    next = r->forward_greedy({{seqs[0], &next[0], 1, blocks.len(seqs[0]) - 1, &blocks.block_table(seqs[0]), false},
                              {seqs[1], &next[1], 1, blocks.len(seqs[1]) - 1, &blocks.block_table(seqs[1]), false}});
    for (int id : next) ASSERT_TRUE(id >= 0 && id < c.vocab_size) << id;
  }
  size_t free_b = 0, total_b = 0;
  CUDA_OK(cudaMemGetInfo(&free_b, &total_b));
  r.reset();
  auto big = cuda::make_random_model_runner(c, spec, {.context = 1024, .num_pages = 1, .max_chunk = 64, .gpu_memory = 0.25}, 5);
  const double pool = double(big->num_pages()) * big->page_bytes();
  EXPECT_GT(pool, 0.2 * total_b - double(model::weight_bytes_bf16(c)) - 1e9);
  EXPECT_LT(pool, 0.25 * total_b);
  big.reset();
  try {
    cuda::make_random_model_runner(c, spec, {.context = 1024, .max_chunk = 64, .gpu_memory = 1e-4}, 5);
    ADD_FAILURE() << "a 1e-4 share of the GPU was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--gpu-memory 0.0001"), std::string::npos) << e.what();
  }
  EXPECT_THROW(cuda::make_random_model_runner(c, spec, {.context = 1024, .max_chunk = 64, .gpu_memory = 1.5}, 5), Error);
  // Side buffers exist for max_seqs sequence ids: another id is refused by name.
  auto side = cuda::make_random_model_runner(c, parse_kv_spec("k3v2:sink=4:window=64"), {.context = 1024, .num_pages = 64, .max_seqs = 2}, 5);
  EXPECT_EQ(side->side_bytes(), size_t(4 + 64 + kSideRollback) * c.n_layers * 2 * c.kv_dim() * 2);
  side->add_sequence(1);
  try {
    side->add_sequence(2);
    FAIL() << "sequence id 2 accepted with max_seqs 2";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence id 2"), std::string::npos) << e.what();
  }
  // A step may take back up to kSideRollback positions (its ring keeps them); further is refused.
  BlockManager pages(side->num_pages(), 16);
  const int s = pages.add_sequence();
  side->add_sequence(s);
  pages.reserve({{s, 40}});
  side->forward({engine::StepSeq{s, tokens.data(), 30, 0, &pages.block_table(s), false}});
  const uint32_t back = 30 - kSideRollback;  // taken back by the most the ring allows, then one step there
  side->forward({engine::StepSeq{s, tokens.data(), 1, back, &pages.block_table(s), false}});
  try {  // back + 1 positions written: one more than the ring allows
    side->forward({engine::StepSeq{s, tokens.data(), 1, back - kSideRollback, &pages.block_table(s), false}});
    FAIL() << "a step taken back beyond the ring accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("taken back"), std::string::npos) << e.what();
  }
  side->forward({engine::StepSeq{s, tokens.data(), 30, 0, &pages.block_table(s), false}});  // from the start: fine
}

// The key centre's two kernels against the CPU runner's arithmetic: key_centre takes each KV head's
// mean key before RoPE (bias added, position 0 left out unless it is all there is; double sums in
// row order) through model::rope_centre's per-pair map, so the centres are the host's up to the
// float rounding of a double (the host may fuse a multiply-add the kernel rounds apart: one float
// ulp); qkv_rope with a centre gives its keys without one less the centre, bit for bit, and leaves
// the queries and values alone. Hostile rows: an offset 50 times the spread, a huge position-0 row;
// both pair layouts, and a partial rotary dim.
TEST(CudaRunnerCentre, KernelsGiveTheCpuRunnersCentres) {
  TQ_REQUIRE_GPU();
  const uint32_t hq = 4, hkv = 2, hd = 64, rope = 64, n = 13, width = hkv * hd, ctx = 64, fused = (hq + 2 * hkv) * hd;
  std::mt19937 rng(21);
  std::normal_distribution<float> n01;
  for (const uint32_t rd : {64u, 32u})
    for (const bool adjacent : {true, false})
      for (const bool only_zero : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "rope dim " << rd << (adjacent ? " adjacent" : " neox") << (only_zero ? " all at 0" : ""));
        model::ModelConfig c;
        c.head_dim = int(hd), c.rope_dim = int(rd);
        c.rope_style = adjacent ? model::RopeStyle::AdjacentPairs : model::RopeStyle::HalfSplit;
        std::vector<float> qkv(size_t(n) * fused), bias(fused), cs(size_t(ctx) * rd / 2), sn(cs.size());
        std::vector<int32_t> pos(n);
        for (uint32_t r = 0; r < n; ++r) {
          pos[r] = only_zero ? 0 : int32_t(r);
          for (uint32_t i = 0; i < fused; ++i) qkv[size_t(r) * fused + i] = 50.0f * float(i % 7) - 120.0f + n01(rng) + (r == 0 ? 1e4f : 0.0f);
        }
        for (float& x : bias) x = n01(rng);
        for (size_t i = 0; i < cs.size(); ++i) cs[i] = std::cos(0.37f * float(i)), sn[i] = std::sin(0.37f * float(i));
        std::vector<double> a, b;
        model::rope_mean_rotation(cs, sn, rd / 2, a, b);
        std::vector<float> want(width);
        for (uint32_t h = 0; h < hkv; ++h) {
          std::vector<double> m(hd, 0.0);
          uint32_t used = 0;
          for (uint32_t r = 0; r < n; ++r) {
            if (!only_zero && pos[r] == 0) continue;
            ++used;
            for (uint32_t e = 0; e < hd; ++e) {
              const size_t col = size_t(hq + h) * hd + e;
              m[e] += double(qkv[size_t(r) * fused + col] + bias[col]);
            }
          }
          for (double& x : m) x /= double(used);
          model::rope_centre(c, a.data(), b.data(), m.data(), &want[size_t(h) * hd]);
        }
        test::DeviceBuffer<float> dqkv(qkv), dbias(bias), dmu(width);
        test::DeviceBuffer<double> da(a), db(b);
        test::DeviceBuffer<int32_t> dpos(pos);
        cuda::layers::key_centre(dqkv.ptr, dbias.ptr, dpos.ptr, n, hq, hkv, hd, rd, adjacent, da.ptr, db.ptr, dmu.ptr, nullptr);
        CUDA_OK(cudaDeviceSynchronize());
        const std::vector<float> got = dmu.download();
        // + 1e-9: the double rounding of terms up to ~1e4 (1e4 x 2^-52), should the pair's map cancel.
        for (uint32_t i = 0; i < width; ++i) ASSERT_LE(std::abs(got[i] - want[i]), 0x1p-23 * std::abs(want[i]) + 1e-9) << "element " << i;
      }
  // qkv_rope: centred = plain - mu for keys; q and v untouched. A bias, both pair layouts.
  std::vector<float> qkv(size_t(n) * fused), bias(fused), cs(size_t(ctx) * rope / 2), sn(cs.size()), mu(width);
  for (float& x : qkv) x = 3.0f * n01(rng);
  for (float& x : bias) x = n01(rng);
  for (float& x : mu) x = 5.0f * n01(rng);
  for (size_t i = 0; i < cs.size(); ++i) cs[i] = std::cos(0.01f * float(i)), sn[i] = std::sin(0.01f * float(i));
  std::vector<int32_t> pos(n);
  for (uint32_t r = 0; r < n; ++r) pos[r] = int32_t(3 * r % ctx);
  test::DeviceBuffer<float> dqkv(qkv), dbias(bias), dcs(cs), dsn(sn), dmu(mu);
  test::DeviceBuffer<int32_t> dpos(pos);
  for (const bool adjacent : {true, false}) {
    test::DeviceBuffer<float> q0(size_t(n) * hq * hd), k0(size_t(n) * width), v0(k0.n), q1(q0.n), k1(k0.n), v1(k0.n);
    cuda::layers::qkv_rope(dqkv.ptr, dbias.ptr, dpos.ptr, n, hq, hkv, hd, rope, dcs.ptr, dsn.ptr, adjacent, nullptr, q0.ptr, k0.ptr, v0.ptr,
                           nullptr);
    cuda::layers::qkv_rope(dqkv.ptr, dbias.ptr, dpos.ptr, n, hq, hkv, hd, rope, dcs.ptr, dsn.ptr, adjacent, dmu.ptr, q1.ptr, k1.ptr, v1.ptr,
                           nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(q1.download(), q0.download());
    EXPECT_EQ(v1.download(), v0.download());
    std::vector<float> plain = k0.download(), centred = k1.download();
    for (size_t i = 0; i < plain.size(); ++i) ASSERT_EQ(centred[i], plain[i] - mu[i % width]) << "element " << i << " adjacent " << adjacent;
  }
}

// Dense prompts (RunnerOptions::dense_prompts): a prompt's first step attends its own rows in bf16
// through cuDNN, so its logits are those of a bf16 cache (the float bounds at the top, against
// the CPU runner with a bf16 cache), whatever the spec stores; the decode steps after it read the
// packed cache, within the packed bound of check_against_cpu against the CPU runner of that spec.
TEST(CudaRunnerDense, PromptsAttendTheirRowsAndDecodeReadsTheCache) {
  TQ_REQUIRE_GPU();
  std::string why;
  if (!cuda::dense_prompt_available(&why)) GTEST_SKIP() << why;
  for (const auto& [name, shape_of] : std::vector<std::pair<const char*, TinyModelSpec>>{{"d64_gqa2", shape(256, 4, 2, 2, false, "llama")},
                                                                                       {"d128_qwen2", shape(512, 4, 1, 4, true, "qwen2")},
                                                                                       {"d128_qwen3", qwen3_shape()}}) {
    SCOPED_TRACE(name);
    const model::Model m = tiny(shape_of);
    std::mt19937 rng(11);
    std::vector<int> prompt(60);
    for (int& t : prompt) t = int(rng() % uint32_t(shape_of.vocab));
    const size_t V = size_t(shape_of.vocab), decode = 12, P = prompt.size() - decode;
    for (const char* spec_text : {"k3v2", "k4v4:centre"}) {
      SCOPED_TRACE(spec_text);
      const KvSpec spec = parse_kv_spec(spec_text);
      engine::Engine e(m, spec, {.device = engine::Device::kCuda, .context = 128, .max_chunk = 64, .dense_prompts = true});
      EXPECT_NE(e.runner().describe().find("densely by cuDNN"), std::string::npos) << e.runner().describe();
      const int s = e.add_sequence();
      std::vector<float> gpu = e.prefill(s, std::vector<int>(prompt.begin(), prompt.begin() + long(P)), true);
      ASSERT_EQ(gpu.size(), P * V);
      for (size_t i = P; i < prompt.size(); ++i) {
        const std::vector<float> l = e.forward({{s, {prompt[i]}, false}});
        gpu.insert(gpu.end(), l.begin(), l.end());
      }
      for (float x : gpu) ASSERT_TRUE(std::isfinite(x));
      const std::vector<float> bf16 = logits_of(m, parse_kv_spec("bf16"), engine::Device::kCpu, prompt, decode, 128, 64);
      const Divergence prompt_d = divergence(std::vector<float>(bf16.begin(), bf16.begin() + long(P * V)),
                                             std::vector<float>(gpu.begin(), gpu.begin() + long(P * V)), V);
      EXPECT_LT(prompt_d.kl_max, 1e-2);
      EXPECT_LT(prompt_d.kl_mean, 2e-3);
      EXPECT_EQ(prompt_d.agree, prompt_d.decided) << "top-1 differs from a bf16 cache's where its top-2 gap is clear";
      EXPECT_GT(prompt_d.decided, P / 2);
      // The decode steps: against the CPU runner of the spec (its prompt attended its quantized rows).
      const std::vector<float> cpu = logits_of(m, spec, engine::Device::kCpu, prompt, decode, 128, 64);
      const std::vector<float> fp32 = logits_of(m, parse_kv_spec("fp32"), engine::Device::kCpu, prompt, decode, 128, 64);
      const auto tail = [&](const std::vector<float>& x) { return std::vector<float>(x.end() - long(decode * V), x.end()); };
      const Divergence d = divergence(tail(cpu), tail(gpu), V), q = divergence(tail(fp32), tail(cpu), V);
      EXPECT_LT(d.kl_mean, 3 * q.kl_mean + 2e-3) << "the quantization's own KL: " << q.kl_mean;
      EXPECT_LT(d.kl_max, 3 * q.kl_max + 1e-2) << "the quantization's own KL: " << q.kl_max;
    }
  }
}

// A whole prompt longer than the packed prefill's chunk (kMaxPrefillChunk) in one dense step: its
// logits are a bf16 cache's, at every position, within the float bounds.
TEST(CudaRunnerDense, AWholePromptBeyondThePackedChunkInOneStep) {
  TQ_REQUIRE_GPU();
  std::string why;
  if (!cuda::dense_prompt_available(&why)) GTEST_SKIP() << why;
  const TinyModelSpec ms = shape(256, 4, 2, 2, false, "llama");
  const model::Model m = tiny(ms);
  std::mt19937 rng(5);
  std::vector<int> prompt(cuda::kMaxPrefillChunk + 100);
  for (int& t : prompt) t = int(rng() % uint32_t(ms.vocab));
  const uint32_t n = uint32_t(prompt.size()), ctx = n + 64;
  engine::Engine e(m, parse_kv_spec("k3v2"), {.device = engine::Device::kCuda, .context = ctx, .max_chunk = n, .dense_prompts = true});
  const int s = e.add_sequence();
  const std::vector<float> gpu = e.prefill(s, prompt, true);
  const std::vector<float> cpu = logits_of(m, parse_kv_spec("bf16"), engine::Device::kCpu, prompt, 0, ctx, 512);
  ASSERT_EQ(gpu.size(), cpu.size());
  const Divergence d = divergence(cpu, gpu, size_t(ms.vocab));
  EXPECT_LT(d.kl_max, 1e-2);
  EXPECT_LT(d.kl_mean, 2e-3);
  EXPECT_EQ(d.agree, d.decided);
  EXPECT_GT(d.decided, prompt.size() / 2);
  // Without dense prompts the runner refuses the step, naming the packed kernel's limit.
  engine::Engine packed(m, parse_kv_spec("k3v2"), {.device = engine::Device::kCuda, .context = ctx, .max_chunk = n});
  try {
    (void)packed.prefill(packed.add_sequence(), prompt, false);
    ADD_FAILURE() << "a step of " << n << " new tokens ran on the packed prefill";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("(1..2048)"), std::string::npos) << err.what();
  }
}

// A step holding whole prompts of different lengths (one ragged cuDNN call a layer) beside a
// sequence that decodes: each prompt's logits are a bf16 cache's within the float bounds, and the
// decoding sequence's token is the packed path's (its own engine, the same steps alone).
TEST(CudaRunnerDense, PromptsOfDifferentLengthsInOneStep) {
  TQ_REQUIRE_GPU();
  std::string why;
  if (!cuda::dense_prompt_available(&why)) GTEST_SKIP() << why;
  const TinyModelSpec ms = shape(256, 4, 2, 2, false, "llama");
  const model::Model m = tiny(ms);
  const size_t V = size_t(ms.vocab);
  std::mt19937 rng(21);
  const auto prompt = [&](size_t n) {
    std::vector<int> p(n);
    for (int& t : p) t = int(rng() % uint32_t(ms.vocab));
    return p;
  };
  const std::vector<int> a = prompt(30), b = prompt(45), c = prompt(20), d = prompt(12);
  const engine::EngineOptions o{.device = engine::Device::kCuda, .context = 128, .max_seqs = 4, .max_chunk = 128, .dense_prompts = true};
  engine::Engine e(m, parse_kv_spec("k3v2"), o);
  const int sc = e.add_sequence();
  (void)e.prefill(sc, c, false);
  const int sa = e.add_sequence(), sb = e.add_sequence(), sd = e.add_sequence();
  // a, b: one run of two prompts; c decodes (a packed group between runs); d: a run of its own.
  const std::vector<float> step = e.forward({{sa, a, true}, {sb, b, true}, {sc, {7}, false}, {sd, d, true}});
  ASSERT_EQ(step.size(), (a.size() + b.size() + 1 + d.size()) * V);
  size_t at = 0;
  for (const std::vector<int>* p : {&a, &b}) {
    const std::vector<float> gpu(step.begin() + long(at), step.begin() + long(at + p->size() * V));
    const std::vector<float> cpu = logits_of(m, parse_kv_spec("bf16"), engine::Device::kCpu, *p, 0, 128, 64);
    const Divergence dv = divergence(cpu, gpu, V);
    EXPECT_LT(dv.kl_max, 1e-2) << p->size() << " tokens";
    EXPECT_LT(dv.kl_mean, 2e-3) << p->size() << " tokens";
    EXPECT_EQ(dv.agree, dv.decided) << p->size() << " tokens";
    at += p->size() * V;
  }
  const std::vector<float> mine(step.begin() + long(at), step.begin() + long(at + V));
  at += V;
  const std::vector<float> gpu_d(step.begin() + long(at), step.end());
  const Divergence dd = divergence(logits_of(m, parse_kv_spec("bf16"), engine::Device::kCpu, d, 0, 128, 64), gpu_d, V);
  EXPECT_LT(dd.kl_max, 1e-2);
  // The decoding sequence: the same steps on an engine of its own.
  engine::Engine alone(m, parse_kv_spec("k3v2"), o);
  const int s = alone.add_sequence();
  (void)alone.prefill(s, c, false);
  const std::vector<float> ref = alone.forward({{s, {7}, false}});
  const Divergence dc = divergence(ref, mine, V);
  EXPECT_LT(dc.kl_max, 1e-3);
  for (float x : step) ASSERT_TRUE(std::isfinite(x));
}

// Dense prompts are refused where they cannot run: the CPU runner, specs with side buffers.
TEST(CudaRunnerDense, RefusedWhereTheyCannotRun) {
  const model::Model m = tiny(shape(256, 4, 2, 2, false, "llama"));
  try {
    engine::Engine e(m, parse_kv_spec("k3v2"), {.device = engine::Device::kCpu, .context = 64, .dense_prompts = true});
    ADD_FAILURE() << "the CPU runner took dense prompts";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA runner option"), std::string::npos) << e.what();
  }
  TQ_REQUIRE_GPU();
  try {
    engine::Engine e(m, parse_kv_spec("k3v2:sink=4:window=8"), {.device = engine::Device::kCuda, .context = 64, .dense_prompts = true});
    ADD_FAILURE() << "a spec with a side buffer took dense prompts";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("side buffer"), std::string::npos) << e.what();
  }
}

// What the runner does not implement is refused by name before any device call (so this runs
// without a GPU too).
TEST(CudaRunnerRefuses, PolicyKnobsAndFormatsWithoutKernels) {
  model::ModelConfig c;
  c.n_layers = 4, c.dim = 256, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64, c.vocab_size = 300;
  std::string why;
  for (const auto& [spec, expect] : std::vector<std::pair<const char*, const char*>>{{"fp16:ksim=int4", "ksim=int4"},
                                                                                      {"fp32", "fp32 caches"},
                                                                                      {"k3v2:prod", "prod keys"},
                                                                                      {"k5v2", "k5v2"},
                                                                                      {"k3v2:edge=1/fp32", "layer 0"},
                                                                                      {"k3v2:layers=4/k4v4", "names layer 4"}}) {
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

// K/V rows a cache cannot store (V rows of elements past fp16's 65504, norms past the packed
// formats' fp16 norm) are refused on both runners. The GPU's quantize_store skipped them silently
// (its error flag was never set), leaving the slots' old bytes for attention to read. V at ~2e4 a
// unit: some tokens' rows reach past 65504 and some do not, which the CPU runner sorts out first;
// on the GPU, a refused step must not spill into the next (the flag is cleared).
TEST(CudaRunnerRefuses, RowsTheCacheCannotStore) {
  TinyModelSpec s = shape(256, 4, 2, 2, false, "llama");
  s.scaled = "attn_v.weight", s.scale = 2e4f;
  const model::Model m = tiny(s);
  const auto refused = [&](engine::Engine& e, int token) {  // a one-token prompt on a sequence of its own
    const int seq = e.add_sequence();
    bool threw = false;
    try {
      e.prefill(seq, {token}, false);
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what()).find("fp16"), std::string::npos) << err.what();
      threw = true;
    }
    e.remove_sequence(seq);
    return threw;
  };
  engine::Engine cpu(m, parse_kv_spec("fp16"), {.device = engine::Device::kCpu, .context = 64, .max_chunk = 16});
  int bad = -1, good = -1;
  for (int t = 0; t < s.vocab && (bad < 0 || good < 0); ++t) {
    int& first = refused(cpu, t) ? bad : good;
    if (first < 0) first = t;
  }
  ASSERT_GE(bad, 0) << "no token's V row reaches past fp16 at this scale";
  ASSERT_GE(good, 0) << "every token's V row reaches past fp16 at this scale";
  engine::Engine k3(m, parse_kv_spec("k3v2"), {.device = engine::Device::kCpu, .context = 64, .max_chunk = 16});
  EXPECT_TRUE(refused(k3, good)) << "a V row of norm ~1.6e5 in k3v2 (its norm is stored as fp16)";
  TQ_REQUIRE_GPU();
  engine::Engine gpu(m, parse_kv_spec("fp16"), {.device = engine::Device::kCuda, .context = 64, .max_chunk = 16});
  EXPECT_TRUE(refused(gpu, bad));
  EXPECT_FALSE(refused(gpu, good)) << "the refused step's flag spilled into the next";
  EXPECT_TRUE(refused(gpu, bad));
  engine::Engine gpu_k3(m, parse_kv_spec("k3v2"), {.device = engine::Device::kCuda, .context = 64, .max_chunk = 16});
  EXPECT_TRUE(refused(gpu_k3, good));
}

// A model with q/k norms after q/k biases (none is known) runs on the CPU only: refused naming the
// architecture, and --device auto picks the CPU for it. qwen3 and gemma3 are taken.
TEST(CudaRunnerRefuses, QkNormsAfterBiases) {
  const auto config = [](model::Arch a) {
    model::ModelConfig c;
    c.n_layers = 4, c.dim = 256, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64, c.vocab_size = 300, c.arch = a;
    return c;
  };
  model::ModelConfig biased = config(model::Arch::Qwen3);
  biased.qk_norm = biased.has_qkv_bias = true;
  std::string why;
  EXPECT_FALSE(cuda::can_run(biased, parse_kv_spec("fp16"), &why));
  EXPECT_NE(why.find("architecture 'qwen3' is not implemented in the CUDA runner with q/k/v biases before its q/k norms"), std::string::npos)
      << why;
  EXPECT_THROW(engine::choose_device("cuda", biased, {parse_kv_spec("fp16")}), Error);
  EXPECT_EQ(engine::choose_device("auto", biased, {parse_kv_spec("fp16")}), engine::Device::kCpu);
  model::ModelConfig qwen3 = config(model::Arch::Qwen3), gemma = config(model::Arch::Gemma3);
  qwen3.qk_norm = true;
  gemma.qk_norm = gemma.post_norms = true, gemma.ffn_act = model::FfnAct::GeluTanh, gemma.embed_scale = 16.0f;
  gemma.sliding_window = 512, gemma.swa_pattern = 6;
  if (cuda::device_available(nullptr))
    for (const model::ModelConfig& c : {qwen3, gemma}) {
      why.clear();
      EXPECT_TRUE(cuda::can_run(c, parse_kv_spec("fp16"), &why)) << model::arch_name(c.arch) << ": " << why;
    }
}

// tq perplexity's --gpu-memory: the engines compared in lockstep share the fraction (1/n each),
// their pools get what it leaves, and the figures are those of the default pool's run.
TEST(CudaRunnerEval, GpuMemoryIsSharedByTheEnginesAndChangesNoFigure) {
  TQ_REQUIRE_GPU();
  const model::Model m = tiny(shape(256, 4, 2, 2, false, "llama"));
  std::mt19937 rng(3);
  std::vector<int> tokens(300);
  for (int& t : tokens) t = int(rng() % 300);
  const std::vector<KvSpec> specs = {parse_kv_spec("k3v2"), parse_kv_spec("k4v4:sink=4:window=16")};
  engine::PerplexityOptions o{.ctx = 128, .chunk = 32, .reference = "fp16", .device = engine::Device::kCuda};
  const engine::PerplexityResult plain = engine::evaluate_perplexity(m, tokens, specs, o);
  o.gpu_memory = 0.3;
  const engine::PerplexityResult shared = engine::evaluate_perplexity(m, tokens, specs, o);
  EXPECT_EQ(plain.reference.ppl, shared.reference.ppl);
  for (size_t i = 0; i < specs.size(); ++i) EXPECT_EQ(plain.rows[i].ppl, shared.rows[i].ppl) << specs[i].text;
  o.gpu_memory = 1e-5;  // too little for three copies of even this model's scratch
  try {
    engine::evaluate_perplexity(m, tokens, specs, o);
    ADD_FAILURE() << "a 1e-5 share of the GPU was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is shared by 3 engines"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tq
