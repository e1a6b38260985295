// The `tq` command: TurboQuant KV-cache tools. `tq --help` lists the subcommands.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "tq/common.h"

int main(int argc, char** argv) {
  CLI::App app{
      "tq: TurboQuant KV-cache compression (random rotation + Lloyd-Max codebooks).\n"
      "KV specs name a cache configuration: fp32, fp16, bf16, fp8, or k<N>v<M> (TurboQuant, N bits\n"
      "per key coordinate, M per value coordinate) with options after colons, e.g. k3v2, k4v4:nc,\n"
      "k3v2:prod:rot=dense. See docs/kv-specs.md."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "tq 0.1.0");
  tq::cli::add_distortion(app);
  tq::cli::add_kv_size(app);
  tq::cli::add_run(app);
  tq::cli::add_perplexity(app);
  tq::cli::add_passkey(app);
  tq::cli::add_bench(app);
  tq::cli::add_bench_serve(app);
#ifdef TQ_WITH_SERVE
  tq::cli::add_serve(app);
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const tq::Error& e) {
    fmt::print(stderr, "tq: error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "tq: internal error: {}\n", e.what());
    return 3;
  }
  return 0;
}
