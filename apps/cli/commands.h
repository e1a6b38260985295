// Each `tq` subcommand registers itself on the CLI11 app; one file per subcommand.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>

namespace tq::cli {

// The most sequences at once a command takes (tq serve --max-num-seqs; the benchmarks' batches).
constexpr uint32_t kMaxNumSeqs = 4096;

void add_distortion(CLI::App& app);
void add_kv_size(CLI::App& app);
void add_run(CLI::App& app);
void add_perplexity(CLI::App& app);
void add_passkey(CLI::App& app);
void add_bench(CLI::App& app);
void add_bench_serve(CLI::App& app);
void add_serve(CLI::App& app);  // where cpp-httplib was found (TQ_WITH_SERVE)

}  // namespace tq::cli
