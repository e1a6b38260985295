// Reader for GGUF files (versions 2 and 3, little-endian), the llama.cpp / ggml model format:
//
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x      { string key | u32 value type | value }
//   n_tensors x { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml type | u64 offset }
//   padding to `general.alignment` (default 32) | data section (tensor offsets are relative to it)
//
// where string = u64 length + bytes (no terminator) and an array value = u32 element type + u64 count
// + elements. Every count, length and offset is checked against the file size before anything is
// allocated or read; bad input throws tq::Error naming the key / tensor and the value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tq/model/byte_source.h"
#include "tq/model/ggml_quants.h"

namespace tq::model {

// GGUF metadata value types (gguf.h `enum gguf_type`).
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);

// Hash for unordered_map<std::string, ...> lookups by string_view without a temporary string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

struct GgufValue {
  GgufType type = GgufType::U8;
  // Scalars: integers in `u` (unsigned types) or `i` (signed types), floats in `f`, bools in `b`.
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0.0;
  bool b = false;
  std::string str;  // STRING
  // ARRAY: element type and count; strings in arr_str, numbers/bools in arr_raw as they are in the
  // file ([count][element size] little-endian). Nested arrays are rejected, as llama.cpp does.
  GgufType arr_type = GgufType::U8;
  uint64_t arr_count = 0;
  std::vector<std::string> arr_str;
  std::vector<uint8_t> arr_raw;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // ggml order: dims[0] is the row length (innermost), up to 4 dims
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;   // from the start of the data section (a multiple of the alignment)
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  uint64_t n_cols() const { return dims.empty() ? 1 : dims[0]; }
  uint64_t n_rows() const { return n_elements / n_cols(); }  // dims are >= 1 (checked)
};

class GgufFile {
 public:
  static GgufFile open(const std::string& path);  // mmaps the file
  static GgufFile parse(std::shared_ptr<const ByteSource> src);
  static GgufFile from_bytes(std::vector<uint8_t> bytes, std::string name = "<memory>");

  const std::string& name() const { return src_->name(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  const std::shared_ptr<const ByteSource>& source() const { return src_; }

  // ---- metadata ----
  const std::vector<std::string>& keys() const { return key_order_; }  // in file order
  bool has(std::string_view key) const { return find(key) != nullptr; }
  const GgufValue* find(std::string_view key) const;  // nullptr when absent
  const GgufValue& get(std::string_view key) const;   // throws "GGUF metadata key 'k' is missing"
  // Typed getters; each throws tq::Error naming the key and the actual type on a mismatch.
  uint64_t get_uint(std::string_view key) const;     // any integer type, value must be >= 0
  int64_t get_int(std::string_view key) const;       // any integer type, value must fit int64
  double get_float(std::string_view key) const;      // f32 or f64
  bool get_bool(std::string_view key) const;
  const std::string& get_string(std::string_view key) const;
  const std::vector<std::string>& get_string_array(std::string_view key) const;
  std::vector<float> get_f32_array(std::string_view key) const;    // f32 (or f64) array
  std::vector<int64_t> get_int_array(std::string_view key) const;  // array of any integer type
  // ... or `def` when the key is absent (still throws on a wrong type).
  uint64_t get_uint_or(std::string_view key, uint64_t def) const;
  int64_t get_int_or(std::string_view key, int64_t def) const;
  double get_float_or(std::string_view key, double def) const;
  bool get_bool_or(std::string_view key, bool def) const;
  std::string get_string_or(std::string_view key, std::string def) const;

  // ---- tensors ----
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;  // nullptr when absent
  const GgufTensorInfo& tensor(std::string_view name) const;       // throws naming it when absent
  // Raw bytes of the tensor ([n_rows][row bytes]), inside the file (bounds checked at parse time).
  std::span<const uint8_t> tensor_bytes(const GgufTensorInfo& t) const;
  // All elements as float32 ([n_rows][n_cols]).
  std::vector<float> dequantize(const GgufTensorInfo& t) const;
  // Rows [row0, row0 + n_rows) into out [n_rows][n_cols]; throws when the range is out of bounds.
  void dequantize_rows(const GgufTensorInfo& t, uint64_t row0, uint64_t n_rows, float* out) const;

 private:
  GgufFile() = default;
  std::shared_ptr<const ByteSource> src_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::string> key_order_;
  std::unordered_map<std::string, GgufValue, StringHash, std::equal_to<>> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t, StringHash, std::equal_to<>> tensor_index_;

  friend class GgufParser;
};

}  // namespace tq::model
