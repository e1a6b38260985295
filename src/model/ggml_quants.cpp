// Dequantization of the ggml block formats, written from the layouts in ggml-common.h and the
// reference loops in ggml-quants.c (dequantize_row_*), reading bytes explicitly.
#include "tq/model/ggml_quants.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <vector>

#include <fmt/format.h>

#include "tq/check.h"
#include "tq/numeric.h"

namespace tq::model {
namespace {

// F32 rows are copied as they are and the fp16 fields are assembled from bytes: a big-endian host
// would need byte swaps for the former.
static_assert(std::endian::native == std::endian::little, "GGUF data is little-endian");

constexpr GgmlTypeInfo kTypes[] = {
    {GgmlType::F32, "f32", 1, 4, true},
    {GgmlType::F16, "f16", 1, 2, true},
    {GgmlType::Q4_0, "q4_0", 32, 18, true},
    {GgmlType::Q4_1, "q4_1", 32, 20, true},
    {GgmlType::Q5_0, "q5_0", 32, 22, true},
    {GgmlType::Q5_1, "q5_1", 32, 24, true},
    {GgmlType::Q8_0, "q8_0", 32, 34, true},
    {GgmlType::Q8_1, "q8_1", 32, 36, false},
    {GgmlType::Q2_K, "q2_K", 256, 84, true},
    {GgmlType::Q3_K, "q3_K", 256, 110, true},
    {GgmlType::Q4_K, "q4_K", 256, 144, true},
    {GgmlType::Q5_K, "q5_K", 256, 176, true},
    {GgmlType::Q6_K, "q6_K", 256, 210, true},
    {GgmlType::Q8_K, "q8_K", 256, 292, false},
    {GgmlType::IQ2_XXS, "iq2_xxs", 256, 66, false},
    {GgmlType::IQ2_XS, "iq2_xs", 256, 74, false},
    {GgmlType::IQ3_XXS, "iq3_xxs", 256, 98, false},
    {GgmlType::IQ1_S, "iq1_s", 256, 50, false},
    {GgmlType::IQ4_NL, "iq4_nl", 32, 18, true},
    {GgmlType::IQ3_S, "iq3_s", 256, 110, false},
    {GgmlType::IQ2_S, "iq2_s", 256, 82, false},
    {GgmlType::IQ4_XS, "iq4_xs", 256, 136, true},
    {GgmlType::I8, "i8", 1, 1, false},
    {GgmlType::I16, "i16", 1, 2, false},
    {GgmlType::I32, "i32", 1, 4, false},
    {GgmlType::I64, "i64", 1, 8, false},
    {GgmlType::F64, "f64", 1, 8, false},
    {GgmlType::IQ1_M, "iq1_m", 256, 56, false},
    {GgmlType::BF16, "bf16", 1, 2, true},
    {GgmlType::TQ1_0, "tq1_0", 256, 54, false},
    {GgmlType::TQ2_0, "tq2_0", 256, 66, false},
};

inline uint16_t rd_u16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
inline float rd_f16(const uint8_t* p) { return f16_to_f32(rd_u16(p)); }
inline uint32_t rd_u32(const uint8_t* p) { return uint32_t(rd_u16(p)) | uint32_t(rd_u16(p + 2)) << 16; }

// ---- plain types: `n` elements ----
void deq_f32(const uint8_t* s, float* y, size_t n) { std::memcpy(y, s, n * 4); }  // host is little-endian
void deq_f16(const uint8_t* s, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = f16_to_f32(rd_u16(s + 2 * i));
}
void deq_bf16(const uint8_t* s, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = bf16_to_f32(rd_u16(s + 2 * i));
}

// ---- 32-element blocks ----
// block_q8_0 (34 B): d fp16 | qs int8[32]; x = d * q.
void deq_q8_0(const uint8_t* b, float* y) {
  const float d = rd_f16(b);
  for (size_t j = 0; j < 32; ++j) y[j] = float(int8_t(b[2 + j])) * d;
}
// block_q4_0 (18 B): d fp16 | qs[16] nibbles; byte j holds element j (low nibble) and j+16 (high);
// x = d * (q - 8).
void deq_q4_0(const uint8_t* b, float* y) {
  const float d = rd_f16(b);
  const uint8_t* qs = b + 2;
  for (size_t j = 0; j < 16; ++j) {
    y[j] = float(int(qs[j] & 0x0F) - 8) * d;
    y[j + 16] = float(int(qs[j] >> 4) - 8) * d;
  }
}
// block_q4_1 (20 B): d fp16 | m fp16 | qs[16] nibbles (same order as q4_0); x = d * q + m.
void deq_q4_1(const uint8_t* b, float* y) {
  const float d = rd_f16(b), m = rd_f16(b + 2);
  const uint8_t* qs = b + 4;
  for (size_t j = 0; j < 16; ++j) {
    y[j] = float(qs[j] & 0x0F) * d + m;
    y[j + 16] = float(qs[j] >> 4) * d + m;
  }
}

// block_q5_0 (22 B): d fp16 | qh[4] (a little-endian uint32: bit j is the 5th bit of element j) |
// qs[16] nibbles (same order as q4_0); x = d * (q - 16), q in 0..31.
void deq_q5_0(const uint8_t* b, float* y) {
  const float d = rd_f16(b);
  const uint32_t qh = rd_u32(b + 2);
  const uint8_t* qs = b + 6;
  for (size_t j = 0; j < 16; ++j) {
    y[j] = float(int((qs[j] & 0x0F) | ((qh >> j) & 1) << 4) - 16) * d;
    y[j + 16] = float(int((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4) - 16) * d;
  }
}

// block_q5_1 (24 B): d fp16 | m fp16 | qh[4] (as q5_0's) | qs[16] nibbles; x = d * q + m, q in 0..31.
void deq_q5_1(const uint8_t* b, float* y) {
  const float d = rd_f16(b), m = rd_f16(b + 2);
  const uint32_t qh = rd_u32(b + 4);
  const uint8_t* qs = b + 8;
  for (size_t j = 0; j < 16; ++j) {
    y[j] = float((qs[j] & 0x0F) | ((qh >> j) & 1) << 4) * d + m;
    y[j + 16] = float((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4) * d + m;
  }
}

// 32 values of an iq4 sub-block from its 16 bytes (element j low nibble, j+16 high): x = dl * level.
inline void iq4_values(const uint8_t* qs, float dl, float* y) {
  for (size_t j = 0; j < 16; ++j) {
    y[j] = dl * float(kIq4Levels[qs[j] & 0x0F]);
    y[j + 16] = dl * float(kIq4Levels[qs[j] >> 4]);
  }
}
// block_iq4_nl (18 B): d fp16 | qs[16] nibbles (as q4_0's), indices into kIq4Levels; x = d * level.
void deq_iq4_nl(const uint8_t* b, float* y) { iq4_values(b + 2, rd_f16(b), y); }

// ---- 256-element super-blocks ----
// The 12 `scales` bytes of q4_K / q5_K pack 8 six-bit scales and 8 six-bit mins (one per 32-element
// sub-block): sub-blocks 0..3 use the low 6 bits of bytes 0..3 (scale) and 4..7 (min); sub-blocks
// 4..7 take their low 4 bits from bytes 8..11 (low nibble: scale, high nibble: min) and their high 2
// bits from the top bits of bytes 0..3 (scale) and 4..7 (min): ggml_scale_min_k4 (ggml_quants.h).
// block_q4_K (144 B): d fp16 | dmin fp16 | scales[12] | qs[128].
// Elements come in 4 groups of 64; group g uses qs[32g .. 32g+32): the low nibbles are sub-block 2g,
// the high nibbles sub-block 2g+1. x = (d*sc) * q - (dmin*m).
void deq_q4_K(const uint8_t* b, float* y) {
  const float d = rd_f16(b), dmin = rd_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (size_t g = 0; g < 4; ++g, qs += 32, y += 64) {
    int sc, m;
    ggml_scale_min_k4(2 * g, scales, sc, m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    ggml_scale_min_k4(2 * g + 1, scales, sc, m);
    const float d2 = d * float(sc), m2 = dmin * float(m);
    for (size_t l = 0; l < 32; ++l) y[l] = d1 * float(qs[l] & 0x0F) - m1;
    for (size_t l = 0; l < 32; ++l) y[32 + l] = d2 * float(qs[l] >> 4) - m2;
  }
}
// block_q5_K (176 B): d fp16 | dmin fp16 | scales[12] | qh[32] | qs[128].
// As q4_K, plus a 5th bit: for element l of group g, bit 2g of qh[l] (low-nibble half) or bit 2g+1
// (high-nibble half) adds 16. x = (d*sc) * q - (dmin*m), q in 0..31.
void deq_q5_K(const uint8_t* b, float* y) {
  const float d = rd_f16(b), dmin = rd_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (size_t g = 0; g < 4; ++g, qs += 32, y += 64) {
    int sc, m;
    ggml_scale_min_k4(2 * g, scales, sc, m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    ggml_scale_min_k4(2 * g + 1, scales, sc, m);
    const float d2 = d * float(sc), m2 = dmin * float(m);
    const uint8_t u1 = uint8_t(1u << (2 * g)), u2 = uint8_t(2u << (2 * g));
    for (size_t l = 0; l < 32; ++l) y[l] = d1 * float((qs[l] & 0x0F) + ((qh[l] & u1) ? 16 : 0)) - m1;
    for (size_t l = 0; l < 32; ++l) y[32 + l] = d2 * float((qs[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
  }
}
// block_q6_K (210 B): ql[128] low 4 bits | qh[64] high 2 bits | scales int8[16] | d fp16.
// Two halves of 128 elements; half h uses ql[64h..), qh[32h..), scales[8h..). Within a half, for
// l in 0..31: element l      = ql[l] low nibble    | qh[l] bits 0-1, scale sc[l/16]
//             element l + 32 = ql[l+32] low nibble | qh[l] bits 2-3, scale sc[l/16 + 2]
//             element l + 64 = ql[l] high nibble   | qh[l] bits 4-5, scale sc[l/16 + 4]
//             element l + 96 = ql[l+32] high nibble| qh[l] bits 6-7, scale sc[l/16 + 6]
// x = d * sc * (q - 32), q in 0..63.
void deq_q6_K(const uint8_t* b, float* y) {
  const float d = rd_f16(b + 208);
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  for (size_t h = 0; h < 2; ++h, ql += 64, qh += 32, sc += 8, y += 128) {
    for (size_t l = 0; l < 32; ++l) {
      const size_t is = l / 16;
      const int q1 = int((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = int((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * float(sc[is + 0]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
  }
}

// block_q2_K (84 B): scales[16] (low nibble: scale, high nibble: min, of a 16-element sub-block) |
// qs[64] two-bit fields | d fp16 | dmin fp16. Two halves of 128 elements; half h reads qs[32h..):
// its element 32j + l (j 0..3, l 0..31) is bits 2j..2j+1 of qs[32h + l], in sub-block 8h + 2j + l/16.
// x = (d*sc) * q - (dmin*m).
void deq_q2_K(const uint8_t* b, float* y) {
  const float d = rd_f16(b + 80), dmin = rd_f16(b + 82);
  const uint8_t* sc = b;
  const uint8_t* qs = b + 16;
  for (size_t h = 0; h < 2; ++h, qs += 32)
    for (unsigned j = 0; j < 4; ++j)
      for (size_t half = 0; half < 2; ++half, ++sc, y += 16) {
        const float dl = d * float(*sc & 0x0F), ml = dmin * float(*sc >> 4);
        for (size_t l = 0; l < 16; ++l) y[l] = dl * float((qs[16 * half + l] >> (2 * j)) & 3) - ml;
      }
}
// block_q3_K (110 B): hmask[32] | qs[64] two-bit fields | scales[12] | d fp16. Sixteen 6-bit
// scales of 16-element sub-blocks (ggml_q3k_scale, ggml_quants.h). The low two bits of element 32j + l of half h are laid out as q2_K's; its third bit is bit 4h + j
// of hmask[l], and a clear bit subtracts 4: x = d * (sc - 32) * (q - (bit ? 0 : 4)).
void deq_q3_K(const uint8_t* b, float* y) {
  const float d = rd_f16(b + 108);
  const uint8_t* hm = b;
  const uint8_t* qs = b + 32;
  int sc[16];
  for (size_t i = 0; i < 16; ++i) sc[i] = ggml_q3k_scale(i, b + 96);
  size_t is = 0;
  for (unsigned h = 0; h < 2; ++h, qs += 32)
    for (unsigned j = 0; j < 4; ++j) {
      const uint8_t bit = uint8_t(1u << (4 * h + j));
      for (size_t half = 0; half < 2; ++half, y += 16) {
        const float dl = d * float(sc[is++]);
        for (size_t l = 0; l < 16; ++l) {
          const size_t e = 16 * half + l;
          y[l] = dl * float(int((qs[e] >> (2 * j)) & 3) - ((hm[e] & bit) ? 0 : 4));
        }
      }
    }
}
// block_iq4_xs (136 B): d fp16 | scales_h u16 | scales_l[4] | qs[128]. Eight 32-element sub-blocks,
// each with a 6-bit scale (ggml_iq4xs_scale, ggml_quants.h) and 16 bytes of iq4_nl's nibbles:
// x = d * scale * level.
void deq_iq4_xs(const uint8_t* b, float* y) {
  const float d = rd_f16(b);
  const uint8_t* qs = b + 8;
  for (unsigned ib = 0; ib < 8; ++ib, qs += 16, y += 32) iq4_values(qs, d * float(ggml_iq4xs_scale(ib, b)), y);
}

using BlockFn = void (*)(const uint8_t*, float*);
BlockFn block_fn(GgmlType t) {
  switch (t) {
    case GgmlType::Q8_0: return deq_q8_0;
    case GgmlType::Q4_0: return deq_q4_0;
    case GgmlType::Q4_1: return deq_q4_1;
    case GgmlType::Q5_0: return deq_q5_0;
    case GgmlType::Q5_1: return deq_q5_1;
    case GgmlType::IQ4_NL: return deq_iq4_nl;
    case GgmlType::Q2_K: return deq_q2_K;
    case GgmlType::Q3_K: return deq_q3_K;
    case GgmlType::IQ4_XS: return deq_iq4_xs;
    case GgmlType::Q4_K: return deq_q4_K;
    case GgmlType::Q5_K: return deq_q5_K;
    case GgmlType::Q6_K: return deq_q6_K;
    default: return nullptr;
  }
}

// Dequantizes n elements (n a multiple of the block size, validated by the callers).
void dequantize_unchecked(GgmlType t, const uint8_t* s, float* y, size_t n) {
  switch (t) {
    case GgmlType::F32: deq_f32(s, y, n); return;
    case GgmlType::F16: deq_f16(s, y, n); return;
    case GgmlType::BF16: deq_bf16(s, y, n); return;
    default: break;
  }
  const GgmlTypeInfo& ti = ggml_type_info(t);
  const BlockFn fn = block_fn(t);
  for (size_t i = 0; i < n / ti.block_elems; ++i) fn(s + i * ti.block_bytes, y + i * ti.block_elems);
}

// Rows [r0, r1) of y = W x. The chunk is one block for the block types and 256 elements for the
// plain ones, so the scratch buffer stays on the stack.
void dot_range(GgmlType t, const uint8_t* rows, size_t row_bytes, size_t n_cols, const float* x,
               float* y, size_t r0, size_t r1) {
  const GgmlTypeInfo& ti = ggml_type_info(t);
  const size_t chunk = ti.block_elems == 1 ? kQK_K : ti.block_elems;
  std::array<float, kQK_K> buf;  // [chunk] dequantized weights
  for (size_t r = r0; r < r1; ++r) {
    const uint8_t* row = rows + r * row_bytes;
    float acc = 0.0f;
    for (size_t c0 = 0; c0 < n_cols; c0 += chunk) {
      const size_t n = std::min(chunk, n_cols - c0);
      dequantize_unchecked(t, row + c0 / ti.block_elems * ti.block_bytes, buf.data(), n);
      float part = 0.0f;
      for (size_t j = 0; j < n; ++j) part += buf[j] * x[c0 + j];
      acc += part;
    }
    y[r] = acc;
  }
}

}  // namespace

const GgmlTypeInfo* ggml_type_info(uint32_t raw) {
  for (const auto& ti : kTypes)
    if (uint32_t(ti.type) == raw) return &ti;
  return nullptr;
}

const GgmlTypeInfo& ggml_type_info(GgmlType t) {
  const GgmlTypeInfo* ti = ggml_type_info(uint32_t(t));
  TQ_CHECK(ti != nullptr, "unknown ggml type {}", uint32_t(t));
  return *ti;
}

const char* ggml_type_name(GgmlType t) {
  const GgmlTypeInfo* ti = ggml_type_info(uint32_t(t));
  return ti ? ti->name : "unknown";
}

size_t ggml_row_bytes(GgmlType t, uint64_t n_cols, std::string_view what) {
  const GgmlTypeInfo& ti = ggml_type_info(t);
  TQ_CHECK(n_cols % ti.block_elems == 0, "{}: row length {} is not a multiple of the {} block size {}",
           what, n_cols, ti.name, ti.block_elems);
  const uint64_t blocks = n_cols / ti.block_elems;
  TQ_CHECK(blocks <= std::numeric_limits<uint64_t>::max() / ti.block_bytes, "{}: row of {} {} elements overflows",
           what, n_cols, ti.name);
  return size_t(blocks * ti.block_bytes);
}

void ggml_check_dequantizable(GgmlType t, std::string_view what) {
  const GgmlTypeInfo* ti = ggml_type_info(uint32_t(t));
  TQ_CHECK(ti != nullptr, "{}: unknown ggml type {}", what, uint32_t(t));
  TQ_CHECK(ti->dequantizable,
           "{}: ggml type {} ({}) is not supported (supported: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K, "
           "iq4_nl, iq4_xs)",
           what, ti->name, uint32_t(t));
}

std::vector<size_t> ggml_scale_fields(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16: return {};
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: return {0, 2};
    case GgmlType::Q2_K: return {80, 82};
    case GgmlType::Q3_K: return {108};
    case GgmlType::Q6_K: return {208};
    default: return {0};  // Q8_0, Q4_0, Q5_0, IQ4_NL, IQ4_XS: d only, at 0
  }
}

size_t ggml_find_nonfinite(GgmlType t, const void* src, size_t n) {
  ggml_check_dequantizable(t, "ggml_find_nonfinite");
  ggml_row_bytes(t, n, "ggml_find_nonfinite");  // validates n against the block size
  const uint8_t* s = static_cast<const uint8_t*>(src);
  // inf and NaN are the values whose exponent bits are all ones.
  const auto bad16 = [](const uint8_t* p) { return (rd_u16(p) & 0x7c00u) == 0x7c00u; };
  switch (t) {
    case GgmlType::F32:
      for (size_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, s + 4 * i, 4);
        if ((u & 0x7f800000u) == 0x7f800000u) return i;
      }
      return n;
    case GgmlType::F16:
      for (size_t i = 0; i < n; ++i)
        if (bad16(s + 2 * i)) return i;
      return n;
    case GgmlType::BF16:
      for (size_t i = 0; i < n; ++i)
        if ((rd_u16(s + 2 * i) & 0x7f80u) == 0x7f80u) return i;
      return n;
    default: break;
  }
  const std::vector<size_t> fields = ggml_scale_fields(t);
  const GgmlTypeInfo& ti = ggml_type_info(t);
  for (size_t b = 0; b < n / ti.block_elems; ++b)
    for (const size_t at : fields)
      if (bad16(s + b * ti.block_bytes + at)) return b * ti.block_elems;
  return n;
}

void dequantize_row(GgmlType t, const void* src, float* dst, size_t n) {
  ggml_check_dequantizable(t, "dequantize_row");
  ggml_row_bytes(t, n, "dequantize_row");  // validates n against the block size
  dequantize_unchecked(t, static_cast<const uint8_t*>(src), dst, n);
}

void dot_rows(GgmlType t, const void* rows, size_t n_rows, size_t n_cols, const float* x, float* y) {
  ggml_check_dequantizable(t, "dot_rows");
  const size_t row_bytes = ggml_row_bytes(t, n_cols, "dot_rows");
  dot_range(t, static_cast<const uint8_t*>(rows), row_bytes, n_cols, x, y, 0, n_rows);
}

}  // namespace tq::model
