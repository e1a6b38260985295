// tq bench-serve: serving speed, cache by cache, in one process: tq serve's scheduler (continuous
// batching, chunked prefill, preemption) over the engine, driven by N clients in a closed loop, each
// sending its next request when the last one ends (vLLM's `bench serve --max-concurrency`, without
// HTTP). Every cache gets the same KV memory; "max" concurrency is what fits in it.
//
// Per cache: requests/s, output tokens/s over the whole run and over the steps that only decoded,
// time to first token, time per output token and inter-token latency percentiles.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <random>

#include "bench_util.h"
#include "commands.h"
#include "table.h"
#include "tq/check.h"
#include "tq/serve/scheduler.h"

namespace tq::cli {
namespace bench_serve_cmd {  // named: the command files are compiled together (apps/cli/CMakeLists.txt)

struct Options {
  std::string shape = "llama-3.1-8b", model, tokenizer, kv = "bf16,fp8,k3v2", concurrency = "max", device = "auto", json;
  uint32_t prompt = 32768, output = 256, requests = 0, batched_tokens = 0;
  double kv_memory_gb = 40;
  uint64_t seed = 1;
  bool eager = false, no_prefix_caching = false, swa_full = false, no_warmup = false;
};

// One request's clock: sent, first and last token; every gap between tokens.
struct Timeline {
  clock_type::time_point sent, first, last;
  uint32_t tokens = 0;
  std::vector<double> gaps;  // seconds between consecutive tokens
};

struct RunResult {
  double seconds = 0, decode_seconds = 0, full_seconds = 0;
  uint64_t generated = 0, prompt_tokens = 0, decode_tokens = 0, decode_steps = 0, full_tokens = 0, full_steps = 0, steps = 0;
  std::vector<double> ttft, tpot, itl;  // seconds
  serve::SchedulerStats stats;
  bool prefix_caching = false;  // on in the scheduler (off where asked, or where the engine cannot: the note)
};

// The closed loop: `clients` requests at once, the next sent when one ends, `total` in all.
RunResult drive(engine::Engine& e, const Options& o, uint32_t clients, uint32_t total, uint32_t budget, std::mt19937& rng,
                const std::string& label) {
  serve::Scheduler s(e, [](int) { return false; }, {.max_num_seqs = clients, .max_batched_tokens = budget, .prefix_caching = !o.no_prefix_caching});
  const int vocab = e.config().vocab_size;
  if (!o.no_prefix_caching && !s.prefix_caching()) fmt::print(stderr, "tq bench-serve: {}: prefix caching off: {}\n", label, s.prefix_caching_note());
  std::map<uint64_t, Timeline> live;
  uint32_t sent = 0, done = 0;
  RunResult r;
  r.prefix_caching = s.prefix_caching();
  const auto send = [&](clock_type::time_point now) {
    serve::Request q;
    q.prompt.resize(o.prompt);
    for (int& t : q.prompt) t = int(rng() % uint32_t(vocab));  // random: no prefix is shared
    q.max_tokens = o.output;
    live[s.add(std::move(q))].sent = now;
    ++sent;
  };
  // One short request first, untimed, as vLLM's benchmark_serving sends one: the first call's costs
  // (library handles, the one-sequence CUDA graph) stay out of the first timed request's TTFT.
  serve::SchedulerStats warm{};
  if (!o.no_warmup) {
    serve::Request q;
    q.prompt.resize(std::min<uint32_t>(o.prompt, 16));
    std::mt19937 warm_rng(uint32_t(o.seed) ^ 0x5eedu);  // its own: the timed prompts are those of --no-warmup
    for (int& t : q.prompt) t = int(warm_rng() % uint32_t(vocab));
    q.max_tokens = std::min<uint32_t>(o.output, 2);
    s.add(std::move(q));
    while (!s.idle())
      for (const serve::Event& ev : s.step())
        TQ_CHECK(ev.finish == serve::Finish::kNone || ev.finish == serve::Finish::kLength, "the warm-up request ended '{}'{}{}",
                 serve::finish_name(ev.finish), ev.error.empty() ? "" : ": ", ev.error);
    warm = s.stats();
  }
  const auto t0 = clock_type::now();
  while (sent < std::min(clients, total)) send(t0);
  auto shown = t0;
  while (!s.idle()) {
    const serve::SchedulerStats before = s.stats();
    const auto a = clock_type::now();
    const std::vector<serve::Event> events = s.step();
    const auto now = clock_type::now();
    const serve::SchedulerStats after = s.stats();
    const double dt = std::chrono::duration<double>(now - a).count();
    const uint64_t gen = after.generated_tokens - before.generated_tokens;
    ++r.steps;
    // Every item decoded one token: one position computed a token, and none was a prompt's first
    // token (a prompt whose last chunk is one token computes one position too).
    const bool first_token = std::any_of(events.begin(), events.end(), [&](const serve::Event& ev) {
      return ev.token >= 0 && live.at(ev.id).tokens == 0;
    });
    if (gen > 0 && after.computed_tokens - before.computed_tokens == gen && !first_token) {
      r.decode_seconds += dt, r.decode_tokens += gen, ++r.decode_steps;
      if (gen == clients) r.full_seconds += dt, r.full_tokens += gen, ++r.full_steps;  // every client decoding
    }
    for (const serve::Event& ev : events) {
      Timeline& t = live.at(ev.id);
      if (ev.token >= 0) {
        if (t.tokens == 0)
          t.first = now;
        else
          t.gaps.push_back(std::chrono::duration<double>(now - t.last).count());
        t.last = now, ++t.tokens;
      }
      if (ev.finish == serve::Finish::kNone) continue;
      TQ_CHECK(ev.finish == serve::Finish::kLength && t.tokens == o.output, "request {} ended '{}' after {} of {} tokens{}{}", ev.id,
               serve::finish_name(ev.finish), t.tokens, o.output, ev.error.empty() ? "" : ": ", ev.error);
      r.ttft.push_back(std::chrono::duration<double>(t.first - t.sent).count());
      if (t.tokens > 1) r.tpot.push_back(std::chrono::duration<double>(t.last - t.first).count() / (t.tokens - 1));
      r.itl.insert(r.itl.end(), t.gaps.begin(), t.gaps.end());
      live.erase(ev.id);
      ++done;
      if (sent < total) send(now);
    }
    if (std::chrono::duration<double>(now - shown).count() > 0.5) {
      const serve::SchedulerStats st = s.stats();
      fmt::print(stderr, "\r  {}: {}/{} requests done, {} running, {} waiting, step {}      ", label, done, total, st.running, st.waiting, r.steps);
      shown = now;
    }
  }
  fmt::print(stderr, "\r{:80}\r", "");
  r.seconds = seconds_since(t0);
  r.stats = s.stats();
  r.generated = r.stats.generated_tokens - warm.generated_tokens, r.prompt_tokens = r.stats.prompt_tokens - warm.prompt_tokens;
  r.stats.preemptions -= warm.preemptions;
  TQ_CHECK(done == total && live.empty(), "{} of {} requests ended", done, total);
  TQ_CHECK(r.stats.pages_free == r.stats.pages_total, "{} KV pages were not given back", r.stats.pages_total - r.stats.pages_free);
  return r;
}

void run(const Options& o) {
  check_json_path(o.json);
  const std::vector<KvSpec> specs = parse_kv_specs(o.kv);
  bool fit_max = false;
  const std::vector<uint32_t> fixed = parse_list(o.concurrency, "--concurrency", true, &fit_max);
  TQ_CHECK(fixed.size() + fit_max == 1, "--concurrency takes one value: a count or max, got '{}'", o.concurrency);
  TQ_CHECK(fit_max || fixed[0] <= kMaxBatch, "--concurrency {}: at most {} clients (tq serve's --max-num-seqs limit)", fixed[0], kMaxBatch);
  // Each client sends at least one request: more clients than requests would run fewer than asked.
  TQ_CHECK(fit_max || o.requests == 0 || o.requests >= fixed[0],
           "--concurrency {} is more than --requests {}: each client sends at least one request; give --requests {} or more, or "
           "--concurrency {}", fixed[0], o.requests, fixed[0], o.requests);
  TQ_CHECK(o.prompt >= 1 && o.output >= 1, "--prompt and --output must be at least 1 token");
  TQ_CHECK(o.kv_memory_gb > 0 && std::isfinite(o.kv_memory_gb), "--kv-memory must be a positive number of GB, got {}", o.kv_memory_gb);

  const BenchModel bm = load_bench_model(o.model, o.tokenizer, o.shape);
  const model::ModelConfig& cfg = bm.config;
  const engine::Device device = pick_device(o.device, cfg, {});
  TQ_CHECK(bm.file || device == engine::Device::kCuda, "random weights of a named shape run on the GPU only: pass -m FILE for --device cpu");
  const uint64_t ctx64 = uint64_t(o.prompt) + o.output;  // in 64 bits: two uint32 options
  TQ_CHECK(ctx64 <= uint64_t(cfg.max_seq), "--prompt {} + --output {} = {} tokens: beyond the model's {}", o.prompt, o.output, ctx64, cfg.max_seq);
  const uint32_t ctx = uint32_t(ctx64);
  const uint32_t chunk = o.batched_tokens ? o.batched_tokens : device == engine::Device::kCuda ? 2048 : 256;
  const double budget = usable_kv_budget(o.kv_memory_gb * 1e9, device, "tq bench-serve");

  Table tab({{"kv", "kv"},
             {"concurrency", "clients"},
             {"requests", "requests"},
             {"requests_per_s", "req/s", 3},
             {"output_tokens_per_s", "out tok/s", 0},
             {"vs_first", "vs first", 2},
             {"decode_tokens_per_s", "decode tok/s", 0},
             {"full_decode_tokens_per_s", "all-decode tok/s", 0},
             {"full_decode_vs_first", "vs first", 2},
             {"ttft_p50_s", "TTFT p50 s", 2},
             {"ttft_p99_s", "TTFT p99 s", 2},
             {"tpot_p50_ms", "TPOT p50 ms", 1},
             {"tpot_p99_ms", "TPOT p99 ms", 1},
             {"itl_p99_ms", "ITL p99 ms", 1},
             {"preemptions", "preempt"},
             {"note", "note"}});
  std::string where, first_name;
  double first_out = 0, first_full = 0;
  std::mt19937 rng(uint32_t(o.seed));
  for (const KvSpec& spec : specs) {
    const std::string label = spec.canonical();
    const uint32_t side_extra = device == engine::Device::kCuda ? kSideRollback : chunk;
    // The runner's steps take max(chunk, clients) tokens, so its window rings hold sub-steps of up to
    // kRingStep: counted at that, never under the budget.
    const CacheCost cost = cache_cost(cfg, spec, side_extra, std::max(chunk, kRingStep), o.swa_full);
    uint32_t clients = fit_max ? batch_that_fits(budget, cost, ctx) : fixed[0];
    if (clients > kMaxBatch) {
      fmt::print(stderr, "tq bench-serve: {}: --concurrency max: {} clients fit --kv-memory; running {} (at most {} at once)\n", label,
                 clients, kMaxBatch, kMaxBatch);
      clients = kMaxBatch;
    }
    if (clients == 0) {
      tab.add({{"kv", label}, {"note", fmt::format("one request of {} tokens needs {:.3g} GB, beyond the {:.3g} GB of KV", ctx,
                                                   cost.seq_bytes(ctx) / 1e9, budget / 1e9)}});
      continue;
    }
    const uint32_t total = o.requests ? o.requests : clients;
    if (clients > total)  // --concurrency max: a client a request (a fixed count above --requests is refused)
      fmt::print(stderr, "tq bench-serve: {}: --concurrency max: {} clients fit --kv-memory; running {}, one per request (--requests {})\n",
                 label, clients, total, total);
    clients = std::min(clients, total);
    const uint32_t step_tokens = std::max(chunk, clients);  // every running request decodes each step
    // The pool: every page the budget buys beside the clients' side buffers and window rings.
    const double page_count = std::max(0.0, std::floor((budget - clients * cost.fixed_bytes(ctx)) / cost.pool_page_bytes(ctx)));
    TQ_CHECK(page_count >= std::ceil(double(ctx) / cost.page_size), "{}: {:.3g} GB of KV holds {} pages, fewer than one request needs", label,
             budget / 1e9, page_count);
    // No more than the clients can hold at once (random prompts share no prefix, so pages beyond that
    // are never used, and on the CPU the pool is allocated and zeroed up front); page ids are 32-bit.
    const double needed = double(clients) * std::ceil(double(ctx) / cost.page_size);
    const uint32_t pages = uint32_t(std::min({page_count, needed, double(std::numeric_limits<int32_t>::max())}));
    const engine::EngineOptions eo = engine::Engine::resolve(
        cfg, cost.page_size,
        {.device = device, .context = ctx, .max_seqs = clients, .num_pages = pages, .max_chunk = step_tokens, .eager = o.eager,
         .swa_full = o.swa_full});
    std::unique_ptr<engine::ModelRunner> runner;
    try {
      runner = bm.runner(spec, eo, o.seed);
    } catch (const Error& e) {  // a cache this device cannot run, or a pool it cannot hold: said, the others go on
      fmt::print(stderr, "tq bench-serve: {}: not run: {}\n", label, e.what());
      tab.add({{"kv", label}, {"concurrency", clients}, {"note", e.what()}});
      continue;
    }
    if (where.empty()) where = runner->describe(), first_name = label;
    fmt::print(stderr, "tq bench-serve: {}: {} clients, {} requests, {} pages; {}\n", label, clients, total, pages, runner->describe());
    engine::Engine e(std::move(runner), cost.page_size, eo);
    const RunResult r = drive(e, o, clients, total, step_tokens, rng, label);
    const double out_tps = double(r.generated) / r.seconds, dec_tps = r.decode_seconds > 0 ? double(r.decode_tokens) / r.decode_seconds : 0;
    const double full_tps = r.full_seconds > 0 ? double(r.full_tokens) / r.full_seconds : 0;
    if (first_out == 0) first_out = out_tps, first_full = full_tps;
    // No samples (TPOT of one-token outputs, no step that only decoded): null, printed "-", not 0.
    const auto pct = [](const std::vector<double>& v, double q, double unit) {
      return v.empty() ? nlohmann::json() : nlohmann::json(unit * percentile(v, q));
    };
    nlohmann::json row{{"kv", label},
                       {"concurrency", clients},
                       {"requests", total},
                       {"seconds", r.seconds},
                       {"requests_per_s", total / r.seconds},
                       {"output_tokens_per_s", out_tps},
                       {"vs_first", out_tps / first_out},
                       {"decode_tokens_per_s", r.decode_steps ? nlohmann::json(dec_tps) : nlohmann::json()},
                       {"decode_steps", r.decode_steps},
                       {"decode_mean_batch", r.decode_steps ? nlohmann::json(double(r.decode_tokens) / r.decode_steps) : nlohmann::json()},
                       {"full_decode_tokens_per_s", r.full_steps ? nlohmann::json(full_tps) : nlohmann::json()},
                       {"full_decode_steps", r.full_steps},
                       {"steps", r.steps},
                       {"ttft_p50_s", pct(r.ttft, 0.5, 1)},
                       {"ttft_p99_s", pct(r.ttft, 0.99, 1)},
                       {"tpot_p50_ms", pct(r.tpot, 0.5, 1e3)},
                       {"tpot_p99_ms", pct(r.tpot, 0.99, 1e3)},
                       {"itl_p50_ms", pct(r.itl, 0.5, 1e3)},
                       {"itl_p99_ms", pct(r.itl, 0.99, 1e3)},
                       {"preemptions", r.stats.preemptions},
                       {"pages", pages},
                       {"kv_bytes_per_request", cost.seq_bytes(ctx)},
                       {"prefix_caching", r.prefix_caching}};
    if (full_tps > 0 && first_full > 0) row["full_decode_vs_first"] = full_tps / first_full;
    fmt::print(stderr, "tq bench-serve: {}: {}\n", label, row.dump());  // each cache's result as soon as it stands
    tab.add(std::move(row));
  }

  const std::string head = fmt::format(
      "tq bench-serve: {} on {}; prompts of {} random tokens, {} output tokens each (no stop), the same {:.3g} GB of KV for every cache; "
      "clients send their next request when one ends; steps of at most {} tokens; 'decode tok/s' over the steps that only decoded, 'all-decode' over "
      "those where every client decoded; 'vs first': against {}",
      bm.name, where.empty() ? engine::device_name(device) : where, o.prompt, o.output, budget / 1e9, chunk, first_name.empty() ? "-" : first_name);
  fmt::print("{}\n\n{}", head, tab.text());
  std::fflush(stdout);
  if (!o.json.empty())
    write_json(o.json, nlohmann::json{{"model", bm.name}, {"device", where}, {"prompt", o.prompt}, {"output", o.output},
                                      {"kv_memory_gb", budget / 1e9}, {"max_batched_tokens", chunk}, {"prefix_caching", !o.no_prefix_caching},
                                      {"rows", tab.json()["rows"]}}
                           .dump(2));
}

}  // namespace bench_serve_cmd

void add_bench_serve(CLI::App& app) {
  using namespace bench_serve_cmd;
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand(
      "bench-serve",
      "Serving benchmark in one process: tq serve's scheduler (continuous batching, chunked prefill, preemption)\n"
      "over the engine, with N clients in a closed loop (each sends its next request when the last ends), for\n"
      "several KV specs in the same KV memory. Reports requests/s, output tokens/s (whole run, and the steps\n"
      "that only decoded), time to first token (TTFT), time per output token (TPOT) and inter-token latency\n"
      "(ITL) percentiles. Prompts are random tokens and generation ignores stop tokens, so every request has\n"
      "the same length. Without -m the model is a named real shape with random weights on the GPU.\n"
      "For the HTTP path with a real client, see bench/serve/serve_load.py.\n"
      "Example: tq bench-serve --shape llama-3.1-8b --kv bf16,fp8,k3v2 --prompt 32768 --output 256 --kv-memory 40");
  add_model_options(c, o->shape, o->model, o->tokenizer);
  c->add_option("--kv", o->kv, "comma-separated KV specs; 'default' is tq run's (default: bf16,fp8,k3v2)");
  c->add_option("--prompt", o->prompt, "prompt length in tokens (default 32768)");
  c->add_option("--output", o->output, "tokens generated per request (default 256)");
  c->add_option("--concurrency", o->concurrency,
                "clients at once, or max: as many requests as fit --kv-memory, per cache, at most --requests and 4096\n"
                "(default max)");
  c->add_option("--requests", o->requests, "requests in all, at least a fixed --concurrency (default: one per client)");
  c->add_option("--kv-memory", o->kv_memory_gb, "KV memory in GB (1e9 bytes) for every cache: its page pool and side buffers (default 40)");
  c->add_option("--max-num-batched-tokens", o->batched_tokens, "token budget of one step (default: 2048 on cuda, 256 on cpu; at least the clients)");
  c->add_flag("--no-enable-prefix-caching", o->no_prefix_caching, "do not look up cached prefixes (random prompts share none anyway)");
  c->add_option("--seed", o->seed, "seed of the random weights and prompts (default 1)");
  c->add_option("--device", o->device, kDeviceHelp);
  c->add_flag("--no-warmup", o->no_warmup, "send no untimed warm-up request (16 prompt tokens, 2 out) before the timed ones");
  c->add_flag("--eager", o->eager, "launch every kernel (no CUDA graphs), for comparison");
  c->add_flag("--swa-full", o->swa_full,
              "sliding-window layers (Gemma 3's local ones) keep every position in the pool instead of a window ring per\n"
              "sequence (tq serve --swa-full), for comparison");
  c->add_option("--json", o->json, "also write the table as JSON to FILE (default: none)");
  c->callback([o] { run(*o); });
}

}  // namespace tq::cli
