// Test helper: builds GGUF files in memory (header, metadata of every type, tensor infos, aligned
// data section), to test the reader, the model loader and the tokenizers without real model files.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "tq/model/ggml_quants.h"
#include "tq/model/gguf.h"

namespace tq::model::testing {

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t version = 3) : version_(version) {}

  // Sets general.alignment (as u32) and uses it for the layout.
  void set_alignment(uint32_t a) {
    alignment_ = a;
    add_u32("general.alignment", a);
  }

  void add_u8(const std::string& k, uint8_t v) { scalar(k, GgufType::U8, &v, 1); }
  void add_i8(const std::string& k, int8_t v) { scalar(k, GgufType::I8, &v, 1); }
  void add_u16(const std::string& k, uint16_t v) { scalar(k, GgufType::U16, &v, 2); }
  void add_i16(const std::string& k, int16_t v) { scalar(k, GgufType::I16, &v, 2); }
  void add_u32(const std::string& k, uint32_t v) { scalar(k, GgufType::U32, &v, 4); }
  void add_i32(const std::string& k, int32_t v) { scalar(k, GgufType::I32, &v, 4); }
  void add_u64(const std::string& k, uint64_t v) { scalar(k, GgufType::U64, &v, 8); }
  void add_i64(const std::string& k, int64_t v) { scalar(k, GgufType::I64, &v, 8); }
  void add_f32(const std::string& k, float v) { scalar(k, GgufType::F32, &v, 4); }
  void add_f64(const std::string& k, double v) { scalar(k, GgufType::F64, &v, 8); }
  void add_bool(const std::string& k, bool v) {
    const uint8_t b = v ? 1 : 0;
    scalar(k, GgufType::BOOL, &b, 1);
  }
  void add_string(const std::string& k, const std::string& v) {
    key(k, GgufType::STRING);
    str(kv_, v);
  }
  void add_string_array(const std::string& k, const std::vector<std::string>& v) {
    key(k, GgufType::ARRAY);
    put(kv_, uint32_t(GgufType::STRING));
    put(kv_, uint64_t(v.size()));
    for (const auto& s : v) str(kv_, s);
  }
  // Numeric / bool arrays: `count` elements of `elem`, raw little-endian bytes.
  void add_raw_array(const std::string& k, GgufType elem, uint64_t count, const void* data, size_t n_bytes) {
    key(k, GgufType::ARRAY);
    put(kv_, uint32_t(elem));
    put(kv_, count);
    append(kv_, data, n_bytes);
  }
  void add_f32_array(const std::string& k, const std::vector<float>& v) {
    add_raw_array(k, GgufType::F32, v.size(), v.data(), v.size() * 4);
  }
  void add_i32_array(const std::string& k, const std::vector<int32_t>& v) {
    add_raw_array(k, GgufType::I32, v.size(), v.data(), v.size() * 4);
  }

  // A tensor with ggml-order dims (dims[0] = row length) and its raw bytes.
  void add_tensor(const std::string& name, const std::vector<uint64_t>& dims, GgmlType type,
                  const std::vector<uint8_t>& data) {
    tensors_.push_back({name, dims, type, data});
  }
  void add_tensor_f32(const std::string& name, const std::vector<uint64_t>& dims, const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    add_tensor(name, dims, GgmlType::F32, b);
  }

  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    append(out, "GGUF", 4);
    put(out, version_);
    put(out, uint64_t(tensors_.size()));
    put(out, n_kv_);
    out.insert(out.end(), kv_.begin(), kv_.end());
    uint64_t off = 0;
    for (const auto& t : tensors_) {
      str(out, t.name);
      put(out, uint32_t(t.dims.size()));
      for (const uint64_t d : t.dims) put(out, d);
      put(out, uint32_t(t.type));
      put(out, off);
      off += pad(t.data.size());
    }
    out.resize(pad(out.size()), 0);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      out.insert(out.end(), tensors_[i].data.begin(), tensors_[i].data.end());
      if (i + 1 < tensors_.size()) out.resize(pad(out.size()), 0);
    }
    return out;
  }

  void write(const std::string& path) const {
    const auto b = bytes();
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    GgmlType type;
    std::vector<uint8_t> data;
  };
  size_t pad(size_t n) const { return (n + alignment_ - 1) / alignment_ * alignment_; }
  static void append(std::vector<uint8_t>& o, const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    o.insert(o.end(), b, b + n);
  }
  template <typename T>
  static void put(std::vector<uint8_t>& o, T v) {
    append(o, &v, sizeof v);
  }
  static void str(std::vector<uint8_t>& o, const std::string& s) {
    put(o, uint64_t(s.size()));
    append(o, s.data(), s.size());
  }
  void key(const std::string& k, GgufType t) {
    str(kv_, k);
    put(kv_, uint32_t(t));
    ++n_kv_;
  }
  void scalar(const std::string& k, GgufType t, const void* v, size_t n) {
    key(k, t);
    append(kv_, v, n);
  }

  uint32_t version_;
  uint32_t alignment_ = 32;
  uint64_t n_kv_ = 0;
  std::vector<uint8_t> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace tq::model::testing
