// TensorRef operations and loading by file type.
#include <cstring>

#include <fmt/format.h>

#include "tq/check.h"
#include "tq/model/model.h"

namespace tq::model {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::Qwen2: return "qwen2";
  }
  return "unknown";
}

const char* chat_template_name(ChatTemplate c) {
  switch (c) {
    case ChatTemplate::None: return "none";
    case ChatTemplate::ChatML: return "chatml";
    case ChatTemplate::Llama3: return "llama3";
  }
  return "unknown";
}

void TensorRef::matvec(const float* x, float* y) const {
  TQ_CHECK(present(), "weight '{}' is absent", name);
  dot_rows(type, data, n_rows, n_cols, x, y);
}

void TensorRef::dequantize_row(size_t r, float* out) const {
  TQ_CHECK(present(), "weight '{}' is absent", name);
  TQ_CHECK(r < n_rows, "weight '{}': row {} out of range ({} rows)", name, r, n_rows);
  tq::model::dequantize_row(type, data + r * row_bytes(), out, n_cols);
}

std::vector<float> TensorRef::to_f32() const {
  TQ_CHECK(present(), "weight '{}' is absent", name);
  std::vector<float> out(n_rows * n_cols);  // [n_rows][n_cols]
  tq::model::dequantize_row(type, data, out.data(), out.size());
  return out;
}

Model load_model(const std::string& path) {
  auto src = ByteSource::map_file(path);
  if (src->size() >= 4 && std::memcmp(src->data(), "GGUF", 4) == 0)
    return load_gguf(std::make_shared<const GgufFile>(GgufFile::parse(src)));
  return load_llama2c(src);
}

}  // namespace tq::model
