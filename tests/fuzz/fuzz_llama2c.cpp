// libFuzzer harness: the llama2.c checkpoint loader (header checks, size arithmetic, weight views,
// the finiteness check of every weight), then one matrix-vector product and one embedding row
// through the views it returns. Bad input may only throw tq::Error.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tq/common.h"
#include "tq/model/model.h"

using namespace tq::model;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const Model m = load_llama2c(ByteSource::from_vector(std::vector<uint8_t>(data, data + size), "fuzz.bin"));
    const ModelConfig& c = m.config;
    std::vector<float> x(size_t(c.dim), 1.0f), y(size_t(c.q_dim()));
    m.weights.layers[0].wq.matvec(x.data(), y.data());  // n_layers >= 1 is checked by the loader
    std::vector<float> row(size_t(c.dim));
    m.weights.token_embd.dequantize_row(size_t(c.vocab_size) - 1, row.data());
    m.weights.output.matvec(x.data(), std::vector<float>(size_t(c.vocab_size)).data());
  } catch (const tq::Error&) {
  }
  return 0;
}
