// KV specs: the short strings that name a cache configuration everywhere (CLI, tests, benchmarks).
//
//   spec    := base (':' option)*
//   base    := fp32 | fp16 | bf16 | fp8 | k<N>v<M>        N, M in 1..8 (TurboQuant bits for K and V)
//   option  := prod            keys as TurboQuant-prod (N-1 bit codebook + 1 QJL bit)
//            | nc              norm correction for MSE rows (decoded rows keep the true norm)
//            | rot=auto|hadamard|dense   auto: Hadamard for power-of-two padded dims, dense otherwise
//            | seed=<integer>  base seed of the rotations (per layer and KV head seeds derive from it)
//            | page=<tokens>   page size, 1..1024 (default 16)
// A list of specs is comma-separated: "fp16,k4v4,k3v2:prod".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tq/format.h"
#include "tq/rotation.h"

namespace tq {

struct KvSpec {
  std::string text;  // as given
  TensorCode k{Encoding::kFp16, 16}, v{Encoding::kFp16, 16};
  bool auto_rotation = true;
  RotationKind rotation = RotationKind::kHadamard;  // when !auto_rotation
  bool norm_correction = false;
  uint64_t seed = 0x7475726271756e74ull;  // "turbqunt"
  uint32_t page_size = 16;

  // The rotation used for a head of `head_dim` coordinates.
  RotationKind rotation_for(uint32_t head_dim) const;
  // Bits per K/V element at this head dim, norms and padding included (full pages).
  double bits_per_element(uint32_t head_dim) const;
  std::string canonical() const;
};

KvSpec parse_kv_spec(const std::string& text);  // throws tq::Error naming the bad part
std::vector<KvSpec> parse_kv_specs(const std::string& comma_list);

}  // namespace tq
