// The key centre's calibration (KvPolicy::key_centre, docs/kv-specs.md). A store fixes each
// (layer, KV head)'s centre from the keys of the first step it runs; an engine makes that step a
// fixed passage, so that the centre depends on the model and the spec alone, never on which
// request came first or how the scheduler cut it (the same tokens give the same output on every
// engine, alone or in a batch, and cached prefixes stay valid for every request).
#pragma once

#include <cstdint>
#include <vector>

#include "tq/model/model.h"

namespace tq::engine {

// Tokens in the calibration step: a prompt chunk's worth (EngineOptions::max_chunk's default).
inline constexpr uint32_t kCentreTokens = 64;

// The passage (plain English prose written for this purpose) that the step reads.
const char* key_centre_text();

// The step's tokens for `m`, at most n: the passage through the model's own tokenizer (a GGUF
// file's), BOS first where the tokenizer adds one; a model without one (llama2.c files, random
// weights: vocab given) gets ids spread evenly over its vocabulary.
std::vector<int> key_centre_tokens(const model::Model* m, int vocab, uint32_t n);

}  // namespace tq::engine
