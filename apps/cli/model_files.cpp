#include "model_files.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include "sensitivity_cache.h"
#include "tq/check.h"
#include "tq/engine/auto_kv.h"
#include "tq/engine/generation.h"
#include "tq/engine/speculative.h"
#include "tq/text.h"

namespace tq::cli {

std::string default_model_path() {
  std::vector<std::string> tried{std::string("models/") + kDefaultModelFile};
#ifdef TQ_SOURCE_DIR
  tried.push_back(std::string(TQ_SOURCE_DIR) + "/models/" + kDefaultModelFile);
#endif
  for (const std::string& p : tried)
    if (std::filesystem::exists(p)) return p;
  throw Error(fmt::format("the default model {} is not in models/ (looked for {}): run scripts/get_model.sh to fetch it, or pass -m FILE",
                          kDefaultModelFile, fmt::join(tried, ", ")));
}

void check_kv_list(const std::string& kv_list, const char* one_for) {
  const std::vector<std::string> items = split(kv_list, ',');
  TQ_CHECK(!one_for || items.size() == 1, "--kv '{}': {} takes one KV spec, not a list (tq perplexity and tq bench compare several)",
           kv_list, one_for);
  for (const std::string& item : items)
    if (engine::is_auto_kv(item))
      engine::parse_auto_kv(item);
    else
      parse_kv_specs(item);
}

std::string read_text_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  TQ_CHECK(!ec && std::filesystem::exists(status), "{} '{}' does not exist", what, path);
  TQ_CHECK(std::filesystem::is_regular_file(status), "{} '{}' is {}, not a text file", what, path,
           std::filesystem::is_directory(status) ? "a directory" : "not a regular file");
  std::ifstream in(path, std::ios::binary);
  TQ_CHECK(in.good(), "{} '{}' cannot be read: {}", what, path, std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  TQ_CHECK(!in.bad(), "{} '{}': reading failed", what, path);
  return ss.str();
}

uint32_t engine_side_chunk(const std::string& device, uint32_t chunk, uint32_t context) {
  return device == "cuda" ? kSideRollback : std::min(chunk, context);
}

std::string resolve_auto_kv_list(const std::string& kv_list, const LoadedModel& lm, unsigned threads, bool swa_full, double tail_copies,
                                 uint32_t side_chunk) {
  std::string out;
  // Entries that differ in their budget only share one calibration: key calib file, tokens, knobs.
  std::map<std::string, engine::Sensitivity> measured;
  for (const std::string& item : split(kv_list, ',')) {
    std::string spec = item;
    if (engine::is_auto_kv(item)) {
      engine::AutoKvRequest r = engine::parse_auto_kv(item);
      r.rings = !swa_full, r.tail_copies = tail_copies;
      r.side_extra = side_chunk + (tail_copies > 0 ? r.knobs.format.page_size : 0);  // as KvStore::ring_extra
      engine::check_auto_kv_budget(r, lm.model.config);  // before minutes of calibration
      const std::string key = fmt::format("{}\n{}\n{}\n{}", r.calib, r.tokens, r.knobs.canonical(), int(r.enc));
      auto it = measured.find(key);
      if (it == measured.end()) {
        std::vector<int> tokens = lm.tokenizer->encode(read_text_file(r.calib, fmt::format("KV spec '{}': the calibration text", item)),
                                                       engine::wants_bos(lm.model, *lm.tokenizer));
        // At most tokens=, and within the model's training context (positions past it were never trained).
        tokens.resize(std::min<size_t>({tokens.size(), r.tokens, size_t(std::max(lm.model.config.max_seq, 16))}));
        TQ_CHECK(tokens.size() >= 16, "KV spec '{}': the calibration text '{}' has {} tokens; it needs at least 16", item, r.calib,
                 tokens.size());
        // Measured before (sensitivity_cache.h): the same model file, tokens, knobs and probes.
        engine::Sensitivity widths;  // the probes measure_sensitivity runs
        widths.enc = r.enc;
        const std::filesystem::path file = sensitivity_cache_file(lm.path, tokens, r.knobs, widths);
        std::string why;
        std::optional<engine::Sensitivity> cached = load_sensitivity(file, uint32_t(lm.model.config.n_layers), widths, why);
        if (!why.empty()) fmt::print(stderr, "tq: ignoring the cached sensitivity {} ({}); measuring again\n", file.string(), why);
        if (cached) {
          fmt::print(stderr, "tq: {}: the layers' sensitivity on these {} tokens of {} was measured before: {} (delete it to measure again)\n",
                     item, tokens.size(), r.calib, file.string());
          it = measured.emplace(key, std::move(*cached)).first;
        } else {
          fmt::print(stderr, "tq: {}: measuring {} layers' sensitivity (K and V probes) on the first {} tokens of {} (CPU, fp32 products)\n",
                     item, lm.model.config.n_layers, tokens.size(), r.calib);
          it = measured
                   .emplace(key, engine::measure_sensitivity(lm.model, tokens, r.knobs, threads, widths,
                                                             [](size_t done, size_t total) {
                                                               fmt::print(stderr, "\r  {}/{} tokens", done, total);
                                                               if (done == total) fmt::print(stderr, "\n");
                                                             }))
                   .first;
          if (!file.empty()) {
            if (save_sensitivity(file, it->second, lm.path, r.calib, why))
              fmt::print(stderr, "tq: kept in {} for later runs (TQ_CACHE_DIR=off turns the cache off)\n", file.string());
            else
              fmt::print(stderr, "tq: the sensitivity is not cached: {}\n", why);
          }
        }
      }
      const engine::AutoKvChoice c = engine::choose_auto_kv(r, lm.model.config, it->second);
      fmt::print(stderr, "{}tq: --kv {} is {} (give that spec to skip the calibration)\n", c.report, item, c.spec.canonical());
      spec = c.spec.canonical();
    }
    out += (out.empty() ? "" : ",") + spec;
  }
  return out;
}

namespace {
// --tokenizer: a llama2.c tokenizer file of the model's vocabulary, named as the option where it is none.
std::unique_ptr<model::Tokenizer> tokenizer_option(const std::string& path, int vocab_size) {
  TQ_CHECK(std::filesystem::is_regular_file(path), "--tokenizer '{}': not found, or not a regular file", path);
  return model::load_llama2c_tokenizer(path, vocab_size);
}
}  // namespace

LoadedModel load_model_and_tokenizer(const std::string& path, const std::string& tokenizer_path) {
  LoadedModel out;
  out.path = path.empty() ? default_model_path() : path;
  TQ_CHECK(std::filesystem::exists(out.path), "model file '{}' not found", out.path);
  out.model = model::load_model(out.path);
  if (!tokenizer_path.empty()) {
    // A GGUF's own tokenizer was silently replaced (and a llama2.c one of another vocabulary failed
    // with a truncation error that named no option): --tokenizer belongs to llama2.c checkpoints.
    TQ_CHECK(out.model.gguf == nullptr, "--tokenizer '{}': '{}' is a GGUF file, which carries its own tokenizer; --tokenizer is "
             "for llama2.c checkpoints only (drop it)", tokenizer_path, out.path);
    out.tokenizer = tokenizer_option(tokenizer_path, out.model.config.vocab_size);
  } else {
    TQ_CHECK(out.model.gguf != nullptr, "'{}' is a llama2.c checkpoint: give its tokenizer with --tokenizer (e.g. tok512.bin)", out.path);
    out.tokenizer = model::tokenizer_from_gguf(*out.model.gguf);
  }
  TQ_CHECK(out.tokenizer->vocab_size() <= size_t(out.model.config.vocab_size),
           "the tokenizer has {} tokens but the model only {} logits", out.tokenizer->vocab_size(), out.model.config.vocab_size);
  return out;
}

LoadedModel load_draft_model(const std::string& path, const std::string& tokenizer_path) {
  LoadedModel out;
  out.path = path;
  TQ_CHECK(std::filesystem::is_regular_file(path), "--draft: model file '{}' not found, or not a regular file", path);
  out.model = model::load_model(path);
  if (out.model.gguf) {
    out.tokenizer = model::tokenizer_from_gguf(*out.model.gguf);
  } else {
    TQ_CHECK(!tokenizer_path.empty(), "--draft '{}' is a llama2.c checkpoint: it takes the model's --tokenizer, and none was given", path);
    out.tokenizer = tokenizer_option(tokenizer_path, out.model.config.vocab_size);
  }
  return out;
}

LoadedModel load_checked_draft(const std::string& path, const std::string& tokenizer_path, const model::Tokenizer& target, uint32_t needed,
                               bool allow_long, const char* needed_is) {
  LoadedModel draft = load_draft_model(path, tokenizer_path);
  try {
    engine::check_draft_vocabulary(target, *draft.tokenizer);
  } catch (const Error& e) {
    throw Error(fmt::format("--draft '{}': {}", draft.path, e.what()));
  }
  TQ_CHECK(allow_long || draft.model.config.max_seq >= int(needed),
           "--draft '{}': its training context ({} tokens) is shorter than {} ({} tokens); pass --allow-long-context to run anyway",
           draft.path, draft.model.config.max_seq, needed_is, needed);
  return draft;
}

void flush_stdout() {
  errno = 0;
  if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return;
  const int err = errno;
  throw Error(fmt::format("cannot write to standard output: {}", err ? std::strerror(err) : "write error"));
}

unsigned threads_option(unsigned requested) {
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  if (requested <= hw) return requested;
  fmt::print(stderr, "tq: -t {}: more threads than this machine's {} hardware threads; using {}\n", requested, hw, hw);
  return hw;
}

void check_context(uint64_t tokens, const std::string& option, const LoadedModel& lm, bool allow_long) {
  const int max_seq = lm.model.config.max_seq;
  TQ_CHECK(allow_long || tokens <= uint64_t(max_seq),
           "{}: beyond the model's training context of {} tokens ('{}'): positions past it were never trained; pass "
           "--allow-long-context to run anyway",
           option, max_seq, lm.path);
}

engine::Device pick_device(const std::string& name, const model::ModelConfig& c, const std::vector<KvSpec>& specs) {
  std::string note;
  const engine::Device d = engine::choose_device(name, c, specs, &note);
  if (!note.empty()) fmt::print(stderr, "tq: --device auto: {}\n", note);
  return d;
}

void check_gpu_memory(double fraction, engine::Device d) {
  TQ_CHECK(fraction == 0 || (fraction > 0 && fraction <= 1), "--gpu-memory is a fraction of the GPU's memory in (0, 1], got {}", fraction);
  TQ_CHECK(fraction == 0 || d == engine::Device::kCuda, "--gpu-memory {} applies to the GPU, but the model runs on the CPU", fraction);
}

}  // namespace tq::cli
