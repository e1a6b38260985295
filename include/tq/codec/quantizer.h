// One interface for every vector quantizer, TurboQuant and the baselines, so one harness measures
// them all: quantize rows to packed bytes, dequantize, and a fused dot product of a query with
// packed rows that never writes the dequantized rows to memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace tq {

class Quantizer {
 public:
  virtual ~Quantizer() = default;
  virtual std::string name() const = 0;
  virtual uint32_t dim() const = 0;
  // Bytes that `rows` quantized rows take (KIVI keys pack a group of rows together).
  virtual size_t bytes(size_t rows) const = 0;
  // Bits per element, metadata included, for full groups of rows.
  double bits_per_element() const { return 8.0 * double(bytes(64)) / (64.0 * dim()); }

  // x: [rows][dim] -> out: [bytes(rows)]. Throws tq::Error on NaN/Inf or out-of-range values.
  virtual void quantize(const float* x, size_t rows, uint8_t* out) const = 0;
  // in: [bytes(rows)] -> out: [rows][dim]
  virtual void dequantize(const uint8_t* in, size_t rows, float* out) const = 0;
  // out[i] = <q, row i>, q: [dim], in: [bytes(rows)], out: [rows]
  virtual void dot(const float* q, const uint8_t* in, size_t rows, float* out) const = 0;
};

struct TqConfig;
// TurboQuant rows laid out as [codes][qjl signs][fp16 norm][fp16 residual norm] (absent parts omitted).
// `fast` picks the SIMD fused dot when the CPU has it; false keeps the scalar reference.
std::unique_ptr<Quantizer> make_turboquant(const TqConfig& cfg, bool fast = true);

// Baselines, measured in the same harness. `name` is one of:
//   fp32, fp16, bf16, fp8 (e4m3, per-tensor scale `fp8_scale`),
//   int8, int4, int2  (uniform asymmetric per row: fp16 scale and fp16 zero point),
//   kivi2, kivi4      (KIVI keys: per channel over groups of `group` rows, fp16 scale and zero),
//   q4_0              (blocks of 32 with one fp16 scale, codes -8..7, as ggml's q4_0)
std::unique_ptr<Quantizer> make_baseline(const std::string& name, uint32_t dim, uint32_t group = 32, float fp8_scale = 1.0f);

}  // namespace tq
