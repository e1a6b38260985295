// GGUF parsing (layout: see gguf.h; reference: ggml's docs/gguf.md and gguf.cpp, read not copied).
#include "tq/model/gguf.h"

#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "tq/check.h"

namespace tq::model {

namespace {

constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
// Counts a file may claim: each entry costs several times its bytes of file in memory, so a count
// that fits in the file can still ask for far more memory than it. Real models have ~1K tensors
// and vocabularies and merge lists of a few 100K strings.
constexpr uint64_t kMaxStrings = uint64_t(1) << 24, kMaxTensors = uint64_t(1) << 20;
constexpr uint32_t kTypeCount = 13;

// Size in bytes of a scalar of type t (0 for STRING / ARRAY, which have no fixed size).
size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

bool is_unsigned(GgufType t) {
  return t == GgufType::U8 || t == GgufType::U16 || t == GgufType::U32 || t == GgufType::U64;
}
bool is_signed(GgufType t) {
  return t == GgufType::I8 || t == GgufType::I16 || t == GgufType::I32 || t == GgufType::I64;
}

template <typename T>
T load(const uint8_t* p) {  // little-endian host (static_assert in ggml_quants.cpp)
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* const kNames[kTypeCount] = {"u8",  "i8",  "u16",    "i16",   "u32", "i32", "f32",
                                                 "bool", "string", "array", "u64", "i64", "f64"};
  return uint32_t(t) < kTypeCount ? kNames[uint32_t(t)] : "unknown";
}

// Bounds-checked sequential reader over the file bytes; builds a GgufFile.
class GgufParser {
 public:
  explicit GgufParser(GgufFile& f) : f_(f), p_(f.src_->data()), size_(f.src_->size()) {}

  void run() {
    need(4, "the magic");
    TQ_CHECK(std::memcmp(p_, "GGUF", 4) == 0, "'{}' is not a GGUF file (magic bytes {:02x} {:02x} {:02x} {:02x})",
             name(), p_[0], p_[1], p_[2], p_[3]);
    pos_ = 4;
    const uint32_t version = u32("the version");
    TQ_CHECK(version != 0 && version != 1, "GGUF '{}': version {} is not supported (only 2 and 3)", name(), version);
    // A big-endian file's version 1..3 reads as 0x01000000..0x03000000 here.
    TQ_CHECK(version != 0x01000000u && version != 0x02000000u && version != 0x03000000u,
             "GGUF '{}': version {:#x} looks byte-swapped: big-endian GGUF is not supported", name(), version);
    TQ_CHECK(version == 2 || version == 3, "GGUF '{}': unsupported version {} (only 2 and 3)", name(), version);
    f_.version_ = version;
    const uint64_t n_tensors = u64("the tensor count");
    const uint64_t n_kv = u64("the metadata count");
    // Each entry takes at least this many bytes, so larger counts cannot fit: reject them before
    // reserving anything. (key: 8 length + 4 type + 1 value; tensor: 8 + 4 n_dims + 4 type + 8 offset)
    TQ_CHECK(n_kv <= remaining() / 13, "GGUF '{}': metadata count {} cannot fit in the {} bytes left", name(), n_kv,
             remaining());
    for (uint64_t k = 0; k < n_kv; ++k) read_kv(k);
    TQ_CHECK(n_tensors <= remaining() / 24, "GGUF '{}': tensor count {} cannot fit in the {} bytes left", name(),
             n_tensors, remaining());
    TQ_CHECK(n_tensors <= kMaxTensors, "GGUF '{}': tensor count {} is over the {} this reader accepts", name(), n_tensors, kMaxTensors);

    if (const GgufValue* a = f_.find("general.alignment")) {
      TQ_CHECK(is_unsigned(a->type) || is_signed(a->type), "GGUF '{}': general.alignment has type {}, expected an integer",
               name(), gguf_type_name(a->type));
      const uint64_t al = is_unsigned(a->type) ? a->u : uint64_t(a->i);
      TQ_CHECK(al != 0 && al <= (uint64_t(1) << 30) && (al & (al - 1)) == 0 && (is_unsigned(a->type) || a->i > 0),
               "GGUF '{}': general.alignment {} is not a power of two in [1, 2^30]", name(),
               is_unsigned(a->type) ? fmt::to_string(a->u) : fmt::to_string(a->i));
      f_.alignment_ = al;
    }

    f_.tensors_.reserve(size_t(n_tensors));
    for (uint64_t t = 0; t < n_tensors; ++t) read_tensor_info(t);

    const uint64_t al = f_.alignment_;
    f_.data_offset_ = (uint64_t(pos_) + al - 1) / al * al;
    for (const auto& t : f_.tensors_) {
      TQ_CHECK(t.offset % al == 0, "GGUF tensor '{}': offset {} is not a multiple of the alignment {}", t.name, t.offset,
               al);
      const uint64_t avail = f_.data_offset_ <= size_ ? size_ - f_.data_offset_ : 0;
      TQ_CHECK(t.offset <= avail && t.n_bytes <= avail - t.offset,
               "GGUF tensor '{}': data at offset {} of size {} lies outside the data section ({} bytes at {} in '{}')",
               t.name, t.offset, t.n_bytes, avail, f_.data_offset_, name());
    }
  }

 private:
  const std::string& name() const { return f_.src_->name(); }
  size_t remaining() const { return size_ - pos_; }
  void need(uint64_t n, std::string_view what) {
    TQ_CHECK(n <= remaining(), "GGUF '{}': truncated: {} needs {} bytes at offset {} but only {} remain", name(), what, n,
             pos_, remaining());
  }
  uint32_t u32(std::string_view what) {
    need(4, what);
    const uint32_t v = load<uint32_t>(p_ + pos_);
    pos_ += 4;
    return v;
  }
  uint64_t u64(std::string_view what) {
    need(8, what);
    const uint64_t v = load<uint64_t>(p_ + pos_);
    pos_ += 8;
    return v;
  }
  std::string str(std::string_view what) {
    const uint64_t len = u64(what);
    TQ_CHECK(len <= remaining(), "GGUF '{}': {} has length {} but only {} bytes remain (offset {})", name(), what, len,
             remaining(), pos_);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += size_t(len);
    return s;
  }

  GgufType read_type(std::string_view key, bool element) {
    const uint32_t raw = u32(fmt::format("the type of key '{}'", key));
    TQ_CHECK(raw < kTypeCount, "GGUF key '{}': unknown {}type {}", key, element ? "array element " : "value ", raw);
    return GgufType(raw);
  }

  void read_scalar(const std::string& key, GgufType t, GgufValue& v) {
    const size_t n = scalar_size(t);
    need(n, fmt::format("the value of key '{}'", key));
    const uint8_t* q = p_ + pos_;
    switch (t) {
      case GgufType::U8: v.u = q[0]; break;
      case GgufType::I8: v.i = int8_t(q[0]); break;
      case GgufType::U16: v.u = load<uint16_t>(q); break;
      case GgufType::I16: v.i = load<int16_t>(q); break;
      case GgufType::U32: v.u = load<uint32_t>(q); break;
      case GgufType::I32: v.i = load<int32_t>(q); break;
      case GgufType::U64: v.u = load<uint64_t>(q); break;
      case GgufType::I64: v.i = load<int64_t>(q); break;
      case GgufType::F32: v.f = load<float>(q); break;
      case GgufType::F64: v.f = load<double>(q); break;
      case GgufType::BOOL:
        TQ_CHECK(q[0] <= 1, "GGUF key '{}': bool value {} is neither 0 nor 1", key, q[0]);
        v.b = q[0] != 0;
        break;
      default: break;
    }
    pos_ += n;
  }

  void read_kv(uint64_t index) {
    std::string key = str(fmt::format("metadata key #{}", index));
    TQ_CHECK(!f_.kv_.contains(key), "GGUF '{}': duplicate metadata key '{}'", name(), key);
    GgufValue v;
    v.type = read_type(key, false);
    if (v.type == GgufType::STRING) {
      v.str = str(fmt::format("the string value of key '{}'", key));
    } else if (v.type == GgufType::ARRAY) {
      v.arr_type = read_type(key, true);
      TQ_CHECK(v.arr_type != GgufType::ARRAY, "GGUF key '{}': nested arrays are not supported", key);
      v.arr_count = u64(fmt::format("the array length of key '{}'", key));
      if (v.arr_type == GgufType::STRING) {
        // every string takes at least its 8-byte length
        TQ_CHECK(v.arr_count <= remaining() / 8, "GGUF key '{}': string array length {} cannot fit in the {} bytes left",
                 key, v.arr_count, remaining());
        TQ_CHECK(v.arr_count <= kMaxStrings, "GGUF key '{}': string array length {} is over the {} this reader accepts", key,
                 v.arr_count, kMaxStrings);
        v.arr_str.reserve(size_t(v.arr_count));
        for (uint64_t j = 0; j < v.arr_count; ++j) v.arr_str.push_back(str(fmt::format("element {} of key '{}'", j, key)));
      } else {
        const size_t es = scalar_size(v.arr_type);
        TQ_CHECK(v.arr_count <= remaining() / es, "GGUF key '{}': {} array length {} cannot fit in the {} bytes left",
                 key, gguf_type_name(v.arr_type), v.arr_count, remaining());
        const size_t n = size_t(v.arr_count) * es;
        v.arr_raw.assign(p_ + pos_, p_ + pos_ + n);
        pos_ += n;
      }
    } else {
      read_scalar(key, v.type, v);
    }
    f_.key_order_.push_back(key);
    f_.kv_.emplace(std::move(key), std::move(v));
  }

  void read_tensor_info(uint64_t index) {
    GgufTensorInfo t;
    t.name = str(fmt::format("the name of tensor #{}", index));
    TQ_CHECK(!f_.tensor_index_.contains(t.name), "GGUF '{}': duplicate tensor name '{}'", name(), t.name);
    const uint32_t n_dims = u32(fmt::format("the dimension count of tensor '{}'", t.name));
    TQ_CHECK(n_dims <= kMaxDims, "GGUF tensor '{}': {} dimensions (at most {})", t.name, n_dims, kMaxDims);
    t.n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = u64(fmt::format("dimension {} of tensor '{}'", d, t.name));
      TQ_CHECK(ne >= 1 && ne <= uint64_t(std::numeric_limits<int64_t>::max()) / t.n_elements,
               "GGUF tensor '{}': dimension {} has invalid size {} (zero, or the element count overflows)", t.name, d, ne);
      t.dims.push_back(ne);
      t.n_elements *= ne;
    }
    const uint32_t raw_type = u32(fmt::format("the type of tensor '{}'", t.name));
    const GgmlTypeInfo* ti = ggml_type_info(raw_type);
    TQ_CHECK(ti != nullptr, "GGUF tensor '{}': unknown ggml type {}", t.name, raw_type);
    t.type = ti->type;
    TQ_CHECK(t.n_cols() % ti->block_elems == 0,
             "GGUF tensor '{}': row length {} is not a multiple of the {} block size {}", t.name, t.n_cols(), ti->name,
             ti->block_elems);
    // The element count fits int64, but its bytes need not fit 64 bits (2^62 f32 elements are 2^64
    // bytes, which wrapped to 0 and passed the check against the file's size: a fuzzer's find).
    const uint64_t blocks = t.n_elements / ti->block_elems;
    TQ_CHECK(blocks <= std::numeric_limits<uint64_t>::max() / ti->block_bytes,
             "GGUF tensor '{}': {} elements of {} are more bytes than a 64-bit size holds", t.name, t.n_elements, ti->name);
    t.n_bytes = blocks * ti->block_bytes;
    t.offset = u64(fmt::format("the data offset of tensor '{}'", t.name));
    f_.tensor_index_.emplace(t.name, f_.tensors_.size());
    f_.tensors_.push_back(std::move(t));
  }

  GgufFile& f_;
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
};

GgufFile GgufFile::parse(std::shared_ptr<const ByteSource> src) {
  TQ_CHECK(src != nullptr, "GgufFile::parse: null source");
  GgufFile f;
  f.src_ = std::move(src);
  GgufParser(f).run();
  return f;
}

GgufFile GgufFile::open(const std::string& path) { return parse(ByteSource::map_file(path)); }

GgufFile GgufFile::from_bytes(std::vector<uint8_t> bytes, std::string name) {
  return parse(ByteSource::from_vector(std::move(bytes), std::move(name)));
}

// ---------------------------------------------------------------- metadata getters

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const GgufValue& GgufFile::get(std::string_view key) const {
  const GgufValue* v = find(key);
  TQ_CHECK(v != nullptr, "GGUF '{}': metadata key '{}' is missing", name(), key);
  return *v;
}

namespace {
[[noreturn]] void wrong_type(std::string_view key, const GgufValue& v, std::string_view expected) {
  const std::string actual = v.type == GgufType::ARRAY ? fmt::format("array of {}", gguf_type_name(v.arr_type))
                                                       : std::string(gguf_type_name(v.type));
  throw Error(fmt::format("GGUF metadata key '{}' has type {}, expected {}", key, actual, expected));
}
}  // namespace

uint64_t GgufFile::get_uint(std::string_view key) const {
  const GgufValue& v = get(key);
  if (is_unsigned(v.type)) return v.u;
  if (!is_signed(v.type)) wrong_type(key, v, "an unsigned integer");
  TQ_CHECK(v.i >= 0, "GGUF metadata key '{}' is {}, expected a non-negative integer", key, v.i);
  return uint64_t(v.i);
}

int64_t GgufFile::get_int(std::string_view key) const {
  const GgufValue& v = get(key);
  if (is_signed(v.type)) return v.i;
  if (!is_unsigned(v.type)) wrong_type(key, v, "an integer");
  TQ_CHECK(v.u <= uint64_t(std::numeric_limits<int64_t>::max()), "GGUF metadata key '{}' is {}: does not fit int64", key,
           v.u);
  return int64_t(v.u);
}

double GgufFile::get_float(std::string_view key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::F32 && v.type != GgufType::F64) wrong_type(key, v, "f32 or f64");
  return v.f;
}

bool GgufFile::get_bool(std::string_view key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::BOOL) wrong_type(key, v, "bool");
  return v.b;
}

const std::string& GgufFile::get_string(std::string_view key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::STRING) wrong_type(key, v, "string");
  return v.str;
}

const std::vector<std::string>& GgufFile::get_string_array(std::string_view key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::ARRAY || v.arr_type != GgufType::STRING) wrong_type(key, v, "array of string");
  return v.arr_str;
}

std::vector<float> GgufFile::get_f32_array(std::string_view key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::ARRAY || (v.arr_type != GgufType::F32 && v.arr_type != GgufType::F64))
    wrong_type(key, v, "array of f32");
  std::vector<float> out(size_t(v.arr_count));
  for (size_t j = 0; j < out.size(); ++j)
    out[j] = v.arr_type == GgufType::F32 ? load<float>(v.arr_raw.data() + 4 * j)
                                         : float(load<double>(v.arr_raw.data() + 8 * j));
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::ARRAY || !(is_signed(v.arr_type) || is_unsigned(v.arr_type)))
    wrong_type(key, v, "array of integers");
  std::vector<int64_t> out(size_t(v.arr_count));
  const uint8_t* q = v.arr_raw.data();
  for (size_t j = 0; j < out.size(); ++j) {
    switch (v.arr_type) {
      case GgufType::U8: out[j] = q[j]; break;
      case GgufType::I8: out[j] = int8_t(q[j]); break;
      case GgufType::U16: out[j] = load<uint16_t>(q + 2 * j); break;
      case GgufType::I16: out[j] = load<int16_t>(q + 2 * j); break;
      case GgufType::U32: out[j] = load<uint32_t>(q + 4 * j); break;
      case GgufType::I32: out[j] = load<int32_t>(q + 4 * j); break;
      case GgufType::I64: out[j] = load<int64_t>(q + 8 * j); break;
      default: {  // U64
        const uint64_t u = load<uint64_t>(q + 8 * j);
        TQ_CHECK(u <= uint64_t(std::numeric_limits<int64_t>::max()),
                 "GGUF metadata key '{}': element {} is {}: does not fit int64", key, j, u);
        out[j] = int64_t(u);
      }
    }
  }
  return out;
}

uint64_t GgufFile::get_uint_or(std::string_view key, uint64_t def) const { return has(key) ? get_uint(key) : def; }
int64_t GgufFile::get_int_or(std::string_view key, int64_t def) const { return has(key) ? get_int(key) : def; }
double GgufFile::get_float_or(std::string_view key, double def) const { return has(key) ? get_float(key) : def; }
bool GgufFile::get_bool_or(std::string_view key, bool def) const { return has(key) ? get_bool(key) : def; }
std::string GgufFile::get_string_or(std::string_view key, std::string def) const {
  return has(key) ? get_string(key) : def;
}

// ---------------------------------------------------------------- tensors

const GgufTensorInfo* GgufFile::find_tensor(std::string_view tname) const {
  const auto it = tensor_index_.find(tname);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(std::string_view tname) const {
  const GgufTensorInfo* t = find_tensor(tname);
  TQ_CHECK(t != nullptr, "GGUF '{}': tensor '{}' is missing", name(), tname);
  return *t;
}

std::span<const uint8_t> GgufFile::tensor_bytes(const GgufTensorInfo& t) const {
  // offset/size were checked against the file size when parsing
  return {src_->data() + data_offset_ + t.offset, size_t(t.n_bytes)};
}

std::vector<float> GgufFile::dequantize(const GgufTensorInfo& t) const {
  ggml_check_dequantizable(t.type, fmt::format("GGUF tensor '{}'", t.name));
  std::vector<float> out(size_t(t.n_elements));  // [n_rows][n_cols]
  dequantize_row(t.type, tensor_bytes(t).data(), out.data(), out.size());
  return out;
}

void GgufFile::dequantize_rows(const GgufTensorInfo& t, uint64_t row0, uint64_t n_rows, float* out) const {
  ggml_check_dequantizable(t.type, fmt::format("GGUF tensor '{}'", t.name));
  TQ_CHECK(row0 <= t.n_rows() && n_rows <= t.n_rows() - row0, "GGUF tensor '{}': rows [{}, {}) out of range ({} rows)",
           t.name, row0, row0 + n_rows, t.n_rows());
  const size_t row_bytes = ggml_row_bytes(t.type, t.n_cols(), t.name);
  dequantize_row(t.type, tensor_bytes(t).data() + row0 * row_bytes, out, size_t(n_rows * t.n_cols()));
}

}  // namespace tq::model
