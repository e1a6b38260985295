// TurboQuant behind the common Quantizer interface. A batch of `rows` rows is laid out like one
// page of the paged format: [rows][codes] [rows][qjl] [rows] fp16 norms [rows] fp16 residual norms
// (split rows: [rows][2] fp16 norms, outliers and rest).
#include <fmt/format.h>

#include <cstring>

#include "tq/numeric.h"
#include "tq/codec/quantizer.h"
#include "tq/codec/turboquant.h"

namespace tq {
namespace {

class TurboQuantizer final : public Quantizer {
 public:
  TurboQuantizer(const TqConfig& cfg, bool fast) : tq_(cfg), fast_(fast) {
    code_row_ = main_row_bytes(tq_.tensor_code(), cfg.dim);
    qjl_row_ = cfg.prod ? tq_.padded_dim() / 8 : 0;
    norm_row_ = norm_row_bytes(tq_.tensor_code());
  }
  std::string name() const override {
    return fmt::format("turboquant-{}{}{}", tq_.config().prod ? "prod" : "mse", tq_.config().bits,
                       tq_.split() ? ".5" : tq_.config().tcq ? "t" : "");
  }
  uint32_t dim() const override { return tq_.dim(); }
  size_t bytes(size_t rows) const override { return rows * (code_row_ + qjl_row_ + norm_row_ + (tq_.config().prod ? 2 : 0)); }

  void quantize(const float* x, size_t rows, uint8_t* out) const override {
    for (size_t r = 0; r < rows; ++r) {
      uint16_t norm[2] = {0, 0}, rnorm = 0;
      RowRef ref{reinterpret_cast<uint32_t*>(out + r * code_row_), out + rows * code_row_ + r * qjl_row_, norm, &rnorm};
      tq_.encode(x + r * dim(), ref);
      std::memcpy(norms(out, rows) + norm_row_ * r, norm, norm_row_);
      if (tq_.config().prod) std::memcpy(norms(out, rows) + 2 * rows + 2 * r, &rnorm, 2);
    }
  }
  void dequantize(const uint8_t* in, size_t rows, float* out) const override {
    for (size_t r = 0; r < rows; ++r) {
      uint16_t norm[2], rnorm;
      const ConstRowRef ref = row(in, rows, r, norm, rnorm);
      tq_.decode(ref, out + r * dim());
    }
  }
  void dot(const float* q, const uint8_t* in, size_t rows, float* out) const override {
    TurboQuant::Query prepared;
    tq_.prepare(q, prepared);
    for (size_t r = 0; r < rows; ++r) {
      uint16_t norm[2], rnorm;
      const ConstRowRef ref = row(in, rows, r, norm, rnorm);
      out[r] = fast_ ? tq_.dot_fast(prepared, ref) : tq_.dot(prepared, ref);
    }
  }

 private:
  static uint8_t* norms(uint8_t* base, size_t rows, size_t code_row, size_t qjl_row) { return base + rows * (code_row + qjl_row); }
  uint8_t* norms(uint8_t* base, size_t rows) const { return norms(base, rows, code_row_, qjl_row_); }
  // Norms are copied out: the fp16 section may be unaligned for odd row counts.
  // norm: [2] (the second for split rows)
  ConstRowRef row(const uint8_t* in, size_t rows, size_t r, uint16_t* norm, uint16_t& rnorm) const {
    const uint8_t* nb = in + rows * (code_row_ + qjl_row_);
    std::memcpy(norm, nb + norm_row_ * r, norm_row_);
    rnorm = 0;
    if (tq_.config().prod) std::memcpy(&rnorm, nb + 2 * rows + 2 * r, 2);
    return ConstRowRef{reinterpret_cast<const uint32_t*>(in + r * code_row_), in + rows * code_row_ + r * qjl_row_, norm,
                       &rnorm};
  }

  TurboQuant tq_;
  bool fast_;
  size_t code_row_ = 0, qjl_row_ = 0, norm_row_ = 2;
};

}  // namespace

std::unique_ptr<Quantizer> make_turboquant(const TqConfig& cfg, bool fast) {
  return std::make_unique<TurboQuantizer>(cfg, fast);
}

}  // namespace tq
