// Loading what the commands need: a model, its tokenizer, and the default model's location.
#pragma once

#include <memory>
#include <string>

#include "tq/engine/engine.h"
#include "tq/kv/kv_size.h"
#include "tq/model/model.h"
#include "tq/model/tokenizer.h"

namespace tq::cli {

// File name of the default model, fetched into models/ by scripts/get_model.sh.
inline constexpr const char* kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

struct LoadedModel {
  std::string path;
  model::Model model;
  std::unique_ptr<model::Tokenizer> tokenizer;
};

// models/<kDefaultModelFile> under the working directory or the source tree; throws tq::Error
// saying to run scripts/get_model.sh when neither has it.
std::string default_model_path();
// path "" means the default model. GGUF files carry their tokenizer; llama2.c checkpoints need
// `tokenizer_path` (tokenizer.bin). Throws tq::Error on unreadable or malformed files.
LoadedModel load_model_and_tokenizer(const std::string& path, const std::string& tokenizer_path);

// --device: engine::choose_device, with its note (why auto stays on the CPU where a GPU is) on stderr.
// A draft model for speculative decoding: its GGUF's tokenizer, or for a llama2.c checkpoint the
// --tokenizer file (the target's: a draft model shares the target's tokenizer).
LoadedModel load_draft_model(const std::string& path, const std::string& tokenizer_path);
// load_draft_model, then the checks a draft model must pass for `target`: its vocabulary token by
// token, and a training context of at least `needed` tokens (unless allow_long). Errors name --draft.
LoadedModel load_checked_draft(const std::string& path, const std::string& tokenizer_path, const model::Tokenizer& target, uint32_t needed,
                               bool allow_long, const char* needed_is);

// The automatic entries of a --kv list (auto:bits=...:calib=FILE, docs/kv-specs.md): each is
// calibrated on `lm` (CPU, `threads`) and replaced by the concrete spec it chooses; what it chose and
// why goes to stderr. The other entries are returned as they are. What a mem= budget counts of the
// engine: swa_full, every position of the sliding-window layers in the pool (--swa-full), else
// their rings; tail_copies, prefix-tail slots per sequence (tq serve), each a copy of a
// sequence's side rows and rings; side_chunk, the rows the engine's side buffer keeps beyond sink
// + window (the CPU engine's chunk of queries; a page more with prefix tails).
std::string resolve_auto_kv_list(const std::string& kv_list, const LoadedModel& lm, unsigned threads, bool swa_full = false,
                                 double tail_copies = 0, uint32_t side_chunk = kKvSizeSideExtra);
// The side rows an engine keeps beyond sink + window, prefix tails aside, for --device `device`
// and a forward pass of `chunk` tokens over a context of `context`: the CUDA runner's
// kSideRollback, the CPU engine's chunk (at most the context; also where --device auto may pick
// either: the larger count, so that a mem= budget is never exceeded).
uint32_t engine_side_chunk(const std::string& device, uint32_t chunk, uint32_t context);
// Parses every entry of a --kv list (automatic ones too) and throws tq::Error naming the bad part:
// before a model is loaded, so that a typo costs no load.
// one_for: the command, when it takes one spec only ("tq run"): a list is refused naming it.
void check_kv_list(const std::string& kv_list, const char* one_for = nullptr);
// The whole of a text file the user named; errors say `what` ("--file"), the path, and why (no such
// file, a directory, unreadable).
std::string read_text_file(const std::string& path, const std::string& what);
inline constexpr const char* kAutoKvHelp =
    ";\nan automatic spec, auto:bits=3.0:calib=FILE (or auto:mem=900M:context=32768:calib=FILE), chooses per-layer\n"
    "K/V widths for this model from a calibration pass on FILE's first 256 tokens (tokens=N) and prints the\n"
    "concrete spec it chose and why; the measurement is kept under ~/.cache/turboquant for later runs\n"
    "(TQ_CACHE_DIR: elsewhere, or off) (docs/kv-specs.md, 'Automatic specs')";

engine::Device pick_device(const std::string& name, const model::ModelConfig& c, const std::vector<KvSpec>& specs);
// --gpu-memory: a fraction in (0, 1] (0: not given), on the GPU only; throws tq::Error naming it.
void check_gpu_memory(double fraction, engine::Device d);
// fflush(stdout); throws tq::Error saying why when the output cannot be written (a full disk, a
// closed pipe): the text a command prints is its result, so losing it is an error.
void flush_stdout();

// -t/--threads: 0 (all hardware threads) or a count, capped at the hardware threads with a note on
// stderr (more threads than cores only slow the CPU runner; a huge count would exhaust the process
// table).
unsigned threads_option(unsigned requested);
inline constexpr const char* kThreadsHelp = "CPU threads (default: all hardware threads; more are capped to them)";

// The context a command asks for with `option` (e.g. "--ctx 10000"): what it needs beyond the
// model's training context is refused (tq::Error naming the option, the model's context and the
// flag) unless `allow_long` (--allow-long-context): positions past it were never trained.
void check_context(uint64_t tokens, const std::string& option, const LoadedModel& lm, bool allow_long);
inline constexpr const char* kAllowLongHelp =
    "allow contexts beyond the model's training context (refused by default: positions past it were never trained)";

inline constexpr const char* kTokenizerHelp = "tokenizer.bin of a llama2.c checkpoint (default: none; GGUF files carry their own)";

inline constexpr const char* kDeviceHelp =
    "where the model runs: auto (default: cuda where a GPU is and its runner implements the model and the KV spec, else cpu), cpu, cuda";

}  // namespace tq::cli
