// tq kv-size: exact bytes per token of a KV cache configuration and its ratio against fp16.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <iostream>
#include <vector>

#include "bench_util.h"
#include "commands.h"
#include "table.h"
#include "tq/check.h"
#include "tq/kv/kv_size.h"
#include "tq/kv/spec.h"
#include "tq/model/model.h"
#include "tq/model/shapes.h"

namespace tq::cli {
namespace kv_size_cmd {  // named: the command files are compiled together (apps/cli/CMakeLists.txt)

struct Options {
  uint32_t layers = 32, kv_heads = 8, head_dim = 128;
  std::string shape, model;  // --shape NAME or -m FILE: the layers, heads, head dim and sliding windows of a model
  bool swa_full = false;     // --swa-full: sliding-window layers hold every position, not a ring
  std::string kv = "fp16,fp8,default";
  std::vector<uint64_t> contexts;  // --context: MiB of one sequence of each length
  bool json = false;
};

void run(Options o) {
  std::string source;          // what the shape came from, for the header
  std::vector<uint32_t> windows;  // [layer] a model's sliding windows (empty: none, or --swa-full)
  TQ_CHECK(!o.swa_full || !o.shape.empty() || !o.model.empty(),
           "--swa-full counts a model's sliding-window layers: give the model's --shape or -m FILE (--layers, --kv-heads and "
           "--head-dim have no sliding windows)");
  if (!o.shape.empty() || !o.model.empty()) {
    const model::ModelConfig c = o.shape.empty() ? model::load_model(o.model).config : model::named_shape(o.shape);
    source = o.shape.empty() ? o.model : o.shape;
    o.layers = uint32_t(c.n_layers), o.kv_heads = uint32_t(c.n_kv_heads), o.head_dim = uint32_t(c.head_dim);
    bool any = false;
    for (int l = 0; l < c.n_layers; ++l) windows.push_back(uint32_t(c.layer_window(l))), any |= c.layer_window(l) > 0;
    if (!any || o.swa_full) windows.clear();
  }
  TQ_CHECK(o.head_dim >= 1 && o.head_dim <= kMaxHeadDim, "{} {}: a KV cache takes 1..{}", source.empty() ? "--head-dim" : source + ": head dim",
           o.head_dim, kMaxHeadDim);
  const auto specs = parse_kv_specs(o.kv);  // "default": tq run's spec
  const double fp16 = 2.0 * 2.0 * o.head_dim * o.kv_heads * o.layers;  // K and V, 2 bytes each
  std::vector<Column> cols{{"kv", "kv"},
           {"bits_per_element", "bits/elem", 3},
           {"bytes_per_token", "bytes/token", 1},
           {"ratio_vs_fp16", "vs fp16", 3},
           {"side_kib", "side KiB/seq", 1}};
  // The key centres are per cache, not per sequence: a column only when a spec has them.
  const bool centres = std::any_of(specs.begin(), specs.end(), [](const KvSpec& s) { return s.policy.key_centre; });
  if (centres) cols.push_back({"centre_kib", "centre KiB", 1});
  for (uint64_t n : o.contexts) {
    TQ_CHECK(n >= 1 && n <= (uint64_t(1) << 40), "--context: lengths are 1..2^40 tokens, got {}", n);
    cols.push_back({fmt::format("mib_at_{}", n), fmt::format("MiB @ {}", n), 1});
  }
  Table t(std::move(cols));
  for (const KvSpec& s : specs) {
    const KvSize k = kv_size(s, o.layers, o.kv_heads, o.head_dim, kKvSizeSideExtra, windows);
    nlohmann::json row{{"kv", s.canonical()},
                       {"bits_per_element", k.bits_per_element},
                       {"bytes_per_token", k.bytes_per_token},
                       {"ratio_vs_fp16", k.ratio_vs_fp16},
                       {"page_size", k.page_size},
                       {"page_bytes", k.page_bytes},
                       {"side_kib", k.side_bytes / 1024},
                       {"centre_kib", k.centre_bytes / 1024}};
    for (uint64_t n : o.contexts) row[fmt::format("mib_at_{}", n)] = k.seq_bytes(n) / (1024.0 * 1024.0);
    t.add(row);
  }
  const auto window_layers = std::count_if(windows.begin(), windows.end(), [](uint32_t w) { return w > 0; });
  if (o.json) {
    nlohmann::json j = t.json();
    j["layers"] = o.layers;
    j["kv_heads"] = o.kv_heads;
    j["head_dim"] = o.head_dim;
    j["fp16_bytes_per_token"] = fp16;
    j["contexts"] = o.contexts;
    if (!source.empty()) j["model"] = source;
    j["window_layers"] = window_layers;
    if (specs.size() == 1) {
      j["bytes_per_token"] = t.rows()[0]["bytes_per_token"];
      j["ratio_vs_fp16"] = t.rows()[0]["ratio_vs_fp16"];
    }
    std::cout << j.dump(2) << "\n";
  } else {
    fmt::print("KV cache size: {}{} layers x {} KV heads x head dim {} (fp16: {:.0f} bytes/token)\n",
               source.empty() ? "" : source + ": ", o.layers, o.kv_heads, o.head_dim, fp16);
    if (window_layers > 0) {
      fmt::print("{} of its layers are sliding-window layers (window {}): in MiB @ N each holds its window ring (the engines'\n"
                 "default; --swa-full: every position) where the ring is the smaller.\n",
                 window_layers, *std::max_element(windows.begin(), windows.end()));
    }
    fmt::print("{}", t.text());
    fmt::print("bytes/token: the packed pages, every layer in its own format (edge layers included), norms (fp16) and\n"
               "padding included, full pages. side KiB/seq: the fp16 sink/window buffer, a fixed cost per sequence\n"
               "whatever its length (in MiB @ N, not in bytes/token). 'default' is tq run's spec ({}).\n"
               "{}"
               "See docs/format.md and docs/kv-specs.md.\n",
               kDefaultKvSpec,
               centres ? "centre KiB: the fp32 key centres (centre), one per layer and KV head: a fixed cost per cache, not\n"
                         "per sequence (in no other column).\n"
                       : "");
  }
}

}  // namespace kv_size_cmd

void add_kv_size(CLI::App& app) {
  using namespace kv_size_cmd;
  auto opts = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("kv-size",
                                   "Bytes per token of KV cache configurations, exactly as docs/format.md lays them out.\n"
                                   "Example: tq kv-size --layers 32 --kv-heads 8 --head-dim 128 --kv fp16,fp8,k4v4,k3v2\n"
                                   "         tq kv-size --shape gemma-3-12b --kv fp16,default --context 131072   (or -m model.gguf)");
  auto* layers = c->add_option("--layers", opts->layers, "transformer layers")->check(CLI::Range(1, 1024));
  auto* heads = c->add_option("--kv-heads", opts->kv_heads, "KV heads per layer")->check(CLI::Range(1, 1024));
  auto* dim = c->add_option("--head-dim", opts->head_dim, "head dimension")->check(CLI::Range(1u, kMaxHeadDim));  // defaults: Llama-3-8B's shape
  auto* shape = c->add_option("--shape", opts->shape,
                              fmt::format("a known model's shape instead of --layers, --kv-heads and --head-dim, its sliding-window "
                                          "layers in their rings ({}; default: none)",
                                          fmt::join(model::named_shapes(), ", ")));
  auto* file = c->add_option("-m,--model", opts->model, "a model file (GGUF) whose shape and sliding windows to take, as --shape (default: none)");
  for (auto* o : {layers, heads, dim}) o->excludes(shape)->excludes(file);
  shape->excludes(file);
  c->add_flag("--swa-full", opts->swa_full, "count sliding-window layers at every position (tq run --swa-full), not their rings");
  c->add_option("--kv", opts->kv, "comma-separated KV specs (fp16, fp8, k3v2, k4v4:prod, ...; default = tq run's spec)");
  c->add_option("--context", opts->contexts, "also report the MiB of one sequence of each of these lengths, e.g. 8192,32768 (default: none)")
      ->delimiter(',')
      ->default_str("");
  c->add_flag("--json", opts->json, "print JSON instead of the table");
  c->callback([opts] { run(*opts); });
}

}  // namespace tq::cli
