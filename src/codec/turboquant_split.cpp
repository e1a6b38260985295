// The split (fractional-width) rows of TurboQuant: the paper's outlier split as two plain MSE
// instances over the outlier channels and the rest (turboquant.h, format.h kTqSplit). Each method
// here is the split branch of the method of the same name in turboquant.cpp.
#include <algorithm>
#include <cmath>

#include "simd.h"
#include "tq/check.h"
#include "tq/codec/turboquant.h"
#include "tq/cpu_features.h"
#include "tq/numeric.h"
#include "tq/rng.h"

namespace tq {
namespace {
constexpr uint32_t kSplitPurpose = 11;  // the parts' seeds: derive_seed(seed, part, 0, kSplitPurpose)

void check_split(const TqConfig& c) {
  TQ_CHECK(!c.prod, "a split (fractional-width) row is two MSE instances, not prod");
  TQ_CHECK(c.bits <= 7, "a split row's width must be 1.5..7.5 bits (outliers at bits + 1 <= 8), got {}.5", c.bits);
  TQ_CHECK(c.dim >= 2, "a split row needs a head dim of at least 2 (one channel per part), got {}", c.dim);
  const uint32_t n = split_outliers(c.dim);
  TQ_CHECK(c.outliers.empty() || c.outliers.size() == n, "a split row of head dim {} has {} outlier channels, got {}", c.dim, n,
           c.outliers.size());
  std::vector<bool> seen(c.dim, false);
  for (uint16_t ch : c.outliers) {
    TQ_CHECK(ch < c.dim, "outlier channel {} is outside the head dim {}", ch, c.dim);
    TQ_CHECK(!seen[ch], "outlier channel {} is listed twice", ch);
    seen[ch] = true;
  }
}

// The part configs of a split row: the outliers at bits + 1, the rest at bits, plain MSE.
TqConfig part_config(const TqConfig& c, uint32_t part) {
  TqConfig p;
  p.dim = part == 0 ? split_outliers(c.dim) : c.dim - split_outliers(c.dim);
  p.bits = part == 0 ? c.bits + 1 : c.bits;
  p.rotation = c.rotation;
  p.seed = derive_seed(c.seed, part, 0, kSplitPurpose);
  p.norm_correction = c.norm_correction;
  p.norm_unbiased = c.norm_unbiased;
  return p;
}
}  // namespace

void TurboQuant::init_split() {
  check_split(cfg_);
  // [dim] positions: the outlier channels ascending, then the rest ascending.
  const uint32_t n = split_outliers(cfg_.dim);
  if (cfg_.outliers.empty())
    for (uint32_t i = 0; i < n; ++i) cfg_.outliers.push_back(uint16_t(i));
  std::sort(cfg_.outliers.begin(), cfg_.outliers.end());
  std::vector<bool> is_out(cfg_.dim, false);
  for (uint16_t ch : cfg_.outliers) is_out[ch] = true;
  order_ = cfg_.outliers;
  for (uint32_t i = 0; i < cfg_.dim; ++i)
    if (!is_out[i]) order_.push_back(uint16_t(i));
  for (uint32_t i = 0; i < 2; ++i) parts_[i] = std::make_shared<const TurboQuant>(part_config(cfg_, i));
  pd_ = parts_[0]->padded_dim() + parts_[1]->padded_dim();
  out_words_ = code_row_bytes(parts_[0]->dim(), parts_[0]->code_bits()) / 4;
}

ConstRowRef TurboQuant::part_row(const ConstRowRef& row, uint32_t i) const {
  return {row.codes + (i ? out_words_ : 0), nullptr, row.norm + i, nullptr};
}

void TurboQuant::split_encode(const float* x, const RowRef& out) const {
  // Checked here so that the error names the head's channel, not a position inside a part.
  for (uint32_t i = 0; i < cfg_.dim; ++i) TQ_CHECK(std::isfinite(x[i]), "cannot quantize a non-finite value: element {} is {}", i, x[i]);
  float xp[kMaxHeadDim];  // [dim] the channels in part order
  for (uint32_t i = 0; i < cfg_.dim; ++i) xp[i] = x[order_[i]];
  const uint32_t n = parts_[0]->dim();
  parts_[0]->encode(xp, RowRef{out.codes, nullptr, out.norm, nullptr});
  parts_[1]->encode(xp + n, RowRef{out.codes + out_words_, nullptr, out.norm + 1, nullptr});
}

void TurboQuant::split_decode(const ConstRowRef& in, float* out) const {
  float y[kMaxHeadDim];  // [dim] the parts decoded, in part order
  const uint32_t n = parts_[0]->dim();
  parts_[0]->decode(part_row(in, 0), y);
  parts_[1]->decode(part_row(in, 1), y + n);
  for (uint32_t i = 0; i < cfg_.dim; ++i) out[order_[i]] = y[i];
}

void TurboQuant::split_decode_rotated(const ConstRowRef& in, float* out) const {
  for (uint32_t i = 0; i < 2; ++i) {
    float* o = out + (i ? parts_[0]->padded_dim() : 0);
    parts_[i]->decode_rotated(part_row(in, i), o);
    const float norm = f16_to_f32(in.norm[i]);
    for (uint32_t k = 0; k < parts_[i]->padded_dim(); ++k) o[k] *= norm;
  }
}

void TurboQuant::split_prepare(const float* q, Query& out) const {
  // [pd_o + pd_r]: each part's channels, zero-padded and rotated by the part's rotation.
  out.rot.assign(pd_, 0.0f);
  const uint32_t n = parts_[0]->dim(), pdo = parts_[0]->padded_dim();
  for (uint32_t i = 0; i < n; ++i) out.rot[i] = q[order_[i]];
  for (uint32_t i = n; i < cfg_.dim; ++i) out.rot[pdo + i - n] = q[order_[i]];
  parts_[0]->rotation().forward(out.rot.data(), out.rot.data());
  parts_[1]->rotation().forward(out.rot.data() + pdo, out.rot.data() + pdo);
}

float TurboQuant::split_dot(const Query& q, const ConstRowRef& row, bool fast) const {
  const float* qo = q.rot.data() + parts_[0]->padded_dim();
  const TurboQuant &a = *parts_[0], &b = *parts_[1];
  const float da = fast ? a.codes_dot_fast(q.rot.data(), row.codes) : a.codes_dot(q.rot.data(), row.codes);
  const float db = fast ? b.codes_dot_fast(qo, row.codes + out_words_) : b.codes_dot(qo, row.codes + out_words_);
  return da * f16_to_f32(row.norm[0]) + db * f16_to_f32(row.norm[1]);
}

void TurboQuant::split_accumulate_rotated(const ConstRowRef& row, float weight, float* acc) const {
  // weight x (norm x centroid): the products of attention's decoded page tile, so that a query's
  // output is the same bits whichever of the two paths its step takes. No shortcut for a zero
  // weight (accumulate_rotated says why).
  float y[kMaxHeadDim + 2 * kGroup];  // [pd] decode_rotated's row
  split_decode_rotated(row, y);
  simd::axpy(cpu::has_avx2_fma(), weight, y, acc, pd_);
}

void TurboQuant::split_unrotate(const float* acc, float* out) const {
  float y[kMaxHeadDim + 2 * kGroup];  // [pd] the parts un-rotated, side by side
  const uint32_t pdo = parts_[0]->padded_dim();
  parts_[0]->unrotate(acc, y);
  parts_[1]->unrotate(acc + pdo, y + pdo);
  std::fill(out, out + pd_, 0.0f);
  const uint32_t n = parts_[0]->dim();
  for (uint32_t i = 0; i < n; ++i) out[order_[i]] = y[i];
  for (uint32_t i = n; i < cfg_.dim; ++i) out[order_[i]] = y[pdo + i - n];
}

}  // namespace tq
