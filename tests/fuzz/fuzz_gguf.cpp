// libFuzzer harness: the GGUF reader (header, metadata, tensor infos), its typed getters, the
// dequantizers of every tensor type, the GGUF model loader and the tokenizer built from the
// metadata. Bad input may only throw tq::Error: anything else escapes and is a finding.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "tq/common.h"
#include "tq/model/gguf.h"
#include "tq/model/model.h"
#include "tq/model/tokenizer.h"

using namespace tq::model;

namespace {

// Every typed getter on every key: each must either return or throw tq::Error (wrong type).
void read_metadata(const GgufFile& f) {
  for (const std::string& k : f.keys()) {
    const auto attempt = [](auto&& fn) {
      try {
        fn();
      } catch (const tq::Error&) {
      }
    };
    attempt([&] { (void)f.get_uint(k); });
    attempt([&] { (void)f.get_int(k); });
    attempt([&] { (void)f.get_float(k); });
    attempt([&] { (void)f.get_bool(k); });
    attempt([&] { (void)f.get_string(k); });
    attempt([&] { (void)f.get_string_array(k); });
    attempt([&] { (void)f.get_f32_array(k); });
    attempt([&] { (void)f.get_int_array(k); });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::shared_ptr<const GgufFile> f;
  try {
    f = std::make_shared<const GgufFile>(GgufFile::from_bytes(std::vector<uint8_t>(data, data + size), "fuzz.gguf"));
  } catch (const tq::Error&) {
    return 0;
  }
  read_metadata(*f);
  for (const GgufTensorInfo& t : f->tensors()) {
    try {
      // The reader bounds n_bytes by the file; the element count of block types can still be 32x
      // that, so cap the float output to keep each run small.
      if (t.n_elements <= (1u << 16)) (void)f->dequantize(t);
      if (t.n_rows() > 0 && t.n_cols() <= (1u << 16)) {
        std::vector<float> row(t.n_cols());
        f->dequantize_rows(t, t.n_rows() - 1, 1, row.data());
      }
    } catch (const tq::Error&) {
    }
  }
  try {
    const Model m = load_gguf(f);
    std::vector<float> x(size_t(m.config.dim), 1.0f), y(size_t(m.config.q_dim()));
    if (!m.weights.layers.empty()) m.weights.layers[0].wq.matvec(x.data(), y.data());
  } catch (const tq::Error&) {
  }
  try {
    const auto tok = tokenizer_from_gguf(*f);
    const auto ids = tok->encode("Hello the world<|im_start|>12 lll\n\xe2\x96\x81\xff", true);
    (void)tok->decode(ids);
  } catch (const tq::Error&) {
  }
  return 0;
}
