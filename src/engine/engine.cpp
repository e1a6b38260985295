#include "tq/engine/engine.h"

#include <algorithm>
#include <random>
#include <thread>

#include "tq/backend/cpu/runner.h"
#include "tq/check.h"
#include "tq/engine/key_centre.h"
#ifdef TQ_WITH_CUDA
#include "tq/backend/cuda/runner.h"
#endif

namespace tq::engine {
namespace {
constexpr const char* kNoCuda = "--device cuda: this build has no CUDA (it is built where nvcc is found, with -DTQ_CUDA=ON)";
}  // namespace

std::unique_ptr<ModelRunner> make_runner(const model::Model& m, const KvSpec& spec, const EngineOptions& o) {
  if (o.device == Device::kCuda) {
#ifdef TQ_WITH_CUDA
    return cuda::make_model_runner(m, spec, Engine::runner_options(o, spec));
#else
    throw Error(kNoCuda);
#endif
  }
  return std::make_unique<cpu::CpuModelRunner>(m, spec, Engine::runner_options(o, spec));
}

std::unique_ptr<ModelRunner> make_random_runner(const model::ModelConfig& c, const KvSpec& spec, const EngineOptions& o, uint64_t seed) {
  TQ_CHECK(o.device == Device::kCuda, "random weights of a named shape run on the GPU only (--device cuda); use a model file on the CPU");
#ifdef TQ_WITH_CUDA
  return cuda::make_random_model_runner(c, spec, Engine::runner_options(o, spec), seed);
#else
  (void)c, (void)spec, (void)seed;
  throw Error(kNoCuda);
#endif
}

const char* device_name(Device d) { return d == Device::kCuda ? "cuda" : "cpu"; }

Device choose_device(const std::string& name, const model::ModelConfig& c, const std::vector<KvSpec>& specs, std::string* note) {
  TQ_CHECK(name == "auto" || name == "cpu" || name == "cuda", "--device must be auto, cpu or cuda, got '{}'", name);
  if (note) note->clear();
  if (name == "cpu") return Device::kCpu;
#ifdef TQ_WITH_CUDA
  std::string why;
  for (const KvSpec& s : specs)
    if (!cuda::can_run(c, s, &why)) break;
  if (why.empty()) return Device::kCuda;
  TQ_CHECK(name == "auto", "--device cuda: {}", why);
  if (note && cuda::device_available()) *note = why + "; running on the CPU";
  return Device::kCpu;
#else
  TQ_CHECK(name == "auto", "{}", kNoCuda);
  return Device::kCpu;
#endif
}

EngineOptions Engine::resolve(const model::ModelConfig& c, uint32_t page_size, EngineOptions o) {
  if (o.context == 0) o.context = uint32_t(std::max(1, c.max_seq));
  o.threads = std::min(o.threads, std::max(1u, std::thread::hardware_concurrency()));  // a thread each, started at once
  TQ_CHECK(o.max_chunk >= 1 && o.max_seqs >= 1, "max_chunk and max_seqs must be at least 1");
  TQ_CHECK(page_size >= 1, "page size must be at least 1");
  // The centre's mean turns every pair at every position of the span once, at start-up.
  TQ_CHECK(o.centre_span <= (1u << 20), "centre_span {} is over the 2^20 positions a key centre's RoPE mean is taken over", o.centre_span);
  if (o.num_pages == 0) {
    const uint64_t pages = uint64_t(o.max_seqs) * ((uint64_t(o.context) + page_size - 1) / page_size);
    TQ_CHECK(pages <= (uint64_t(1) << 31), "{} sequences of {} tokens need {} KV pages of {}, more than one pool indexes (2^31)", o.max_seqs,
             o.context, pages, page_size);
    o.num_pages = uint32_t(pages);
  }
  return o;
}

RunnerOptions Engine::runner_options(const EngineOptions& o, const KvSpec& spec) {
  const uint32_t centre_step = spec.policy.key_centre ? std::min(kCentreTokens, o.context ? o.context : kCentreTokens) : 0;
  return RunnerOptions{.context = o.context, .num_pages = o.num_pages, .max_chunk = std::max(o.max_chunk, centre_step), .max_seqs = o.max_seqs,
                       .threads = o.threads, .exact_products = o.exact_products, .eager = o.eager, .products = o.products,
                       .batch_invariant = o.batch_invariant, .dense_prompts = o.dense_prompts, .gpu_memory = o.gpu_memory, .prefix_tails = o.prefix_tails,
                       .centre_span = o.centre_span, .swa_full = o.swa_full};
}

Engine::Engine(const model::Model& m, const KvSpec& spec, const EngineOptions& opts)
    : Engine(make_runner(m, spec, resolve(m.config, spec.format.page_size, opts)), spec.format.page_size, opts, &m) {}

Engine::Engine(std::unique_ptr<ModelRunner> runner, uint32_t page_size, const EngineOptions& opts)
    : Engine(std::move(runner), page_size, opts, nullptr) {}

Engine::Engine(std::unique_ptr<ModelRunner> runner, uint32_t page_size, const EngineOptions& opts, const model::Model* m)
    : opts_(resolve(runner->config(), page_size, opts)), runner_(std::move(runner)), blocks_(runner_->num_pages(), page_size) {
  opts_.num_pages = runner_->num_pages();
  TQ_CHECK(opts_.max_chunk <= runner_->max_chunk(), "the engine's step of {} tokens (max_chunk) is over its runner's, {}", opts_.max_chunk,
           runner_->max_chunk());
  calibrate_centre(m);
}

template <class Fn>
auto Engine::run(const std::vector<BatchItem>& batch, Fn&& fn, uint32_t most) {
  const std::vector<StepSeq> step = schedule(batch, most ? most : opts_.max_chunk);
  try {
    return fn(step);
  } catch (...) {
    for (const StepSeq& s : step) blocks_.truncate(s.seq, s.first);
    throw;
  }
}

void Engine::calibrate_centre(const model::Model* m) {
  if (!runner_->spec().policy.key_centre) return;
  // At most the runner's step (runner_options makes it kCentreTokens), the context and the pool;
  // fewer tokens when one is smaller (the centre is then a mean over fewer keys, still the same
  // for every request of this engine).
  const uint32_t pool = uint32_t(std::min<uint64_t>(uint64_t(blocks_.allocator().num_pages()) * blocks_.page_size(), UINT32_MAX));
  const uint32_t n = std::min({kCentreTokens, runner_->max_chunk(), opts_.context, pool});
  const int seq = add_sequence();
  try {
    const std::vector<BatchItem> batch{BatchItem{seq, key_centre_tokens(m, config().vocab_size, n), false}};
    run(batch, [&](const std::vector<StepSeq>& step) { return runner_->forward(step); }, n);
  } catch (...) {
    remove_sequence(seq);
    throw;
  }
  remove_sequence(seq);
}

int Engine::add_sequence() {
  const int seq = blocks_.add_sequence();
  try {
    runner_->add_sequence(seq);
  } catch (...) {
    blocks_.remove(seq);
    throw;
  }
  return seq;
}

int Engine::add_sequence(std::span<const int> tokens, uint32_t limit) { return add_cached_sequence(blocks_.match_prefix(tokens, limit)); }

int Engine::add_cached_sequence(std::span<const int32_t> pages) {
  const int seq = blocks_.add_cached_sequence(pages);
  try {
    runner_->add_sequence(seq);
    if (blocks_.needs_tails() && !pages.empty())
      runner_->restore_tail(uint32_t(blocks_.tail_of(pages.back())), seq, uint32_t(pages.size()) * blocks_.page_size());
  } catch (...) {
    blocks_.remove(seq);
    throw;
  }
  return seq;
}

std::string Engine::enable_prefix_cache() {
  const bool side = runner_->side_bytes() > 0 || runner_->ring_bytes() > 0;
  if (runner_->side_bytes() > 0 && runner_->tail_slots() == 0)
    return fmt::format(
        "KV spec {} keeps its sink and window tokens in per-sequence side buffers, which pages do not carry, and the engine was "
        "built with no prefix tails to keep them (prefix_tails 0)",
        runner_->spec().text);
  if (side && runner_->tail_slots() == 0)
    return "the model's sliding-window layers keep their pages in per-sequence window rings, which the pool does not carry, and the "
           "engine was built with no prefix tails to keep them (prefix_tails 0; or keep every position in the pool: swa_full)";
  // The spec keys the hash (pages of another format never match), and a key drawn once per process
  // keeps a client from choosing tokens whose pages collide with another request's.
  static const uint64_t key = (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  blocks_.enable_prefix_cache(std::hash<std::string>{}(runner_->spec().text) ^ key, side ? runner_->tail_slots() : 0);
  return "";
}

bool Engine::cache_prefix(int seq, std::span<const int> tokens, uint32_t upto) {
  blocks_.cache_full_pages(seq, tokens);
  if (!blocks_.needs_tails()) return false;
  const uint32_t end = std::min(blocks_.len(seq), upto) / blocks_.page_size() * blocks_.page_size();
  if (end == 0) return false;
  const int32_t slot = blocks_.attach_tail(seq, tokens, end);
  if (slot < 0) return false;
  bool saved = false;
  try {
    saved = runner_->save_tail(seq, end, uint32_t(slot));
  } catch (...) {  // the slot (maybe another prefix's, reused) holds no rows of this page
    blocks_.detach_tail(slot);
    throw;
  }
  if (!saved) blocks_.detach_tail(slot);
  return saved;
}

void Engine::remove_sequence(int seq) { blocks_.remove(seq); }
void Engine::reset_sequence(int seq) { blocks_.reset(seq); }

size_t Engine::kv_bytes(int seq) const {
  return blocks_.block_table(seq).size() * runner_->page_bytes() + runner_->side_bytes() + runner_->ring_bytes();
}

double Engine::bits_per_element() const {
  const auto& c = config();
  const double elements_per_page = 2.0 * c.n_layers * c.n_kv_heads * c.head_dim * blocks_.page_size();
  return 8.0 * double(runner_->page_bytes() + runner_->ring_page_bytes()) / elements_per_page;
}

std::vector<StepSeq> Engine::schedule(const std::vector<BatchItem>& batch, uint32_t most) {
  const int vocab = config().vocab_size;
  size_t N = 0;
  std::vector<std::pair<int, uint32_t>> reserve;  // [items] (sequence, new tokens)
  for (const BatchItem& it : batch) {
    const uint32_t len = blocks_.len(it.seq);
    TQ_CHECK(!it.tokens.empty(), "sequence {}: empty batch item", it.seq);
    TQ_CHECK(size_t(len) + it.tokens.size() <= opts_.context,
             "sequence {} would reach {} tokens, beyond the context of {} (shorten the prompt or raise --ctx)", it.seq,
             size_t(len) + it.tokens.size(), opts_.context);
    for (int t : it.tokens) TQ_CHECK(t >= 0 && t < vocab, "token id {} is outside the vocabulary ({})", t, vocab);
    N += it.tokens.size();
    reserve.emplace_back(it.seq, uint32_t(it.tokens.size()));
  }
  TQ_CHECK(N >= 1 && N <= most, "a forward pass takes 1..{} tokens, got {}", most, N);
  blocks_.reserve(reserve);
  std::vector<StepSeq> step;
  for (const BatchItem& it : batch) {
    const uint32_t n = uint32_t(it.tokens.size());
    step.push_back(StepSeq{it.seq, it.tokens.data(), n, blocks_.len(it.seq) - n, &blocks_.block_table(it.seq), it.all_logits});
  }
  return step;
}

std::vector<float> Engine::forward(const std::vector<BatchItem>& batch) {
  return run(batch, [&](const std::vector<StepSeq>& step) { return runner_->forward(step); });
}

namespace {
// Throws naming the sequence of a row the runner could not sample (-1).
std::vector<int> all_sampled(std::vector<int> ids, const std::vector<StepSeq>& step) {
  size_t row = 0;
  for (const StepSeq& s : step)
    for (uint32_t j = s.all_logits ? 0 : s.n - 1; j < s.n; ++j, ++row)
      TQ_CHECK(ids[row] >= 0, "sequence {}: its logits hold a NaN or +inf (or only -inf): nothing to sample", s.seq);
  return ids;
}
}  // namespace

std::vector<int> Engine::forward_sample(const std::vector<BatchItem>& batch, const std::vector<SampleArgs>& args, bool rows_may_fail) {
  return run(batch, [&](const std::vector<StepSeq>& step) {
    std::vector<int> ids = runner_->forward_sample(step, args);
    return rows_may_fail ? ids : all_sampled(std::move(ids), step);
  });
}

std::vector<int> Engine::forward_greedy(const std::vector<BatchItem>& batch) {
  return run(batch, [&](const std::vector<StepSeq>& step) { return all_sampled(runner_->forward_greedy(step), step); });
}

std::vector<float> Engine::prefill(int s, const std::vector<int>& tokens, bool all_logits) {
  TQ_CHECK(!tokens.empty(), "nothing to prefill");
  TQ_CHECK(size_t(seq_len(s)) + tokens.size() <= opts_.context, "the prompt ({} tokens) is longer than the context ({} tokens)",
           size_t(seq_len(s)) + tokens.size(), opts_.context);
  std::vector<float> out;
  for (size_t i = 0; i < tokens.size(); i += opts_.max_chunk) {
    BatchItem it;
    it.seq = s;
    it.tokens.assign(tokens.begin() + long(i), tokens.begin() + long(std::min(tokens.size(), i + opts_.max_chunk)));
    it.all_logits = all_logits;
    std::vector<float> l = forward({it});
    if (all_logits)
      out.insert(out.end(), l.begin(), l.end());
    else
      out = std::move(l);
  }
  return out;
}

}  // namespace tq::engine
