// KV specs: the short strings that name a cache configuration everywhere (CLI, tests, benchmarks).
//
//   spec    := base (':' option)*
//   base    := fp32 | fp16 | bf16 | fp8 | k<N>v<M>        N, M in 1..8 (TurboQuant bits for K and V)
//   option  := prod            keys as TurboQuant-prod (N-1 bit codebook + 1 QJL bit)
//            | nc              norm correction for MSE rows (decoded rows keep the true norm)
//            | rot=auto|hadamard|dense   auto: Hadamard for power-of-two padded dims, dense otherwise
//            | seed=<integer>  base seed of the rotations (per layer and KV head seeds derive from it)
//            | page=<tokens>   page size, 1..1024 (default 16)
//            | edge=<N>/<base> the first and the last N layers use <base> (fp16, k4v4, ...) instead
//            | sink=<tokens>   the first tokens of a sequence are also kept in an fp16 side buffer
//            | window=<tokens> the most recent tokens (per query) are read from an fp16 side buffer
//            | ksim=int4|int8|int2|q4_0  SIMULATED baseline: keys are quantize-dequantized by that
//                              CPU quantizer before they enter a float cache (fp32/fp16 base only)
// The last four are engine-level knobs (src/engine): the packed pages themselves use `k`/`v`.
// A list of specs is comma-separated: "fp16,k4v4,k3v2:prod".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tq/format.h"
#include "tq/codec/rotation.h"

namespace tq {

struct KvSpec {
  std::string text;  // as given
  TensorCode k{Encoding::kFp16, 16}, v{Encoding::kFp16, 16};
  bool auto_rotation = true;
  RotationKind rotation = RotationKind::kHadamard;  // when !auto_rotation
  bool norm_correction = false;
  uint64_t seed = 0x7475726271756e74ull;  // "turbqunt"
  uint32_t page_size = 16;
  // Quality knobs (engine-level, docs/kv-specs.md).
  uint32_t edge_layers = 0;                                  // first and last N layers use edge_k/edge_v
  TensorCode edge_k{Encoding::kFp16, 16}, edge_v{Encoding::kFp16, 16};
  uint32_t sink = 0;    // tokens 0..sink-1 read from a full-precision side buffer
  uint32_t window = 0;  // keys within `window` positions of the query read from the side buffer
  std::string key_sim;  // "" or a make_baseline() name: simulated quantize-dequantize of keys

  // The spec of a layer of an `n_layers` model: edge layers get the edge base (knobs cleared).
  KvSpec layer_spec(uint32_t layer, uint32_t n_layers) const;

  // The rotation used for a head of `head_dim` coordinates.
  RotationKind rotation_for(uint32_t head_dim) const;
  // Bits per K/V element at this head dim, norms and padding included (full pages).
  double bits_per_element(uint32_t head_dim) const;
  std::string canonical() const;
};

KvSpec parse_kv_spec(const std::string& text);  // throws tq::Error naming the bad part
std::vector<KvSpec> parse_kv_specs(const std::string& comma_list);

}  // namespace tq
