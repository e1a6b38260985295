// tq perplexity: several KV configurations against a full-precision cache on one text, one table.
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "table.h"
#include "tq/check.h"
#include "tq/engine/eval.h"
#include "tq/engine/generation.h"
#include "model_files.h"

namespace tq::cli {
namespace perplexity_cmd {  // named: the command files are compiled together (apps/cli/CMakeLists.txt)

struct Options {
  std::string model, tokenizer, file, kv = "fp16,k4v4,k3v2", ref = "auto", device = "auto";
  uint32_t ctx = 0, chunk = 64;  // ctx 0: kDefaultCtx, or the model's training context where shorter
  uint32_t score_from = 0;       // --score-from
  size_t max_tokens = 0;
  unsigned threads = 0;
  double gpu_memory = 0;
  bool json = false, allow_long = false;
  bool fast_products = false;
};

constexpr uint32_t kDefaultCtx = 2048;

void run(const Options& o) {
  check_kv_list(o.kv);
  const unsigned threads = threads_option(o.threads);
  LoadedModel lm = load_model_and_tokenizer(o.model, o.tokenizer);
  const uint32_t window = o.ctx ? o.ctx : std::min(kDefaultCtx, uint32_t(lm.model.config.max_seq));  // (checked below)
  const auto specs = parse_kv_specs(resolve_auto_kv_list(o.kv, lm, threads, false, 0, engine_side_chunk(o.device, o.chunk, window)));
  if (o.ctx) check_context(o.ctx, fmt::format("--ctx {}", o.ctx), lm, o.allow_long);
  const uint32_t ctx = o.ctx ? o.ctx : std::min(kDefaultCtx, uint32_t(lm.model.config.max_seq));
  TQ_CHECK(o.score_from < ctx, "--score-from {}: must be below the window of {} tokens (--ctx)", o.score_from, ctx);
  const auto& tok = *lm.tokenizer;
  const std::string text = read_text_file(o.file, "--file");
  // (an empty file was reported as "the text has 1 tokens": its BOS)
  TQ_CHECK(!text.empty(), "--file '{}' is empty: perplexity needs a text of at least 2 tokens", o.file);
  std::vector<int> tokens = tok.encode(text, engine::wants_bos(lm.model, tok));
  if (o.max_tokens && tokens.size() > o.max_tokens) tokens.resize(o.max_tokens);
  // The reference runs where the configurations run: fp32 on the CPU, fp16 on the GPU (its kernels
  // have no fp32 cache).
  std::vector<KvSpec> all = specs;
  all.push_back(parse_kv_spec(o.ref == "auto" ? "fp16" : o.ref));
  const engine::Device device = pick_device(o.device, lm.model.config, all);
  check_gpu_memory(o.gpu_memory, device);
  const std::string ref = o.ref != "auto" ? o.ref : device == engine::Device::kCuda ? "fp16" : "fp32";
  fmt::print(stderr, "tq perplexity: {} on {} ({} tokens), windows of {}, reference cache {}, on {}\n", lm.path, o.file, tokens.size(),
             ctx, ref, engine::device_name(device));
  engine::PerplexityOptions po{
      .ctx = ctx, .chunk = o.chunk, .score_from = o.score_from, .bos = engine::wants_bos(lm.model, tok) ? tok.bos_id() : -1,
      .threads = threads, .reference = ref, .device = device, .gpu_memory = o.gpu_memory,
      .exact_products = !o.fast_products};
  const auto res = engine::evaluate_perplexity(lm.model, tokens, specs, po, [](size_t done, size_t total) {
    fmt::print(stderr, "\r  {}/{} tokens", done, total);
    if (done == total) fmt::print(stderr, "\n");
  });
  TQ_CHECK(res.scored > 0, "no position scored: the text's {} tokens leave none past --score-from {} in any window", tokens.size(),
           o.score_from);
  Table t({{"kv", "kv"},
           {"bits_per_element", "bits/elem", 3},
           {"kv_mib", "KV MiB", 2},
           {"ppl", "ppl", 4},
           {"delta_pct", "vs ref %", 2},
           {"kl", "KL", 5},
           {"top1", "top-1", 4}});
  for (const auto& r : res.rows)
    t.add({{"kv", r.kv}, {"bits_per_element", r.bits_per_element}, {"kv_mib", r.kv_mib}, {"ppl", r.ppl}, {"delta_pct", r.delta_pct},
           {"kl", r.kl}, {"top1", r.top1}});
  if (o.json) {
    nlohmann::json j = t.json();
    j["reference"] = {{"kv", res.reference.kv}, {"ppl", res.reference.ppl}, {"kv_mib", res.reference.kv_mib}};
    j["tokens_scored"] = res.scored;
    j["ctx"] = ctx;
    j["score_from"] = o.score_from;
    j["model"] = lm.path;
    std::cout << j.dump(2) << "\n";
  } else {
    fmt::print("reference ({} cache): ppl {:.4f} over {} positions, windows of {} tokens\n", res.reference.kv, res.reference.ppl, res.scored,
               ctx);
    fmt::print("{}", t.text());
    fmt::print("KL: mean KL(reference || config) of the next-token distribution (nats); top-1: argmax agreement.\n");
  }
}

}  // namespace perplexity_cmd

void add_perplexity(CLI::App& app) {
  using namespace perplexity_cmd;
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("perplexity",
                                   "Perplexity of a text under several KV configurations, with KL divergence and top-1 agreement\n"
                                   "against a full-precision cache computed in the same run.\n"
                                   "Example: tq perplexity -f book.txt --ctx 2048 --kv fp16,k4v4,k3v2,k3v2:edge=2/k4v4,k3v2:centre");
  c->add_option("-m,--model", o->model, "model file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  c->add_option("-f,--file", o->file, "text file")->required();
  c->add_option("--ctx", o->ctx,
                "tokens per window, each starting from an empty cache (default: 2048, or the model's training context\n"
                "where shorter; beyond it with --allow-long-context only); for a model that starts its text with BOS,\n"
                "each window starts with BOS in place of its first token, as llama-perplexity's")
      ->check(CLI::Range(2, 1 << 20));
  c->add_flag("--allow-long-context", o->allow_long, kAllowLongHelp);
  c->add_option("--max-tokens", o->max_tokens, "score only the first N tokens of the text (0: all)");
  c->add_option("--score-from", o->score_from,
                "score each window's positions from N on (default 0: all); --score-from 1024 at --ctx 2048 is\n"
                "llama-perplexity's convention, whose first half of a window only gives the second its context");
  c->add_option("--kv", o->kv, std::string("comma-separated KV specs (docs/kv-specs.md); 'default' in the list is tq run's spec") + kAutoKvHelp);
  c->add_option("--ref", o->ref, "KV spec of the reference cache (default: fp32 on the CPU, fp16 on the GPU)");
  c->add_option("--device", o->device, kDeviceHelp);
  c->add_option("--gpu-memory", o->gpu_memory,
                "fraction of the GPU's memory in (0, 1] for all the caches compared at once (the reference and each\n"
                "--kv spec run side by side, each with its own weights: 1/n of it each); default: what one window needs");
  c->add_option("--chunk", o->chunk, "tokens per forward pass")->check(CLI::Range(1, 4096));
  c->add_option("--tokenizer", o->tokenizer, kTokenizerHelp);
  c->add_option("-t,--threads", o->threads, kThreadsHelp);
  c->add_flag("--fast-products", o->fast_products,
              "CPU: multiply on activations quantized to 8 bits, as tq run does (faster; its own noise then adds to\n"
              "every configuration's KL and ppl, ~0.0035 nats on SmolLM2). Default: fp32 products, so the table\n"
              "measures the KV cache alone");
  c->add_flag("--json", o->json, "print JSON instead of the table");
  c->callback([o] { run(*o); });
}

}  // namespace tq::cli
