#include "sensitivity_cache.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <system_error>

#include "tq/codec/codebook.h"

namespace tq::cli {
namespace sensitivity_cache_impl {  // named: the command files are compiled together (apps/cli/CMakeLists.txt)

namespace fs = std::filesystem;

// Bump when what a measurement means changes (probes, KL, the engine's numerics).
constexpr int kVersion = 1;

// FNV-1a, 64 bits: a key for file names, not a defence against a chosen collision.
struct Fnv {
  uint64_t h = 1469598103934665603ull;
  void add(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  void add(const std::string& s) { add(s.data(), s.size() + 1); }  // with its terminator, so "ab","c" != "a","bc"
  template <class T>
  void add_value(T v) {
    add(&v, sizeof v);
  }
};

fs::path cache_root() {
  if (const char* dir = std::getenv("TQ_CACHE_DIR")) {
    const std::string d = dir;
    return d.empty() || d == "off" ? fs::path() : fs::path(d);
  }
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return fs::path(xdg) / "turboquant";
  if (const char* home = std::getenv("HOME"); home && *home) return fs::path(home) / ".cache" / "turboquant";
  return {};
}

// Probes x layers of KL values (nats): finite and not negative (a KL's rounding may leave -1e-12,
// a damaged file -1e308).
bool finite_table(const nlohmann::json& t, size_t probes, uint32_t layers) {
  if (!t.is_array() || t.size() != probes) return false;
  for (const auto& row : t) {
    if (!row.is_array() || row.size() != layers) return false;
    for (const auto& x : row)
      if (!x.is_number() || !std::isfinite(x.get<double>()) || x.get<double>() < -1e-6) return false;
  }
  return true;
}

}  // namespace sensitivity_cache_impl

namespace impl = sensitivity_cache_impl;

std::filesystem::path sensitivity_cache_file(const std::string& model_path, const std::vector<int>& tokens, const KvSpec& knobs,
                                             const engine::Sensitivity& widths) {
  const std::filesystem::path root = impl::cache_root();
  if (root.empty()) return {};
  std::error_code ec;
  const std::filesystem::path model = std::filesystem::absolute(model_path, ec);
  impl::Fnv f;
  f.add(fmt::format("tq-sensitivity v{} grid {}", impl::kVersion, kCentroidGrid));
  f.add(ec ? model_path : model.string());
  f.add_value(uint64_t(std::filesystem::file_size(model_path, ec)));
  f.add_value(int64_t(ec ? 0 : std::filesystem::last_write_time(model_path, ec).time_since_epoch().count()));
  {
    std::ifstream in(model_path, std::ios::binary);  // the first MiB: the GGUF header and metadata
    std::vector<char> head(1 << 20);
    in.read(head.data(), std::streamsize(head.size()));
    f.add(head.data(), size_t(in.gcount()));
  }
  f.add_value(uint64_t(tokens.size()));
  f.add(tokens.data(), tokens.size() * sizeof(int));
  f.add(knobs.canonical());
  for (uint32_t w : widths.k_widths) f.add_value(w);
  f.add_value(uint32_t(0xffffffffu));  // between the two lists
  for (uint32_t w : widths.v_widths) f.add_value(w);
  if (widths.enc != Encoding::kTqMse) f.add_value(uint32_t(widths.enc));  // (plain probes: the keys of files written before tcq)
  return root / "sensitivity" / fmt::format("{:016x}.json", f.h);
}

std::optional<engine::Sensitivity> load_sensitivity(const std::filesystem::path& file, uint32_t layers, const engine::Sensitivity& widths,
                                                    std::string& why) {
  why.clear();
  std::error_code ec;
  if (file.empty() || !std::filesystem::exists(file, ec)) return std::nullopt;
  nlohmann::json j;
  try {
    std::ifstream in(file);
    j = nlohmann::json::parse(in);
  } catch (const std::exception&) {
    why = "not valid JSON";
    return std::nullopt;
  }
  // Anything of the wrong type below throws (nlohmann's type errors): a foreign file, said as such.
  try {
    if (!j.is_object() || !j.contains("version") || !j["version"].is_number_integer() || j["version"].get<int>() != impl::kVersion) {
      why = fmt::format("not a version {} sensitivity file", impl::kVersion);
      return std::nullopt;
    }
    engine::Sensitivity s;
    s.k_widths = j.at("k_widths").get<std::vector<uint32_t>>();
    s.v_widths = j.at("v_widths").get<std::vector<uint32_t>>();
    s.enc = j.value("encoding", std::string("tq_mse")) == "tq_tcq" ? Encoding::kTqTcq : Encoding::kTqMse;
    if (s.k_widths != widths.k_widths || s.v_widths != widths.v_widths || s.enc != widths.enc) {
      why = "other probe widths or encoding";
      return std::nullopt;
    }
    if (!j.contains("k") || !j.contains("v") || !impl::finite_table(j["k"], s.k_widths.size(), layers) ||
        !impl::finite_table(j["v"], s.v_widths.size(), layers)) {
      why = fmt::format("its tables are not {} layers of finite, non-negative KLs per probe", layers);
      return std::nullopt;
    }
    s.k = j["k"].get<std::vector<std::vector<double>>>();
    s.v = j["v"].get<std::vector<std::vector<double>>>();
    return s;
  } catch (const std::exception& e) {
    why = fmt::format("malformed: {}", e.what());
    return std::nullopt;
  }
}

bool save_sensitivity(const std::filesystem::path& file, const engine::Sensitivity& s, const std::string& model_path,
                      const std::string& calib, std::string& why) {
  std::error_code ec;
  std::filesystem::create_directories(file.parent_path(), ec);
  if (ec) {
    why = fmt::format("cannot create {}: {}", file.parent_path().string(), ec.message());
    return false;
  }
  // Written for people too: what was measured, then the numbers ([probe][layer], mean KL in nats).
  const nlohmann::ordered_json j{{"version", impl::kVersion},
                                 {"model", model_path},
                                 {"calib", calib},
                                 {"k_widths", s.k_widths},
                                 {"v_widths", s.v_widths},
                                 {"encoding", s.enc == Encoding::kTqTcq ? "tq_tcq" : "tq_mse"},
                                 {"k", s.k},
                                 {"v", s.v}};
  const std::filesystem::path tmp = file.string() + fmt::format(".{}.tmp", long(::getpid()));  // one a writer
  {
    std::ofstream out(tmp);
    out << j.dump(1) << "\n";
    if (!out.good()) {
      why = fmt::format("cannot write {}", tmp.string());
      std::filesystem::remove(tmp, ec);
      return false;
    }
  }
  std::filesystem::rename(tmp, file, ec);
  if (ec) {
    why = fmt::format("cannot move {} into place: {}", tmp.string(), ec.message());
    std::filesystem::remove(tmp, ec);
    return false;
  }
  return true;
}

}  // namespace tq::cli
