// GGUF reader: metadata of every type, tensor infos, alignment, data access, and rejected inputs.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <random>

#include "gguf_writer.h"
#include "quant_packers.h"
#include "test_data.h"
#include "tq/common.h"
#include "tq/model/gguf.h"

namespace tq::model {
namespace {

using testing::GgufWriter;

// Expects `fn` to throw tq::Error whose message contains `needle`.
using testing::expect_error;

GgufWriter all_types_writer(uint32_t version) {
  GgufWriter w(version);
  w.add_u8("t.u8", 200);
  w.add_i8("t.i8", -100);
  w.add_u16("t.u16", 60000);
  w.add_i16("t.i16", -30000);
  w.add_u32("t.u32", 4000000000u);
  w.add_i32("t.i32", -2000000000);
  w.add_u64("t.u64", 1ull << 40);
  w.add_i64("t.i64", -(1ll << 40));
  w.add_f32("t.f32", 0.5f);
  w.add_f64("t.f64", 0.25);
  w.add_bool("t.bool", true);
  w.add_string("t.str", "héllo");
  w.add_string_array("t.strs", {"a", "", "ccc"});
  w.add_f32_array("t.f32s", {1.5f, -2.0f});
  w.add_i32_array("t.i32s", {3, -4, 5});
  const uint8_t bools[3] = {1, 0, 1};
  w.add_raw_array("t.bools", GgufType::BOOL, 3, bools, 3);
  const uint64_t u64s[2] = {7, 1ull << 50};
  w.add_raw_array("t.u64s", GgufType::U64, 2, u64s, 16);
  return w;
}

class GgufVersion : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufVersion, MetadataOfEveryType) {
  const GgufFile f = GgufFile::from_bytes(all_types_writer(GetParam()).bytes());
  EXPECT_EQ(f.version(), GetParam());
  EXPECT_EQ(f.keys().size(), 17u);
  EXPECT_EQ(f.keys().front(), "t.u8");
  EXPECT_EQ(f.get_uint("t.u8"), 200u);
  EXPECT_EQ(f.get_int("t.i8"), -100);
  EXPECT_EQ(f.get_uint("t.u16"), 60000u);
  EXPECT_EQ(f.get_int("t.i16"), -30000);
  EXPECT_EQ(f.get_uint("t.u32"), 4000000000u);
  EXPECT_EQ(f.get_int("t.u32"), 4000000000);
  EXPECT_EQ(f.get_int("t.i32"), -2000000000);
  EXPECT_EQ(f.get_uint("t.u64"), 1ull << 40);
  EXPECT_EQ(f.get_int("t.i64"), -(1ll << 40));
  EXPECT_EQ(f.get_float("t.f32"), 0.5);
  EXPECT_EQ(f.get_float("t.f64"), 0.25);
  EXPECT_TRUE(f.get_bool("t.bool"));
  EXPECT_EQ(f.get_string("t.str"), "héllo");
  EXPECT_EQ(f.get_string_array("t.strs"), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(f.get_f32_array("t.f32s"), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(f.get_int_array("t.i32s"), (std::vector<int64_t>{3, -4, 5}));
  EXPECT_EQ(f.get("t.bools").arr_count, 3u);
  EXPECT_EQ(f.get("t.bools").arr_type, GgufType::BOOL);
  EXPECT_EQ(f.get_int_array("t.u64s"), (std::vector<int64_t>{7, 1ll << 50}));
  EXPECT_EQ(f.get_uint_or("absent", 42), 42u);
  EXPECT_EQ(f.get_string_or("absent", "x"), "x");
  EXPECT_EQ(f.get_float_or("t.f32", 9.0), 0.5);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_TRUE(f.tensors().empty());
}

INSTANTIATE_TEST_SUITE_P(V2V3, GgufVersion, ::testing::Values(2u, 3u));

TEST(Gguf, GettersRejectMissingAndMistypedKeys) {
  const GgufFile f = GgufFile::from_bytes(all_types_writer(3).bytes());
  expect_error([&] { f.get_uint("nope"); }, "'nope' is missing");
  expect_error([&] { f.get_uint("t.i8"); }, "'t.i8' is -100");
  expect_error([&] { f.get_uint("t.str"); }, "'t.str' has type string");
  expect_error([&] { f.get_string("t.u32"); }, "'t.u32' has type u32, expected string");
  expect_error([&] { f.get_float("t.i32"); }, "'t.i32' has type i32");
  expect_error([&] { f.get_bool("t.u8"); }, "'t.u8' has type u8, expected bool");
  expect_error([&] { f.get_string_array("t.f32s"); }, "'t.f32s' has type array of f32");
  expect_error([&] { f.get_f32_array("t.strs"); }, "array of string");
  expect_error([&] { f.get_int_array("t.f32s"); }, "array of f32");
  expect_error([&] { f.get_uint_or("t.str", 1); }, "'t.str' has type string");
  expect_error([&] { f.get_int("t.u64s"); }, "'t.u64s' has type array of u64");
}

TEST(Gguf, TensorsAlignmentAndData) {
  for (const uint32_t align : {32u, 64u, 8u}) {
    GgufWriter w;
    if (align != 32) w.set_alignment(align);
    w.add_string("general.name", "t");
    std::mt19937 rng(5);
    std::vector<float> q_values;
    std::vector<uint8_t> q_bytes;  // [3 rows][8 q8_0 blocks]
    for (int r = 0; r < 3; ++r) {
      const auto row = testing::random_row(GgmlType::Q8_0, 256, rng, q_values);
      q_bytes.insert(q_bytes.end(), row.begin(), row.end());
    }
    w.add_tensor_f32("vec", {5}, {1, 2, 3, 4, 5});
    w.add_tensor("mat", {256, 3}, GgmlType::Q8_0, q_bytes);
    w.add_tensor_f32("cube", {2, 3, 4}, std::vector<float>(24, 0.5f));
    const GgufFile f = GgufFile::from_bytes(w.bytes());
    EXPECT_EQ(f.alignment(), align);
    EXPECT_EQ(f.data_offset() % align, 0u);
    ASSERT_EQ(f.tensors().size(), 3u);
    const GgufTensorInfo& mat = f.tensor("mat");
    EXPECT_EQ(mat.type, GgmlType::Q8_0);
    EXPECT_EQ(mat.dims, (std::vector<uint64_t>{256, 3}));
    EXPECT_EQ(mat.n_cols(), 256u);
    EXPECT_EQ(mat.n_rows(), 3u);
    EXPECT_EQ(mat.n_bytes, 3u * 8u * 34u);
    EXPECT_EQ(mat.offset % align, 0u);
    const auto raw = f.tensor_bytes(mat);
    EXPECT_EQ(std::vector<uint8_t>(raw.begin(), raw.end()), q_bytes);
    EXPECT_EQ(f.dequantize(mat), q_values);
    std::vector<float> row1(256);
    f.dequantize_rows(mat, 1, 1, row1.data());
    EXPECT_EQ(row1, std::vector<float>(q_values.begin() + 256, q_values.begin() + 512));
    expect_error([&] { f.dequantize_rows(mat, 2, 2, row1.data()); }, "rows [2, 4) out of range");
    EXPECT_EQ(f.dequantize(f.tensor("vec")), (std::vector<float>{1, 2, 3, 4, 5}));
    EXPECT_EQ(f.tensor("cube").n_rows(), 12u);
    EXPECT_EQ(f.find_tensor("none"), nullptr);
    expect_error([&] { f.tensor("none"); }, "tensor 'none' is missing");
  }
}

TEST(Gguf, OpensFilesByMmap) {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_tensor_f32("x", {4}, {1, 2, 3, 4});
  const std::string path = testing::temp_path("open.gguf");
  w.write(path);
  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.dequantize(f.tensor("x")), (std::vector<float>{1, 2, 3, 4}));
  std::remove(path.c_str());
  expect_error([] { GgufFile::open("/nonexistent/dir/m.gguf"); }, "/nonexistent/dir/m.gguf");
}

TEST(Gguf, UnsupportedTypeIsNamedOnDequantize) {
  GgufWriter w;
  w.add_tensor("blk.0.attn_q.weight", {256, 1}, GgmlType::IQ3_S, std::vector<uint8_t>(110, 0));
  const GgufFile f = GgufFile::from_bytes(w.bytes());  // parses: the size of iq3_s is known
  expect_error([&] { f.dequantize(f.tensor("blk.0.attn_q.weight")); }, "GGUF tensor 'blk.0.attn_q.weight'");
  expect_error([&] { f.dequantize(f.tensor("blk.0.attn_q.weight")); }, "iq3_s");
}

// ---- malformed files: each names what is wrong ----
std::vector<uint8_t> one_tensor_file() {
  GgufWriter w;
  w.add_u32("k", 1);
  w.add_tensor_f32("blk.0.attn_q.weight", {4}, {1, 2, 3, 4});
  return w.bytes();
}
// Byte offset of the tensor info fields in one_tensor_file():
// header 24 | kv: 8 + 1 ("k") + 4 + 4 = 17 | name 8 + 19 | n_dims 4 | dim 8 | type 4 | offset 8
constexpr size_t kKvEnd = 24 + 17;
constexpr size_t kNDims = kKvEnd + 8 + 19;
constexpr size_t kType = kNDims + 4 + 8;
constexpr size_t kOffset = kType + 4;

template <typename T>
void poke(std::vector<uint8_t>& b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof v);
}

TEST(GgufMalformed, HeaderErrors) {
  auto b = one_tensor_file();
  ASSERT_NO_THROW(GgufFile::from_bytes(b));
  auto bad = b;
  bad[0] = 'X';
  expect_error([&] { GgufFile::from_bytes(bad); }, "not a GGUF file");
  bad = b;
  poke<uint32_t>(bad, 4, 1);
  expect_error([&] { GgufFile::from_bytes(bad); }, "version 1 is not supported");
  poke<uint32_t>(bad, 4, 0x03000000);
  expect_error([&] { GgufFile::from_bytes(bad); }, "big-endian");
  poke<uint32_t>(bad, 4, 0);  // zero is no version, not a byte-swapped one
  expect_error([&] { GgufFile::from_bytes(bad); }, "version 0 is not supported (only 2 and 3)");
  poke<uint32_t>(bad, 4, 0x00050000);
  expect_error([&] { GgufFile::from_bytes(bad); }, "unsupported version 327680");
  poke<uint32_t>(bad, 4, 7);
  expect_error([&] { GgufFile::from_bytes(bad); }, "unsupported version 7");
  bad = b;
  poke<uint64_t>(bad, 16, 1ull << 60);  // n_kv
  expect_error([&] { GgufFile::from_bytes(bad); }, "metadata count 1152921504606846976 cannot fit");
  bad = b;
  poke<uint64_t>(bad, 8, 1ull << 62);  // n_tensors
  expect_error([&] { GgufFile::from_bytes(bad); }, "tensor count 4611686018427387904 cannot fit");
  bad = b;
  poke<uint64_t>(bad, 24, ~0ull);  // key length
  expect_error([&] { GgufFile::from_bytes(bad); }, "has length 18446744073709551615");
  expect_error([] { GgufFile::from_bytes({'G', 'G', 'U'}); }, "truncated");
  expect_error([] { GgufFile::from_bytes({}); }, "truncated");
}

TEST(GgufMalformed, TensorInfoErrors) {
  const auto b = one_tensor_file();
  auto bad = b;
  poke<uint32_t>(bad, kType, 99);
  expect_error([&] { GgufFile::from_bytes(bad); }, "GGUF tensor 'blk.0.attn_q.weight': unknown ggml type 99");
  bad = b;
  poke<uint32_t>(bad, kType, uint32_t(GgmlType::Q8_0));
  expect_error([&] { GgufFile::from_bytes(bad); }, "row length 4 is not a multiple of the q8_0 block size 32");
  bad = b;
  poke<uint32_t>(bad, kNDims, 5);
  expect_error([&] { GgufFile::from_bytes(bad); }, "5 dimensions");
  bad = b;
  poke<uint64_t>(bad, kNDims + 4, 0);
  expect_error([&] { GgufFile::from_bytes(bad); }, "dimension 0 has invalid size 0");
  bad = b;
  poke<uint64_t>(bad, kNDims + 4, 1ull << 63);
  expect_error([&] { GgufFile::from_bytes(bad); }, "dimension 0 has invalid size");
  bad = b;
  poke<uint64_t>(bad, kNDims + 4, 1ull << 62);  // 2^62 f32 elements: 2^64 bytes, once wrapped to 0
  expect_error([&] { GgufFile::from_bytes(bad); }, "4611686018427387904 elements of f32 are more bytes than a 64-bit size holds");
  bad = b;
  poke<uint64_t>(bad, kOffset, 8);
  expect_error([&] { GgufFile::from_bytes(bad); }, "offset 8 is not a multiple of the alignment 32");
  bad = b;
  poke<uint64_t>(bad, kOffset, 1ull << 40);
  expect_error([&] { GgufFile::from_bytes(bad); }, "lies outside the data section");
  bad = b;
  poke<uint64_t>(bad, kNDims + 4, 1000);  // 4000 bytes of f32 in a file that has 16
  expect_error([&] { GgufFile::from_bytes(bad); }, "blk.0.attn_q.weight': data at offset 0 of size 4000");
  bad = b;
  bad.resize(bad.size() - 1);
  expect_error([&] { GgufFile::from_bytes(bad); }, "lies outside");
}

TEST(GgufMalformed, MetadataErrors) {
  {
    GgufWriter w;
    w.add_u32("dup", 1);
    w.add_u32("dup", 2);
    expect_error([&] { GgufFile::from_bytes(w.bytes()); }, "duplicate metadata key 'dup'");
  }
  {
    GgufWriter w;
    w.add_tensor_f32("t", {1}, {1});
    w.add_tensor_f32("t", {1}, {1});
    expect_error([&] { GgufFile::from_bytes(w.bytes()); }, "duplicate tensor name 't'");
  }
  {
    GgufWriter w;
    w.add_raw_array("nested", GgufType::ARRAY, 0, nullptr, 0);
    expect_error([&] { GgufFile::from_bytes(w.bytes()); }, "GGUF key 'nested': nested arrays");
  }
  {
    GgufWriter w;
    w.add_raw_array("huge", GgufType::U32, 1ull << 61, nullptr, 0);
    expect_error([&] { GgufFile::from_bytes(w.bytes()); }, "'huge': u32 array length 2305843009213693952 cannot fit");
  }
  {
    GgufWriter w;
    w.add_raw_array("strs", GgufType::STRING, 1ull << 40, nullptr, 0);
    expect_error([&] { GgufFile::from_bytes(w.bytes()); }, "'strs': string array length 1099511627776 cannot fit");
  }
  {  // a count that fits in the file but would take 4x its bytes as strings
    GgufWriter w;
    const std::vector<uint8_t> empty_strings(((1u << 24) + 1) * 8, 0);  // 2^24 + 1 empty strings
    w.add_raw_array("tokenizer.ggml.tokens", GgufType::STRING, (1u << 24) + 1, empty_strings.data(), empty_strings.size());
    expect_error([&] { GgufFile::from_bytes(w.bytes()); }, "'tokenizer.ggml.tokens': string array length 16777217 is over the 16777216");
  }
  {
    GgufWriter w;
    w.add_u8("flag", 0);
    auto b = w.bytes();
    b[24 + 8 + 4] = uint8_t(GgufType::BOOL);  // retype as bool, value 2
    b[24 + 8 + 4 + 4] = 2;
    expect_error([&] { GgufFile::from_bytes(b); }, "'flag': bool value 2");
    b[24 + 8 + 4] = 13;
    expect_error([&] { GgufFile::from_bytes(b); }, "GGUF key 'flag': unknown value type 13");
  }
  for (const uint32_t al : {0u, 48u}) {
    GgufWriter w;
    w.add_u32("general.alignment", al);
    expect_error([&] { GgufFile::from_bytes(w.bytes()); }, "general.alignment " + std::to_string(al) + " is not a power");
  }
  {
    GgufWriter w;
    w.add_string("general.alignment", "32");
    expect_error([&] { GgufFile::from_bytes(w.bytes()); }, "general.alignment has type string");
  }
}

}  // namespace
}  // namespace tq::model
