// tq passkey: retrieval of a 5-digit key hidden at several depths of filler text.
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "table.h"
#include "tq/check.h"
#include "tq/common.h"
#include "tq/engine/eval.h"
#include "model_files.h"

namespace tq::cli {
namespace passkey_cmd {  // named: the command files are compiled together (apps/cli/CMakeLists.txt)

struct Options {
  std::string model, tokenizer, kv = "fp16,k3v2";
  std::vector<uint32_t> lengths{256, 512, 1024};
  std::vector<double> depths{0.1, 0.5, 0.9};
  uint64_t seed = 1234;
  unsigned threads = 0;
  std::string device = "auto";
  double gpu_memory = 0;
  uint32_t trials = 1;
  std::string haystack;
  bool json = false, verbose = false, allow_long = false, by_depth = false;
};

void run(const Options& o) {
  const auto specs = parse_kv_specs(o.kv);
  LoadedModel lm = load_model_and_tokenizer(o.model, o.tokenizer);
  engine::PasskeyOptions po;
  po.lengths = o.lengths;
  po.depths = o.depths;
  po.seed = o.seed;
  po.threads = threads_option(o.threads);
  po.max_context = o.allow_long ? 0 : uint32_t(lm.model.config.max_seq);
  po.device = pick_device(o.device, lm.model.config, specs);
  check_gpu_memory(o.gpu_memory, po.device);
  po.gpu_memory = o.gpu_memory;
  po.trials = o.trials;
  po.by_depth = o.by_depth;
  if (!o.haystack.empty()) {
    po.haystack = read_text_file(o.haystack, "--haystack");
    TQ_CHECK(!po.haystack.empty(), "--haystack: '{}' is empty", o.haystack);
  }
  const bool verbose = o.verbose;
  const size_t total = specs.size() * o.lengths.size() * o.depths.size() * o.trials;  // the trials, every spec's
  size_t done = 0;
  const auto rows = engine::evaluate_passkey(lm.model, *lm.tokenizer, specs, po, [&](const std::string& msg) {
    ++done;
    if (verbose) fmt::print(stderr, "  {}\n", msg);
    else fmt::print(stderr, "\r  {}/{} trials", done, total);
  });
  if (!verbose) fmt::print(stderr, "\n");
  std::vector<Column> cols{{"kv", "kv"}, {"asked", "length"}, {"length", "tokens"}};
  if (o.by_depth) cols.push_back({"depth", "depth", 2});
  for (const Column& c : {Column{"correct", "correct"}, Column{"trials", "trials"}, Column{"accuracy", "accuracy", 3}}) cols.push_back(c);
  Table t(cols);
  for (const auto& r : rows) {
    nlohmann::json row{{"kv", r.kv}, {"asked", r.asked}, {"length", r.length}, {"correct", r.correct}, {"trials", r.trials}, {"accuracy", double(r.correct) / r.trials}};
    if (o.by_depth) row["depth"] = r.depth;
    t.add(row);
  }
  if (o.json) {
    std::cout << t.json().dump(2) << "\n";
  } else {
    fmt::print("pass key retrieval, greedy decoding, {} depths x {} keys per length, filler: {} (seed {})\n", o.depths.size(), o.trials,
               o.haystack.empty() ? std::string("repeated sentences") : o.haystack, o.seed);
    fmt::print("{}", t.text());
  }
}

}  // namespace passkey_cmd

void add_passkey(CLI::App& app) {
  using namespace passkey_cmd;
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("passkey",
                                   "Pass-key retrieval: a random 5-digit key (fixed seed) hidden at several depths of filler text;\n"
                                   "accuracy of greedy decoding per KV configuration and prompt length.\n"
                                   "Example: tq passkey --kv fp16,k3v2 --lengths 256,1024\n"
                                   "A needle-in-a-haystack grid: tq passkey --kv fp16,default --lengths 1024,4096,8000 --depths 0,0.5,1\n"
                                   "  --trials 10 --haystack ../shared/data/text/emma.txt --by-depth --json");
  c->add_option("-m,--model", o->model, "model file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  c->add_option("--kv", o->kv, "comma-separated KV specs (docs/kv-specs.md); 'default' in the list is tq run's spec");
  c->add_option("--lengths", o->lengths,
                "prompt lengths in tokens (default 256,512,1024); with the answer, within the model's training context\n"
                "unless --allow-long-context; at least the shortest prompt (instructions, key and question: 91 tokens\n"
                "with SmolLM2, more with a small vocabulary)")
      ->delimiter(',');
  c->add_flag("--allow-long-context", o->allow_long, kAllowLongHelp);
  c->add_option("--depths", o->depths,
                "depths of the key, fractions of the filler in [0, 1] (default 0.1,0.5,0.9); with --haystack the key goes in\n"
                "at the first \". \" from that fraction of the stretch on (depth 0: after its first sentence)")
      ->delimiter(',');
  c->add_option("--trials", o->trials, "keys per length and depth, each its own key (and stretch of --haystack); default 1")
      ->check(CLI::Range(1u, 100000u));
  c->add_option("--haystack", o->haystack,
                "a text file to hide the key in (needle in a haystack: each trial a stretch from a random sentence);\n"
                "default: the pass-key task's repeated sentences");
  c->add_flag("--by-depth", o->by_depth, "a row per length and depth (the grid bench/quality/needle_grid.py draws)");
  c->add_option("--seed", o->seed, "seed of the keys");
  c->add_option("--tokenizer", o->tokenizer, kTokenizerHelp);
  c->add_option("-t,--threads", o->threads, kThreadsHelp);
  c->add_option("--device", o->device, kDeviceHelp);
  c->add_option("--gpu-memory", o->gpu_memory,
                "fraction of the GPU's memory for the engine, in (0, 1]: weights, scratch, and a KV page pool of what\n"
                "they leave (vLLM's --gpu-memory-utilization); default: a pool of one prompt");
  c->add_flag("--json", o->json,
              "print JSON instead of the table: a row's \"asked\" is the table's length (asked for), its \"length\"\n"
              "the table's tokens (the longest prompt of the cell)");
  c->add_flag("-v,--verbose", o->verbose, "print each answer on stderr");
  c->callback([o] { run(*o); });
}

}  // namespace tq::cli
