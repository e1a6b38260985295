// The scheduler's own cost per step: the engine and scheduler bookkeeping of a step (admission,
// page reservation, batch building, prefix-cache hashing, events) over a runner that does no
// work, at N running requests in steady decode. Compare with the model's decode step at that
// batch (bench/results): the serving issue's target is under 5% of it at 256 running requests.
//
//   build/release/bench/bench_scheduler [--page 16] [--prompt 1024]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "tq/serve/scheduler.h"

namespace {

using namespace tq;

// A runner of the Llama-3.1-8B shape's vocabulary that returns token ids at once: what is left
// of a step is the scheduler's and the engine's own work.
class NullRunner : public engine::ModelRunner {
 public:
  NullRunner(uint32_t pages, const KvSpec& spec) : pages_(pages), spec_(spec) {
    cfg_.vocab_size = 128256;
    cfg_.max_seq = 1 << 17;
  }
  const model::ModelConfig& config() const override { return cfg_; }
  const KvSpec& spec() const override { return spec_; }
  std::string describe() const override { return "null"; }
  void add_sequence(int) override {}
  std::vector<float> forward(const std::vector<engine::StepSeq>&) override { return {}; }
  uint32_t num_pages() const override { return pages_; }
  uint32_t max_chunk() const override { return UINT32_MAX; }
  size_t page_bytes() const override { return 1; }
  size_t side_bytes() const override { return 0; }

 protected:
  std::vector<int> sample_step(const std::vector<engine::StepSeq>& step, const std::vector<engine::SampleArgs>&) override {
    std::vector<int> ids(step.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = 1000 + int((step[i].first + step[i].n) % 5000);
    return ids;
  }

 private:
  model::ModelConfig cfg_;
  uint32_t pages_;
  KvSpec spec_;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  uint32_t page = 16, prompt = 1024;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--page")) page = uint32_t(std::stoul(argv[i + 1]));
    if (!std::strcmp(argv[i], "--prompt")) prompt = uint32_t(std::stoul(argv[i + 1]));
  }
  const KvSpec spec = parse_kv_spec(fmt::format("k3v2:page={}", page));
  fmt::print("| running | median us/step | p90 us/step |\n|---|---|---|\n");
  for (uint32_t n : {1u, 16u, 64u, 256u, 1024u}) {
    const uint32_t ctx = prompt + 4096, pages = n * ((ctx + page - 1) / page);
    engine::Engine e(std::make_unique<NullRunner>(pages, spec), page, {.context = ctx, .max_seqs = n, .max_chunk = std::max(n, 2048u)});
    serve::Scheduler s(e, [](int) { return false; }, {.max_num_seqs = n});
    for (uint32_t i = 0; i < n; ++i) {
      std::vector<int> p(prompt);
      for (uint32_t j = 0; j < prompt; ++j) p[j] = int((i * 7919 + j * 31) % 120000);  // no shared prefixes
      s.add({std::move(p), {}, 4000, {}});  // none ends before the timed steps do (the first decode while the last prefill)
    }
    // Prefill, in chunks, until a step is all decode: every request admitted, past its prompt, and
    // given one token by the step. (Counting the tokens generated overall stopped at the first n
    // tokens, which the requests prefilled first produce while most still wait.)
    const auto pure_decode = [&] {
      const serve::SchedulerStats a = s.stats();
      s.step();
      const serve::SchedulerStats b = s.stats();
      return b.running == n && b.waiting == 0 && b.computed_tokens - a.computed_tokens == n && b.generated_tokens - a.generated_tokens == n;
    };
    for (uint32_t warm = 0; !pure_decode(); ++warm)
      if (warm > 4000) {  // every request's 4,000 tokens: it cannot come now
        fmt::print(stderr, "bench_scheduler: no step of {} decodes alone after {} steps (--prompt {} too long for the budget?)\n", n, warm,
                   prompt);
        return 1;
      }
    std::vector<double> us;
    for (int k = 0; k < 300; ++k) {
      const serve::SchedulerStats a = s.stats();
      const auto t0 = std::chrono::steady_clock::now();
      s.step();
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      const serve::SchedulerStats b = s.stats();
      if (b.computed_tokens - a.computed_tokens != n || b.generated_tokens - a.generated_tokens != n) {
        fmt::print(stderr, "bench_scheduler: timed step {} at {} running was not a step of {} decodes\n", k, n, n);
        return 1;
      }
    }
    std::vector<double> sorted = us;
    std::sort(sorted.begin(), sorted.end());
    fmt::print("| {} | {:.1f} | {:.1f} |\n", n, median(us), sorted[sorted.size() * 9 / 10]);
  }
}
