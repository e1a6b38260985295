// tq distortion: measured D_mse and inner-product error of TurboQuant next to the paper's figures.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>

#include "commands.h"
#include "table.h"
#include "tq/codec/codebook.h"
#include "tq/codec/distortion.h"
#include "tq/kv/cache_format.h"
#include "tq/kv/spec.h"
#include "tq/codec/turboquant.h"
#include "tq/check.h"

namespace tq::cli {
namespace distortion_cmd {  // named: the command files are compiled together (apps/cli/CMakeLists.txt)

struct Options {
  uint32_t dim = 128;
  std::vector<std::string> bits{"1", "2", "3", "4"};  // N, N.5 (a fractional width: the outlier split) or Nt (trellis-coded)
  std::string method = "mse";
  std::string rotation = "auto";
  uint64_t samples = 20000;
  uint64_t seed = 1;
  bool json = false;
};

constexpr const char* kWidths = "--bits: widths are 1..8, 1.5..7.5 (N.5: the outlier split) or 1t..7t (trellis-coded), got '{}'";

// "N" (1..8), "N.5" (1.5..7.5) or "Nt" (1t..7t): the width's encoding and bits, as a KV spec writes it.
TensorCode parse_bits(const std::string& s) {
  // digits, then optionally ".5" or "t", and nothing else: pasted into a spec, '3v2:edge=1/k3' was taken as 3
  const bool shaped = !s.empty() && std::all_of(s.begin(), s.end(), [](char ch) { return (ch >= '0' && ch <= '9') || ch == '.' || ch == 't'; });
  if (!shaped) throw Error(fmt::format(kWidths, s));
  try {
    return parse_kv_spec(fmt::format("k{}v2", s)).format.k;  // the spec grammar's widths
  } catch (const Error&) {
    throw Error(fmt::format(kWidths, s));
  }
}

void run(const Options& o) {
  TQ_CHECK(o.method == "mse" || o.method == "prod" || o.method == "both", "--method must be mse, prod or both, got '{}'",
           o.method);
  TQ_CHECK(o.samples >= 100 && o.samples <= 10000000, "--samples must be 100..10000000, got {}", o.samples);
  const RotationKind rot = o.rotation == "auto" ? KvFormat{}.rotation_for(o.dim) : parse_rotation(o.rotation);  // auto: as a KV spec picks
  // Split rows rotate each part; auto picks as a KV spec does (codec_config): Hadamard if both parts allow it.
  KvFormat split_format;
  split_format.auto_rotation = o.rotation == "auto";
  split_format.rotation = rot;
  std::vector<bool> prods;
  if (o.method != "prod") prods.push_back(false);
  if (o.method != "mse") prods.push_back(true);
  if (o.method == "prod")
    for (const std::string& bs : o.bits)
      TQ_CHECK(parse_bits(bs).enc == Encoding::kTqMse, "--bits {} with --method prod: prod has plain whole widths only (N.5 and Nt are mse's)", bs);

  Table t({{"method", "method"},
           {"bits", "bits"},
           {"mse", "D_mse", 5},
           {"mse_expected", "exact", 5},
           {"mse_paper", "paper", 3},
           {"mse_lower", "lower", 5},
           {"mse_upper", "upper", 5},
           {"ip_ratio", "ip_ratio", 4},
           {"ip_bias", "ip_bias", 5},
           {"ip_var", "ip_var*d", 5},
           {"ip_var_bound", "bound*d", 5}});
  for (bool prod : prods) {
    for (const std::string& bs : o.bits) {
      const TensorCode w = parse_bits(bs);
      const uint32_t b = w.bits;
      const bool split = w.enc == Encoding::kTqSplit;
      if (w.enc != Encoding::kTqMse && prod) continue;  // prod has plain whole widths only
      TqConfig cfg;
      cfg.dim = o.dim;
      cfg.bits = b;
      cfg.prod = prod;
      cfg.split = split;
      cfg.tcq = w.enc == Encoding::kTqTcq;
      cfg.rotation = rot;
      if (split) {
        KvFormat f = split_format;
        f.k = {Encoding::kTqSplit, uint8_t(b)};
        cfg.rotation = codec_config(f, o.dim, 0, 0, false).rotation;
      }
      cfg.seed = o.seed;
      const auto start = std::chrono::steady_clock::now();
      const DistortionRow r = distortion_row(cfg, o.samples, o.seed + 1000 * b);
      const DistortionStats& s = r.stats;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (!o.json) fmt::print(stderr, "  {} {} bits: {} vectors in {:.1f} s\n", prod ? "prod" : "mse", bs, o.samples, secs);
      nlohmann::json row{{"method", prod ? "prod" : "mse"},
                         {"bits", split ? nlohmann::json(b + 0.5) : cfg.tcq ? nlohmann::json(bs) : nlohmann::json(b)},
                         {"dim", o.dim},
                         {"rotation", rotation_name(cfg.rotation)},
                         {"samples", o.samples},
                         {"mse", s.mse},
                         {"mse_stderr", s.mse_stderr},
                         {"ip_bias", s.ip_bias},
                         {"ip_bias_stderr", s.ip_bias_stderr},
                         {"ip_ratio", s.ip_ratio},
                         {"ip_var", s.ip_var * o.dim},
                         {"mse_lower", r.mse_lower},
                         {"mse_upper", r.mse_upper}};
      if (!prod) {
        if (r.mse_expected > 0) row["mse_expected"] = r.mse_expected;
        if (r.mse_paper > 0) row["mse_paper"] = r.mse_paper;
      } else {
        row["ip_var_bound"] = r.ip_var_bound * o.dim;
      }
      t.add(row);
    }
  }
  if (o.json) {
    nlohmann::json j = t.json();
    j["dim"] = o.dim;
    j["samples"] = o.samples;
    std::cout << j.dump(2) << "\n";
  } else {
    fmt::print("TurboQuant distortion on random unit vectors, d = {} ({} rotation, {} samples per row)\n", o.dim,
               rotation_name(rot), o.samples);
    fmt::print("{}", t.text());
    fmt::print(
        "D_mse: measured E||x - x~||^2; exact: Lloyd-Max distortion of the exact coordinate density (- where d is\n"
        "padded to a multiple of 32: part of the padded rotation's error falls outside the d coordinates); paper: its table;\n"
        "lower/upper: 4^-b and sqrt(3) pi/2 4^-b. ip_ratio: mean <y,x~> / mean <y,x> (2/pi = 0.6366 is MSE's 1-bit bias);\n"
        "ip_bias: mean error of <y,x~>; ip_var*d: error variance times d, bound*d: the paper's QJL bound (prod).\n"
        "N.5 bits: the outlier split (half the channels at N+1 bits, half at N, a norm each); exact and upper: the parts'\n"
        "figures weighted by their share of the channels; lower: 4^-(code bits per coordinate).\n"
        "Nt bits: trellis-coded (levels of the (N+1)-bit codebook along a 4-state trellis); upper: the scalar codebook's guarantee.\n");
  }
}

}  // namespace distortion_cmd

void add_distortion(CLI::App& app) {
  using namespace distortion_cmd;
  auto opts = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("distortion",
                                   "Measure TurboQuant's distortion on random unit vectors and compare with the paper.\n"
                                   "Example: tq distortion --dim 128 --bits 1,2,3,4 --method both");
  c->add_option("--dim", opts->dim, "vector dimension (head dim), 2..1024 (a unit vector of 1 is +-1: nothing random to measure)")
      ->check(CLI::Range(2, 1024));
  c->add_option("--bits", opts->bits, "comma-separated bit widths, 1..8, N.5 (1.5..7.5: the paper's outlier split) or Nt (1t..7t: trellis-coded), N.5 and Nt MSE only")
      ->delimiter(',');
  c->add_option("--method", opts->method, "mse, prod or both")->check(CLI::IsMember({"mse", "prod", "both"}));
  c->add_option("--rotation", opts->rotation, "auto (Hadamard for powers of two), hadamard or dense")
      ->check(CLI::IsMember({"auto", "hadamard", "dense"}));
  c->add_option("--samples", opts->samples, "random vectors per row, 100..10000000 (more: smaller error bars)");
  c->add_option("--seed", opts->seed, "seed of the rotation and of the random vectors");
  c->add_flag("--json", opts->json, "print {\"rows\": [...]} as JSON instead of the table");
  c->callback([opts] { run(*opts); });
}

}  // namespace tq::cli
