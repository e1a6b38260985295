// The serving scheduler: iteration-level continuous batching of many requests over one engine and
// its shared page pool (vLLM v1's scheduler, nano-vllm's Scheduler). Each step() is one engine step
// that mixes the running requests' decodes with chunks of prompts under a token budget (chunked
// prefill); requests join and leave between steps.
//
//   order      first come, first served: running requests are served oldest first, waiting ones
//              are admitted in arrival order and a request never overtakes an older waiting one.
//   preemption when a running request needs a page and none is free, the newest running request
//              gives its pages back and waits again at its place in the arrival order; when it
//              is readmitted its prompt and the tokens it generated are recomputed (prefix hits
//              included), and its sampler goes on from where it was, so its text does not change.
//   speculation a request with an ngram spec drafts from its own text each decode step (with a
//              draft spec, on the draft model, in a sequence it holds while it runs); its step
//              item carries the last token and the drafts, every row is sampled, the kept
//              drafts and the target's token become events of that step, and the cache is taken
//              back past the kept ones (speculative.h). Plain and speculative requests share
//              steps; drafts count against the token budget and the pages like any token.
//   prefix     with prefix caching, a new or readmitted request first takes the full pages of the
//              longest cached prefix of its tokens (BlockManager::match_prefix) and computes only
//              the rest. Specs with sink/window side buffers hit only at pages with a tail
//              (Engine::cache_prefix): one is kept where a request's prompt is computed and where
//              it ends or is preempted, at the last page boundary, and where a request's tokens
//              leave cached pages it matched past their last tail (its prompt chunks stop there
//              once): a shared system prompt is shared from the second question on.
//
// One thread drives a Scheduler; service.h puts it behind a thread-safe queue for the server.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tq/check.h"
#include "tq/engine/engine.h"
#include "tq/engine/sampler.h"
#include "tq/engine/speculative.h"

namespace tq::serve {

struct Request {
  std::vector<int> prompt;           // [n >= 1] token ids
  engine::SamplingParams sampling;   // validated by add()
  uint32_t max_tokens = 16;          // most tokens to generate (>= 1)
  // Speculative decoding: by prompt lookup (ngram), or on the draft model (draft; the scheduler's
  // SchedulerOptions::draft, else check() refuses it).
  std::optional<engine::SpeculativeSpec> speculation;
  // OpenAI's logprobs: -1 none; else each generated token's log-probability and those of the
  // `logprobs` most likely tokens (0..kMaxLogprobs). Its steps take the logits to the host. With
  // speculation, each kept draft's from its verification row: the target model's own values.
  int logprobs = -1;
  // The prompt's own log-probabilities (OpenAI's "echo" with "logprobs"; vLLM's prompt_logprobs):
  // -1 none; else of each prompt token but the first given the ones before it, with the
  // `prompt_logprobs` most likely tokens there (0..kMaxLogprobs). Such a request computes its
  // whole prompt (no prefix hit) in chunks of at most kPromptLogitRows tokens a step, whose logits
  // go to the host; with it, max_tokens may be 0 (score the prompt, generate nothing).
  int prompt_logprobs = -1;
};
constexpr int kMaxLogprobs = 20;  // vLLM's default cap
// The prompt positions whose logits one step takes to the host for prompt_logprobs (all requests
// together): 256 rows of a 128K vocabulary are 128 MiB.
constexpr uint32_t kPromptLogitRows = 256;

// Why a request can never run (Scheduler::check), and the request field to blame: the server
// answers 400 and names it as the OpenAI error's "param".
class Refused : public Error {
 public:
  Refused(std::string param, const std::string& what, std::string code = {}) : Error(what), param(std::move(param)), code(std::move(code)) {}
  std::string param;  // "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "speculative" or "logprobs"
  std::string code;   // OpenAI's error code where it has one: context_length_exceeded
};

enum class Finish { kNone, kStop, kLength, kCancelled, kError };
// OpenAI's finish_reason: "stop", "length"; "cancelled" and "error" for the others.
const char* finish_name(Finish f);

// What a step did for one request: a generated token, or its end (or both: the last token
// of a request that reaches max_tokens comes with kLength).
struct Event {
  uint64_t id = 0;
  int token = -1;           // -1: none this step
  Finish finish = Finish::kNone;
  std::string error;        // kError: why
  std::optional<engine::TokenLogprobs> logprobs;  // the token's, when the request asked (Request::logprobs)
  // Request::prompt_logprobs: on the request's first event after its prompt is computed (with its
  // first token, or its end), the logprobs of prompt tokens 1 .. n-1 in order (token 0 has none).
  std::vector<engine::TokenLogprobs> prompt_logprobs;
};

struct SchedulerOptions {
  uint32_t max_num_seqs = 16;         // running requests at once (<= the engine's max_seqs)
  uint32_t max_batched_tokens = 0;    // token budget of one step; 0: the engine's max_chunk
  bool prefix_caching = true;         // share the full pages of cached prefixes
  // The draft model's engine, for requests whose speculation is "draft": a running one drafts on a
  // sequence of its own there (ModelDrafter), given back when it ends or is preempted. Its
  // max_seqs must reach max_num_seqs, its vocabulary be the target's (check_draft_vocabulary).
  engine::Engine* draft = nullptr;
};

// Counters for /metrics; totals since construction.
struct SchedulerStats {
  uint32_t running = 0, waiting = 0;
  uint32_t pages_total = 0, pages_free = 0;  // free: unreferenced, cached prefix pages included
  uint32_t pages_cached = 0;                 // unreferenced pages still holding a cached prefix
  // Prefix tails (specs with side buffers): slots, those holding a tail, and the bytes of one.
  uint32_t tails_total = 0, tails_used = 0;
  uint64_t tail_bytes = 0;
  uint64_t prefix_branch_tails = 0;  // tails kept where a request's tokens left matched pages that had none
  uint64_t steps = 0, prompt_tokens = 0, generated_tokens = 0;
  uint64_t computed_tokens = 0;  // positions run through the model: prompts, decodes and recomputes
  uint64_t prefix_queried_tokens = 0, prefix_hit_tokens = 0;  // over admissions
  uint64_t preemptions = 0, finished = 0, cancelled = 0;
  // Speculative decoding, over verification items (a request's step that carried drafts).
  uint64_t spec_verifications = 0, spec_drafted = 0, spec_accepted = 0;
  uint64_t spec_failures = 0;  // requests whose draft model failed and that went on without speculation
};

class Scheduler {
 public:
  // `is_stop(id)`: whether generating `id` ends a request (the token is not passed on). Prefix
  // caching is turned off when the engine's KV spec keeps tokens outside its pages (sink and
  // window side buffers) and the engine has no prefix tails: see prefix_caching_note().
  Scheduler(engine::Engine& e, std::function<bool(int)> is_stop, const SchedulerOptions& o);
  ~Scheduler();

  const SchedulerOptions& options() const { return opts_; }
  bool prefix_caching() const { return opts_.prefix_caching; }
  // Why prefix caching is off although asked for; empty when it is on or was not asked for.
  const std::string& prefix_caching_note() const { return prefix_note_; }

  // Throws Refused naming the value and the field when the request can never run: an empty
  // prompt, a token outside the vocabulary, max_tokens 0 (unless it scores its prompt), prompt +
  // max_tokens beyond the context, more pages than the whole pool holds, invalid sampling
  // parameters, a speculation this server cannot do, logprobs or prompt_logprobs out of range.
  // Reads only what construction fixed, so another thread may call it while step() runs.
  void check(const Request& r) const;
  // check(), then queues the request; returns its id: `id` when not 0 (the caller's, unique and
  // never reused), else the next of the scheduler's own.
  uint64_t add(Request r, uint64_t id = 0);
  // Ends a waiting or running request at the next step with `why` (its pages go back to the pool):
  // kCancelled, counted in SchedulerStats::cancelled, or kStop (a stop string its server found in
  // the text). Unknown or finished ids are ignored: a cancel may race with the end.
  void cancel(uint64_t id, Finish why = Finish::kCancelled);
  // Ends every waiting and running request with Finish::kError and `why`, their pages back to the
  // pool uncached: after a step that threw past its own handling, which may have left a sequence
  // half-updated (drafts not yet taken back). Returns their events.
  std::vector<Event> fail_all(const std::string& why);

  bool idle() const { return running_.empty() && waiting_.empty() && cancels_.empty(); }
  // One engine step over the running requests and those admitted now. Returns the events of the
  // requests it touched, cancellations included; nothing when idle.
  std::vector<Event> step();

  SchedulerStats stats() const;

 private:
  struct Seq;
  // The step being built: one batch item per request, the token budget left, and the pages the
  // reservation will take.
  struct Plan {
    std::vector<engine::BatchItem> batch;
    std::vector<Seq*> items;                 // [batch] the request of each item
    std::vector<std::vector<int>> drafts;    // [batch] the drafts an item carries after its last token
    uint32_t budget = 0, planned = 0;
    uint32_t logit_rows = 0;                 // prompt positions whose logits go to the host (prompt_logprobs)
  };
  // The tokens s may take this step from n: prompt_logprobs chunks within kPromptLogitRows.
  uint32_t chunk_for(const Seq* s, uint32_t n, const Plan& p) const;
  // s's next n uncomputed tokens, and the drafts after them, taking `pages` new pages.
  void take(Seq* s, uint32_t n, uint32_t pages, Plan& p, std::vector<int> drafts = {});
  // The drafts a decoding request carries this step: within its limits, `budget` and the engine's step.
  std::vector<int> drafts_for(Seq* s, uint32_t budget);
  // A step's result for one request: its tokens in order, each passed on or ending it.
  void emit(Seq* s, const std::vector<int>& tokens, std::vector<Event>& out);
  void admit(Plan& p);
  void drop_finished();
  void preempt(Seq* s);
  void release(Seq* s, bool cache);
  void finish(Seq* s, Finish f, std::vector<Event>& out, int token = -1, std::string error = {});
  void to_waiting(Seq* s);
  void start_drafter(Seq* s);  // a draft-model request's drafter, when it starts running

  engine::Engine& e_;
  std::function<bool(int)> is_stop_;
  SchedulerOptions opts_;
  std::string prefix_note_;
  uint64_t next_id_ = 1;
  std::vector<std::unique_ptr<Seq>> running_;  // admission order of arrival: oldest first
  std::deque<std::unique_ptr<Seq>> waiting_;   // arrival order
  std::vector<std::pair<uint64_t, Finish>> cancels_;  // (request, why)
  SchedulerStats stats_;
};

}  // namespace tq::serve
