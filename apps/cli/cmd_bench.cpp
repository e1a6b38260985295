// tq bench: the engine's speed, cache by cache, in one run and one table: decode steps over a
// (batch, context) grid, prefill, and how many sequences each cache fits in a memory budget.
// Without a model file it builds a model of a named real shape with random weights on the GPU
// (vLLM's --load-format dummy): speed does not depend on the weights' values.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <tuple>

#include "bench_util.h"
#include "commands.h"
#include "table.h"
#include "tq/check.h"
#include "tq/engine/engine.h"
#include "tq/kv/block_manager.h"
#include "tq/model/shapes.h"
#include "tq/text.h"

namespace tq::cli {
namespace bench_cmd {  // named: the command files are compiled together (apps/cli/CMakeLists.txt)

struct Options {
  std::string shape = "llama-3.1-8b", model, tokenizer, kv = "bf16,fp8,k4v4,k3v2,default", batch = "1,16,64,max", context = "4096,32768";
  std::string queries = "1";
  std::string prefill = "4096,32768", device = "auto", json, products = "auto";
  double kv_memory_gb = 100, bandwidth_tbs = 4.2;
  uint32_t steps = 10, warmup = 3, reps = 3, chunk = 0;
  unsigned threads = 0;
  uint64_t seed = 1;
  bool eager = false;
  bool swa_full = false;  // --swa-full
  bool batch_invariant = false;  // --batch-invariant
  bool dense_prompts = false;    // --dense-prompts
};

// Decode at (batch, ctx): sequences whose first positions are taken as written (zeroed pages: the
// kernels read every byte whatever it holds), then steps of `q` tokens each, greedy on the device.
// q > 1 is a verification of q - 1 drafted tokens as generate() runs it: every position scored
// and sampled, then all but the first taken back (the sequence grows by one token a step).
std::vector<double> decode_steps(engine::ModelRunner& r, uint32_t page_size, uint32_t batch, uint32_t ctx, uint32_t q, uint32_t warmup,
                                 uint32_t steps) {
  BlockManager blocks(r.num_pages(), page_size);
  std::vector<int> seqs;
  for (uint32_t b = 0; b < batch; ++b) {
    seqs.push_back(blocks.add_sequence());
    r.add_sequence(seqs.back());
  }
  // The last step's positions end at ctx, a verification's drafts included: steps that reached past
  // it crossed the CUDA runner's length bucket at power-of-two contexts, so their graphs were
  // captured, and planned for the next bucket, inside the timed steps.
  const uint32_t total = warmup + steps, start = ctx - total - (q - 1);
  std::vector<std::pair<int, uint32_t>> req;
  for (int s : seqs) req.emplace_back(s, start);
  if (start) blocks.reserve(req);
  for (auto& x : req) x.second = q;
  std::vector<int> tokens(size_t(batch) * q, 1);
  std::vector<double> ms;
  for (uint32_t i = 0; i < total; ++i) {
    blocks.reserve(req);
    std::vector<engine::StepSeq> step;
    for (uint32_t b = 0; b < batch; ++b)
      step.push_back(engine::StepSeq{seqs[b], &tokens[size_t(b) * q], q, start + i, &blocks.block_table(seqs[b]), q > 1});
    const auto t0 = clock_type::now();
    const std::vector<int> ids = r.forward_greedy(step);
    if (i >= warmup) ms.push_back(1e3 * seconds_since(t0));
    for (uint32_t b = 0; b < batch; ++b) {
      std::fill_n(&tokens[size_t(b) * q], q, ids[size_t(b) * ids.size() / batch]);
      blocks.truncate(seqs[b], start + i + 1);
    }
  }
  return ms;
}

// Prefill of one prompt of `len` random tokens in chunks; seconds.
double prefill_seconds(engine::ModelRunner& r, uint32_t page_size, uint32_t len, uint32_t chunk, std::mt19937& rng) {
  BlockManager blocks(r.num_pages(), page_size);
  const int s = blocks.add_sequence();
  r.add_sequence(s);
  std::vector<int> tokens(len);
  for (int& t : tokens) t = int(rng() % uint32_t(r.config().vocab_size));
  const auto t0 = clock_type::now();
  for (uint32_t at = 0; at < len; at += chunk) {
    const uint32_t n = std::min(chunk, len - at);
    blocks.reserve({{s, n}});
    r.forward({engine::StepSeq{s, tokens.data() + at, n, at, &blocks.block_table(s), false}});
  }
  return seconds_since(t0);
}

void run(const Options& o) {
  check_json_path(o.json);
  bool max_batch = false;
  std::vector<uint32_t> batches = parse_list(o.batch, "--batch", true, &max_batch);
  for (uint32_t b : batches) TQ_CHECK(b <= kMaxBatch, "--batch {}: at most {} sequences a step (tq serve's --max-num-seqs limit)", b, kMaxBatch);
  const std::vector<uint32_t> contexts = parse_list(o.context, "--context", false);
  const std::vector<uint32_t> queries = parse_list(o.queries, "--queries", false);
  for (uint32_t q : queries) TQ_CHECK(q >= 1 && q <= 9, "--queries {}: tokens a sequence per step must be 1..9 (a token and up to 8 drafts)", q);
  const uint32_t most_q = *std::max_element(queries.begin(), queries.end());
  const std::vector<uint32_t> prompts = o.prefill == "none" ? std::vector<uint32_t>{} : parse_list(o.prefill, "--prefill", false);
  TQ_CHECK(o.steps >= 1, "--steps must be at least 1, got {}", o.steps);
  // (--reps 0 was run as 1, the table saying "median of 1": what was asked is refused instead)
  TQ_CHECK(o.reps >= 1, "--reps must be at least 1, got {} (--prefill none: no prefill)", o.reps);
  TQ_CHECK(o.kv_memory_gb > 0 && std::isfinite(o.kv_memory_gb), "--kv-memory must be a positive number of GB, got {}", o.kv_memory_gb);
  TQ_CHECK(o.bandwidth_tbs > 0 && std::isfinite(o.bandwidth_tbs), "--bandwidth must be a positive number of TB/s, got {}", o.bandwidth_tbs);
  const std::vector<KvSpec> specs = parse_kv_specs(o.kv);
  std::vector<std::string> product_names = split(o.products, ',');  // per --products item
  std::vector<engine::GpuProducts> products;
  for (const std::string& item : product_names) {
    TQ_CHECK(item == "auto" || item == "rows" || item == "gemv" || item == "cublas", "--products: '{}' is none of auto, gemv, rows, cublas",
             item);
    products.push_back(item == "auto"   ? engine::GpuProducts::kAuto
                       : item == "rows" ? engine::GpuProducts::kRows
                       : item == "gemv" ? engine::GpuProducts::kGemv
                                        : engine::GpuProducts::kCublas);
  }

  // The model: a file (any device), or a named shape with random weights (the GPU).
  const BenchModel bm = load_bench_model(o.model, o.tokenizer, o.shape);
  const model::ModelConfig& cfg = bm.config;
  const std::string& model_name = bm.name;
  const engine::Device device = pick_device(o.device, cfg, {});
  TQ_CHECK(bm.file || device == engine::Device::kCuda, "random weights of a named shape run on the GPU only: pass -m FILE for --device cpu");
  const uint32_t chunk = o.chunk ? o.chunk : device == engine::Device::kCuda ? 2048 : 64;
  const uint64_t margin = uint64_t(o.warmup) + o.steps;  // in 64 bits: two uint32 options
  for (uint32_t c : contexts)
    TQ_CHECK(c > margin + most_q - 1 && c <= uint32_t(cfg.max_seq),
             "--context {}: must exceed --warmup + --steps with the drafts of --queries ({}) and fit the model's {} tokens", c,
             margin + most_q - 1, cfg.max_seq);
  for (uint32_t p : prompts) TQ_CHECK(p <= uint32_t(cfg.max_seq), "--prefill {}: beyond the model's {} tokens", p, cfg.max_seq);
  const double budget = o.kv_memory_gb * 1e9, bw = o.bandwidth_tbs * 1e12;
  const double weights = double(model::weight_bytes_bf16(cfg));
  const double host = usable_kv_budget(budget, device, "tq bench");

  Table fit([&] {
    std::vector<Column> cols{{"kv", "kv"}, {"bits_per_element", "bits/elem", 3}, {"bytes_per_token", "KV bytes/token", 0}};
    for (uint32_t c : contexts) cols.push_back({fmt::format("max_batch_{}", c), fmt::format("max batch @ {}", c), 0});
    return cols;
  }());
  Table dec({{"kv", "kv"},
             {"batch", "batch"},
             {"fit", "fit"},
             {"context", "context"},
             {"queries", "tokens/seq"},
             {"ms_per_step", "ms/step", 3},
             {"vs_one", "vs 1 token", 2},
             {"tokens_per_s", "tokens/s", 0},
             {"vs_first", "vs first", 2},
             {"limit_ms", "limit ms", 3},
             {"of_limit", "limit/ms", 2},
             {"note", "note"}});
  Table pre({{"kv", "kv"}, {"prompt", "prompt"}, {"tokens_per_s", "tokens/s", 0}, {"vs_first", "vs first", 2}});
  std::map<std::tuple<uint32_t, uint32_t, uint32_t>, double> first_dec;  // (batch or 0 for max, context, queries) -> tokens/s of the first spec
  std::map<uint32_t, double> first_pre;
  std::string where, first_name;
  std::mt19937 rng(uint32_t(o.seed));

  // Each cache once per --products item: "k3v2", "k3v2 cublas".
  for (size_t run_i = 0; run_i < specs.size() * products.size(); ++run_i) {
    const KvSpec& spec = specs[run_i / products.size()];
    const size_t pi = run_i % products.size();
    const std::string label = spec.canonical() + (products.size() > 1 ? " " + product_names[pi] : "");
    // The runner's steps take up to max(batch x queries, chunk) tokens, so its window rings hold
    // sub-steps of up to kRingStep: the fit counts them at that.
    const CacheCost cost =
        cache_cost(cfg, spec, device == engine::Device::kCuda ? kSideRollback : chunk, std::max(chunk, kRingStep), o.swa_full);
    nlohmann::json frow{{"kv", spec.canonical()},
                        {"bits_per_element", 8.0 * cost.bytes_per_token / (2.0 * cfg.n_layers * cfg.kv_dim())},
                        {"bytes_per_token", cost.bytes_per_token}};
    // The largest batch each context allows in the budget (the decode grid's "max").
    std::vector<uint32_t> fits;
    for (uint32_t c : contexts) {
      fits.push_back(batch_that_fits(budget, cost, c));
      frow[fmt::format("max_batch_{}", c)] = fits.back();
    }
    if (pi == 0) fit.add(frow);
    // The grid: (batch, context) points, "max" at each context.
    std::vector<std::tuple<uint32_t, uint32_t, bool>> grid;  // batch, context, is max
    std::vector<nlohmann::json> skipped;  // points beyond the budget: said, not run
    for (size_t ci = 0; ci < contexts.size(); ++ci) {
      for (uint32_t b : batches) {
        if (b <= fits[ci])
          grid.emplace_back(b, contexts[ci], false);
        else
          skipped.push_back({{"kv", label}, {"batch", b}, {"context", contexts[ci]},
                             {"note", fmt::format("beyond {} GB of KV (fits {})", o.kv_memory_gb, fits[ci])}});
      }
      if (max_batch && fits[ci] > kMaxBatch)
        fmt::print(stderr, "tq bench: {}: --batch max at {} tokens: {} sequences fit; running {} (at most {} a step)\n", label, contexts[ci],
                   fits[ci], kMaxBatch, kMaxBatch);
      if (max_batch && fits[ci] >= 1)
        grid.emplace_back(std::min(fits[ci], kMaxBatch), contexts[ci], true);
      else if (max_batch)  // said, as a batch beyond the budget is: the 'max' row was left out without a word
        skipped.push_back({{"kv", label}, {"batch", 0}, {"context", contexts[ci]}, {"fit", "max"},
                           {"note", fmt::format("beyond {} GB of KV: not one sequence of {} tokens fits", o.kv_memory_gb, contexts[ci])}});
    }
    if (host < budget) {  // on the CPU the pool lives in host memory: points beyond what the machine has are said, not run
      std::erase_if(grid, [&](const auto& point) {
        const auto& [b, c, m] = point;
        if (double(b) * cost.seq_bytes(c) <= host) return false;
        skipped.push_back({{"kv", label}, {"batch", b}, {"context", c}, {"fit", m ? "max" : "-"},
                           {"note", fmt::format("beyond this machine's available memory ({:.1f} GB usable)", host / 1e9)}});
        return true;
      });
    }
    uint64_t pages = 0;
    uint32_t most_batch = 1, ctx = 1;
    for (const auto& [b, c, m] : grid) {
      pages = std::max<uint64_t>(pages, uint64_t(b) * uint64_t(std::ceil(double(c) / cost.page_size)));
      most_batch = std::max(most_batch, b), ctx = std::max(ctx, c);
    }
    for (uint32_t p : prompts) pages = std::max<uint64_t>(pages, uint64_t(std::ceil(double(p) / cost.page_size))), ctx = std::max(ctx, p);
    TQ_CHECK(pages <= uint64_t(std::numeric_limits<int32_t>::max()), "{}: the grid needs {} pages, more than a pool can number (2^31 - 1)",
             label, pages);
    engine::EngineOptions eo{.device = device,
                             .threads = threads_option(o.threads),
                             .context = ctx,
                             .max_seqs = most_batch,
                             .num_pages = uint32_t(std::max<uint64_t>(pages, 1)),
                             .max_chunk = std::max(most_batch * most_q, chunk),
                             .eager = o.eager,
                             .products = products[pi],
                             .batch_invariant = o.batch_invariant,
                             .dense_prompts = o.dense_prompts,
                             .swa_full = o.swa_full};
    std::unique_ptr<engine::ModelRunner> runner;
    std::string why;
    try {
      runner = bm.runner(spec, eo, o.seed);
    } catch (const Error& e) {
      why = e.what();
    }
    if (!runner) {  // a cache this device cannot run: said in the table, the others go on
      fmt::print(stderr, "tq bench: {}: not run: {}\n", label, why);
      dec.add({{"kv", label}, {"note", why}});
      continue;
    }
    const bool is_ref = where.empty();  // the first cache that runs is the one the others are compared with
    if (is_ref) where = runner->describe(), first_name = label;
    fmt::print(stderr, "tq bench: {}: {}\n", label, runner->describe());
    size_t point = 0;
    for (const auto& [b, c, is_max] : grid) {
      double one = 0;  // ms of the one-token step at this point
      for (uint32_t q : queries) {
        fmt::print(stderr, "\r  decode batch {} context {} tokens/seq {} ({}/{})   ", b, c, q, ++point, grid.size() * queries.size());
        const double ms = median(decode_steps(*runner, cost.page_size, b, c, q, o.warmup, o.steps));
        const double tps = 1e3 * b * q / ms;
        const auto key = std::make_tuple(is_max ? 0u : b, c, q);
        if (is_ref) first_dec[key] = tps;
        if (q == 1) one = ms;
        // Bytes a step must read at least: every weight once, every page of every sequence once (the
        // window's on sliding-window layers).
        const double limit = 1e3 * (weights + double(b) * cost.step_read_bytes(c)) / bw;
        dec.add({{"kv", label}, {"batch", b}, {"context", c}, {"queries", q}, {"fit", is_max ? "max" : "-"},
                 {"ms_per_step", ms}, {"tokens_per_s", tps}, {"limit_ms", limit}, {"of_limit", limit / ms}});
        if (one > 0) dec.rows_back()["vs_one"] = ms / one;
        if (first_dec.count(key)) dec.rows_back()["vs_first"] = tps / first_dec[key];
      }
    }
    for (nlohmann::json& row : skipped) dec.add(std::move(row));
    // One chunk untimed first: the prefill kernels' first launch (module loading) is not in the
    // medians of few --reps
    if (!prompts.empty()) (void)prefill_seconds(*runner, cost.page_size, std::min(chunk, prompts[0]), chunk, rng);
    for (uint32_t p : prompts) {
      fmt::print(stderr, "\r  prefill {} tokens                         ", p);
      std::vector<double> t;
      for (uint32_t i = 0; i < o.reps; ++i) t.push_back(prefill_seconds(*runner, cost.page_size, p, chunk, rng));
      const double tps = p / median(t);
      if (is_ref) first_pre[p] = tps;
      pre.add({{"kv", label}, {"prompt", p}, {"tokens_per_s", tps}, {"vs_first", tps / first_pre[p]}});
    }
    fmt::print(stderr, "\r{:60}\r", "");
  }

  const std::string head = fmt::format("tq bench: {} on {}; decode medians of {} steps after {} warm-up, {}; limit = (weights {:.2f} GB + "
                                       "pages read) / {} TB/s; fit in {} GB of KV; "
                                       "'vs first': tokens/s against {}",
                                       model_name, where.empty() ? engine::device_name(device) : where, o.steps, o.warmup,
                                       o.eager ? "eager (no CUDA graphs)" : "greedy sampling in the runner", weights / 1e9, o.bandwidth_tbs, o.kv_memory_gb,
                                       first_name.empty() ? "-" : first_name);
  fmt::print("{}\n\nDecode (tokens/seq per sequence per step: 1, or a token and drafts to verify, every position scored; "
             "tokens/s counts scored tokens; 'vs 1 token': ms/step against the one-token step):\n{}",
             head, dec.text());
  if (!prompts.empty()) fmt::print("\nPrefill (one sequence, chunks of {}; median of {}):\n{}", chunk, o.reps, pre.text());
  const std::string rings = cfg.sliding_window > 0 && !o.swa_full
                                ? std::string(", sliding-window layers in window rings")
                                : std::string();
  fmt::print("\nLargest batch in {} GB of KV (whole pages, side buffers included{}):\n{}", o.kv_memory_gb, rings, fit.text());
  std::fflush(stdout);
  if (!o.json.empty())
    write_json(o.json, nlohmann::json{{"model", model_name}, {"device", where}, {"steps", o.steps}, {"warmup", o.warmup}, {"eager", o.eager},
                                      {"bandwidth_tbs", o.bandwidth_tbs}, {"kv_memory_gb", o.kv_memory_gb}, {"weight_bytes", weights},
                                      {"fit", fit.json()["rows"]}, {"decode", dec.json()["rows"]}, {"prefill", pre.json()["rows"]}}
                           .dump(2));
}

}  // namespace bench_cmd

void add_bench(CLI::App& app) {
  using namespace bench_cmd;
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand(
      "bench",
      "Engine benchmark: decode ms/step and tokens/s over a (batch, context) grid, prefill tokens/s, and the\n"
      "largest batch each cache fits in a KV memory budget, for several KV specs in one run and one table.\n"
      "Without -m the model is a named real shape with random weights on the GPU (speed does not depend on\n"
      "the values; vLLM's --load-format dummy). Decode contexts are taken as already written (zeroed pages\n"
      "are read like any other), so a 32K point costs no 32K prefill.\n"
      "Example: tq bench --shape llama-3.1-8b --kv bf16,k3v2 --batch 1,16,max --context 4096,32768 --json out.json");
  add_model_options(c, o->shape, o->model, o->tokenizer);
  c->add_option("--kv", o->kv, "comma-separated KV specs; 'default' is tq run's (default: bf16,fp8,k4v4,k3v2,default)");
  c->add_option("--batch", o->batch, "decode batch sizes; 'max' = the largest that fits --kv-memory at each context, at most 4096\n"
                "(default 1,16,64,max)");
  c->add_option("--context", o->context, "decode contexts in tokens: the last step's positions end there (default 4096,32768)");
  c->add_option("--queries", o->queries,
                "tokens per sequence in a decode step (default 1); 2..9 time the verification of 1..8 drafted tokens "
                "(speculative decoding: every position scored and sampled, all but one taken back)");
  c->add_option("--prefill", o->prefill, "prompt lengths for prefill tokens/s, or none (default 4096,32768)");
  // (0 stays the unset default: CLI11 checks given values only)
  c->add_option("--chunk", o->chunk, "prefill chunk in tokens, 1..65536 (default: 2048 on cuda, 64 on cpu)")->check(CLI::Range(1, 65536));
  c->add_option("--kv-memory", o->kv_memory_gb, "KV memory budget in GB (1e9 bytes) for the fit table and 'max' (default 100)");
  c->add_option("--bandwidth", o->bandwidth_tbs,
                "memory bandwidth in TB/s for the limit column (default 4.2: an H200's achievable; its datasheet says 4.8)");
  c->add_option("--steps", o->steps, "timed decode steps per point (default 10)");
  c->add_option("--warmup", o->warmup, "untimed decode steps first: graph capture, caches (default 3)");
  c->add_option("--reps", o->reps, "prefill repetitions, median reported (default 3), after one untimed chunk");
  c->add_option("--seed", o->seed, "seed of the random weights and prompts (default 1)");
  c->add_option("--device", o->device, kDeviceHelp);
  c->add_option("-t,--threads", o->threads, kThreadsHelp);
  c->add_flag("--eager", o->eager, "launch every kernel (no CUDA graphs), for comparison");
  c->add_flag("--swa-full", o->swa_full,
              "sliding-window layers (Gemma 3's local ones) keep every position in the pool instead of a window ring per\n"
              "sequence (tq run --swa-full), for comparison");
  c->add_flag("--batch-invariant", o->batch_invariant, "CUDA: the runner's batch-invariant mode (tq run --batch-invariant), to time it");
  c->add_flag("--dense-prompts", o->dense_prompts, "CUDA: each prompt's first chunk attended densely by cuDNN (tq run --dense-prompts), to time it");
  c->add_option("--products", o->products,
                "how the CUDA runner multiplies by the weights: auto (default: its GEMV kernel for one-row steps, its tensor-core "
                "gemm_rows for 2..16 rows, cuBLAS beyond), gemv (the GEMV kernel, cuBLAS from two rows), rows (gemm_rows for 1..16 "
                "rows: batch-invariant) or cublas (always cuBLAS); a list runs each cache once per item, for comparison");
  c->add_option("--json", o->json, "also write the tables as JSON to FILE (default: none)");
  c->callback([o] { run(*o); });
}

}  // namespace tq::cli
