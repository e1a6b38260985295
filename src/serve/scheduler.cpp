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

  Seq(uint64_t i, Request&& r) : id(i), tokens(std::move(r.prompt)), max_tokens(r.max_tokens), sampler(r.sampling) {
    prompt_len = uint32_t(tokens.size());
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
}

Scheduler::~Scheduler() = default;

void Scheduler::check(const Request& r) const {
  const engine::EngineOptions& eo = e_.options();
  const size_t n = r.prompt.size();
  TQ_CHECK(n >= 1, "the prompt is empty");
  const int vocab = e_.config().vocab_size;
  for (int t : r.prompt) TQ_CHECK(t >= 0 && t < vocab, "token id {} is outside the vocabulary ({})", t, vocab);
  TQ_CHECK(r.max_tokens >= 1, "max_tokens must be at least 1");
  TQ_CHECK(n + r.max_tokens <= eo.context,
           "this model's maximum context length is {} tokens, but {} were asked for ({} in the prompt, {} to generate)", eo.context,
           n + r.max_tokens, n, r.max_tokens);
  // The last generated token is never fed back, so prompt + max_tokens - 1 positions at most.
  const uint32_t P = e_.blocks().page_size();
  const size_t pages = (n + r.max_tokens - 1 + P - 1) / P;
  TQ_CHECK(pages <= stats_.pages_total, "the request needs {} KV pages ({} tokens), more than the whole pool holds ({} pages)", pages,
           n + r.max_tokens - 1, stats_.pages_total);
  r.sampling.validate();
}

uint64_t Scheduler::add(Request r, uint64_t id) {
  check(r);
  if (id == 0) id = next_id_++;
  stats_.prompt_tokens += r.prompt.size();
  waiting_.push_back(std::make_unique<Seq>(id, std::move(r)));
  return id;
}

void Scheduler::cancel(uint64_t id) { cancels_.push_back(id); }

void Scheduler::release(Seq* s, bool cache) {
  if (s->seq < 0) return;
  if (cache) e_.cache_pages(s->seq, s->tokens);
  e_.remove_sequence(s->seq);
  s->seq = -1;
  s->computed = 0;
}

void Scheduler::finish(Seq* s, Finish f, std::vector<Event>& out, int token, std::string error) {
  out.push_back(Event{s->id, token, f, std::move(error)});
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

void Scheduler::take(Seq* s, uint32_t n, uint32_t pages, Plan& p) {
  const auto first = s->tokens.begin() + s->computed;
  p.batch.push_back(engine::BatchItem{s->seq, std::vector<int>(first, first + n)});
  p.items.push_back(s);
  p.budget -= n;
  p.planned += pages;
}

void Scheduler::drop_finished() {
  std::erase_if(running_, [](const auto& s) { return s->done != Finish::kNone; });
}

void Scheduler::admit(Plan& p) {
  const BlockManager& bm = e_.blocks();
  const uint32_t P = bm.page_size();
  while (p.budget > 0 && running_.size() < opts_.max_num_seqs && !waiting_.empty()) {
    Seq* w = waiting_.front().get();
    // At least the last token is computed: its logits give the next token.
    const uint32_t limit = uint32_t(w->tokens.size()) - 1;
    const std::vector<int32_t> hit = bm.match_prefix(w->tokens, limit);
    uint32_t revive = 0;
    for (int32_t p : hit) revive += bm.allocator().refcount(p) == 0;
    const uint32_t start = uint32_t(hit.size()) * P;
    const uint32_t n = std::min(uint32_t(w->tokens.size()) - start, p.budget);
    const uint32_t alloc = (start + n + P - 1) / P - uint32_t(hit.size());
    if (alloc + revive + p.planned > bm.allocator().free_pages()) break;  // first come, first served: nobody overtakes it
    w->seq = e_.add_sequence(w->tokens, limit);
    w->computed = e_.seq_len(w->seq);
    stats_.prefix_queried_tokens += w->tokens.size();
    stats_.prefix_hit_tokens += w->computed;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    take(w, n, alloc, p);
  }
}

std::vector<Event> Scheduler::step() {
  std::vector<Event> out;
  for (uint64_t id : cancels_) {
    for (auto& s : running_)
      if (s->id == id && s->done == Finish::kNone) finish(s.get(), Finish::kCancelled, out);
    for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
      if ((*it)->id == id) {
        finish(it->get(), Finish::kCancelled, out);
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
    const uint32_t n = std::min(uint32_t(s->tokens.size()) - s->computed, plan.budget);
    const uint32_t need = bm.pages_needed(s->seq, n);
    while (need + plan.planned > bm.allocator().free_pages() && running_.size() > i + 1) preempt(running_.back().get());
    if (need + plan.planned > bm.allocator().free_pages()) {
      preempt(s);  // the newest itself: it waits for the older ones to finish
      break;
    }
    take(s, n, need, plan);
  }
  admit(plan);
  const std::vector<engine::BatchItem>& batch = plan.batch;
  const std::vector<Seq*>& items = plan.items;
  if (batch.empty()) return out;

  std::vector<engine::SampleArgs> args(batch.size());  // greedy placeholders for prompt chunks that sample nothing
  std::vector<bool> samples(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    samples[i] = items[i]->computed + batch[i].tokens.size() == items[i]->tokens.size();
    if (samples[i]) args[i] = items[i]->sampler.next_args();
  }
  std::vector<int> ids;
  try {
    ids = e_.forward_sample(batch, args);
  } catch (const Error& err) {
    for (Seq* s : items) finish(s, Finish::kError, out, -1, err.what());
    drop_finished();
    return out;
  }
  ++stats_.steps;
  for (size_t i = 0; i < items.size(); ++i) {
    Seq* s = items[i];
    const uint32_t n = uint32_t(batch[i].tokens.size());
    stats_.computed_tokens += n;
    s->computed += n;
    e_.cache_pages(s->seq, s->tokens);
    if (!samples[i]) continue;
    const int t = ids[i];
    if (is_stop_(t)) {
      finish(s, Finish::kStop, out);
      continue;
    }
    s->tokens.push_back(t);
    ++s->generated;
    ++stats_.generated_tokens;
    if (s->generated >= s->max_tokens)
      finish(s, Finish::kLength, out, t);
    else
      out.push_back(Event{s->id, t, Finish::kNone, {}});
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
  return st;
}

}  // namespace tq::serve
