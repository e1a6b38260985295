#include "bench_util.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "tq/check.h"
#include "tq/kv/window_ring.h"
#include "tq/model/shapes.h"
#include "tq/text.h"

namespace tq::cli {

std::vector<uint32_t> parse_list(const std::string& text, const char* flag, bool allow_max, bool* has_max) {
  std::vector<uint32_t> v;
  for (const std::string& item : split(text, ',')) {
    if (allow_max && item == "max") {
      TQ_CHECK(!*has_max, "{}: max given twice", flag);  // a point run twice, the table's rows doubled
      *has_max = true;
    } else {
      const std::optional<uint64_t> x = parse_uint(item);
      TQ_CHECK(x && *x >= 1 && *x <= kMaxCount, "{}: '{}' is not a count in 1..{}{}", flag, item, kMaxCount, allow_max ? " or max" : "");
      TQ_CHECK(std::find(v.begin(), v.end(), uint32_t(*x)) == v.end(), "{}: {} given twice", flag, *x);
      v.push_back(uint32_t(*x));
    }
  }
  return v;
}

uint32_t CacheCost::ring_pages(uint32_t ctx) const {
  return window_page_bytes > 0 ? WindowRing::make(swa_full ? 0 : window, ctx, step, page_size, false).pages : 0;
}

double CacheCost::pool_page_bytes(uint32_t ctx) const { return page_bytes - (ring_pages(ctx) ? window_page_bytes : 0); }

double CacheCost::fixed_bytes(uint32_t ctx) const { return side_bytes + ring_pages(ctx) * window_page_bytes; }

double CacheCost::seq_bytes(uint32_t ctx) const { return std::ceil(double(ctx) / page_size) * pool_page_bytes(ctx) + fixed_bytes(ctx); }

double CacheCost::step_read_bytes(uint32_t ctx) const {
  const double all = std::ceil(double(ctx) / page_size);
  const double seen = window ? std::min(all, std::ceil(double(window) / page_size) + 1) : all;
  return all * (page_bytes - window_page_bytes) + seen * window_page_bytes;
}

CacheCost cache_cost(const model::ModelConfig& c, const KvSpec& s, uint32_t side_extra, uint32_t step, bool swa_full) {
  CacheCost k;
  k.page_bytes = double(s.page_bytes(uint32_t(c.n_layers), uint32_t(c.n_kv_heads), uint32_t(c.head_dim)));
  const uint32_t L = uint32_t(c.n_layers);
  for (uint32_t l = 0; l < L; ++l)
    if (c.layer_is_local(int(l))) k.window_page_bytes += double(s.layer_page_bytes(l, L, uint32_t(c.n_kv_heads), uint32_t(c.head_dim)));
  k.window = uint32_t(std::max(c.sliding_window, 0)), k.step = step, k.swa_full = swa_full;
  k.page_size = s.format.page_size;
  k.bytes_per_token = k.page_bytes / k.page_size;
  // The runner's side buffer (its side_bytes()): fp16 K and V of each side token and layer.
  k.side_bytes = double(s.policy.side_tokens(side_extra)) * c.n_layers * 2.0 * c.kv_dim() * 2.0;
  return k;
}

void add_model_options(CLI::App* c, std::string& shape, std::string& file, std::string& tokenizer) {
  c->add_option("--shape", shape,
                "model shape with random weights: llama-3.1-8b (default), llama-3.2-1b, qwen2.5-7b, qwen2.5-0.5b, qwen3-8b, qwen3-0.6b, smollm2-135m, gemma-3-270m, gemma-3-12b");
  c->add_option("-m,--model", file, "a model file (GGUF, llama2.c) instead of a shape; runs on --device cpu too (default: none, the --shape)");
  c->add_option("--tokenizer", tokenizer, kTokenizerHelp);
}

BenchModel load_bench_model(const std::string& file, const std::string& tokenizer, const std::string& shape) {
  BenchModel b;
  if (!file.empty()) {
    b.file = std::make_unique<LoadedModel>(load_model_and_tokenizer(file, tokenizer));
    b.config = b.file->model.config;
    b.name = file;
  } else {
    b.config = model::named_shape(shape);
    b.name = shape + " (random weights)";
  }
  return b;
}

std::unique_ptr<engine::ModelRunner> BenchModel::runner(const KvSpec& spec, const engine::EngineOptions& resolved, uint64_t seed) const {
  return file ? engine::make_runner(file->model, spec, resolved) : engine::make_random_runner(config, spec, resolved, seed);
}

uint32_t batch_that_fits(double budget, const CacheCost& cost, uint32_t ctx) {
  return uint32_t(std::min(std::floor(budget / cost.seq_bytes(ctx)), double(kMaxCount)));
}

double host_memory_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kib = 0;
  while (in >> key >> kib) {
    if (key == "MemAvailable:") return kib * 1024.0;
    in.ignore(256, '\n');
  }
  const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? double(pages) * double(page) : 0.0;
}

double usable_kv_budget(double budget, engine::Device device, const char* command) {
  if (device != engine::Device::kCpu) return budget;
  const double usable = 0.9 * host_memory_available();
  if (usable <= 0 || budget <= usable) return budget;
  fmt::print(stderr, "{}: --kv-memory {:.3g} GB is more than this machine's {:.1f} GB of available memory: the CPU runner's pool is held "
             "to {:.1f} GB\n",
             command, budget / 1e9, usable / 0.9 / 1e9, usable / 1e9);
  return usable;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double at = q * double(v.size() - 1);
  const size_t lo = size_t(std::floor(at)), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (at - double(lo)) * (v[hi] - v[lo]);
}

void check_json_path(const std::string& path, const char* option) {
  if (path.empty()) return;
  // Whether nothing (no file, no link, not even a dangling one) is there; a status that cannot be
  // read (type none) counts as there.
  std::error_code ec;
  const bool absent = std::filesystem::symlink_status(path, ec).type() == std::filesystem::file_type::not_found;
  {
    std::ofstream f(path, std::ios::app);  // appends nothing: an existing file keeps its bytes until write_json
    TQ_CHECK(f.good(), "{}: cannot write '{}'", option, path);
  }
  if (absent) std::filesystem::remove(path, ec);  // a probe only: a run that then fails leaves no empty file
}

void write_json(const std::string& path, const std::string& text) {
  if (path.empty()) return;
  std::ofstream f(path);
  f << text << "\n";
  f.flush();
  TQ_CHECK(f.good(), "--json: cannot write '{}' (the tables above stand)", path);
}

}  // namespace tq::cli
