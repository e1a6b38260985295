// libFuzzer harness: the KV spec parser (parse_kv_specs: comma lists of base:option:... specs),
// and what is computed from a spec before any storage exists: the canonical text, the page
// sizes at a few head dims and layer counts, the layer split of edge layers. Bad input may only
// throw tq::Error; a spec that parses must survive a round trip through its canonical text.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "tq/common.h"
#include "tq/kv/spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<tq::KvSpec> specs;
  try {
    specs = tq::parse_kv_specs(text);
  } catch (const tq::Error&) {
    return 0;
  }
  for (const tq::KvSpec& s : specs) {
    // canonical() names the format and the policy (and a seed that is not the default, where
    // TurboQuant rows take it): parsing it gives the same spec.
    const std::string c = s.canonical();
    tq::KvSpec again;
    try {
      again = tq::parse_kv_spec(c);
    } catch (const tq::Error& e) {
      std::fprintf(stderr, "canonical text '%s' of '%s' does not parse: %s\n", c.c_str(), s.text.c_str(), e.what());
      std::abort();
    }
    if (again.canonical() != c) {
      std::fprintf(stderr, "'%s' -> '%s' -> '%s'\n", s.text.c_str(), c.c_str(), again.canonical().c_str());
      std::abort();
    }
    const bool edges = s.policy.edge_layers > 0 || !s.policy.layer_set.empty();
    const bool rotated = tq::is_tq(s.format.k.enc) || tq::is_tq(s.format.v.enc) ||
                         (edges && (tq::is_tq(s.policy.edge_k.enc) || tq::is_tq(s.policy.edge_v.enc)));
    if (rotated && again.format.seed != s.format.seed) {
      std::fprintf(stderr, "'%s' -> '%s' lost its seed\n", s.text.c_str(), c.c_str());
      std::abort();
    }
    for (uint32_t head_dim : {1u, 64u, 80u, 128u, 1024u}) {
      (void)s.bits_per_element(head_dim);
      for (uint32_t n_layers : {1u, 2u, 7u, 32u}) {
        (void)s.page_bytes(n_layers, 8, head_dim);
        try {
          for (uint32_t l = 0; l < n_layers; ++l) {
            const uint32_t local = s.local_layer(l, n_layers);
            if (local >= n_layers) std::abort();
          }
        } catch (const tq::Error&) {  // more edge layers than the model has
        }
      }
    }
    try {
      tq::refuse_policy(s, "fuzz");
    } catch (const tq::Error&) {
    }
  }
  return 0;
}
