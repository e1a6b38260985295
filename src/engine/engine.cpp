#include "tq/engine/engine.h"

#include <algorithm>

#include "tq/backend/cpu/runner.h"
#include "tq/check.h"
#ifdef TQ_WITH_CUDA
#include "tq/backend/cuda/runner.h"
#endif

namespace tq::engine {
namespace {

std::unique_ptr<ModelRunner> make_runner(const model::Model& m, const KvSpec& spec, const EngineOptions& o) {
  if (o.device == Device::kCuda) {
#ifdef TQ_WITH_CUDA
    return cuda::make_model_runner(m, spec, Engine::runner_options(o));
#else
    throw Error("--device cuda: this build has no CUDA (it is built where nvcc is found, with -DTQ_CUDA=ON)");
#endif
  }
  return std::make_unique<cpu::CpuModelRunner>(m, spec, Engine::runner_options(o));
}

}  // namespace

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
  TQ_CHECK(name == "auto", "--device cuda: this build has no CUDA (it is built where nvcc is found, with -DTQ_CUDA=ON)");
  return Device::kCpu;
#endif
}

EngineOptions Engine::resolve(const model::ModelConfig& c, uint32_t page_size, EngineOptions o) {
  if (o.context == 0) o.context = uint32_t(std::max(1, c.max_seq));
  TQ_CHECK(o.max_chunk >= 1 && o.max_seqs >= 1, "max_chunk and max_seqs must be at least 1");
  TQ_CHECK(page_size >= 1, "page size must be at least 1");
  if (o.num_pages == 0) o.num_pages = o.max_seqs * ((o.context + page_size - 1) / page_size);
  return o;
}

RunnerOptions Engine::runner_options(const EngineOptions& o) {
  return RunnerOptions{.context = o.context, .num_pages = o.num_pages, .max_chunk = o.max_chunk, .threads = o.threads};
}

Engine::Engine(const model::Model& m, const KvSpec& spec, const EngineOptions& opts)
    : Engine(make_runner(m, spec, resolve(m.config, spec.format.page_size, opts)), spec.format.page_size, opts) {}

Engine::Engine(std::unique_ptr<ModelRunner> runner, uint32_t page_size, const EngineOptions& opts)
    : opts_(resolve(runner->config(), page_size, opts)), blocks_(opts_.num_pages, page_size), runner_(std::move(runner)) {}

int Engine::add_sequence() {
  const int seq = blocks_.add_sequence();
  runner_->add_sequence(seq);
  return seq;
}

void Engine::remove_sequence(int seq) { blocks_.remove(seq); }
void Engine::reset_sequence(int seq) { blocks_.reset(seq); }

size_t Engine::kv_bytes(int seq) const {
  return blocks_.block_table(seq).size() * runner_->page_bytes() + runner_->side_bytes();
}

double Engine::bits_per_element() const {
  const auto& c = config();
  const double elements_per_page = 2.0 * c.n_layers * c.n_kv_heads * c.head_dim * blocks_.page_size();
  return 8.0 * double(runner_->page_bytes()) / elements_per_page;
}

std::vector<float> Engine::forward(const std::vector<BatchItem>& batch) {
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
  TQ_CHECK(N >= 1 && N <= opts_.max_chunk, "a forward pass takes 1..{} tokens, got {}", opts_.max_chunk, N);
  // Schedule: pages for every item, all or nothing.
  blocks_.reserve(reserve);
  std::vector<StepSeq> step;
  for (const BatchItem& it : batch) {
    const uint32_t n = uint32_t(it.tokens.size());
    step.push_back(StepSeq{it.seq, it.tokens.data(), n, blocks_.len(it.seq) - n, &blocks_.block_table(it.seq), it.all_logits});
  }
  try {
    return runner_->forward(step);
  } catch (...) {
    // A failed step leaves no trace: the positions it reserved are given back.
    for (const StepSeq& s : step) blocks_.truncate(s.seq, s.first);
    throw;
  }
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
