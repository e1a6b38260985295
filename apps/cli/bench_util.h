// What the two benchmark commands (tq bench, tq bench-serve) share: list flags, the bytes a cache
// needs per sequence, the runner they measure, medians and percentiles.
#pragma once

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "model_files.h"
#include "tq/engine/engine.h"
#include "tq/kv/spec.h"
#include "tq/kv/window_ring.h"

namespace tq::cli {

// "1,16,max" -> {1, 16}, *has_max set where allow_max; throws tq::Error naming `flag` and the item.
std::vector<uint32_t> parse_list(const std::string& text, const char* flag, bool allow_max, bool* has_max = nullptr);

// Bytes a cache needs for one sequence of `ctx` tokens: whole pages, plus the side buffer; the
// sliding-window layers' pages in a window ring instead where it is smaller (kv/window_ring.h).
struct CacheCost {
  double page_bytes = 0, side_bytes = 0, bytes_per_token = 0;  // page_bytes: over every layer
  double window_page_bytes = 0;  // the sliding-window layers' part of page_bytes
  uint32_t window = 0, step = 0;  // the sliding window; the most tokens of a step (what a ring holds beyond the window)
  bool swa_full = false;          // no rings: every layer keeps every position
  uint32_t page_size = 16;
  double seq_bytes(uint32_t ctx) const;  // pages of ctx positions * pool_page_bytes + fixed_bytes
  // With sequences of ctx positions: the sliding-window layers' ring pages (0: no rings, they are in
  // the pool); one page of the pool; a sequence's fixed bytes (side buffer, rings).
  uint32_t ring_pages(uint32_t ctx) const;
  double pool_page_bytes(uint32_t ctx) const;
  double fixed_bytes(uint32_t ctx) const;
  // Bytes of KV a decode step at ctx positions reads at least: every page of the other layers, the
  // window's pages of the sliding-window ones.
  double step_read_bytes(uint32_t ctx) const;
};
// side_extra: the side buffer's rows beyond sink + window (the runner's: kSideRollback on the GPU,
// the prefill chunk on the CPU); step: the runner's max_chunk.
CacheCost cache_cost(const model::ModelConfig& c, const KvSpec& s, uint32_t side_extra, uint32_t step, bool swa_full);

// The model a benchmark runs: a file (any device), or a named shape with random weights (the GPU).
struct BenchModel {
  std::unique_ptr<LoadedModel> file;  // null: random weights of `config`
  model::ModelConfig config;
  std::string name;
  // The runner for `resolved` options (Engine::resolve'd); throws tq::Error where it cannot run.
  std::unique_ptr<engine::ModelRunner> runner(const KvSpec& spec, const engine::EngineOptions& resolved, uint64_t seed) const;
};
// -m FILE (with --tokenizer) or --shape NAME.
void add_model_options(CLI::App* c, std::string& shape, std::string& file, std::string& tokenizer);
BenchModel load_bench_model(const std::string& file, const std::string& tokenizer, const std::string& shape);

// The largest count a list flag takes (parse_list), and the cap of a computed "max" batch.
constexpr uint32_t kMaxCount = 1u << 24;
// The most sequences a benchmark step holds (kMaxNumSeqs, tq serve's limit): the runners'
// per-sequence buffers (a step's logits, block tables) are not in the KV budget, so a batch that fits
// it (millions of short sequences of a small model on the CPU) is run at this many.
constexpr uint32_t kMaxBatch = kMaxNumSeqs;
// The batch of `ctx`-token sequences `budget` bytes hold, at most kMaxCount.
uint32_t batch_that_fits(double budget, const CacheCost& cost, uint32_t ctx);

// Bytes of host memory available to this process now (Linux: MemAvailable), or 0 when unknown.
double host_memory_available();
// The KV budget a benchmark may allocate: on the CPU, the pool lives in host memory, so a budget
// beyond 90% of what is available is lowered to it with a note on stderr (the GPU runner checks its
// own memory).
double usable_kv_budget(double budget, engine::Device device, const char* command);

double median(std::vector<double> v);
// The q-quantile (0..1) by linear interpolation; 0 for an empty set.
double percentile(std::vector<double> v, double q);

// --json FILE of a benchmark: opened (created, not truncated) before the run, so that a path it
// cannot write is refused at once rather than after hours of measuring; written after the tables
// are printed, so that a failed write loses no result. No-op for an empty path. `option` names the
// flag in the error (tq run's --logits FILE is checked the same way).
void check_json_path(const std::string& path, const char* option = "--json");
void write_json(const std::string& path, const std::string& text);

using clock_type = std::chrono::steady_clock;
inline double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

}  // namespace tq::cli
