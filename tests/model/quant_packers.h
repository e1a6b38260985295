// Test-only encoders for the ggml block formats, written element by element from the format
// definitions (ggml-common.h), independently of the loop structure of the dequantizers:
//   q8_0: x = d * q                 q int8,   d fp16,                         32 per block
//   q4_0: x = d * (q - 8)           q 0..15,  byte j = q[j] | q[j+16] << 4    32 per block
//   q4_1: x = d * q + m             q 0..15,  same nibble order               32 per block
//   q5_0: x = d * (q - 16)          q 0..31,  nibbles as q4_0, bit 4 of q[j] = bit j of qh (uint32 LE)
//   q4_K: x = d*sc[s] * q - dmin*mn[s], s = i/32, q 0..15, sc/mn 6-bit        256 per block
//   q5_K: as q4_K with q 0..31 (5th bit in qh)                                256 per block
//   q6_K: x = d * sc[i/16] * (q - 32), q 0..63, sc int8                       256 per block
// Scales are powers of two and codes small integers, so every expected value is exact in float.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "tq/model/ggml_quants.h"
#include "tq/numeric.h"

namespace tq::model::testing {

inline void put_f16(std::vector<uint8_t>& b, size_t at, float v) {
  const uint16_t h = f32_to_f16(v);
  b[at] = uint8_t(h & 0xff);
  b[at + 1] = uint8_t(h >> 8);
}

// q4_K / q5_K 12-byte scale packing: the inverse of ggml's get_scale_min_k4.
inline void pack_scales_k4(const int sc[8], const int mn[8], uint8_t* s) {
  for (int j = 0; j < 4; ++j) {
    s[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    s[j + 4] = uint8_t((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
    s[j + 8] = uint8_t((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
}

// Appends one random block of type t to `bytes` and its exact values to `values`.
inline void random_block(GgmlType t, std::mt19937& rng, std::vector<uint8_t>& bytes, std::vector<float>& values) {
  const auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const auto pow2 = [&](int lo, int hi) { return std::ldexp(1.0f, uni(lo, hi)); };
  const size_t at = bytes.size();
  const GgmlTypeInfo& ti = ggml_type_info(t);
  bytes.resize(at + ti.block_bytes, 0);
  uint8_t* b = bytes.data() + at;
  switch (t) {
    case GgmlType::F32: {
      const float v = float(uni(-1000, 1000)) / 64.0f;
      std::memcpy(b, &v, 4);
      values.push_back(v);
      break;
    }
    case GgmlType::F16: {
      const float v = float(uni(-1000, 1000)) / 64.0f;  // exact in fp16
      put_f16(bytes, at, v);
      values.push_back(v);
      break;
    }
    case GgmlType::BF16: {
      const float v = float(uni(-127, 127)) / 8.0f;  // 8 significant bits: exact in bf16
      const uint16_t h = f32_to_bf16(v);
      b[0] = uint8_t(h & 0xff);
      b[1] = uint8_t(h >> 8);
      values.push_back(v);
      break;
    }
    case GgmlType::Q8_0: {
      const float d = pow2(-8, 2);
      put_f16(bytes, at, d);
      for (int i = 0; i < 32; ++i) {
        const int q = uni(-128, 127);
        b[2 + i] = uint8_t(int8_t(q));
        values.push_back(d * float(q));
      }
      break;
    }
    case GgmlType::Q4_0:
    case GgmlType::Q4_1: {
      const bool q41 = t == GgmlType::Q4_1;
      const float d = pow2(-6, 2), m = q41 ? float(uni(-16, 16)) / 4.0f : 0.0f;
      put_f16(bytes, at, d);
      if (q41) put_f16(bytes, at + 2, m);
      uint8_t* qs = b + (q41 ? 4 : 2);
      int q[32];
      for (int i = 0; i < 32; ++i) q[i] = uni(0, 15);
      for (int j = 0; j < 16; ++j) qs[j] = uint8_t(q[j] | (q[j + 16] << 4));
      for (int i = 0; i < 32; ++i) values.push_back(q41 ? d * float(q[i]) + m : d * float(q[i] - 8));
      break;
    }
    case GgmlType::Q5_0: {
      const float d = pow2(-6, 2);
      put_f16(bytes, at, d);
      uint32_t qh = 0;
      int q[32];
      for (int i = 0; i < 32; ++i) {
        q[i] = uni(0, 31);
        qh |= uint32_t(q[i] >> 4) << i;
      }
      for (int i = 0; i < 4; ++i) b[2 + i] = uint8_t(qh >> (8 * i));
      for (int j = 0; j < 16; ++j) b[6 + j] = uint8_t((q[j] & 15) | ((q[j + 16] & 15) << 4));
      for (int i = 0; i < 32; ++i) values.push_back(d * float(q[i] - 16));
      break;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool q5 = t == GgmlType::Q5_K;
      const float d = pow2(-8, -2), dmin = pow2(-8, -2);
      put_f16(bytes, at, d);
      put_f16(bytes, at + 2, dmin);
      int sc[8], mn[8];
      for (int s = 0; s < 8; ++s) {
        sc[s] = uni(0, 63);
        mn[s] = uni(0, 63);
      }
      pack_scales_k4(sc, mn, b + 4);
      uint8_t* qh = b + 16;              // q5_K only: [32]
      uint8_t* qs = b + (q5 ? 48 : 16);  // [128]
      for (int i = 0; i < 256; ++i) {
        const int q = uni(0, q5 ? 31 : 15);
        const int g = i / 64, l = i % 32, hi = (i % 64) >= 32;
        qs[32 * g + l] |= uint8_t((q & 15) << (hi ? 4 : 0));
        if (q5 && (q & 16)) qh[l] |= uint8_t(1 << (2 * g + hi));
        values.push_back(d * float(sc[i / 32]) * float(q) - dmin * float(mn[i / 32]));
      }
      break;
    }
    case GgmlType::Q6_K: {
      const float d = pow2(-8, -2);
      put_f16(bytes, at + 208, d);
      int sc[16];
      for (int s = 0; s < 16; ++s) {
        sc[s] = uni(-128, 127);
        b[192 + s] = uint8_t(int8_t(sc[s]));
      }
      uint8_t* ql = b;        // [128]
      uint8_t* qh = b + 128;  // [64]
      for (int i = 0; i < 256; ++i) {
        const int q = uni(0, 63);
        const int h = i / 128, quarter = (i % 128) / 32, l = i % 32;
        const int li = 64 * h + l + ((quarter & 1) ? 32 : 0);
        ql[li] |= uint8_t((q & 15) << ((quarter & 2) ? 4 : 0));
        qh[32 * h + l] |= uint8_t((q >> 4) << (2 * quarter));
        values.push_back(d * float(sc[i / 16]) * float(q - 32));
      }
      break;
    }
    case GgmlType::Q5_1:
    case GgmlType::IQ4_NL:
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::IQ4_XS: {
      // Random code bytes under finite fp16 scales; the values are the library's dequantization,
      // which GgmlReferenceBlocks checks against the gguf package's (test_quants_golden.cpp).
      for (size_t i = 0; i < ti.block_bytes; ++i) b[i] = uint8_t(uni(0, 255));
      for (const size_t off : ggml_scale_fields(t)) put_f16(bytes, at + off, (uni(0, 1) ? 1.0f : -1.0f) * pow2(-8, -2));
      std::vector<float> v(ti.block_elems);
      dequantize_row(t, bytes.data() + at, v.data(), v.size());
      values.insert(values.end(), v.begin(), v.end());
      break;
    }
    default:
      throw std::logic_error("random_block: unsupported type");
  }
}

// A row of n_cols elements (n_cols a multiple of the block size).
inline std::vector<uint8_t> random_row(GgmlType t, size_t n_cols, std::mt19937& rng, std::vector<float>& values) {
  std::vector<uint8_t> bytes;
  const size_t be = ggml_type_info(t).block_elems;
  for (size_t i = 0; i < n_cols / be; ++i) random_block(t, rng, bytes, values);
  return bytes;
}

}  // namespace tq::model::testing
