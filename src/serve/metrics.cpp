#include "tq/serve/metrics.h"

#include <fmt/format.h>

namespace tq::serve {

namespace {
void metric(std::string& out, const char* name, const char* type, const char* help, double value) {
  out += fmt::format("# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}\n", name, help, type, value);
}
}  // namespace

std::string prometheus_text(const ServiceStats& s) {
  const SchedulerStats& c = s.scheduler;
  std::string o;
  metric(o, "tq_requests_running", "gauge", "Requests in the running batch.", c.running);
  metric(o, "tq_requests_waiting", "gauge", "Requests waiting for admission (preempted ones included).", c.waiting);
  metric(o, "tq_kv_pages_total", "gauge", "Pages of the KV page pool.", c.pages_total);
  metric(o, "tq_kv_pages_used", "gauge", "Pages held by requests.", c.pages_total - c.pages_free);
  metric(o, "tq_kv_pages_free", "gauge", "Pages free to allocate, cached prefix pages nobody holds included.", c.pages_free);
  metric(o, "tq_kv_pages_cached_free", "gauge", "Free pages that still hold a cached prefix.", c.pages_cached);
  metric(o, "tq_prefix_cache_queried_tokens_total", "counter", "Prompt tokens looked up in the prefix cache.", double(c.prefix_queried_tokens));
  metric(o, "tq_prefix_cache_hit_tokens_total", "counter", "Prompt tokens found in the prefix cache (not computed).", double(c.prefix_hit_tokens));
  metric(o, "tq_prefix_cache_hit_rate", "gauge", "Hit tokens over queried tokens since the start.",
         c.prefix_queried_tokens ? double(c.prefix_hit_tokens) / double(c.prefix_queried_tokens) : 0.0);
  metric(o, "tq_prefix_tail_slots", "gauge", "Slots for prefix tails (fp16 side rows of specs with sink/window; 0 without).",
         c.tails_total);
  metric(o, "tq_prefix_tail_slots_used", "gauge", "Tail slots holding the tail of a cached page.", c.tails_used);
  metric(o, "tq_prefix_tail_memory_bytes", "gauge", "Memory of all tail slots, allocated at start.",
         double(c.tail_bytes) * double(c.tails_total));
  metric(o, "tq_prefix_branch_tails_total", "counter",
         "Tails kept where a prompt left cached pages that had none (a shared prefix before different questions).",
         double(c.prefix_branch_tails));
  metric(o, "tq_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", double(c.prompt_tokens));
  metric(o, "tq_generation_tokens_total", "counter",
         "Tokens generated (with those the engine made past a stop string before the server's cancel reached it).", double(c.generated_tokens));
  metric(o, "tq_computed_tokens_total", "counter", "Positions run through the model (prompts, decodes, recomputes after preemption).",
         double(c.computed_tokens));
  metric(o, "tq_generation_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.", s.tokens_per_second);
  metric(o, "tq_requests_total", "counter", "Requests accepted.", double(s.requests));
  metric(o, "tq_requests_refused_total", "counter", "Requests refused because the queue was full or the server was stopping.", double(s.refused));
  metric(o, "tq_requests_finished_total", "counter", "Requests ended, for any reason.", double(c.finished));
  metric(o, "tq_requests_cancelled_total", "counter", "Requests cancelled (client gone, shutdown).", double(c.cancelled));
  metric(o, "tq_preemptions_total", "counter", "Requests preempted for lack of pages (recomputed later).", double(c.preemptions));
  metric(o, "tq_scheduler_steps_total", "counter", "Engine steps run.", double(c.steps));
  metric(o, "tq_step_seconds_total", "counter", "Time inside scheduler steps.", s.step_seconds);
  metric(o, "tq_spec_verify_steps_total", "counter", "Speculative steps: a request's step that carried drafts to verify.",
         double(c.spec_verifications));
  metric(o, "tq_spec_draft_tokens_total", "counter", "Tokens drafted (n-gram prompt lookup or the draft model) and verified.", double(c.spec_drafted));
  metric(o, "tq_spec_accepted_tokens_total", "counter", "Drafted tokens the model agreed with (kept).", double(c.spec_accepted));
  metric(o, "tq_spec_acceptance_rate", "gauge", "Accepted over drafted tokens since the start.",
         c.spec_drafted ? double(c.spec_accepted) / double(c.spec_drafted) : 0.0);
  metric(o, "tq_spec_draft_failures_total", "counter", "Requests whose draft model failed; they went on without speculation.",
         double(c.spec_failures));
  metric(o, "tq_spec_mean_accepted_length", "gauge", "Drafted tokens kept per verify step since the start (each step adds the model's own token).",
         c.spec_verifications ? double(c.spec_accepted) / double(c.spec_verifications) : 0.0);
  const char* h = "tq_time_to_first_token_seconds";
  o += fmt::format("# HELP {0} From a request's arrival to its first generated token.\n# TYPE {0} histogram\n", h);
  for (size_t i = 0; i < s.ttft_buckets.size(); ++i) o += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", h, s.ttft_buckets[i], s.ttft_counts[i]);
  const uint64_t count = s.ttft_counts.empty() ? 0 : s.ttft_counts.back();
  o += fmt::format("{0}_bucket{{le=\"+Inf\"}} {1}\n{0}_sum {2}\n{0}_count {1}\n", h, count, s.ttft_sum);
  return o;
}

}  // namespace tq::serve
