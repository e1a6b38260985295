// tq run: generate text with a model whose KV cache is compressed as the KV spec says.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>
#include <random>

#include "commands.h"
#include "tq/check.h"
#include "tq/engine/engine.h"
#include "tq/engine/generation.h"
#include "tq/engine/key_centre.h"
#include "tq/engine/sampler.h"
#include "bench_util.h"
#include "model_files.h"
#include "tq/engine/auto_kv.h"

namespace tq::cli {
namespace run_cmd {  // named: the command files are compiled together (apps/cli/CMakeLists.txt)

struct Options {
  std::string model, tokenizer, prompt, kv = kDefaultKvSpec;
  int steps = 256;
  engine::SamplingParams sampling;
  uint64_t seed = 0;
  bool seed_given = false;  // --seed was on the command line; without it a fresh seed each run (printed)
  uint32_t ctx = 0;
  unsigned threads = 0;
  std::string device = "auto";
  double gpu_memory = 0;
  bool chat = false, allow_long = false;
  bool steps_given = false;  // -n was on the command line
  bool exact_products = false;
  bool batch_invariant = false;  // --batch-invariant
  bool dense_prompts = false;    // --dense-prompts
  bool swa_full = false;         // --swa-full
  std::string logits_file;  // test hook: prompt token ids and last-token logits
  std::string speculative;  // --spec: "" or a speculative_spec
  std::string draft, draft_kv;  // --draft model file, its KV spec ("" = --kv's)
};

// The KV line on stderr: the packed pages against the same pages in fp16 (like with like: whole
// pages of the same token capacity), then the window rings and the sink/window side buffers apart,
// fixed costs per sequence whatever its length, and the total.
void print_kv_line(const engine::Engine& e, int s, const KvSpec& spec) {
  const auto& c = e.config();
  const double fp16_token = 2.0 * 2.0 * c.n_layers * c.n_kv_heads * c.head_dim;  // K and V, 2 bytes each
  const size_t pages = e.blocks().block_table(s).size();
  const uint32_t page_size = e.blocks().page_size();
  const double side = double(e.runner().side_bytes()), rings = double(e.runner().ring_bytes());
  const std::vector<bool> local = c.local_layers();
  const size_t ring_layers = rings > 0 ? size_t(std::count(local.begin(), local.end(), true)) : 0;
  // The pool's pages hold the layers outside the rings: fp16 of those layers for like with like.
  const double pool_fp16_token = fp16_token * double(size_t(c.n_layers) - ring_layers) / c.n_layers;
  const double packed = double(pages) * double(e.runner().page_bytes()), fp16 = double(pages) * page_size * pool_fp16_token;
  const double ratio = pages ? fp16 / packed : 1.0;
  const std::string vs = std::abs(ratio - 1) < 5e-3 ? "as large as"
                         : ratio > 1                ? fmt::format("{:.2f}x smaller than", ratio)
                                                    : fmt::format("{:.2f}x larger than", 1 / ratio);
  fmt::print(stderr, "KV cache: {} tokens in {} pages of {}: {:.1f} KiB at {:.3f} bits/element, {} the same pages in fp16 ({:.1f} KiB)\n",
             e.seq_len(s), pages, page_size, packed / 1024, e.bits_per_element(), vs, fp16 / 1024);
  if (rings > 0)
    fmt::print(stderr, "KV window rings: {:.1f} KiB: the {} sliding-window layers keep the pages of their window of {} and a step only, a "
                       "fixed cost per sequence (the pages above hold the other {}); pages and rings together: {:.1f} KiB, {:.2f}x smaller "
                       "than every layer in fp16\n",
               rings / 1024, ring_layers, c.sliding_window, size_t(c.n_layers) - ring_layers, (packed + rings) / 1024,
               double(e.seq_len(s)) * fp16_token / (packed + rings));
  if (side > 0) {
    const auto& p = spec.policy;
    const uint64_t rows = uint64_t(side / fp16_token + 0.5), extra = rows - std::min<uint64_t>(rows, p.sink + p.window);
    fmt::print(stderr, "KV side buffers: {:.1f} KiB, fp16 rows of {} positions (sink {} + window {} + {} of a step), a fixed cost per "
                       "sequence whatever its length; pages, window rings and side buffers together: {:.1f} KiB\n",
               side / 1024, rows, p.sink, p.window, extra, (packed + side + rings) / 1024);
  }
}

void run(const Options& o) {
  using clock = std::chrono::steady_clock;
  TQ_CHECK(o.steps >= 0, "-n must be >= 0, got {}", o.steps);
  // Bad --temp / --top-k / --top-p / --min-p are refused before the model loads, naming the option.
  const auto check_sampling = [](const char* option, const auto& set) {
    engine::SamplingParams p;
    set(p);
    try {
      p.validate();
    } catch (const Error& e) {
      throw Error(fmt::format("{}: {}", option, e.what()));
    }
  };
  check_sampling("--temp", [&](auto& p) { p.temperature = o.sampling.temperature; });
  check_sampling("--top-k", [&](auto& p) { p.top_k = o.sampling.top_k; });
  check_sampling("--top-p", [&](auto& p) { p.top_p = o.sampling.top_p; });
  check_sampling("--min-p", [&](auto& p) { p.min_p = o.sampling.min_p; });
  // Sampling is random unless --seed is given; the seed used is printed so a run can be repeated.
  engine::SamplingParams sampling = o.sampling;
  sampling.seed = o.seed_given ? o.seed : (uint64_t(std::random_device{}()) << 32 | std::random_device{}());
  engine::Sampler sampler(sampling);
  const unsigned threads = threads_option(o.threads);
  check_kv_list(o.kv, "tq run");
  TQ_CHECK(!engine::is_auto_kv(o.kv) || o.draft.empty() || !o.draft_kv.empty(),
           "--kv {}: an automatic spec is calibrated on the target model; give the draft model its own --draft-kv", o.kv);
  // --draft alone means --spec draft; the two sources exclude each other.
  const std::string spec_text = o.speculative.empty() && !o.draft.empty() ? "draft" : o.speculative;
  std::optional<engine::SpeculativeSpec> ss;
  if (!spec_text.empty()) ss = engine::parse_speculative_spec(spec_text);
  const bool by_model = ss && ss->source == engine::SpeculativeSpec::Source::kDraftModel;
  TQ_CHECK(by_model == !o.draft.empty(), "{}", o.draft.empty() ? "--spec draft needs a draft model: --draft FILE"
                                                                : fmt::format("--draft drafts with a model, --spec '{}' by prompt lookup: pick one", spec_text));
  TQ_CHECK(o.draft_kv.empty() || by_model, "--draft-kv is the draft model's KV spec: give --draft FILE too");
  // Errors about the draft model's spec name --draft-kv and the draft model.
  const auto for_draft = [&](auto&& f) {
    try {
      return f();
    } catch (const Error& e) {
      if (o.draft_kv.empty()) throw;
      throw Error(fmt::format("--draft-kv '{}' (the draft model {}): {}", o.draft_kv, o.draft, e.what()));
    }
  };
  TQ_CHECK(!engine::is_auto_kv(o.draft_kv), "--draft-kv {}: an automatic spec is calibrated on the target model (--kv only); give the "
           "draft model a concrete spec such as k4v4", o.draft_kv);
  const KvSpec draft_spec = for_draft(
      [&] { return parse_kv_spec(o.draft_kv.empty() && !engine::is_auto_kv(o.kv) ? o.kv : o.draft_kv.empty() ? "fp16" : o.draft_kv); });
  check_json_path(o.logits_file, "--logits");  // before the model loads and the prompt runs, not after
  LoadedModel lm = load_model_and_tokenizer(o.model, o.tokenizer);
  // (an auto: mem= budget counts the side rows of the engine's default chunk)
  const uint32_t side_chunk = engine_side_chunk(o.device, engine::EngineOptions{}.max_chunk, UINT32_MAX);
  const KvSpec spec = parse_kv_spec(resolve_auto_kv_list(o.kv, lm, threads, o.swa_full, 0, side_chunk));
  const auto& cfg = lm.model.config;
  const auto& tok = *lm.tokenizer;
  TQ_CHECK(!o.chat || cfg.chat_template != model::ChatTemplate::None, "--chat: '{}' {}", lm.path, cfg.chat_template_missing());  // names the file
  const std::vector<int> prompt = engine::prompt_tokens(lm.model, tok, o.prompt, o.chat);
  const uint32_t ctx = o.ctx ? o.ctx : uint32_t(cfg.max_seq);
  if (o.ctx) check_context(o.ctx, fmt::format("--ctx {}", o.ctx), lm, o.allow_long);
  const std::string ctx_is = o.ctx ? "--ctx" : "the model's training context";
  TQ_CHECK(prompt.size() <= ctx, "the prompt has {} tokens, longer than the context of {} tokens ({})", prompt.size(), ctx, ctx_is);
  // An -n the context cannot hold after the prompt is a mistake (prompt + -n tokens at most, as tq
  // serve's prompt + max_tokens); the default -n just stops where the context is full.
  TQ_CHECK(!o.steps_given || prompt.size() + uint64_t(o.steps) <= ctx,
           "-n {}: more tokens than the context holds after the prompt's {} ({} tokens, {}); lower -n{}", o.steps, prompt.size(), ctx, ctx_is,
           o.ctx ? "" : " or raise --ctx (past the model's context with --allow-long-context)");
  // The page pool (and the runner's per-position tables) hold what this run can reach, not all of
  // --ctx; and the key centre's calibration step (64 tokens) whole, so that it does not change with -n.
  const uint32_t needed =
      uint32_t(std::min<uint64_t>(ctx, std::max<uint64_t>(prompt.size() + uint64_t(o.steps), engine::kCentreTokens)));
  // The key centre's RoPE mean is over the context asked for (as tq serve's, over --max-model-len),
  // not over what -n reaches: the same text for every -n. At most 2^20 positions (--ctx beyond the
  // model's context), where every pair but the slowest has long averaged out.
  const uint32_t centre_span = std::min(ctx, 1u << 20);
  const engine::Device device = pick_device(o.device, cfg, {spec});
  check_gpu_memory(o.gpu_memory, device);
  TQ_CHECK(!o.batch_invariant || device == engine::Device::kCuda, "--batch-invariant is for --device cuda: the CPU runner is batch-invariant already");
  TQ_CHECK(!o.dense_prompts || device == engine::Device::kCuda, "--dense-prompts is for --device cuda (cuDNN's fused attention), not the CPU");
  std::optional<LoadedModel> draft;
  if (by_model) {
    draft.emplace(load_checked_draft(o.draft, o.tokenizer, tok, needed, o.allow_long, "the run (prompt and -n)"));
  }
  // --dense-prompts: the prompt's first step is what cuDNN attends, so it takes the prompt whole, up
  // to the packed prefill's chunk (kMaxPrefillChunk, 2048: every model's limit); 64 tokens otherwise.
  const uint32_t chunk = o.dense_prompts ? uint32_t(std::clamp<size_t>(prompt.size(), engine::EngineOptions{}.max_chunk, 2048))
                                         : engine::EngineOptions{}.max_chunk;
  engine::Engine e(lm.model, spec,
                   {.device = device,
                    .threads = threads,
                    .context = needed,
                    .max_chunk = chunk,
                    .batch_invariant = o.batch_invariant,
                    .dense_prompts = o.dense_prompts,
                    .gpu_memory = o.gpu_memory,
                    .exact_products = o.exact_products,
                    .swa_full = o.swa_full,
                    .centre_span = centre_span});
  fmt::print(stderr, "tq run: {} ({} layers, {} KV heads x {}), KV cache {}, {}\n", lm.path, cfg.n_layers, cfg.n_kv_heads,
             cfg.head_dim, spec.canonical(), e.runner().describe());
  std::unique_ptr<engine::Engine> draft_engine;
  std::unique_ptr<engine::Drafter> drafter;
  std::optional<engine::Speculation> speculation;
  if (by_model) {
    const engine::Device draft_device = pick_device(o.device, draft->model.config, {draft_spec});
    draft_engine = for_draft([&] { return std::make_unique<engine::Engine>(draft->model, draft_spec,
                                                    engine::EngineOptions{.device = draft_device, .threads = threads, .context = needed, .centre_span = centre_span}); });
    fmt::print(stderr, "tq run: draft model {} ({} layers), KV cache {}, {}\n", draft->path, draft->model.config.n_layers,
               draft_spec.canonical(), draft_engine->runner().describe());
    drafter = std::make_unique<engine::ModelDrafter>(*draft_engine);
  } else if (ss) {
    drafter = engine::make_drafter(*ss);
  }
  if (ss) speculation.emplace(drafter.get(), ss->max_draft, ss->adaptive);

  if (!sampling.greedy() && sampling.top_k != 1)
    fmt::print(stderr, "tq run: sampling with seed {}{}\n", sampling.seed, o.seed_given ? "" : " (--seed to repeat this text)");
  fmt::print("{}", o.chat ? o.prompt + "\n" : tok.decode(prompt));
  flush_stdout();
  const int s = e.add_sequence();
  const auto t0 = clock::now();
  std::vector<float> logits = e.prefill(s, prompt);
  const auto t1 = clock::now();
  if (!o.logits_file.empty()) {  // [int32 n][int32 ids[n]][float32 logits[vocab]], little-endian
    std::FILE* f = std::fopen(o.logits_file.c_str(), "wb");
    TQ_CHECK(f != nullptr, "--logits: cannot write '{}'", o.logits_file);
    const int32_t n = int32_t(prompt.size());
    bool ok = std::fwrite(&n, 4, 1, f) == 1;
    for (int id : prompt) ok = std::fwrite(&id, 4, 1, f) == 1 && ok;
    ok = std::fwrite(logits.data(), 4, logits.size(), f) == logits.size() && ok;
    ok = std::fclose(f) == 0 && ok;  // a full disk shows at the flush: a short file would be read as logits
    TQ_CHECK(ok, "--logits: writing '{}' failed", o.logits_file);
  }
  int prev = prompt.back();
  const auto print = [&](int next) {  // streamed: each token's text as soon as it is sampled
    fmt::print("{}", tok.decode_next(prev, next));
    flush_stdout();  // a write error (a full disk, a closed pipe) ends the run
    prev = next;
  };
  if (drafter) drafter->extend(prompt);
  const uint32_t generated = engine::generate(e, s, std::move(logits), sampler, lm.model, tok,
                                              {.max_tokens = uint32_t(o.steps), .context = ctx, .speculation = speculation ? &*speculation : nullptr},
                                              print);
  const auto t2 = clock::now();
  fmt::print("\n");
  flush_stdout();  // the text ends before the statistics on stderr
  if (generated < uint32_t(o.steps) && prompt.size() + generated >= ctx)
    fmt::print(stderr, "tq run: stopped after {} of -n {} tokens: the context of {} tokens ({}) is full\n", generated, o.steps, ctx,
               ctx_is);
  const double pt = std::chrono::duration<double>(t1 - t0).count(), gt = std::chrono::duration<double>(t2 - t1).count();
  fmt::print(stderr, "prompt: {} tokens, {:.1f} tokens/s | generation: {} tokens, {:.1f} tokens/s\n", prompt.size(),
             double(prompt.size()) / std::max(pt, 1e-9), generated, double(generated) / std::max(gt, 1e-9));
  if (speculation) {
    const engine::SpeculativeStats& st = speculation->stats;
    fmt::print(stderr, "speculation ({}): {} verify steps and {} plain ones; {} of {} drafted tokens kept ({:.1f}%), {:.2f} tokens per verify step\n",
               spec_text, st.steps, st.plain_steps, st.accepted, st.drafted, 100 * st.acceptance(), st.tokens_per_step());
  }
  print_kv_line(e, s, spec);
}

}  // namespace run_cmd

void add_run(CLI::App& app) {
  using namespace run_cmd;
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("run",
                                   "Generate text with a compressed KV cache, on the GPU or the CPU (--device): quantized as tokens arrive,\n"
                                   "attention reads the packed pages. Without -m: models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/get_model.sh).\n"
                                   "Example: tq run -p 'Why is the sky blue?' --chat --kv k3v2 -n 100 --temp 0.7 --top-p 0.9");
  c->add_option("-m,--model", o->model, "model file: GGUF (llama, qwen2, qwen3, gemma3) or llama2.c checkpoint (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  c->add_option("-p,--prompt", o->prompt, "prompt text (default: none, the text starts from the BOS token)");
  CLI::Option* steps =
      c->add_option("-n,--steps", o->steps, "tokens to generate, at most the context (default 256, or until the context is full)");
  c->add_option("--temp", o->sampling.temperature,
                "sampling temperature, a number >= 0: 0 = greedy, always the most likely token (default); 0.7-1 for\n"
                "varied text (below 1 sharper, above 1 flatter); --top-k, --top-p, --min-p apply only when > 0");
  c->add_option("--top-k", o->sampling.top_k, "sample among the K most likely tokens only (0 = off, default; 1 = greedy)");
  c->add_option("--top-p", o->sampling.top_p,
                "nucleus sampling: among the fewest most likely tokens whose probabilities add up to P, in (0, 1]\n"
                "(1 = off, default; 0.9 is common); applied after --temp and --top-k");
  c->add_option("--min-p", o->sampling.min_p,
                "drop tokens less than P times as likely as the most likely one, in [0, 1] (0 = off, default)");
  CLI::Option* seed = c->add_option("--seed", o->seed,
                "sampling seed: the same seed, prompt and flags give the same text (default: a random seed each run,\n"
                "printed on stderr so the text can be repeated)")
      ->default_str("random");
  c->add_option("--kv", o->kv, std::string("KV spec (default ") + kDefaultKvSpec + ", docs/quality.md says why)" + kAutoKvHelp);
  c->add_option("--tokenizer", o->tokenizer, kTokenizerHelp);
  c->add_option("--ctx", o->ctx,
                "context length: generation stops when prompt and text fill it (default: the model's training context;\n"
                "longer with --allow-long-context only)")
      ->check(CLI::Range(1u, 0xFFFFFFFFu));  // (0 was read as the default; tq perplexity refuses it too)
  c->add_flag("--allow-long-context", o->allow_long, kAllowLongHelp);
  c->add_option("-t,--threads", o->threads, kThreadsHelp);
  c->add_option("--device", o->device, kDeviceHelp);
  c->add_option("--gpu-memory", o->gpu_memory,
                "fraction of the GPU's memory to use, in (0, 1]: the KV page pool gets what the weights and scratch\n"
                "leave (vLLM's --gpu-memory-utilization); default: a pool of what the run needs (prompt and -n, within --ctx)");
  c->add_option("--spec", o->speculative,
                "speculative decoding: ngram = prompt lookup (the last n tokens looked up earlier in the text, what\n"
                "followed them is drafted; fast where the answer copies from the prompt); draft = a draft model\n"
                "(--draft). Options after ':' - k=N most drafted tokens per step, 1..8 (default 8), fixed=1 always k\n"
                "drafts (default: adaptive to the acceptance); ngram only: n=N longest n-gram matched (default 3),\n"
                "min=N shortest (default 2). Greedy text is the same as without; sampled text keeps the same\n"
                "distribution. Examples: --spec ngram:k=4, --draft small.gguf --spec draft:k=4");
  c->add_option("--draft", o->draft,
                "draft model for speculative decoding (GGUF with the same tokenizer as -m, smaller and faster): it\n"
                "drafts greedily on its own cache, the model checks the drafts in one step; implies --spec draft\n"
                "(default: none)");
  c->add_option("--draft-kv", o->draft_kv, "KV spec of the draft model's cache (default: --kv's)");
  c->add_option("--logits", o->logits_file, "write the prompt's token ids and last-token logits to FILE (tests; default: none)");
  c->add_flag("--exact-products", o->exact_products,
              "CPU: multiply quantized weights in fp32 on the activations as they are, instead of on activations\n"
              "quantized to 8 bits per block of 32 or 256 (llama.cpp's way, the default); slower, for reference");
  c->add_flag("--batch-invariant", o->batch_invariant,
              "CUDA: a position's logits do not depend on what else its step holds (steps of up to 16 rows), so greedy\n"
              "--spec/--draft output equals plain decoding's exactly; steps up to 10% slower; specs without sink/window");
  c->add_flag("--dense-prompts", o->dense_prompts,
              "CUDA: the prompt's first step (up to 2048 tokens, from position 0) attends its own K/V rows\n"
              "in bf16 through cuDNN's fused attention instead of their quantized rows: faster prefill; decode and later\n"
              "chunks read the cache as always. Needs cuDNN 9 (libcudnn.so.9, or TQ_CUDNN_LIBRARY); specs without sink/window");
  c->add_flag("--swa-full", o->swa_full,
              "keep every position of the model's sliding-window layers (Gemma 3's local layers) in the page pool, as\n"
              "llama.cpp's --swa-full; by default they keep only the positions their queries still see, in a ring per sequence");
  c->add_flag("--chat", o->chat, "wrap the prompt in the model's chat template (ChatML for SmolLM2-Instruct)");
  c->callback([o, steps, seed] {
    o->steps_given = steps->count() > 0;
    o->seed_given = seed->count() > 0;
    run(*o);
  });
}

}  // namespace tq::cli
