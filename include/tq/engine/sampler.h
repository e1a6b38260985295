// The next token from a row of logits, as vLLM / llama.cpp / Hugging Face users expect it:
// temperature first, then top-k, then top-p (nucleus), then min-p, over the softmax; greedy
// (the argmax) when the temperature is 0. Ties, in the argmax and at every cut-off, go to the
// lowest token id, so a run is reproducible from its seed alone. The draw is one uniform number
// u in [0, 1) and the token is where u falls in the kept tokens' cumulative probabilities in id
// order: the rule the GPU runners' sampling kernel follows, so a seed gives the same text there.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tq/common.h"

namespace tq::engine {

// Tokens less likely than this times the most likely one are never drawn: together they weigh
// below 2^-40 * vocab (1e-7 at 152K tokens), and the GPU kernel's fixed-point masses end there.
inline constexpr double kMinSampleWeight = 0x1.0p-40;

// What SamplingParams::validate throws: the message names the value, `field` the parameter.
class InvalidSampling : public Error {
 public:
  InvalidSampling(const char* field, const std::string& what) : Error(what), field(field) {}
  const char* field;  // "temperature", "top_k", "top_p" or "min_p"
};

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy; > 0 divides the logits (below 1 sharpens, above flattens)
  int top_k = 0;             // keep the k most likely tokens; 0: off
  float top_p = 1.0f;        // keep the smallest set of most likely tokens whose probability reaches p; 1: off
  float min_p = 0.0f;        // keep tokens at least min_p times as likely as the most likely one; 0: off
  uint64_t seed = 0;

  // Throws InvalidSampling naming the value: temperature NaN, infinite or negative; top_k negative;
  // top_p outside (0, 1]; min_p outside [0, 1].
  void validate() const;
  bool greedy() const { return temperature == 0.0f; }
};

// One sequence's sampling in a step, for runners that sample on their device: the parameters and
// the uniform number drawn for it (Sampler::draw).
struct SampleArgs {
  SamplingParams params;  // validated
  double u = 0;           // in [0, 1); ignored when greedy
};

class Sampler {
 public:
  // Validates `p` (throws tq::Error) and seeds the generator with p.seed.
  explicit Sampler(const SamplingParams& p);

  const SamplingParams& params() const { return p_; }

  // A token id in [0, logits.size()): sample(logits, draw()). Greedy calls draw no random number,
  // sampling ones draw exactly one, so the same seed and the same logits give the same tokens.
  // Logits may be -inf (a token that can never be chosen); throws tq::Error naming the position
  // of a NaN or +inf logit, and on an empty row or a row of -inf only.
  int sample(std::span<const float> logits) { return sample(logits, draw()); }
  // The token the draw u in [0, 1) picks: the first kept token, in id order, whose cumulative
  // probability exceeds u (u is ignored when greedy). Same errors as sample().
  int sample(std::span<const float> logits, double u);
  // The next uniform number in [0, 1) from the seeded generator (the top 53 bits of a
  // mt19937_64 draw, the same on every standard library); 0, drawing nothing, when greedy.
  double draw();
  // This sampler's next draw, for a runner that samples on its device.
  SampleArgs next_args() { return {p_, draw()}; }

  // The distribution sample() draws from after the filters: p[vocab] sums to 1, zero outside
  // the kept tokens; one-hot at the argmax when greedy. Same errors as sample().
  void probabilities(std::span<const float> logits, std::vector<float>& p) const;

  // A kept token and its weight: exp((logit - max logit) / temperature), not normalized.
  struct Candidate {
    int id;
    double w;
  };

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<Candidate> kept_;  // scratch of sample(): [kept tokens], in id order
};

// The log-probabilities OpenAI's `logprobs` report: of `token` and of the `top` most likely tokens
// (more likely first, the lower id first among equals), under the model's own distribution,
// log_softmax(logits), before temperature and the filters (vLLM's default). Same errors as
// Sampler::sample(); `token` must be in the row.
struct TokenLogprobs {
  float logprob = 0;                         // of the token
  std::vector<std::pair<int, float>> top;    // [min(top, vocab)] (id, logprob)
};
TokenLogprobs token_logprobs(std::span<const float> logits, int token, int top);

}  // namespace tq::engine
