// The `tq` command: TurboQuant KV-cache tools. `tq --help` lists the subcommands.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <new>
#include <string>
#include <vector>

#include "commands.h"
#include "model_files.h"
#include "tq/common.h"

namespace {
// The options that size what the subcommand allocates: said with an out-of-memory or size refusal.
const char* smaller_sizes(const CLI::App& app) {
  const std::vector<CLI::App*> used = app.get_subcommands();  // the parsed ones
  const std::string cmd = used.empty() ? "" : used[0]->get_name();
  return cmd == "run"           ? "a smaller --ctx or -n"
         : cmd == "perplexity"  ? "a smaller --ctx or --max-tokens, or a shorter --file"
         : cmd == "passkey"     ? "smaller --lengths or fewer --trials"
         : cmd == "bench"       ? "a smaller --kv-memory, --context, --batch or --prefill"
         : cmd == "bench-serve" ? "a smaller --kv-memory, --prompt or --concurrency"
         : cmd == "serve"       ? "a smaller --max-num-seqs, --max-model-len or --num-pages"
         : cmd == "distortion"  ? "fewer --samples"
                                : "smaller sizes";
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "tq: TurboQuant KV-cache compression (random rotation + Lloyd-Max codebooks).\n"
      "KV specs name a cache configuration: fp32, fp16, bf16, fp8, or k<N>v<M> (TurboQuant, N bits\n"
      "per key coordinate, M per value coordinate) with options after colons, e.g. k3v2, k4v4:nc,\n"
      "k3v2:prod:rot=dense, k3v2:edge=2/k4v4:sink=4:window=64, k3v2:centre (keys stored less a\n"
      "per-head key centre, which softmax ignores). Widths N.5 are the outlier split (k3.5v2.5), widths Nt\n"
      "trellis-coded (k3tv2t: the bytes of k3v2, less error; the GPU reads K and V both 2t/3t). See docs/kv-specs.md."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "tq 0.1.0");
  // --help shows each option's default after its type (e.g. "-n,--steps INT=256"); subcommands
  // inherit this.
  app.option_defaults()->always_capture_default();
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
  // An option whose 0 means "decided at run time" (-t 0: all threads, --ctx 0: the model's) says
  // what in its text ("default: ..."); --help shows that rather than a misleading "=0".
  // CLI11 2.1 reads "-1" for an unsigned option as 2^64 - 1 (or 2^32 - 1), and a number past 2^64 - 1
  // as 2^64 - 1: a negative or too large count, length or seed is refused, naming the option.
  const CLI::Validator non_negative(
      [](std::string& v) {
        if (!v.empty() && v[0] == '-') return "must not be negative, got " + v;
        uint64_t x = 0;
        const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
        if (ec == std::errc::result_out_of_range && end == v.data() + v.size()) return "is larger than 2^64 - 1: " + v;
        return std::string();
      },
      "", "non-negative");
  // CLI11 reads an empty value of a number as 0: -n "" generated nothing, --temp "" was greedy,
  // --seed "" seeded 0. A number option given "" is refused instead.
  const CLI::Validator not_empty([](std::string& v) { return v.empty() ? std::string("got an empty value; want a number") : std::string(); },
                                 "", "not empty");
  // An integer beyond its option's type got CLI11's "Could not convert: --top-k = 99999999999" (an int,
  // a uint32_t), or was read as 2^63 - 1 (an int64_t): refused, naming the type's range. CLI11 keeps the
  // option's conversion, not its type: the value is tried with that conversion (which CLI11 repeats after
  // the validators), and where it fails the range is found by converting the 32-bit bounds + 1 (the parse
  // then ends, so what these probes write into the option's variable does not matter).
  const auto in_range = [](CLI::Option* opt, bool is_signed) {
    return CLI::Validator(
        [opt, is_signed](std::string& v) {
          const size_t digits = !v.empty() && (v[0] == '-' || v[0] == '+') ? 1 : 0;
          if (digits == v.size() || !std::all_of(v.begin() + digits, v.end(), [](char c) { return c >= '0' && c <= '9'; }))
            return std::string();  // not a decimal integer: CLI11's to judge
          const char* first = v.data() + (v[0] == '+');
          int64_t s = 0;
          uint64_t u = 0;
          const bool fits64 = is_signed ? std::from_chars(first, v.data() + v.size(), s).ec == std::errc()
                                        : std::from_chars(first, v.data() + v.size(), u).ec == std::errc();
          const CLI::callback_t convert = opt->get_callback();
          const auto converts = [&convert](const std::string& x) { return !convert || convert(CLI::results_t{x}); };
          if (fits64 && converts(v)) return std::string();
          return is_signed ? fmt::format("{} is out of range: an integer in {}..{}", v,
                                         converts("2147483648") ? INT64_MIN : INT32_MIN, converts("2147483648") ? INT64_MAX : INT32_MAX)
                           : fmt::format("{} is out of range: an integer in 0..{}", v, converts("4294967296") ? UINT64_MAX : UINT32_MAX);
        },
        "", "in range");
  };
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    for (CLI::Option* opt : sub->get_options([](CLI::Option*) { return true; })) {
      if (opt->get_default_str() == "0" && opt->get_description().find("default:") != std::string::npos) opt->default_str("");
      const std::string type = opt->get_type_name();
      if (type.rfind("UINT", 0) == 0) opt->check(non_negative);
      if (type.rfind("UINT", 0) == 0 || type.rfind("INT", 0) == 0 || type.rfind("FLOAT", 0) == 0) opt->check(not_empty);
      if (type.rfind("UINT", 0) == 0 || type.rfind("INT", 0) == 0) opt->check(in_range(opt, type.rfind("INT", 0) == 0));
    }
  // CLI11 names an option by its long name, whichever spelling was typed (-n "" said "--steps: got an
  // empty value"): its errors about an option that has a short name too name both ("-n/--steps: ...").
  // Its errors start "tq: error:" as every other refusal does (and exit 2, below).
  app.failure_message([](const CLI::App* a, const CLI::Error& e) {
    std::string msg = CLI::FailureMessage::simple(a, e);
    for (const CLI::App* sub : a->get_subcommands())
      for (const CLI::Option* opt : sub->get_options()) {
        if (opt->get_snames().empty() || opt->get_lnames().empty()) continue;
        const std::string name = opt->get_name();
        for (const std::string& at : {name + ":", "Could not convert: " + name + " "})  // where CLI11 puts the name
          if (msg.rfind(at, 0) == 0) return "tq: error: " + msg.insert(at.size() - name.size() - 1, "-" + opt->get_snames()[0] + "/");
      }
    return "tq: error: " + msg;
  });
  // A first word that is no command: name it and the commands (CLI11 says only that one is required).
  if (argc > 1 && argv[1][0] != '-') {
    const std::string word = argv[1];
    std::vector<std::string> names;
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) names.push_back(sub->get_name());
    if (std::find(names.begin(), names.end(), word) == names.end()) {
      std::string close;  // the command with the same letters but for '-' ("kvsize", "bench_serve")
      const auto bare = [](std::string w) {
        std::erase_if(w, [](char c) { return c == '-' || c == '_'; });
        return w;
      };
      for (const std::string& n : names)
        if (bare(n) == bare(word)) close = n;
      fmt::print(stderr, "tq: error: unknown command '{}'{}; the commands: {} (tq --help says what each does)\n", word,
                 close.empty() ? "" : fmt::format(" (did you mean '{}'?)", close), fmt::join(names, ", "));
      return 2;
    }
  }
  // CLI11 drops the empty items of a comma-separated list option: "--bits 1,,2" measured 1 and 2,
  // "--lengths 64," only 64, the typo unseen. A list with an empty item is refused, naming it.
  if (argc > 1 && argv[1][0] != '-') {
    CLI::App* sub = app.get_subcommand(argv[1]);  // a command: checked above
    for (int i = 2; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--") break;
      if (arg.size() < 2 || arg[0] != '-') continue;
      const size_t eq = arg.rfind("--", 0) == 0 ? arg.find('=') : std::string::npos;
      const CLI::Option* opt = sub->get_option_no_throw(arg.substr(0, eq));
      if (!opt || opt->get_delimiter() == '\0') continue;
      std::vector<std::string> values;  // --opt=v, or the words after --opt up to the next option
      if (eq != std::string::npos) values.push_back(arg.substr(eq + 1));
      for (int j = i + 1; eq == std::string::npos && j < argc && argv[j][0] != '-'; ++j) values.emplace_back(argv[j]);
      for (const std::string& v : values) {
        const std::string d(1, opt->get_delimiter());
        if (v.empty() || (v.find(d + d) == std::string::npos && v.front() != d[0] && v.back() != d[0])) continue;
        fmt::print(stderr, "tq: error: {} '{}': an empty item in the list; give the items separated by single commas\n",
                   opt->get_name(), v);
        return 2;
      }
    }
  }
  try {
    app.parse(argc, argv);
    tq::cli::flush_stdout();  // output that could not be written (tq ... > /dev/full) is an error
  } catch (const CLI::ParseError& e) {
    // --help and --version end here too (0); a usage error exits 2 as every other refusal does, where
    // CLI11 has a code of its own for each kind (105 a value, 106 a missing option, 109 an extra word, ...).
    const int rc = app.exit(e) == 0 ? 0 : 2;
    try {
      tq::cli::flush_stdout();
    } catch (const tq::Error& w) {
      fmt::print(stderr, "tq: error: {}\n", w.what());
      return 2;
    }
    return rc;
  } catch (const tq::SizeError& e) {
    fmt::print(stderr, "tq: error: {} ({} needs less)\n", e.what(), smaller_sizes(app));
    return 2;
  } catch (const tq::Error& e) {
    fmt::print(stderr, "tq: error: {}\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "tq: error: out of memory: this run needs more memory than the machine could give ({} needs less)\n",
               smaller_sizes(app));
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "tq: internal error: {}\n", e.what());
    return 3;
  }
  return 0;
}
