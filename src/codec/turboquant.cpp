#include "tq/codec/turboquant.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "simd.h"
#include "tq/codec/trellis.h"
#include "tq/check.h"
#include "tq/cpu_features.h"
#include "tq/numeric.h"
#include "tq/rng.h"

namespace tq {

double qjl_scale(uint32_t pd) { return std::sqrt(M_PI / 2.0) / double(pd); }

namespace {
constexpr uint32_t kQjlPurpose = 7;

void check_config(const TqConfig& c) {
  TQ_CHECK(c.dim >= 1 && c.dim <= kMaxHeadDim, "head dim must be 1..{}, got {}", kMaxHeadDim, c.dim);
  TQ_CHECK(c.bits >= 1 && c.bits <= 8, "TurboQuant bits must be 1..8, got {}", c.bits);
  TQ_CHECK(!(c.prod && c.norm_correction), "norm correction applies to MSE rows only, not to prod (already unbiased)");
  TQ_CHECK(!(c.prod && c.norm_unbiased), "the unbiased norm applies to MSE rows only, not to prod (already unbiased)");
  TQ_CHECK(!(c.norm_correction && c.norm_unbiased), "norm correction and the unbiased norm are two ways to store the norm: one at most");
  TQ_CHECK(c.split || c.outliers.empty(), "outlier channels apply to split (fractional-width) rows only, got {} of them",
           c.outliers.size());
  TQ_CHECK(!c.tcq || (!c.prod && !c.split), "trellis-coded rows are MSE rows: not prod, not split");
  TQ_CHECK(!c.uniform || (c.bits == 2 && !c.prod && !c.split && !c.tcq), "uniform levels are for 2-bit plain MSE rows (the format's 2-bit values), got {} bits{}",
           c.bits, c.prod ? " prod" : c.split ? " split" : c.tcq ? " trellis-coded" : "");
  TQ_CHECK(!c.tcq || c.bits <= 7, "trellis-coded rows are 1..7 bits (the levels come from the codebook one bit wider), got {}", c.bits);
}
}  // namespace

TurboQuant::TurboQuant(const TqConfig& cfg) : cfg_((check_config(cfg), cfg)), pd_(tq::padded_dim(cfg.dim)) {
  if (cfg_.split) {
    init_split();
    return;
  }
  rot_.emplace(cfg.rotation, pd_, cfg.seed);
  if (code_bits() > 0)
    cb_ = cfg_.tcq ? &tq::tcq_codebook(pd_, code_bits()) : cfg_.uniform ? &tq::uniform_codebook(pd_, code_bits()) : &tq::codebook(pd_, code_bits());
  if (cfg_.prod) {
    Rng rng(derive_seed(cfg_.seed, 0, 0, kQjlPurpose));
    s_.resize(size_t(pd_) * pd_);
    for (float& v : s_) v = float(rng.normal());
  }
}

size_t TurboQuant::table_bytes(const TqConfig& cfg) {
  const auto rotation = [&](uint32_t dim) {
    const size_t pd = tq::padded_dim(dim);
    return sizeof(float) * (cfg.rotation == RotationKind::kDense ? pd * pd : pd);
  };
  if (cfg.split) {
    const uint32_t n = split_outliers(cfg.dim);
    return rotation(n) + rotation(cfg.dim - n);
  }
  const size_t pd = tq::padded_dim(cfg.dim);
  return rotation(cfg.dim) + (cfg.prod ? sizeof(float) * pd * pd : 0);
}

const Rotation& TurboQuant::rotation() const {
  TQ_CHECK(rot_.has_value(), "a split ({}.5-bit) row has one rotation per part, not one for the row", cfg_.bits);
  return *rot_;
}

void TurboQuant::encode(const float* x, const RowRef& out) const {
  if (cfg_.split) return split_encode(x, out);
  double nn = 0;
  for (uint32_t i = 0; i < cfg_.dim; ++i) {
    TQ_CHECK(std::isfinite(x[i]), "cannot quantize a non-finite value: element {} is {}", i, x[i]);
    nn += double(x[i]) * x[i];
  }
  const double norm = std::sqrt(nn);
  TQ_CHECK(norm <= kF16Max, "vector norm {:.6g} exceeds the fp16 range of the stored norm ({})", norm, kF16Max);

  // Scratch on the stack (pd <= kMaxHeadDim): this runs for every token written to the cache.
  float y[kMaxHeadDim], c[kMaxHeadDim];  // [pd] rotated unit vector, its reconstruction
  std::fill(y, y + pd_, 0.0f);
  std::fill(c, c + pd_, 0.0f);
  if (norm > 0)
    for (uint32_t i = 0; i < cfg_.dim; ++i) y[i] = float(x[i] / norm);
  rot_->forward(y, y);

  const uint32_t b = code_bits();
  uint8_t codes[kMaxHeadDim];
  std::fill(codes, codes + pd_, uint8_t(0));
  if (b > 0 && cfg_.tcq) {
    tcq_encode(y, pd_, cb_->centroids.data(), b, codes);
    tcq_decode(codes, pd_, cb_->centroids.data(), b, c);
    pack_row(codes, cfg_.dim, b, out.codes);
  } else if (b > 0) {
    if (b <= 4 && cpu::has_avx2_fma()) {
      simd::encode_avx2(y, pd_, cb_->boundaries.data(), b, codes);
    } else {
      for (uint32_t i = 0; i < pd_; ++i) codes[i] = cb_->encode(y[i]);
    }
    for (uint32_t i = 0; i < pd_; ++i) c[i] = cb_->centroids[codes[i]];
    pack_row(codes, cfg_.dim, b, out.codes);
  }

  double stored = norm;
  if (cfg_.norm_correction && norm > 0) {
    double cn = 0;
    for (uint32_t i = 0; i < pd_; ++i) cn += double(c[i]) * c[i];
    if (cn > 0) stored = norm / std::sqrt(cn);
    TQ_CHECK(stored <= kF16Max, "norm-corrected norm {:.6g} exceeds the fp16 range", stored);
  }
  if (cfg_.norm_unbiased && norm > 0) {
    double cu = 0;  // <c, u> > 0: each centroid has its coordinate's sign (symmetric codebooks)
    for (uint32_t i = 0; i < pd_; ++i) cu += double(c[i]) * y[i];
    if (cu > 0) stored = norm / cu;
    TQ_CHECK(stored <= kF16Max, "unbiased norm {:.6g} exceeds the fp16 range", stored);
  }
  *out.norm = f32_to_f16(float(stored));

  if (cfg_.prod) {
    float r[kMaxHeadDim];
    double rn = 0;
    for (uint32_t i = 0; i < pd_; ++i) {
      r[i] = y[i] - c[i];
      rn += double(r[i]) * r[i];
    }
    *out.rnorm = f32_to_f16(float(std::sqrt(rn)));
    for (uint32_t i = 0; i < pd_ / 8; ++i) out.qjl[i] = 0;
    for (uint32_t i = 0; i < pd_; ++i) {
      const float* s = &s_[size_t(i) * pd_];
      float acc = 0;
      for (uint32_t k = 0; k < pd_; ++k) acc += s[k] * r[k];
      if (acc >= 0) out.qjl[i / 8] = uint8_t(out.qjl[i / 8] | (1u << (i % 8)));
    }
  }
}

void TurboQuant::decode_rotated(const ConstRowRef& in, float* out) const {
  if (cfg_.split) return split_decode_rotated(in, out);
  if (code_bits() > 0)
    levels(in.codes, out);
  else
    for (uint32_t i = 0; i < pd_; ++i) out[i] = 0;
  if (cfg_.prod) {
    // x~ += ||r|| sqrt(pi/2)/pd * S^T sign(S r)
    const float scale = float(qjl_scale(pd_) * f16_to_f32(*in.rnorm));
    for (uint32_t i = 0; i < pd_; ++i) {
      const float sgn = (in.qjl[i / 8] >> (i % 8)) & 1u ? scale : -scale;
      const float* s = &s_[size_t(i) * pd_];
      for (uint32_t k = 0; k < pd_; ++k) out[k] += sgn * s[k];
    }
  }
}

void TurboQuant::levels(const uint32_t* codes, float* out) const {
  const uint32_t b = code_bits();
  const bool avx2 = cpu::has_avx2_fma();
  if (cfg_.tcq && avx2) return simd::tcq_decode_avx2(codes, pd_, b, cb_->centroids.data(), out);
  if (avx2) return simd::decode_codes_avx2(codes, pd_, b, cb_->centroids.data(), out);  // the same table entries
  uint8_t c[kMaxHeadDim];
  unpack_row(codes, cfg_.dim, b, c);
  if (cfg_.tcq) return tcq_decode(c, pd_, cb_->centroids.data(), b, out);
  for (uint32_t i = 0; i < pd_; ++i) out[i] = cb_->centroids[c[i]];
}

float TurboQuant::codes_dot_fast(const float* qrot, const uint32_t* codes) const {
  if (cfg_.tcq && cpu::has_avx2_fma()) {
    if (code_bits() == 2 || code_bits() == 3) return simd::tcq_dot_avx2(qrot, codes, pd_, code_bits(), cb_->centroids.data());
    float v[kMaxHeadDim];
    levels(codes, v);
    return simd::dot_decoded_avx2(qrot, v, pd_, code_bits());
  }
  if (cpu::has_avx2_fma()) return simd::dot_codes_avx2(qrot, codes, pd_, code_bits(), cb_->centroids.data());
  return codes_dot(qrot, codes);
}

float TurboQuant::codes_dot(const float* qrot, const uint32_t* codes) const {
  float acc = 0;
  const uint32_t b = code_bits();
  if (cfg_.tcq) {
    float v[kMaxHeadDim];
    levels(codes, v);
    for (uint32_t i = 0; i < pd_; ++i) acc += qrot[i] * v[i];
    return acc;
  }
  uint8_t c[kGroup];
  for (uint32_t g = 0; g < pd_ / kGroup; ++g) {
    unpack_group(codes + g * b, b, c);
    for (uint32_t i = 0; i < kGroup; ++i) acc += qrot[g * kGroup + i] * cb_->centroids[c[i]];
  }
  return acc;
}

float TurboQuant::dot_fast(const Query& q, const ConstRowRef& row) const {
  if (cfg_.split) return split_dot(q, row, true);
  if (!cfg_.prod && code_bits() > 0 && cfg_.tcq) return codes_dot_fast(q.rot.data(), row.codes) * f16_to_f32(*row.norm);
  if (!cfg_.prod && code_bits() > 0 && cpu::has_avx2_fma())
    return simd::dot_codes_avx2(q.rot.data(), row.codes, pd_, code_bits(), cb_->centroids.data()) * f16_to_f32(*row.norm);
  return dot(q, row);
}

bool TurboQuant::can_score_decoded() const { return !cfg_.split && !cfg_.prod && code_bits() > 0 && cpu::has_avx2_fma(); }

float TurboQuant::dot_decoded(const Query& q, const float* decoded, const ConstRowRef& row) const {
  return simd::dot_decoded_avx2(q.rot.data(), decoded, pd_, code_bits()) * f16_to_f32(*row.norm);
}

void TurboQuant::accumulate_rotated(const ConstRowRef& row, float weight, float* acc) const {
  if (cfg_.split) return split_accumulate_rotated(row, weight, acc);
  // No shortcut for w == 0 (a zero weight or a zeroed row): adding zeros leaves acc's bits as they
  // are, and a row costs the same whatever it holds, so tq bench's zeroed contexts time real work.
  const float w = weight * f16_to_f32(*row.norm);
  if (code_bits() > 0) {
    float v[kMaxHeadDim];  // [pd]
    levels(row.codes, v);
    simd::axpy(cpu::has_avx2_fma(), w, v, acc, pd_);
  }
  if (cfg_.prod) {
    const float scale = w * float(qjl_scale(pd_)) * f16_to_f32(*row.rnorm);
    for (uint32_t i = 0; i < pd_; ++i) {
      const float sgn = (row.qjl[i / 8] >> (i % 8)) & 1u ? scale : -scale;
      const float* s = &s_[size_t(i) * pd_];
      for (uint32_t k = 0; k < pd_; ++k) acc[k] += sgn * s[k];
    }
  }
}

void TurboQuant::unrotate(const float* acc, float* out) const {
  if (cfg_.split) return split_unrotate(acc, out);
  rot_->inverse(acc, out);
}

void TurboQuant::decode(const ConstRowRef& in, float* out) const {
  if (cfg_.split) return split_decode(in, out);
  float y[kMaxHeadDim];
  decode_rotated(in, y);
  rot_->inverse(y, y);
  const float norm = f16_to_f32(*in.norm);
  for (uint32_t i = 0; i < cfg_.dim; ++i) out[i] = y[i] * norm;
}

void TurboQuant::prepare(const float* q, Query& out) const {
  if (cfg_.split) return split_prepare(q, out);
  out.rot.assign(pd_, 0.0f);
  for (uint32_t i = 0; i < cfg_.dim; ++i) out.rot[i] = q[i];
  rot_->forward(out.rot.data(), out.rot.data());
  if (cfg_.prod) {
    out.sq.assign(pd_, 0.0f);
    for (uint32_t i = 0; i < pd_; ++i) {
      const float* s = &s_[size_t(i) * pd_];
      float acc = 0;
      for (uint32_t k = 0; k < pd_; ++k) acc += s[k] * out.rot[k];
      out.sq[i] = acc;
    }
  }
}

float TurboQuant::dot(const Query& q, const ConstRowRef& row) const {
  if (cfg_.split) return split_dot(q, row, false);
  float acc = 0;
  const uint32_t b = code_bits();
  if (b > 0 && cfg_.tcq) {
    acc = codes_dot(q.rot.data(), row.codes);
  } else if (b > 0) {
    uint8_t codes[kGroup];
    for (uint32_t g = 0; g < pd_ / kGroup; ++g) {
      unpack_group(row.codes + g * b, b, codes);
      for (uint32_t i = 0; i < kGroup; ++i) acc += q.rot[g * kGroup + i] * cb_->centroids[codes[i]];
    }
  }
  if (cfg_.prod) {
    float qjl = 0;
    for (uint32_t i = 0; i < pd_; ++i) qjl += (row.qjl[i / 8] >> (i % 8)) & 1u ? q.sq[i] : -q.sq[i];
    acc += float(qjl_scale(pd_)) * f16_to_f32(*row.rnorm) * qjl;
  }
  return acc * f16_to_f32(*row.norm);
}

}  // namespace tq
