#include "tq/serve/scheduler.h"

#include <algorithm>

#include "tq/check.h"

namespace tq::serve {

const char* finish_name(Finish f) {
  switch (f) {
    case Finish::kStop: return "stop";
    case Finish::kLength: return "length";
    case Finish::kCancelled: return "cancelled";
    case Finish::kError: return "error";
    case Finish::kNone: break;
  }
  return "";
}

struct Scheduler::Seq {
  uint64_t id = 0;
  std::vector<int> tokens;  // [prompt + generated]
  uint32_t prompt_len = 0, max_tokens = 0, generated = 0;
  engine::Sampler sampler;
  int seq = -1;             // the engine's sequence while running
  uint32_t computed = 0;    // tokens whose K/V are in the cache (the engine's seq_len)
  Finish done = Finish::kNone;
  // Told every token of `tokens`; null without speculation, and for a draft-model request while
  // it is not running (its drafter holds a sequence of the draft engine).
  std::unique_ptr<engine::Drafter> drafter;
  std::optional<engine::Speculation> spec;
  bool model_draft = false;  // drafts on the draft model
  bool tail_due = false;     // admitted, its prompt (or recompute) not computed yet: a tail when it is
  uint32_t tail_at = 0;      // that tail's bound (Engine::cache_prefix's upto), due after the step's tokens; 0: none
  // Specs with tails: where its tokens leave cached pages that it matched past their last tail (a
  // shared system prompt before another question); its prompt chunks stop there once, and a tail
  // is kept there. 0: none.
  uint32_t branch_at = 0;
  int logprobs = -1;  // Request::logprobs
  int prompt_logprobs = -1;  // Request::prompt_logprobs
  std::vector<engine::TokenLogprobs> prompt_lp;  // [position p] of prompt token p + 1, as computed so far
  bool prompt_lp_sent = false;                   // on an event already
  // Positions of its prompt whose logits it still needs (each step's chunk takes them to the host).
  bool wants_prompt_rows() const { return prompt_logprobs >= 0 && !prompt_lp_sent && prompt_lp.size() + 1 < prompt_len; }

  Seq(uint64_t i, Request&& r)
      : id(i), tokens(std::move(r.prompt)), max_tokens(r.max_tokens), sampler(r.sampling), logprobs(r.logprobs),
        prompt_logprobs(r.prompt_logprobs) {
    prompt_len = uint32_t(tokens.size());
    if (!r.speculation) return;
    model_draft = r.speculation->source == engine::SpeculativeSpec::Source::kDraftModel;
    if (!model_draft) {
      drafter = engine::make_drafter(*r.speculation);
      drafter->extend(tokens);
    }
    spec.emplace(drafter.get(), r.speculation->max_draft, r.speculation->adaptive);
  }
};

Scheduler::Scheduler(engine::Engine& e, std::function<bool(int)> is_stop, const SchedulerOptions& o)
    : e_(e), is_stop_(std::move(is_stop)), opts_(o) {
  const engine::EngineOptions& eo = e.options();
  if (opts_.max_batched_tokens == 0) opts_.max_batched_tokens = eo.max_chunk;
  TQ_CHECK(opts_.max_num_seqs >= 1 && opts_.max_num_seqs <= eo.max_seqs,
           "--max-num-seqs must be in 1..{} (the sequences the engine was built for), got {}", eo.max_seqs, opts_.max_num_seqs);
  TQ_CHECK(opts_.max_batched_tokens <= eo.max_chunk, "the step's token budget ({}) is above the engine's largest step ({})",
           opts_.max_batched_tokens, eo.max_chunk);
  TQ_CHECK(opts_.max_batched_tokens >= opts_.max_num_seqs,
           "the step's token budget ({}) must be at least --max-num-seqs ({}): every running request decodes each step",
           opts_.max_batched_tokens, opts_.max_num_seqs);
  if (opts_.prefix_caching) {
    prefix_note_ = e_.enable_prefix_cache();
    opts_.prefix_caching = prefix_note_.empty();
  }
  stats_.pages_total = e_.blocks().allocator().num_pages();
  if (opts_.draft) {
    TQ_CHECK(opts_.draft->options().max_seqs >= opts_.max_num_seqs,
             "the draft model's engine holds {} sequences, fewer than --max-num-seqs ({}): each running request drafts on its own",
             opts_.draft->options().max_seqs, opts_.max_num_seqs);
    TQ_CHECK(opts_.draft->config().vocab_size == e_.config().vocab_size, "the draft model's vocabulary has {} tokens, the model's {}",
             opts_.draft->config().vocab_size, e_.config().vocab_size);
  }
}

Scheduler::~Scheduler() = default;

namespace {
// TQ_CHECK for a request field: throws Refused(param, message).
template <typename... Args>
void refuse_unless(bool ok, const char* param, fmt::format_string<Args...> f, Args&&... args) {
  if (!ok) throw Refused(param, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace

void Scheduler::check(const Request& r) const {
  const engine::EngineOptions& eo = e_.options();
  const size_t n = r.prompt.size();
  refuse_unless(n >= 1, "prompt", "the prompt is empty");
  const int vocab = e_.config().vocab_size;
  for (int t : r.prompt) refuse_unless(t >= 0 && t < vocab, "prompt", "token id {} is outside the vocabulary ({})", t, vocab);
  refuse_unless(r.max_tokens >= 1 || r.prompt_logprobs >= 0, "max_tokens", "max_tokens must be at least 1 (0 only to score the prompt: echo with logprobs)");
  if (n + r.max_tokens > eo.context)
    throw Refused("max_tokens",
                  fmt::format("this model's maximum context length is {} tokens, but {} were asked for ({} in the prompt, {} to generate)",
                              eo.context, n + r.max_tokens, n, r.max_tokens),
                  "context_length_exceeded");
  // The last generated token is never fed back, so prompt + max_tokens - 1 positions at most.
  const uint32_t P = e_.blocks().page_size();
  const size_t positions = n + std::max<uint32_t>(r.max_tokens, 1) - 1, pages = (positions + P - 1) / P;
  refuse_unless(pages <= stats_.pages_total, "max_tokens", "the request needs {} KV pages ({} tokens), more than the whole pool holds ({} pages)",
                pages, positions, stats_.pages_total);
  try {
    r.sampling.validate();
  } catch (const engine::InvalidSampling& e) {
    throw Refused(e.field, e.what());
  }
  refuse_unless(!r.speculation || r.speculation->source == engine::SpeculativeSpec::Source::kNgram || opts_.draft, "speculative",
                "speculative '{}': this server has no draft model (tq serve --draft FILE); it drafts by prompt lookup (ngram)",
                r.speculation ? r.speculation->text : "");
  refuse_unless(r.logprobs >= -1 && r.logprobs <= kMaxLogprobs, "logprobs", "logprobs must be in 0..{}, got {}", kMaxLogprobs, r.logprobs);
  refuse_unless(r.prompt_logprobs >= -1 && r.prompt_logprobs <= kMaxLogprobs, "logprobs", "the prompt's logprobs must be in 0..{}, got {}",
                kMaxLogprobs, r.prompt_logprobs);
}

uint64_t Scheduler::add(Request r, uint64_t id) {
  check(r);
  if (id == 0) id = next_id_++;
  stats_.prompt_tokens += r.prompt.size();
  waiting_.push_back(std::make_unique<Seq>(id, std::move(r)));
  return id;
}

void Scheduler::cancel(uint64_t id, Finish why) {
  TQ_CHECK(why == Finish::kCancelled || why == Finish::kStop, "Scheduler::cancel ends a request as cancelled or stopped");
  cancels_.emplace_back(id, why);
}

std::vector<Event> Scheduler::fail_all(const std::string& why) {
  std::vector<Event> out;
  for (auto& s : running_)
    if (s->done == Finish::kNone) finish(s.get(), Finish::kError, out, -1, why);
  for (auto& w : waiting_) finish(w.get(), Finish::kError, out, -1, why);
  running_.clear();
  waiting_.clear();
  cancels_.clear();
  return out;
}

void Scheduler::release(Seq* s, bool cache) {
  if (s->seq < 0) return;
  if (cache) {
    if (s->tail_at) e_.cache_prefix(s->seq, s->tokens, s->tail_at);
    e_.cache_prefix(s->seq, s->tokens);  // a later turn of the conversation starts from here
  }
  s->tail_at = 0;
  e_.remove_sequence(s->seq);
  s->seq = -1;
  s->computed = 0;
  if (s->model_draft && s->spec) {  // its draft sequence goes back too; readmission starts a new one
    s->drafter.reset();
    s->spec->drafter = nullptr;
  }
}

void Scheduler::start_drafter(Seq* s) {
  if (!s->model_draft || !s->spec || s->drafter) return;
  try {
    s->drafter = std::make_unique<engine::ModelDrafter>(*opts_.draft);
  } catch (const Error&) {  // no sequence for it in the draft engine: this request goes on without speculation
    s->spec.reset();
    ++stats_.spec_failures;
    return;
  }
  s->drafter->extend(s->tokens);
  s->spec->drafter = s->drafter.get();
}

void Scheduler::finish(Seq* s, Finish f, std::vector<Event>& out, int token, std::string error) {
  out.push_back(Event{s->id, token, f, std::move(error), std::nullopt, {}});
  s->done = f;
  release(s, f != Finish::kError);
  ++stats_.finished;
  if (f == Finish::kCancelled) ++stats_.cancelled;
}

void Scheduler::to_waiting(Seq* s) {
  // Back at its place in the arrival order (ids grow with arrival).
  auto it = running_.begin();
  while (it->get() != s) ++it;
  std::unique_ptr<Seq> owned = std::move(*it);
  running_.erase(it);
  auto pos = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& w) { return w->id > s->id; });
  waiting_.insert(pos, std::move(owned));
}

void Scheduler::preempt(Seq* s) {
  release(s, true);
  to_waiting(s);
  ++stats_.preemptions;
}

uint32_t Scheduler::chunk_for(const Seq* s, uint32_t n, const Plan& p) const {
  return s->wants_prompt_rows() ? std::min(n, kPromptLogitRows - p.logit_rows) : n;
}

void Scheduler::take(Seq* s, uint32_t n, uint32_t pages, Plan& p, std::vector<int> drafts) {
  const auto first = s->tokens.begin() + s->computed;
  const bool prompt_rows = s->wants_prompt_rows();
  engine::BatchItem item{s->seq, std::vector<int>(first, first + n), !drafts.empty() || prompt_rows};
  if (prompt_rows) p.logit_rows += n;
  item.tokens.insert(item.tokens.end(), drafts.begin(), drafts.end());
  p.budget -= uint32_t(item.tokens.size());
  p.batch.push_back(std::move(item));
  p.items.push_back(s);
  p.drafts.push_back(std::move(drafts));
  p.planned += pages;
}

std::vector<int> Scheduler::drafts_for(Seq* s, uint32_t budget) {
  if (!s->spec || !s->drafter || budget < 2) return {};
  // Every kept draft and the target's token after them are generated tokens: within max_tokens
  // (and so within the context and the pages check() allowed).
  const uint32_t room = std::min({s->spec->length(), s->max_tokens - s->generated - 1, budget - 1, e_.options().max_chunk - 1});
  if (!room) return {};
  try {
    return s->drafter->draft(room);
  } catch (const Error&) {  // the draft model failed (its pool, its device): the request goes on without speculation
    s->drafter.reset();
    s->spec.reset();
    ++stats_.spec_failures;
    return {};
  }
}

void Scheduler::emit(Seq* s, const std::vector<int>& tokens, std::vector<Event>& out) {
  for (int t : tokens) {
    if (is_stop_(t)) return finish(s, Finish::kStop, out);
    s->tokens.push_back(t);
    ++s->generated;
    ++stats_.generated_tokens;
    if (s->drafter) s->drafter->extend({&t, 1});
    if (s->generated >= s->max_tokens) return finish(s, Finish::kLength, out, t);
    out.push_back(Event{s->id, t, Finish::kNone, {}, std::nullopt, {}});
  }
}

void Scheduler::drop_finished() {
  std::erase_if(running_, [](const auto& s) { return s->done != Finish::kNone; });
}

void Scheduler::admit(Plan& p) {
  const BlockManager& bm = e_.blocks();
  const uint32_t P = bm.page_size();
  while (p.budget > 0 && running_.size() < opts_.max_num_seqs && !waiting_.empty()) {
    Seq* w = waiting_.front().get();
    // At least the last token is computed: its logits give the next token. A request scoring its
    // prompt computes all of it (a cached page has no logits).
    const uint32_t limit = w->wants_prompt_rows() ? 0 : uint32_t(w->tokens.size()) - 1;
    uint32_t matched = 0;
    const std::vector<int32_t> hit = bm.match_prefix(w->tokens, limit, &matched);
    uint32_t revive = 0;
    for (int32_t p : hit) revive += bm.allocator().refcount(p) == 0;
    const uint32_t start = uint32_t(hit.size()) * P;
    const uint32_t branch = matched > hit.size() ? matched * P : 0;
    const uint32_t n = chunk_for(w, std::min({uint32_t(w->tokens.size()) - start, p.budget, branch ? branch - start : UINT32_MAX}), p);
    if (n == 0) break;  // this step's prompt logits are taken: it waits its turn (nobody overtakes it)
    const uint32_t alloc = (start + n + P - 1) / P - uint32_t(hit.size());
    if (alloc + revive + p.planned > bm.allocator().free_pages()) break;  // first come, first served: nobody overtakes it
    w->seq = e_.add_cached_sequence(hit);
    w->computed = e_.seq_len(w->seq);
    w->tail_due = true;
    w->branch_at = branch;
    start_drafter(w);
    stats_.prefix_queried_tokens += w->tokens.size();
    stats_.prefix_hit_tokens += w->computed;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    take(w, n, alloc, p);
  }
}

std::vector<Event> Scheduler::step() {
  std::vector<Event> out;
  for (const auto& [id, why] : cancels_) {
    for (auto& s : running_)
      if (s->id == id && s->done == Finish::kNone) finish(s.get(), why, out);
    for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
      if ((*it)->id == id) {
        finish(it->get(), why, out);
        waiting_.erase(it);
        break;
      }
  }
  cancels_.clear();
  drop_finished();
  if (running_.empty() && waiting_.empty()) return out;

  const BlockManager& bm = e_.blocks();
  Plan plan;
  plan.budget = opts_.max_batched_tokens;
  // Running requests, oldest first; a request short of pages preempts the newest ones.
  for (size_t i = 0; i < running_.size() && plan.budget > 0; ++i) {
    Seq* s = running_[i].get();
    // A prompt chunk or a decode with drafts leaves a token of the budget for each running request
    // after it (the budget is at least max_num_seqs): an older request's prefill never stalls the
    // decodes of the newer ones (Sarathi-Serve's stall-free batching).
    const uint32_t after = uint32_t(running_.size() - i - 1);
    uint32_t n = std::min(uint32_t(s->tokens.size()) - s->computed, plan.budget > after ? plan.budget - after : plan.budget);
    if (s->branch_at > s->computed) n = std::min(n, s->branch_at - s->computed);
    n = chunk_for(s, n, plan);
    if (n == 0) continue;  // this step's prompt logits are taken: its next chunk comes next step
    std::vector<int> drafts = s->computed + 1 == s->tokens.size() && plan.budget > after ? drafts_for(s, plan.budget - after)
                                                                                          : std::vector<int>{};
    uint32_t need = bm.pages_needed(s->seq, n + uint32_t(drafts.size()));
    if (!drafts.empty() && need + plan.planned > bm.allocator().free_pages()) {  // drafts never preempt anyone
      drafts.clear();
      need = bm.pages_needed(s->seq, n);
    }
    while (need + plan.planned > bm.allocator().free_pages() && running_.size() > i + 1) preempt(running_.back().get());
    if (need + plan.planned > bm.allocator().free_pages()) {
      preempt(s);  // the newest itself: it waits for the older ones to finish
      break;
    }
    take(s, n, need, plan, std::move(drafts));
  }
  admit(plan);
  const std::vector<engine::BatchItem>& batch = plan.batch;
  const std::vector<Seq*>& items = plan.items;
  if (batch.empty()) return out;

  // Each item samples its last row, or every row when it carries drafts (a verification), on the
  // runner's device; a sampled verification needs the logits (rejection sampling), and then the
  // whole step is sampled on the host from them, by the same rule.
  std::vector<bool> samples(batch.size());
  bool on_host = false;
  for (size_t i = 0; i < batch.size(); ++i) {
    samples[i] = items[i]->computed + batch[i].tokens.size() - plan.drafts[i].size() == items[i]->tokens.size();
    on_host |= !plan.drafts[i].empty() && !items[i]->sampler.params().greedy();
    on_host |= samples[i] && items[i]->logprobs >= 0;  // its log-probabilities come from the logits
    on_host |= items[i]->wants_prompt_rows();         // and its prompt's
  }
  std::vector<int> ids;      // [rows] on the device
  std::vector<float> logits; // [rows][vocab] on the host
  try {
    if (on_host) {
      logits = e_.forward(batch);
    } else {
      std::vector<engine::SampleArgs> args;  // greedy placeholders for prompt chunks that sample nothing
      for (size_t i = 0; i < batch.size(); ++i) {
        if (!plan.drafts[i].empty())
          args.resize(args.size() + batch[i].tokens.size());  // greedy verification
        else
          args.push_back(samples[i] ? items[i]->sampler.next_args() : engine::SampleArgs{});
      }
      ids = e_.forward_sample(batch, args, true);  // a row it cannot sample is -1: that request's failure (below)
    }
  } catch (const Error& err) {
    for (Seq* s : items) finish(s, Finish::kError, out, -1, err.what());
    drop_finished();
    return out;
  }
  ++stats_.steps;
  const size_t V = size_t(e_.config().vocab_size);
  size_t row = 0;  // the item's first row
  for (size_t i = 0; i < items.size(); ++i) {
    Seq* s = items[i];
    const std::vector<int>& drafts = plan.drafts[i];
    const size_t rows = batch[i].all_logits ? batch[i].tokens.size() : 1;  // drafts, or the prompt's logprobs
    const std::span<const float> item_logits = on_host ? std::span<const float>(logits).subspan(row * V, rows * V) : std::span<const float>();
    const std::span<const int> item_ids = on_host ? std::span<const int>() : std::span<const int>(ids).subspan(row, rows);
    row += rows;
    const uint32_t n = uint32_t(batch[i].tokens.size() - drafts.size());
    stats_.computed_tokens += batch[i].tokens.size();
    const size_t item_first = out.size();  // this request's events of the step
    if (on_host && drafts.empty() && s->wants_prompt_rows())
      for (uint32_t r = 0; r < rows; ++r) {  // row r: position computed + r, whose logits score the prompt token after it
        const uint32_t pos = s->computed + r;
        if (pos + 1 < s->prompt_len && pos == s->prompt_lp.size())  // a recompute (preemption) keeps the first
          s->prompt_lp.push_back(engine::token_logprobs(item_logits.subspan(r * V, V), s->tokens[pos + 1], s->prompt_logprobs));
      }
    s->computed += n;
    // The last row: the distribution after the item's last token (a verification's rows are all read below).
    const std::span<const float> last_row = on_host && drafts.empty() ? item_logits.subspan((rows - 1) * V, V) : item_logits;
    if (s->branch_at && s->computed == s->branch_at) {  // the side ring holds the rows there now
      stats_.prefix_branch_tails += e_.cache_prefix(s->seq, s->tokens, s->branch_at);
      s->branch_at = 0;
    }
    if (!samples[i]) {
      e_.cache_pages(s->seq, s->tokens);
      continue;
    }
    // Hands the prompt's logprobs to the request's first event, once.
    const auto hand_prompt_logprobs = [&] {
      if (s->prompt_logprobs < 0 || s->prompt_lp_sent || out.size() == item_first) return;
      out[item_first].prompt_logprobs = std::move(s->prompt_lp);
      s->prompt_lp_sent = true;
    };
    if (s->max_tokens == 0) {  // it scored its prompt: nothing to generate
      finish(s, Finish::kLength, out);
      hand_prompt_logprobs();
      continue;
    }
    if (s->tail_due) {
      // The prompt is in: a request repeating it matches up to its last token but one (admit()),
      // so a tail goes at the last page boundary there (extending it matches that far too), once
      // the step's tokens are in `tokens` (kept drafts are in the cache already).
      s->tail_at = s->computed - 1;
      s->tail_due = false;
    }
    engine::Verdict v;  // no drafts: kept 0, and the token sampled
    try {  // a NaN or +inf logit (on the host, or -1 from the device) ends this request with an error, the others go on
      if (drafts.empty())
        v.next = on_host ? s->sampler.sample(last_row) : item_ids[0];
      else
        v = on_host ? engine::verify_sampled(item_logits, drafts, s->sampler) : engine::verify_greedy(item_ids, drafts);
      TQ_CHECK(v.next >= 0, "its logits hold a NaN or +inf (or only -inf): nothing to sample");
    } catch (const Error& err) {
      finish(s, Finish::kError, out, -1, err.what());
      continue;
    }
    if (!drafts.empty()) {
      // The cache keeps the kept drafts up to a stop token among them (it ends the request, unfed).
      uint32_t fed = 0;
      while (fed < v.kept && !is_stop_(drafts[fed])) ++fed;
      e_.truncate(s->seq, s->computed + fed);
      s->computed += fed;
      s->spec->update(uint32_t(drafts.size()), fed);
      ++stats_.spec_verifications, stats_.spec_drafted += drafts.size(), stats_.spec_accepted += fed;
    }
    std::vector<int> emitted(drafts.begin(), drafts.begin() + v.kept);
    emitted.push_back(v.next);
    const size_t first_event = out.size();
    emit(s, emitted, out);  // an end releases the pages, caching the full ones
    // Event j carries emitted[j] (a stop token ends the request unsent, with an event of no
    // token); its distribution is the verification's row j (a kept draft's, then the next
    // token's), or the last row without drafts: the target's own, whatever the drafts proposed.
    if (s->logprobs >= 0)
      for (size_t j = 0; first_event + j < out.size() && out[first_event + j].token >= 0; ++j)
        out[first_event + j].logprobs =
            engine::token_logprobs(drafts.empty() ? last_row : item_logits.subspan(j * V, V), out[first_event + j].token, s->logprobs);
    hand_prompt_logprobs();
    if (s->done == Finish::kNone) {
      if (s->tail_at) e_.cache_prefix(s->seq, s->tokens, s->tail_at);
      s->tail_at = 0;
      e_.cache_pages(s->seq, s->tokens);
    }
  }
  drop_finished();
  return out;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats st = stats_;
  st.running = uint32_t(running_.size());
  st.waiting = uint32_t(waiting_.size());
  st.pages_free = e_.blocks().allocator().free_pages();
  st.pages_cached = e_.blocks().allocator().cached_free_pages();
  st.tails_total = e_.blocks().tail_slots();
  st.tails_used = e_.blocks().tails_used();
  st.tail_bytes = e_.runner().tail_bytes();
  return st;
}

}  // namespace tq::serve
