// The measured layer sensitivities of automatic specs (`auto:`), kept on disk so that a model and
// a calibration text measured once resolve again at once: the measurement is minutes of CPU, the
// allocation from it milliseconds (docs/kv-specs.md, "Automatic specs").
//
// Where: $TQ_CACHE_DIR, else $XDG_CACHE_HOME/turboquant, else $HOME/.cache/turboquant; a file a
// measurement, sensitivity/<key>.json. TQ_CACHE_DIR=off (or empty) turns the cache off. The key
// hashes what the numbers depend on: the model file (its path, size, modification time and first
// MiB), the calibration tokens, the knobs (sink, window, centre, ...), the probe widths and the
// codebook format; deleting the file measures again.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "tq/engine/auto_kv.h"
#include "tq/kv/spec.h"

namespace tq::cli {

// The cache file of this measurement, or an empty path when caching is off.
std::filesystem::path sensitivity_cache_file(const std::string& model_path, const std::vector<int>& tokens, const KvSpec& knobs,
                                             const engine::Sensitivity& widths);

// The sensitivity stored in `file`, if it is there and well formed for a model of `layers` layers
// and these probe widths; otherwise nullopt, and `why` says why when the file exists but is unusable.
std::optional<engine::Sensitivity> load_sensitivity(const std::filesystem::path& file, uint32_t layers, const engine::Sensitivity& widths,
                                                    std::string& why);

// Writes `s` to `file` (a temporary file renamed into place, so a reader never sees half of it).
// Returns false and says why in `why` when it cannot; the caller goes on without the cache.
bool save_sensitivity(const std::filesystem::path& file, const engine::Sensitivity& s, const std::string& model_path,
                      const std::string& calib, std::string& why);

}  // namespace tq::cli
