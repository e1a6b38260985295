// Automatic bit allocation (docs/kv-specs.md, "Automatic specs"): `auto:bits=3.0:calib=FILE` or
// `auto:mem=900M:context=32768:calib=FILE` becomes a concrete spec `k<a>v<b>:layers=<set>/k<c>v<d>`
// for one model, from a short calibration pass that measures each layer's sensitivity.
//
//   auto    := 'auto' (':' option)*
//   option  := bits=<B>            average bits per element of the pages, as tq kv-size counts them
//            | mem=<N>[K|M|G]      bytes for one sequence of `context` tokens: pages + side buffer
//            | context=<tokens>    (with mem=)
//            | calib=<file>        the text to calibrate on (required)
//            | tokens=<N>          its first N tokens (default 256)
//            | widths=<a>-<b>      whole K and V widths considered, a..b bits (default 2-4: the
//                                  widths the CUDA kernels have)
//            | tcq                 trellis-coded widths (k3tv2t, ...) in the probes and the choice (a..b
//                                  at most 7); without widths=, 2t..3t and plain 2..4 bits, the
//                                  formats the CUDA kernels read
//            | sink=, window=, centre, page=, seed=, rot=, nc   kept as given, in the probes and in
//                                  the chosen spec
//
// The measurement: for every layer l and every probe width, the mean KL(fp32 cache || probe) of
// the next-token distribution over the calibration text, where the probe keeps every layer in fp16
// but layer l's keys at that width (values at 8 bits: a K probe) or its values (keys at 8: a V
// probe). The model: a layer whose keys are at b bits costs s_K(l, p) * D(b) / D(p), p the widest
// K probe at or below b (the narrowest where none is), D the Lloyd-Max distortion of the head's
// codebook (tcq: the trellis's, measured on random unit rows: trellis_mse), likewise values;
// costs add over layers and K/V (small perturbations). Scaling down
// from a wider error stays in the regime where KL is quadratic in it; scaling up does not (keys at
// 2 bits cost far more than 3-bit keys' KL times D(2)/D(3)), so keys are probed at 2 and 3 bits.
// allocate_layers then picks the formats.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tq/engine/engine.h"
#include "tq/kv/kv_size.h"
#include "tq/kv/spec.h"
#include "tq/model/model.h"

namespace tq::engine {

struct AutoKvRequest {
  std::string text;        // as given
  double bits = 0;         // budget in bits per element (pages), or
  uint64_t mem_bytes = 0;  // budget in bytes for one sequence of `context` tokens
  uint32_t context = 0;
  std::string calib;      // calibration text file
  uint32_t tokens = 256;  // its first tokens calibrate
  // The CUDA kernels' plain widths (tcq: 2..3), so the choice runs there too; widths= sets them
  static constexpr uint32_t kKernelMinWidth = 2, kKernelMaxWidth = 4;
  uint32_t min_width = kKernelMinWidth, max_width = kKernelMaxWidth;
  // tcq without widths=: plain K and V of the kernels' widths (2..4 bits) are candidates too (a format is K and V both
  // trellis-coded or both plain, as the CUDA kernels take them), so that layers may take plain 4-bit
  // keys where the kernels have no 4t.
  bool plain_too = false;
  Encoding enc = Encoding::kTqMse;        // the candidates' and probes' encoding: kTqMse, or kTqTcq (tcq)
  KvSpec knobs;  // base k3v2 with the other options given (sink, window, centre, page, ...)
  // mem=: the engine keeps its sliding-window layers in window rings (its default; false for
  // --swa-full), so those layers hold their ring's positions, not the context's.
  bool rings = true;
  // mem=: prefix-tail slots per sequence (tq serve: one each by default, runner.h), each holding a
  // copy of a sequence's side rows (sink, window) and rings.
  double tail_copies = 0;
  // mem=: the side rows an engine keeps beyond sink + window (KvPolicy::side_tokens' extra): the
  // CPU engine's chunk of queries (tq serve: --max-batched-tokens) and a page with prefix tails;
  // kv-size's 64-token chunk by default.
  uint32_t side_extra = kKvSizeSideExtra;
};

bool is_auto_kv(const std::string& text);              // "auto" or "auto:..."
AutoKvRequest parse_auto_kv(const std::string& text);  // throws tq::Error naming the bad part

// The result of allocate_layers: every layer in format `low`, but those of `high_layers` in `high`.
struct Allocation {
  size_t low = 0, high = 0;           // indices into the formats; high == low when no layer is high
  std::vector<uint32_t> high_layers;  // ascending
  double cost = 0;                    // sum of the chosen cost[f][l]
  double bytes = 0;                   // sum of the chosen bytes[f] x the layer's weight (per token, all layers)
};

// The pure allocation. cost: [formats][layers] predicted loss of a layer in a format; bytes:
// [formats] a layer's bytes per token in that format; budget: bytes per token over all layers;
// weights: [layers] what a layer's bytes count for (empty: 1 each; mem= with window rings: a
// sliding-window layer's ring positions per position of the context). For each ordered pair
// (low, high) with bytes[low] <= bytes[high] (and each format alone), the best set of high layers:
// layers of equal weight cost the same to widen, so the set holds, of each weight class, the k of
// largest gain cost[low][l] - cost[high][l] > 0 (ties to the lower layer), and every count vector
// the budget pays for is tried: optimal for the pair. Over all pairs the lowest total cost wins
// (ties: fewer bytes, then the first pair). Allocation::bytes is weighted. Throws tq::Error,
// naming the budget, when no format fits it.
Allocation allocate_layers(const std::vector<std::vector<double>>& cost, const std::vector<double>& bytes, double budget,
                           const std::vector<double>& weights = {});

// Per-layer sensitivity: mean KL (nats) of the K and the V probes (above).
struct Sensitivity {
  std::vector<uint32_t> k_widths{2, 3}, v_widths{2};  // the probes' widths, ascending
  std::vector<std::vector<double>> k, v;              // [probe][layer]
  Encoding enc = Encoding::kTqMse;                    // the probed tensor's encoding (kTqMse or kTqTcq); the other at 8 bits, kTqMse
};
// Runs the (|k_widths| + |v_widths|) * layers probes and the fp32 reference over `tokens` in lockstep on the CPU.
Sensitivity measure_sensitivity(const model::Model& m, const std::vector<int>& tokens, const KvSpec& knobs, unsigned threads,
                                Sensitivity widths = {}, const std::function<void(size_t, size_t)>& progress = {});

struct AutoKvChoice {
  KvSpec spec;         // concrete, its text canonical
  std::string report;  // the table of what was chosen and why, for stderr
};
// Measures (measure_sensitivity) and allocates for model `m`; `tokens`: the calibration text's.
AutoKvChoice resolve_auto_kv(const AutoKvRequest& r, const model::Model& m, const std::vector<int>& tokens, unsigned threads,
                             const std::function<void(size_t, size_t)>& progress = {});
// Throws, naming the least budget, where even every layer at the narrowest width exceeds the
// budget: from the model's shape alone, before a calibration is run.
void check_auto_kv_budget(const AutoKvRequest& r, const model::ModelConfig& c);
// The allocation and report from a given sensitivity (what resolve_auto_kv does after measuring).
AutoKvChoice choose_auto_kv(const AutoKvRequest& r, const model::ModelConfig& c, const Sensitivity& s);

}  // namespace tq::engine
