// Speculative decoding: a drafter guesses the next tokens, the target model scores them all in one
// engine step, and the longest prefix the target agrees with is kept; the rest is taken back from
// the cache (Engine::truncate). Exact by construction:
//   greedy    a drafted token is kept when it is the target's own pick at that position, so the
//             text is the one decoding without speculation gives (given logits that do not depend
//             on how many tokens a step carries, as on the CPU runner);
//   sampling  a drafted token d is kept with probability p(d), the target's sampling distribution
//             at that position (the drafter is deterministic, so its own probability of d is 1);
//             on rejection the token is drawn from p without d, renormalized. The kept token is
//             distributed exactly as p (Leviathan et al. 2023, "Fast Inference from Transformers
//             via Speculative Decoding", Algorithm 1, with a one-hot draft distribution).
// generate() (generation.h) runs this loop when GenerateOptions::speculation is set.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "tq/engine/engine.h"
#include "tq/engine/sampler.h"
#include "tq/model/tokenizer.h"

namespace tq::engine {

// Proposes the next tokens of a text it is told about token by token.
class Drafter {
 public:
  virtual ~Drafter() = default;
  // The text grew by these tokens (the prompt first, then every token kept).
  virtual void extend(std::span<const int> tokens) = 0;
  // Up to `max` guesses of the tokens that follow the text; fewer or none when it has no guess.
  virtual std::vector<int> draft(uint32_t max) = 0;
};

// Prompt lookup (Saxena 2023; transformers' prompt_lookup_num_tokens, llama.cpp's lookup): the
// last n tokens of the text (n from max_ngram down to min_ngram) are looked up at their latest
// earlier occurrence in the text, and what followed them there is the draft. Strong where the
// answer copies from the prompt (summaries, edits, RAG answers, code); silent elsewhere.
class NgramDrafter : public Drafter {
 public:
  // Throws tq::Error unless 1 <= min_ngram <= max_ngram <= 8.
  NgramDrafter(uint32_t min_ngram, uint32_t max_ngram);
  void extend(std::span<const int> tokens) override;
  std::vector<int> draft(uint32_t max) override;

 private:
  uint64_t key(size_t end, uint32_t n) const;  // hash of text[end - n, end)
  uint32_t min_n_, max_n_;
  std::vector<int> text_;
  // Per n: hash of an n-gram -> the end (one past) of its latest occurrence, over the n-grams that
  // end before the text's last token (the text's own suffix is never its match).
  std::vector<std::unordered_map<uint64_t, uint32_t>> last_;
};

// A draft model (Leviathan et al. 2023; llama.cpp's --model-draft, transformers' assistant_model):
// a smaller model with the target's tokenizer drafts greedily on its own engine, KV spec and cache.
// Its cache keeps the text it was told and the drafts of the last step; when the text grows by
// drafts the target kept, those stay, and the rest is taken back (Engine::truncate), so each step
// feeds only the tokens the draft has not seen: the target's own token, or a rejected tail.
class ModelDrafter : public Drafter {
 public:
  // `e`: the draft model's engine, which the drafter uses alone (one sequence); must outlive it.
  explicit ModelDrafter(Engine& e);
  ~ModelDrafter() override;  // its sequence goes back to the engine (a server makes one per request)
  ModelDrafter(const ModelDrafter&) = delete;
  ModelDrafter& operator=(const ModelDrafter&) = delete;
  void extend(std::span<const int> tokens) override;
  std::vector<int> draft(uint32_t max) override;

 private:
  Engine& e_;
  int seq_;
  std::vector<int> text_;  // the text told so far
  std::vector<int> fed_;   // the tokens in the draft's cache: [e_.seq_len(seq_)]
};

// Throws tq::Error unless a draft model can draft for the target: the same vocabulary, token by
// token (the drafts are token ids of the target's tokenizer). Names the first token that differs.
void check_draft_vocabulary(const model::Tokenizer& target, const model::Tokenizer& draft);

// "ngram", "ngram:k=8", "ngram:k=4:n=3:min=2", "draft:k=4" -> options; throws tq::Error naming a
// bad part. ngram: prompt lookup (NgramDrafter); draft: a draft model (ModelDrafter), which the
// caller loads.
struct SpeculativeSpec {
  enum class Source { kNgram, kDraftModel };
  Source source = Source::kNgram;
  uint32_t max_draft = 8;    // k: most drafted tokens per step (1..8)
  bool adaptive = true;      // draft length follows the acceptance (fixed=1 turns it off)
  uint32_t max_ngram = 3, min_ngram = 2;
  std::string text;
};
SpeculativeSpec parse_speculative_spec(const std::string& text);
// The n-gram drafter of an ngram spec; throws tq::Error for a draft spec (its model is the caller's).
std::unique_ptr<Drafter> make_drafter(const SpeculativeSpec& s);

struct SpeculativeStats {
  uint64_t steps = 0;          // verification passes (engine steps that carried drafts)
  uint64_t drafted = 0;        // tokens drafted and scored
  uint64_t accepted = 0;       // drafted tokens kept
  uint64_t plain_steps = 0;    // steps without a draft (nothing to guess)
  double acceptance() const { return drafted ? double(accepted) / double(drafted) : 0; }
  // Tokens a verification pass gives on average: its accepted drafts plus the target's own token.
  double tokens_per_step() const { return steps ? double(accepted + steps) / double(steps) : 0; }
};

// What a verification step decided: the target kept drafts[0, kept) and then picks `next`.
struct Verdict {
  uint32_t kept = 0;
  int next = -1;
};
// Greedy: ids[i] is the target's own pick after token i of the step (the last token, then each
// draft: [1 + drafts]); a draft is kept while it is that pick.
Verdict verify_greedy(std::span<const int> ids, std::span<const int> drafts);
// Sampling: logits [1 + drafts][vocab] of the same rows. Draft d is kept when a draw is below
// p(d), else the token is drawn from p without d, renormalized; after the last kept draft, from p.
Verdict verify_sampled(std::span<const float> logits, std::span<const int> drafts, Sampler& sampler);

// What generate() needs to speculate: the drafter (already told the prompt), the draft length rule
// and the running statistics.
struct Speculation {
  Speculation(Drafter* d, uint32_t max_draft, bool adaptive) : drafter(d), max_draft(max_draft), adaptive(adaptive) {}
  Drafter* drafter;
  uint32_t max_draft;  // 1..8
  bool adaptive;
  SpeculativeStats stats;
  // The next draft length: adaptive, it grows by 2 after a step that kept every draft and shrinks
  // by 1 otherwise (transformers' "heuristic" schedule for assisted generation), within 1..max_draft.
  uint32_t length() const;
  void update(uint32_t drafted, uint32_t accepted);

 private:
  uint32_t current_ = 4;
};

}  // namespace tq::engine
