// The CUDA model runner: the same Llama-family forward pass as the CPU runner, on the GPU, with the
// KV cache in device pages of the KV spec's format (quantize_store on write, decode_attention /
// prefill_attention over the packed pages). Weights are dequantized once and uploaded as bf16;
// the matrix products are the runner's GEMV and gemm_rows kernels for steps of up to 16 rows and
// cuBLAS beyond (bf16 operands, fp32 accumulation and outputs); the residual stream and the
// attention's inputs and outputs are fp32. docs/engine.md says what runs where.
#pragma once

#include <memory>
#include <string>

#include "tq/engine/runner.h"

namespace tq::cuda {

// Whether this build has CUDA and a device is present; `why` says why not.
bool device_available(std::string* why = nullptr);

// Whether the runner implements this model and spec; `why` names the first thing it does not.
// No device call: the commands use it to choose a device.
bool can_run(const model::ModelConfig& c, const KvSpec& spec, std::string* why = nullptr);

// Throws tq::Error before allocating anything on the device when there is no GPU, when the spec
// has a knob this runner does not implement yet (sink, window, ksim: named), when the kernels
// have no path for its format (fp32 caches, prod keys, head dims other than 64/128/256 padded),
// or when the weights and the page pool do not fit the device's free memory.
// opts.gpu_memory > 0 sizes the pool from the device's memory; --gpu-memory names it in errors.
std::unique_ptr<engine::ModelRunner> make_model_runner(const model::Model& m, const KvSpec& spec, const engine::RunnerOptions& opts);

// The same runner over random weights of the shape `c` (model::named_shape), generated on the
// device from `seed`: the engine benchmark's model where real weights cannot go (vLLM's
// --load-format dummy). Its logits mean nothing; its speed is the real shape's.
std::unique_ptr<engine::ModelRunner> make_random_model_runner(const model::ModelConfig& c, const KvSpec& spec,
                                                              const engine::RunnerOptions& opts, uint64_t seed);

}  // namespace tq::cuda
