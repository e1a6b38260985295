// TensorRef operations and loading by file type.
#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "tq/check.h"
#include "tq/model/model.h"

namespace tq::model {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::Qwen2: return "qwen2";
    case Arch::Qwen3: return "qwen3";
    case Arch::Gemma3: return "gemma3";
  }
  return "unknown";
}

const char* chat_template_name(ChatTemplate c) {
  switch (c) {
    case ChatTemplate::None: return "none";
    case ChatTemplate::ChatML: return "chatml";
    case ChatTemplate::Llama3: return "llama3";
    case ChatTemplate::Gemma: return "gemma";
  }
  return "unknown";
}

std::string ModelConfig::chat_template_missing() const {
  if (unsupported_chat_template.empty()) return "has no chat template";
  return fmt::format("has a chat template this build does not support (it knows ChatML, Llama 3 and Gemma): '{}'", unsupported_chat_template);
}

namespace {
// The frequency of each rotated pair, [rope_dim / 2].
std::vector<float> freqs(int rope_dim, float theta) {
  std::vector<float> f(size_t(rope_dim) / 2);
  for (size_t i = 0; i < f.size(); ++i) f[i] = 1.0f / std::pow(theta, float(2 * i) / float(rope_dim));
  return f;
}

// The angle of a pair of frequency `freq` at position p, as every RoPE table holds it.
float angle(float freq, float pos_scale, uint32_t p) {
  // pos_scale 1 (every model but a linearly scaled one) leaves run.c's float(p) * freq as it was
  return (pos_scale == 1.0f ? float(p) : float(p) * pos_scale) * freq;
}

void angles(int rope_dim, float theta, float pos_scale, uint32_t context, std::vector<float>& cs, std::vector<float>& sn) {
  const std::vector<float> f = freqs(rope_dim, theta);
  const size_t half = f.size();
  cs.resize(size_t(context) * half);
  sn.resize(cs.size());
  for (uint32_t p = 0; p < context; ++p)
    for (size_t i = 0; i < half; ++i) {
      const float a = angle(f[i], pos_scale, p);
      cs[p * half + i] = std::cos(a);
      sn[p * half + i] = std::sin(a);
    }
}
}  // namespace

void rope_angles(const ModelConfig& c, uint32_t context, std::vector<float>& cs, std::vector<float>& sn) {
  angles(c.rope_dim, c.rope_theta, c.rope_freq_scale, context, cs, sn);
}

void rope_angles_local(const ModelConfig& c, uint32_t context, std::vector<float>& cs, std::vector<float>& sn) {
  angles(c.rope_dim, c.rope_theta_local, 1.0f, context, cs, sn);
}

void rope_mean_rotation(const std::vector<float>& cs, const std::vector<float>& sn, uint32_t half, std::vector<double>& a,
                        std::vector<double>& b) {
  TQ_CHECK(half >= 1 && cs.size() == sn.size() && cs.size() % half == 0 && !cs.empty(), "RoPE tables of {} and {} values for {} pairs",
           cs.size(), sn.size(), half);
  const size_t positions = cs.size() / half;
  a.assign(half, 0.0), b.assign(half, 0.0);
  for (size_t p = 0; p < positions; ++p)
    for (size_t i = 0; i < half; ++i) a[i] += cs[p * half + i], b[i] += sn[p * half + i];
  for (size_t i = 0; i < half; ++i) a[i] /= double(positions), b[i] /= double(positions);
}

void rope_mean_rotation(const ModelConfig& c, uint32_t positions, bool local, std::vector<double>& a, std::vector<double>& b,
                        const std::vector<float>* cos, const std::vector<float>* sin) {
  const uint32_t half = uint32_t(c.rope_dim) / 2;
  TQ_CHECK(half >= 1 && positions >= 1, "a RoPE mean over {} positions of {} pairs", positions, half);
  if (cos && sin && cos->size() == size_t(positions) * half) return rope_mean_rotation(*cos, *sin, half, a, b);
  const float theta = local ? c.rope_theta_local : c.rope_theta, scale = local ? 1.0f : c.rope_freq_scale;
  const std::vector<float> f = freqs(c.rope_dim, theta);
  a.assign(half, 0.0), b.assign(half, 0.0);
  // The tables' values, summed in their order (position, then pair): the mean the tables give.
  for (uint32_t p = 0; p < positions; ++p)
    for (uint32_t i = 0; i < half; ++i) {
      const float x = angle(f[i], scale, p);
      a[i] += std::cos(x), b[i] += std::sin(x);
    }
  for (uint32_t i = 0; i < half; ++i) a[i] /= double(positions), b[i] /= double(positions);
}

void rope_centre(const ModelConfig& c, const double* a, const double* b, const double* m, float* centre) {
  const uint32_t half = uint32_t(c.rope_dim) / 2, hd = uint32_t(c.head_dim);
  const bool adjacent = c.rope_style == RopeStyle::AdjacentPairs;
  for (uint32_t e = uint32_t(c.rope_dim); e < hd; ++e) centre[e] = float(m[e]);
  for (uint32_t i = 0; i < half; ++i) {
    const uint32_t i0 = adjacent ? 2 * i : i, i1 = adjacent ? 2 * i + 1 : i + half;
    centre[i0] = float(a[i] * m[i0] - b[i] * m[i1]);
    centre[i1] = float(b[i] * m[i0] + a[i] * m[i1]);
  }
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

void TensorRef::check_finite(std::string_view where) const {
  if (!present()) return;
  const size_t n = n_rows * n_cols, at = ggml_find_nonfinite(type, data, n);
  if (at == n) return;
  std::vector<float> row(n_cols);
  dequantize_row(at / n_cols, row.data());
  const bool block = ggml_type_info(type).block_elems > 1;
  const std::string why = block ? fmt::format(" (its {} block's scale is not finite)", ggml_type_name(type)) : "";
  throw Error(fmt::format("{} '{}': element {} (row {}, column {}) is {}{}: weights must be finite numbers", where, name, at, at / n_cols,
                          at % n_cols, row[at % n_cols], why));
}

Model load_model(const std::string& path) {
  auto src = ByteSource::map_file(path);
  const size_t n = src->size();
  TQ_CHECK(n > 0, "'{}' is empty (0 bytes): not a model file (GGUF or llama2.c checkpoint)", path);
  const bool magic = std::memcmp(src->data(), "GGUF", std::min<size_t>(n, 4)) == 0;  // a truncated file may have part of it
  const bool named = path.size() >= 5 && path.compare(path.size() - 5, 5, ".gguf") == 0;
  if (magic || named) return load_gguf(std::make_shared<const GgufFile>(GgufFile::parse(src)));
  return load_llama2c(src);
}

}  // namespace tq::model
