// Quality of KV configurations, measured end to end: perplexity, KL divergence and top-1
// agreement against a full-precision cache (all configurations run in lockstep, chunk by chunk,
// so the reference logits never need to be stored), and pass-key retrieval.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tq/engine/engine.h"
#include "tq/kv/spec.h"
#include "tq/model/model.h"
#include "tq/model/tokenizer.h"

namespace tq::engine {

struct PerplexityOptions {
  uint32_t ctx = 2048;         // tokens per window; each window starts from an empty cache
  uint32_t chunk = 64;         // tokens per forward pass
  // Positions of a window scored from this one on (< ctx): 0 scores every position; ctx / 2 is
  // llama-perplexity's convention (the first half only gives the second its context).
  uint32_t score_from = 0;
  // A model that expects BOS at the start of its text (wants_bos): every window after the first
  // starts with it, in place of the window's first token, which is only context (llama-perplexity's
  // rule). -1: none. Without it a window after the first starts mid-text with no BOS, which Gemma
  // scores several times worse.
  int bos = -1;
  unsigned threads = 0;
  std::string reference = "fp32";  // KV spec of the reference cache
  Device device = Device::kCpu;    // every configuration, the reference too, runs there
  double gpu_memory = 0;           // CUDA: fraction of the GPU's memory for all the engines at once, which
                                   // run in lockstep (the reference and each spec: 1/n of it each); 0: off
  // CPU: fp32 products (EngineOptions::exact_products). On by default: 8-bit activations are noise of
  // their own that the reference and each configuration draw differently, so it would mask the KV
  // cache's own error (fp16 against fp32 reads KL ~0.0035, not 0, with them on SmolLM2).
  bool exact_products = true;
};

struct PerplexityRow {
  std::string kv;
  double bits_per_element = 0;  // pages only, over all layers (edge layers included)
  double kv_mib = 0;            // one full window: pages + side buffers
  double ppl = 0;
  double delta_pct = 0;  // ppl vs the reference, %
  double kl = 0;         // mean KL(reference || this) of the next-token distribution, nats
  double top1 = 0;       // fraction of positions whose argmax equals the reference's
};

struct PerplexityResult {
  PerplexityRow reference;
  std::vector<PerplexityRow> rows;  // one per spec, in order
  size_t scored = 0;                // positions scored
};

// Scores every position but the last of each window of `tokens` from o.score_from on
// (next-token log-likelihood).
// progress(done, total) is called after each chunk.
PerplexityResult evaluate_perplexity(const model::Model& m, const std::vector<int>& tokens, const std::vector<KvSpec>& specs,
                                     const PerplexityOptions& o, const std::function<void(size_t, size_t)>& progress = {});

struct PasskeyOptions {
  std::vector<uint32_t> lengths{256, 512, 1024};  // prompt lengths in tokens (approximate)
  std::vector<double> depths{0.1, 0.5, 0.9};      // where the key sits, as a fraction of the filler
  uint64_t seed = 1234;
  uint32_t answer_tokens = 8;
  // Most tokens of a prompt and its answer (the model's training context where the caller keeps to
  // it); a longer length is refused before any text is built. 0: no limit.
  uint32_t max_context = 0;
  unsigned threads = 0;
  Device device = Device::kCpu;
  double gpu_memory = 0;  // CUDA: fraction of the GPU's memory for the engine (one at a time); 0: off
  uint32_t trials = 1;    // keys per (length, depth) cell, each its own key and stretch of haystack
  // The filler: empty, the classic repeated sentences (Mohtashami and Jaggi's pass-key task); or a
  // text (e.g. a book, as in the needle-in-a-haystack test) from which each trial takes a stretch
  // starting at a random sentence.
  std::string haystack;
  bool by_depth = false;  // a row per (length, depth) cell; otherwise per length, depths together
};

struct PasskeyRow {
  std::string kv;
  uint32_t length = 0;  // tokens of the prompts (longest of the row's)
  uint32_t asked = 0;   // the length asked for (PasskeyOptions::lengths)
  double depth = -1;    // the cell's depth with by_depth; -1: every depth
  uint32_t correct = 0, trials = 0;
};

// A random 5-digit key hidden in filler text at each depth; greedy decoding must produce it. Throws
// tq::Error, naming the value, on a depth outside [0, 1], a length of 0, below the shortest prompt
// (the intro, the key and the question around the least filler) or beyond max_context, 0 trials, and
// a haystack too short for the longest prompt.
std::vector<PasskeyRow> evaluate_passkey(const model::Model& m, const model::Tokenizer& tok, const std::vector<KvSpec>& specs,
                                         const PasskeyOptions& o, const std::function<void(const std::string&)>& progress = {});

}  // namespace tq::engine
