// ggml tensor types as stored in GGUF files: their block geometry, dequantization to float32, and a
// matrix-vector product on (possibly quantized) rows.
//
// Layouts follow ggml's ggml-common.h / ggml-quants.c (block_q8_0, block_q4_0, block_q4_1, block_q5_0,
// block_q4_K, block_q5_K, block_q6_K): all multi-byte fields little-endian, fp16 scales IEEE half.
// Every type is read byte by byte (no struct casts), so the source needs no particular alignment.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace tq::model {

// Values are ggml's `enum ggml_type` ids, as written in GGUF tensor infos. Only the types marked
// "dequantized" below can be turned into floats; the others are known so that a GGUF file using them
// can still be parsed (sizes are needed for bounds checks) and the error names the type.
enum class GgmlType : uint32_t {
  F32 = 0,   // dequantized
  F16 = 1,   // dequantized
  Q4_0 = 2,  // dequantized
  Q4_1 = 3,  // dequantized
  Q5_0 = 6,  // dequantized
  Q5_1 = 7,
  Q8_0 = 8,  // dequantized
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,  // dequantized
  Q5_K = 13,  // dequantized
  Q6_K = 14,  // dequantized
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,  // dequantized
  TQ1_0 = 34,
  TQ2_0 = 35,
};

inline constexpr size_t kQK = 32;    // elements per block of Q8_0 / Q4_0 / Q4_1
inline constexpr size_t kQK_K = 256;  // elements per super-block of the K-quants

struct GgmlTypeInfo {
  GgmlType type;
  const char* name;      // ggml's name: "f32", "q4_K", ...
  uint32_t block_elems;  // elements per block (1 for plain types)
  uint32_t block_bytes;  // bytes per block
  bool dequantizable;    // supported by dequantize_row / dot_rows
};

// The three scale unpackers below have internal linkage (static): the CPU backend's SIMD files,
// compiled with -mavx2 or the AVX-512 flags, call them, and an inline function with external
// linkage is one symbol that the linker may take from such a file for every caller (in a build
// that does not inline it, e.g. -O0: a weak symbol in qdot_avx2.cpp's object), which a CPU
// without those instructions could not run.

// q4_K / q5_K: the 12 `scales` bytes pack 8 six-bit scales and 8 six-bit mins, one per 32-element
// sub-block; sc and m of sub-block j (ggml's get_scale_min_k4; src/model/ggml_quants.cpp has the map).
static inline void ggml_scale_min_k4(size_t j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// q3_K: the 12 `scales` bytes pack sixteen 6-bit scales (biased by 32) of 16-element sub-blocks:
// scale i has its low 4 bits in byte i % 8 (low nibble for i < 8, high for i >= 8) and its high 2
// bits at bits 2 (i / 4) .. +1 of byte 8 + i % 4. Returns scale i less its bias.
static inline int ggml_q3k_scale(size_t i, const uint8_t* raw) {
  const int lo = i < 8 ? raw[i] & 0x0F : raw[i - 8] >> 4, hi = (raw[8 + i % 4] >> (2 * (i / 4))) & 3;
  return (lo | hi << 4) - 32;
}

// The 16 levels of iq4_nl and iq4_xs (ggml-common.h's kvalues_iq4nl): a non-uniform 4-bit grid.
inline constexpr int8_t kIq4Levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// iq4_xs: the 6-bit scale (biased by 32) of 32-element sub-block ib, from scales_h (a little-endian
// u16 at byte 2) and scales_l (bytes 4..7) of block b. Returns it less its bias.
static inline int ggml_iq4xs_scale(size_t ib, const uint8_t* b) {
  const unsigned sh = unsigned(b[2]) | unsigned(b[3]) << 8;
  return int(((b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F) | ((sh >> (2 * ib)) & 3) << 4) - 32;
}

// Byte offsets within a block of a dequantizable block type's fp16 scale fields: d first, then m or
// dmin where the type has one (q4_1, q5_1, q2_K, q4_K, q5_K). Empty for the plain types.
std::vector<size_t> ggml_scale_fields(GgmlType t);

// nullptr when `raw` is not a ggml type id (or a removed one, e.g. 4, 5, 31..33).
const GgmlTypeInfo* ggml_type_info(uint32_t raw);
const GgmlTypeInfo& ggml_type_info(GgmlType t);
const char* ggml_type_name(GgmlType t);
// Bytes of one row of n_cols elements. Throws tq::Error (naming `what`) when n_cols is not a
// multiple of the block size or the size overflows.
size_t ggml_row_bytes(GgmlType t, uint64_t n_cols, std::string_view what = "tensor");
// Throws tq::Error naming `what` and the type when it cannot be dequantized.
void ggml_check_dequantizable(GgmlType t, std::string_view what = "tensor");

// Index of the first of the n elements starting at `src` (a dequantizable type, n a multiple of
// the block size: checked) that is not finite (NaN, inf); n when all are. The block types are
// checked by their fp16 scales (their quants are small integers, so finite scales give finite
// values): the index is then the first element of the first block whose scale is not finite. Reads
// each value or scale once, without dequantizing: cheap enough for every weight at load.
size_t ggml_find_nonfinite(GgmlType t, const void* src, size_t n);

// dst[0..n) = values of the n elements starting at `src` (n a multiple of the block size: checked).
void dequantize_row(GgmlType t, const void* src, float* dst, size_t n);

// y = W x for W [n_rows][n_cols] row-major in type `t` (each row ggml_row_bytes(t, n_cols) bytes,
// rows contiguous), x [n_cols], y [n_rows]. Each row is dequantized a block at a time into a small
// stack buffer and accumulated in float. Single-threaded: a reference; the CPU backend's matmul
// (backend/cpu/matmul.h) is the fast, threaded product.
void dot_rows(GgmlType t, const void* rows, size_t n_rows, size_t n_cols, const float* x, float* y);

}  // namespace tq::model
