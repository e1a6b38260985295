// The runner interface's own code (include/tq/engine/runner.h): what every backend's runner
// inherits. A library of its own (tq_runner), which the backends link to implement the interface
// and the engine links to drive it, so that no backend depends on the engine.
#include "tq/engine/runner.h"

#include <fmt/format.h>

#include <span>

#include "tq/check.h"

namespace tq::engine {

size_t sampled_rows(const std::vector<StepSeq>& step) {
  size_t rows = 0;
  for (const StepSeq& s : step) rows += s.all_logits ? s.n : 1;
  return rows;
}

std::vector<int> ModelRunner::forward_sample(const std::vector<StepSeq>& step, const std::vector<SampleArgs>& args) {
  const size_t rows = sampled_rows(step);
  TQ_CHECK(args.size() == rows, "a step of {} sequences ({} logits rows) got sampling arguments for {}", step.size(), rows, args.size());
  for (const SampleArgs& a : args) {
    a.params.validate();
    TQ_CHECK(a.u >= 0.0 && a.u < 1.0, "a sampling draw must be in [0, 1), got {}", a.u);
  }
  return sample_step(step, args);
}

bool ModelRunner::save_tail(int, uint32_t, uint32_t) { throw Error(fmt::format("the {} runner keeps no prefix tails", describe())); }
void ModelRunner::restore_tail(uint32_t, int, uint32_t) { throw Error(fmt::format("the {} runner keeps no prefix tails", describe())); }

std::vector<int> ModelRunner::sample_step(const std::vector<StepSeq>& step, const std::vector<SampleArgs>& args) {
  const std::vector<float> logits = forward(step);
  const size_t vocab = size_t(config().vocab_size);
  std::vector<int> ids;
  for (const StepSeq& s : step) {
    for (uint32_t j = s.all_logits ? 0 : s.n - 1; j < s.n; ++j) {
      const size_t row = ids.size();
      try {
        ids.push_back(Sampler(args[row].params).sample(std::span<const float>(logits).subspan(row * vocab, vocab), args[row].u));
      } catch (const Error&) {  // a NaN or +inf logit, or only -inf: this row's failure, not the step's
        ids.push_back(-1);
      }
    }
  }
  return ids;
}

}  // namespace tq::engine
