// The baseline quantizers TurboQuant is measured against, behind the same interface.
// Layouts (rows = r, dim = d):
//   fp32/fp16/bf16/fp8: [r][d] elements (fp8: x / scale, scale per tensor)
//   intN:  [r][d*N/8] codes, then [r] (fp16 scale, fp16 min); x ~ min + scale * code
//   kiviN: per group of G rows: [G][d*N/8] codes, then [d] fp16 scales, [d] fp16 mins (per channel)
//   q4_0:  [r][d/32] blocks of (fp16 scale, 16 bytes: code j low nibble, code j+16 high nibble), x ~ scale*(code-8)
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "tq/check.h"
#include "tq/format.h"
#include "tq/codec/float_rows.h"
#include "tq/numeric.h"
#include "tq/codec/quantizer.h"

namespace tq {
namespace {

void check_finite(const float* x, size_t n, const char* what) {
  for (size_t i = 0; i < n; ++i)
    TQ_CHECK(std::isfinite(x[i]), "{}: cannot quantize a non-finite value: element {} is {}", what, i, x[i]);
}

uint16_t to_f16_checked(double v, const char* what) {
  TQ_CHECK(std::abs(v) <= kF16Max, "{}: value {:.6g} exceeds the fp16 range of its scale/zero point", what, v);
  return f32_to_f16(float(v));
}

// Sets/gets an N-bit code (N in {2, 4, 8}) at index i of a little-endian packed byte array.
inline void put_code(uint8_t* p, size_t i, uint32_t bits, uint32_t c) {
  const size_t per = 8 / bits, byte = i / per, sh = (i % per) * bits;
  p[byte] = uint8_t((p[byte] & ~(((1u << bits) - 1) << sh)) | (c << sh));
}
inline uint32_t get_code(const uint8_t* p, size_t i, uint32_t bits) {
  const size_t per = 8 / bits;
  return (p[i / per] >> ((i % per) * bits)) & ((1u << bits) - 1);
}

// Base: dot = dequantize one row into a small buffer, then multiply.
class RowwiseQuantizer : public Quantizer {
 public:
  explicit RowwiseQuantizer(uint32_t d) : d_(d) {}
  uint32_t dim() const override { return d_; }
  void dot(const float* q, const uint8_t* in, size_t rows, float* out) const override {
    std::vector<float> row(size_t(d_) * group_rows());
    for (size_t r0 = 0; r0 < rows; r0 += group_rows()) {
      const size_t n = std::min<size_t>(group_rows(), rows - r0);
      dequantize_group(in, rows, r0, n, row.data());
      for (size_t r = 0; r < n; ++r) {
        float acc = 0;
        for (uint32_t i = 0; i < d_; ++i) acc += q[i] * row[r * d_ + i];
        out[r0 + r] = acc;
      }
    }
  }
  void dequantize(const uint8_t* in, size_t rows, float* out) const override {
    for (size_t r0 = 0; r0 < rows; r0 += group_rows())
      dequantize_group(in, rows, r0, std::min<size_t>(group_rows(), rows - r0), out + r0 * d_);
  }

 protected:
  virtual size_t group_rows() const { return 1; }
  // Dequantizes rows [r0, r0 + n) of a batch of `rows` rows into out: [n][d].
  virtual void dequantize_group(const uint8_t* in, size_t rows, size_t r0, size_t n, float* out) const = 0;
  uint32_t d_;
};

class FloatQuantizer final : public RowwiseQuantizer {
 public:
  FloatQuantizer(uint32_t d, Encoding e, float scale) : RowwiseQuantizer(d), e_(e), scale_(scale) {
    TQ_CHECK(scale > 0 && std::isfinite(scale), "fp8 scale must be positive and finite, got {}", scale);
  }
  std::string name() const override {
    switch (e_) {
      case Encoding::kFp32: return "fp32";
      case Encoding::kFp16: return "fp16";
      case Encoding::kBf16: return "bf16";
      default: return "fp8";
    }
  }
  size_t bytes(size_t rows) const override { return rows * d_ * float_bytes(e_); }
  void quantize(const float* x, size_t rows, uint8_t* out) const override {
    store_float_row(e_, x, uint32_t(rows * d_), scale_, out);
  }

 protected:
  void dequantize_group(const uint8_t* in, size_t, size_t r0, size_t n, float* out) const override {
    load_float_row(e_, in + r0 * d_ * float_bytes(e_), uint32_t(n * d_), scale_, out);
  }

 private:
  Encoding e_;
  float scale_;
};

// Asymmetric uniform quantization of n values with stride `stride`: returns (scale, min) in fp16.
struct Affine {
  uint16_t scale, min;
};
Affine fit_affine(const float* x, size_t n, size_t stride, uint32_t bits, const char* what) {
  float lo = x[0], hi = x[0];
  for (size_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i * stride]);
    hi = std::max(hi, x[i * stride]);
  }
  const double levels = double((1u << bits) - 1);
  return {to_f16_checked((double(hi) - lo) / levels, what), to_f16_checked(lo, what)};
}
uint32_t affine_code(float x, Affine a, uint32_t bits) {
  const float s = f16_to_f32(a.scale), m = f16_to_f32(a.min);
  if (s <= 0) return 0;
  const float c = std::nearbyint((x - m) / s);
  return uint32_t(std::clamp(c, 0.0f, float((1u << bits) - 1)));
}
float affine_value(uint32_t c, Affine a) { return f16_to_f32(a.min) + f16_to_f32(a.scale) * float(c); }

class IntQuantizer final : public RowwiseQuantizer {
 public:
  IntQuantizer(uint32_t d, uint32_t bits) : RowwiseQuantizer(d), bits_(bits) {
    TQ_CHECK(d * bits % 8 == 0, "int{}: head dim {} does not pack into whole bytes", bits, d);
  }
  std::string name() const override { return fmt::format("int{}", bits_); }
  size_t bytes(size_t rows) const override { return rows * (row() + 4); }
  void quantize(const float* x, size_t rows, uint8_t* out) const override {
    check_finite(x, rows * d_, name().c_str());
    std::memset(out, 0, bytes(rows));
    for (size_t r = 0; r < rows; ++r) {
      const Affine a = fit_affine(x + r * d_, d_, 1, bits_, "int per-row");
      for (uint32_t i = 0; i < d_; ++i) put_code(out + r * row(), i, bits_, affine_code(x[r * d_ + i], a, bits_));
      std::memcpy(out + rows * row() + 4 * r, &a, 4);
    }
  }

 protected:
  void dequantize_group(const uint8_t* in, size_t rows, size_t r0, size_t n, float* out) const override {
    for (size_t r = 0; r < n; ++r) {
      Affine a;
      std::memcpy(&a, in + rows * row() + 4 * (r0 + r), 4);
      for (uint32_t i = 0; i < d_; ++i) out[r * d_ + i] = affine_value(get_code(in + (r0 + r) * row(), i, bits_), a);
    }
  }

 private:
  size_t row() const { return size_t(d_) * bits_ / 8; }
  uint32_t bits_;
};

// KIVI keys: each channel quantized over a group of G tokens (outlier channels get their own range).
class KiviKeyQuantizer final : public RowwiseQuantizer {
 public:
  KiviKeyQuantizer(uint32_t d, uint32_t bits, uint32_t group) : RowwiseQuantizer(d), bits_(bits), g_(group) {
    TQ_CHECK(group >= 1 && group <= 4096, "KIVI group must be 1..4096 rows, got {}", group);
    TQ_CHECK(d * bits % 8 == 0, "kivi{}: head dim {} does not pack into whole bytes", bits, d);
  }
  std::string name() const override { return fmt::format("kivi{}", bits_); }
  size_t bytes(size_t rows) const override { return (rows + g_ - 1) / g_ * group_bytes(); }
  void quantize(const float* x, size_t rows, uint8_t* out) const override {
    check_finite(x, rows * d_, name().c_str());
    std::memset(out, 0, bytes(rows));
    for (size_t r0 = 0; r0 < rows; r0 += g_) {
      const size_t n = std::min<size_t>(g_, rows - r0);
      uint8_t* gb = out + r0 / g_ * group_bytes();
      for (uint32_t c = 0; c < d_; ++c) {
        const Affine a = fit_affine(x + r0 * d_ + c, n, d_, bits_, "KIVI per-channel");
        std::memcpy(gb + g_ * row() + 4 * c, &a, 4);
        for (size_t r = 0; r < n; ++r) put_code(gb + r * row(), c, bits_, affine_code(x[(r0 + r) * d_ + c], a, bits_));
      }
    }
  }

 protected:
  size_t group_rows() const override { return g_; }
  void dequantize_group(const uint8_t* in, size_t, size_t r0, size_t n, float* out) const override {
    const uint8_t* gb = in + r0 / g_ * group_bytes();
    for (uint32_t c = 0; c < d_; ++c) {
      Affine a;
      std::memcpy(&a, gb + g_ * row() + 4 * c, 4);
      for (size_t r = 0; r < n; ++r) out[r * d_ + c] = affine_value(get_code(gb + r * row(), c, bits_), a);
    }
  }

 private:
  size_t row() const { return size_t(d_) * bits_ / 8; }
  size_t group_bytes() const { return g_ * row() + 4 * d_; }
  uint32_t bits_, g_;
};

class Q40Quantizer final : public RowwiseQuantizer {
 public:
  explicit Q40Quantizer(uint32_t d) : RowwiseQuantizer(d) {
    TQ_CHECK(d % 32 == 0, "q4_0 needs a head dim that is a multiple of 32, got {}", d);
  }
  std::string name() const override { return "q4_0"; }
  size_t bytes(size_t rows) const override { return rows * (d_ / 32) * 18; }
  void quantize(const float* x, size_t rows, uint8_t* out) const override {
    check_finite(x, rows * d_, "q4_0");
    for (size_t b = 0; b < rows * d_ / 32; ++b) {
      const float* v = x + 32 * b;
      float amax = 0, max = 0;  // the value of largest magnitude, with its sign
      for (int i = 0; i < 32; ++i)
        if (std::abs(v[i]) > amax) {
          amax = std::abs(v[i]);
          max = v[i];
        }
      // ggml's quantize_row_q4_0_ref: the inverse of the unrounded scale (from one rounded to fp16,
      // a subnormal rounded down made codes below 0, which wrapped into the neighbouring nibble)
      const float d = max / -8.0f, id = d != 0 && std::isfinite(1.0f / d) ? 1.0f / d : 0.0f;  // (1/d overflows below ~2.3e-38)
      const uint16_t dh = to_f16_checked(d, "q4_0 block");
      uint8_t* blk = out + 18 * b;
      std::memcpy(blk, &dh, 2);
      for (int j = 0; j < 16; ++j) {
        const auto code = [&](float f) { return uint8_t(std::clamp(std::floor(f * id + 8.5f), 0.0f, 15.0f)); };
        blk[2 + j] = uint8_t(code(v[j]) | (code(v[j + 16]) << 4));
      }
    }
  }

 protected:
  void dequantize_group(const uint8_t* in, size_t, size_t r0, size_t n, float* out) const override {
    for (size_t b = 0; b < n * d_ / 32; ++b) {
      const uint8_t* blk = in + 18 * (r0 * d_ / 32 + b);
      uint16_t dh;
      std::memcpy(&dh, blk, 2);
      const float d = f16_to_f32(dh);
      for (int j = 0; j < 16; ++j) {
        out[32 * b + j] = d * float(int(blk[2 + j] & 15) - 8);
        out[32 * b + j + 16] = d * float(int(blk[2 + j] >> 4) - 8);
      }
    }
  }
};

}  // namespace

std::unique_ptr<Quantizer> make_baseline(const std::string& name, uint32_t dim, uint32_t group, float fp8_scale) {
  TQ_CHECK(dim >= 1 && dim <= 65536, "dimension must be 1..65536, got {}", dim);
  if (name == "fp32") return std::make_unique<FloatQuantizer>(dim, Encoding::kFp32, 1.0f);
  if (name == "fp16") return std::make_unique<FloatQuantizer>(dim, Encoding::kFp16, 1.0f);
  if (name == "bf16") return std::make_unique<FloatQuantizer>(dim, Encoding::kBf16, 1.0f);
  if (name == "fp8") return std::make_unique<FloatQuantizer>(dim, Encoding::kFp8E4M3, fp8_scale);
  if (name == "int8") return std::make_unique<IntQuantizer>(dim, 8);
  if (name == "int4") return std::make_unique<IntQuantizer>(dim, 4);
  if (name == "int2") return std::make_unique<IntQuantizer>(dim, 2);
  if (name == "kivi2") return std::make_unique<KiviKeyQuantizer>(dim, 2, group);
  if (name == "kivi4") return std::make_unique<KiviKeyQuantizer>(dim, 4, group);
  if (name == "q4_0") return std::make_unique<Q40Quantizer>(dim);
  throw Error(fmt::format("unknown baseline quantizer '{}': expected fp32, fp16, bf16, fp8, int8, int4, int2, kivi2, kivi4 or q4_0", name));
}

}  // namespace tq
