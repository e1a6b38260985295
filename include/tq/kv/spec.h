// KV specs: the short strings that name a cache configuration everywhere (CLI, tests, benchmarks).
//
//   spec    := base (':' option)*
//   base    := fp32 | fp16 | bf16 | fp8 | k<W>v<W>        TurboQuant widths of K and V:
//   W       := N | N.5      N in 1..8 bits; N.5 (1.5..7.5) is the paper's outlier split: the
//                           split_outliers(head_dim) outlier channels at N+1 bits and the rest
//                           at N, each part its own TurboQuant (format.h kTqSplit), e.g. k3.5v2.5
//           | Nt            trellis-coded, 1t..7t: N bits a coordinate, levels from the (N+1)-bit
//                           codebook along a 4-state trellis (format.h kTqTcq), e.g. k3tv2t
//   option  := prod            keys as TurboQuant-prod (N-1 bit codebook + 1 QJL bit; whole K widths)
//            | nc              norm correction for MSE rows (decoded rows keep the true norm)
//            | ip[=k|v|kv|local]  the unbiased norm (inner products unbiased) on keys and values, keys
//                              or values only, or both on the model's sliding-window layers only
//            | rot=auto|hadamard|dense   auto: Hadamard for power-of-two padded dims, dense otherwise
//            | seed=<integer>  base seed of the rotations (per layer and KV head seeds derive from it)
//            | page=<tokens>   page size, 1..1024 (default 16)
//            | edge=<N>/<base> the first and the last N layers use <base> (fp16, k4v4, ...) instead
//            | layers=<set>/<base>  the layers of <set> use <base> instead: '+'-separated layer
//                              numbers and ranges, e.g. layers=0-1+5+29/k4v4 (edge=N's general form)
//            | sink=<tokens>   the first tokens of a sequence are also kept in an fp16 side buffer
//            | window=<tokens> the most recent tokens (per query) are read from an fp16 side buffer
//            | ksim=int4|int8|int2|q4_0  SIMULATED baseline: keys are quantize-dequantized by that
//                              CPU quantizer before they enter a float cache (fp32/fp16 base only)
//            | outliers=prompt|fixed  fractional widths: the outlier channels of each (layer, KV
//                              head) from the first rows written (default), or channels 0..n-1
//            | centre          a key centre: each (layer, KV head) subtracts the mean of the first
//                              keys it sees from every key it stores (softmax ignores the shift)
// The first six options are the format (KvFormat: what the bytes are); the others the policy
// (KvPolicy: which tokens and layers are stored otherwise). A list of specs is comma-separated:
// "fp16,k4v4,k3v2:prod".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tq/format.h"
#include "tq/codec/rotation.h"

namespace tq {

// What the bytes of the pages are: the encodings of K and V, the rotation, the page size. Everything
// that stores or reads pages (host and device storage, the kernels, the C API) takes this, so a
// policy knob cannot reach them and be silently dropped.
struct KvFormat {
  TensorCode k{Encoding::kFp16, 16}, v{Encoding::kFp16, 16};
  bool auto_rotation = true;
  RotationKind rotation = RotationKind::kHadamard;  // when !auto_rotation
  bool norm_correction = false;
  bool norm_unbiased_k = false, norm_unbiased_v = false;  // `ip` (both), `ip=k`, `ip=v`: TqConfig::norm_unbiased
  bool norm_unbiased_local = false;  // `ip=local`: both, on the model's sliding-window layers only (CacheFormat's `sliding`)
  uint64_t seed = 0x7475726271756e74ull;  // "turbqunt"
  uint32_t page_size = 16;

  // The rotation used for a head of `head_dim` coordinates.
  RotationKind rotation_for(uint32_t head_dim, bool split = false) const;  // split: a fractional width's row
  // Bits per K/V element at this head dim, norms and padding included (full pages).
  double bits_per_element(uint32_t head_dim) const;
  std::string canonical() const;
};

// Which tokens and layers are kept otherwise than in the format (docs/kv-specs.md): a backend
// implements each knob or refuses it by name (refuse_policy).
struct KvPolicy {
  // The layers in the second format (edge_k / edge_v), kept in the "edge" cache: either the first
  // and last edge_layers layers (edge=N), or the explicit set `layer_set` (layers=..., sorted and
  // distinct; what an automatic bit allocation chooses). At most one of the two is set.
  uint32_t edge_layers = 0;
  std::vector<uint32_t> layer_set;
  TensorCode edge_k{Encoding::kFp16, 16}, edge_v{Encoding::kFp16, 16};
  uint32_t sink = 0;    // tokens 0..sink-1 read from a full-precision side buffer
  uint32_t window = 0;  // keys within `window` positions of the query read from the side buffer
  std::string key_sim;  // "" or a make_baseline() name: simulated quantize-dequantize of keys
  bool fixed_outliers = false;  // outliers=fixed: fractional widths keep channels 0..n-1 as outliers (no calibration)
  // centre: every key is stored as k - mu, mu one vector per (layer, KV head) fixed by the engine's
  // first step (model::rope_centre, given to KvStore::calibrate). q.(k - mu) = q.k - q.mu shifts all of a query's logits by one
  // constant, which softmax ignores, and k - mu is what TurboQuant then pays for (docs/kv-specs.md).
  bool key_centre = false;

  bool empty() const { return knobs().empty(); }
  // Tokens the side buffer holds per layer and sequence: the sink, and the window plus `extra`
  // positions; 0 without sink and window. The CPU runner's extra is one chunk of queries (it
  // writes a chunk's rows before they attend); the CUDA runner's kSideRollback.
  uint64_t side_tokens(uint64_t extra) const { return uint64_t(sink) + (window ? uint64_t(window) + extra : 0); }
  // The knobs that are set, each as the spec writes it ("edge=2/k4v4", "sink=4", ...).
  std::vector<std::string> knobs() const;
};

// The CUDA runner's side ring keeps this many positions beyond the window (it writes a step's rows
// after they attend), so that up to that many tokens can be taken back (rejected draft tokens).
inline constexpr uint32_t kSideRollback = 8;

struct KvSpec {
  std::string text;  // as given
  KvFormat format;
  KvPolicy policy;

  // The format of layer `layer` of an `n_layers` model: edge layers (edge=N or layers=...) get the
  // edge base.
  bool is_edge_layer(uint32_t layer, uint32_t n_layers) const;
  KvFormat layer_format(uint32_t layer, uint32_t n_layers) const;
  KvFormat main_format() const { return format; }  // the other layers'
  KvFormat edge_format() const;                    // the edge layers'
  // Edge and other layers live in caches of their own, over the same page ids: how many layers
  // the edge cache holds, and a layer's index in its cache (layers of one cache in model order).
  // Throws, naming the value, when edge=N needs more than n_layers layers (2 * N) or layers=
  // names a layer >= n_layers.
  uint32_t edge_layer_count(uint32_t n_layers) const;
  uint32_t local_layer(uint32_t layer, uint32_t n_layers) const;
  // The entries of per_layer ([n_layers] flags, e.g. which layers are sliding-window ones) of the
  // layers the edge cache (edge) or the main one holds, in that cache's order.
  std::vector<bool> cache_layers(const std::vector<bool>& per_layer, bool edge) const;
  double bits_per_element(uint32_t head_dim) const { return format.bits_per_element(head_dim); }
  // Bytes of one page over every layer (each in its own format, edge layers too), as the page
  // storage lays them out (CacheFormat): the size of a spec before any storage exists.
  size_t page_bytes(uint32_t n_layers, uint32_t kv_heads, uint32_t head_dim) const;
  size_t layer_page_bytes(uint32_t layer, uint32_t n_layers, uint32_t kv_heads, uint32_t head_dim) const;  // one layer's part of it
  std::string canonical() const;
};

// The spec of `tq run`, `tq serve` and the Python LLM by default ("default" in a list): docs/quality.md says why.
inline constexpr const char* kDefaultKvSpec = "k3v2:ip:edge=2/k4v4:sink=4:window=64:centre";

KvSpec parse_kv_spec(const std::string& text);  // "default": kDefaultKvSpec; throws tq::Error naming the bad part

// Why the CUDA attention kernels take no cache of these encodings at this head dim ("" when they
// do), in every build: the vLLM backend refuses such a spec at model load with it.
// tq::cuda::attention_unsupported adds what depends on the GPU at hand (its shared memory).
std::string gpu_kernels_unsupported(TensorCode k, TensorCode v, uint32_t head_dim);
// A comma-separated list; "default" in it is kDefaultKvSpec (every command's --kv list takes it).
std::vector<KvSpec> parse_kv_specs(const std::string& comma_list);

// For entry points that implement the format only (one layer of pages, no side buffer): throws
// tq::Error naming the first policy knob of `spec`, and `who`, when the policy is not empty.
void refuse_policy(const KvSpec& spec, const char* who);

}  // namespace tq
