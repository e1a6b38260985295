// Named shapes of real models (their config.json, less the weights): what the engine benchmark
// builds with random weights where the real files cannot go, and what `tq kv-size` can size.
#pragma once

#include <string>
#include <vector>

#include "tq/model/model.h"

namespace tq::model {

// "llama-3.1-8b", "llama-3.2-1b", "qwen2.5-7b", "qwen2.5-0.5b", "smollm2-135m": throws tq::Error listing the
// names on any other. The source is Gguf (RoPE as llama.cpp runs that architecture).
ModelConfig named_shape(const std::string& name);
std::vector<std::string> named_shapes();

// Bytes of the weights with bf16 matrices and fp32 norms and biases (the CUDA runner's layout):
// what a decode step must read at least once.
size_t weight_bytes_bf16(const ModelConfig& c);

}  // namespace tq::model
