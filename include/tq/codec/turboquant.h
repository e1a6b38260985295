// TurboQuant (Zandieh et al., arXiv 2504.19874): the codec of one row, MSE or prod flavour.
//
// MSE, b bits:  store fp16 ||x||; rotate the zero-padded unit vector; one Lloyd-Max index per
//               coordinate of the rotated vector (codebook for the padded dimension).
// prod, b bits: MSE at b-1 bits; the residual r of the *unit* vector in the rotated domain is kept
//               as fp16 ||r|| and sign(S r), S a Gaussian [pd][pd] matrix (QJL). The estimate
//               <y, x> ~ ||x|| (<Ry, c> + ||r|| sqrt(pi/2)/pd <S R y, sign(S r)>) is unbiased.
//
// split, b bits (a fractional width, b + 0.5; format.h kTqSplit): the paper's outlier split. The
//               channels are cut into split_outliers(dim) outlier channels and the rest; each part
//               is its own MSE instance (own rotation, codebook and fp16 norm), the outliers at
//               b + 1 bits and the rest at b. A row is the outliers' codes then the rest's, and two
//               norms (norm[0] outliers, norm[1] rest). The rotated domain is the parts' rotated
//               domains side by side: [pd_o + pd_r].
//
// tcq, b bits (kTqTcq, "k3t"): MSE rows whose codes are a trellis path (tq/codec/trellis.h): the
//               same rotation and fp16 norm, each coordinate's level from one subset of the
//               (b + 1)-bit codebook. bits 1..7, not prod, not split.
//
// The row's pieces live wherever the caller says (a paged block keeps codes, signs and norms in
// separate sections): see RowRef. This is the scalar reference; fast paths are checked against it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "tq/codec/codebook.h"
#include "tq/format.h"
#include "tq/codec/rotation.h"

namespace tq {

struct TqConfig {
  uint32_t dim = 128;  // head dim; padded to a multiple of 32 for the rotation and the codes
  uint32_t bits = 3;   // total bits per coordinate (prod: bits-1 for the codebook + 1 QJL bit)
  bool prod = false;
  RotationKind rotation = RotationKind::kHadamard;
  uint64_t seed = 0;             // seeds the rotation and, for prod, S
  bool norm_correction = false;  // MSE only: store ||x|| / ||c|| so that the decoded row has norm ||x||
  // MSE only: store ||x|| / <c, u> (u the rotated unit row, c its centroids) so that the decoded
  // row x^ has <x^, x> = ||x||^2: its component along x is exact, the rest averages to zero over
  // rotations, so q.x^ is unbiased. Plain MSE rows are shrunk, <x^, x> ~ (1 - D_mse) ||x||^2.
  bool norm_unbiased = false;
  bool split = false;            // bits + 0.5: outlier channels at bits + 1, the rest at bits (bits 1..7, not prod)
  // split only: the outlier channels, split_outliers(dim) distinct indices below dim (any order;
  // kept ascending). Empty: channels 0 .. split_outliers(dim) - 1.
  std::vector<uint16_t> outliers;
  bool tcq = false;  // trellis-coded codes (format.h kTqTcq)
  // uniform_codebook's levels instead of Lloyd-Max's: 2-bit plain MSE rows only (the format's
  // 2-bit values, value_levels_uniform; codec_config sets it)
  bool uniform = false;
};

// Whether a Hadamard rotation fits a row of head_dim channels: every rotated part (the row, or a
// split row's outliers and rest) pads to a power of two.
inline bool hadamard_fits(uint32_t head_dim, bool split) {
  if (!split) return is_pow2(padded_dim(head_dim));
  const uint32_t n = split_outliers(head_dim);
  return is_pow2(padded_dim(n)) && is_pow2(padded_dim(head_dim - n));
}

// Where one encoded row lives. codes: [code_row_bytes/4] words; qjl: [pd/8] bytes (prod only).
struct RowRef {
  uint32_t* codes = nullptr;
  uint8_t* qjl = nullptr;
  uint16_t* norm = nullptr;   // fp16; split rows: [2] (outliers, rest)
  uint16_t* rnorm = nullptr;  // fp16, prod only
};
struct ConstRowRef {
  const uint32_t* codes = nullptr;
  const uint8_t* qjl = nullptr;
  const uint16_t* norm = nullptr;
  const uint16_t* rnorm = nullptr;
};

class TurboQuant {
 public:
  // Throws tq::Error on bits outside 1..8 (prod: 1..8, 1 meaning QJL alone), dim outside
  // 1..kMaxHeadDim, or a Hadamard rotation of a padded dim that is not a power of two.
  explicit TurboQuant(const TqConfig& cfg);
  // The bytes of the tables an instance of `cfg` holds (the rotation: a dense matrix, or a Hadamard
  // rotation's signs; prod's QJL matrix; a split row's two parts), counted without building them,
  // so that a cache's size is checked before the work (a dense rotation of 992 channels is ~4 MiB
  // and ~1 s). The codebooks, shared by every instance of a width, are not counted.
  static size_t table_bytes(const TqConfig& cfg);

  const TqConfig& config() const { return cfg_; }
  uint32_t dim() const { return cfg_.dim; }
  // The rotated domain's size: padded_dim(dim); split rows: the parts' padded dims summed, which is
  // more than padded_dim(dim) for heads of 32 channels or fewer (each part pads to 32).
  uint32_t padded_dim() const { return pd_; }
  uint32_t code_bits() const { return cfg_.prod ? cfg_.bits - 1 : cfg_.bits; }  // 0 for prod at 1 bit; split: the rest's
  // The levels a code indexes: 2^code_bits() of them (tcq rows: the union, 2^(code_bits() + 1)).
  // Null when code_bits() == 0, and for split rows (see part()).
  const Codebook* codebook() const { return cb_; }
  // Throws tq::Error for split rows, which have one rotation per part (part(i)->rotation()).
  const Rotation& rotation() const;
  const std::vector<float>& qjl_matrix() const { return s_; }  // [pd][pd] row-major, prod only
  TensorCode tensor_code() const {
    return {cfg_.split ? Encoding::kTqSplit : cfg_.prod ? Encoding::kTqProd : cfg_.tcq ? Encoding::kTqTcq : Encoding::kTqMse, uint8_t(cfg_.bits)};
  }
  // Split rows: part 0 (the outliers) and part 1 (the rest), each a plain MSE instance over its own
  // channels; channel(i) is the head channel at position i of [outliers, rest]. Null / unused otherwise.
  bool split() const { return cfg_.split; }
  const TurboQuant* part(uint32_t i) const { return parts_[i].get(); }
  uint32_t channel(uint32_t i) const { return order_[i]; }

  // x: [dim]. Throws tq::Error (naming index and value) for NaN/Inf, or a norm beyond fp16 range.
  void encode(const float* x, const RowRef& out) const;
  // out: [dim]
  void decode(const ConstRowRef& in, float* out) const;

  // A query prepared once for many rows: rotated (and projected by S for prod).
  struct Query {
    std::vector<float> rot;  // [pd] R q (padded)
    std::vector<float> sq;   // [pd] S R q, prod only
  };
  void prepare(const float* q, Query& out) const;
  // <q, decode(row)>, without materializing the decoded row: the scalar reference.
  float dot(const Query& q, const ConstRowRef& row) const;

  // The same through the SIMD path when the CPU has one (MSE rows); equal to dot() within float
  // summation error (tests/core/test_turboquant.cpp states the bound).
  float dot_fast(const Query& q, const ConstRowRef& row) const;
  // Scoring many queries against one row: decode the row once (decode_rotated), then
  // dot_decoded(q, decoded, row) == dot_fast(q, row) bit for bit, for every query. Only where
  // can_score_decoded() (no QJL part, the AVX2 kernel present).
  bool can_score_decoded() const;
  float dot_decoded(const Query& q, const float* decoded, const ConstRowRef& row) const;

  // Decoded row in the rotated domain, unit norm scale: c[codes] (+ QJL term; tcq rows: the
  // levels of the trellis path). out: [pd]. Split rows have no single norm: each part comes times
  // its own norm.
  void decode_rotated(const ConstRowRef& in, float* out) const;
  // acc += weight * norm * decode_rotated(row): accumulating values for attention stays in the
  // rotated domain; un-rotate the sum once with unrotate(). acc: [pd]. Split rows: acc +=
  // weight * decode_rotated(row), whose parts carry their norms.
  void accumulate_rotated(const ConstRowRef& row, float weight, float* acc) const;
  // out = the rotated-domain acc [pd] taken back to the head's channels: rotation().inverse() for
  // one instance (out: [pd]), each part's inverse and the channels put back for split rows
  // (out[0 .. dim), the rest of [pd] zero).
  void unrotate(const float* acc, float* out) const;

 private:
  // <rotated query, c[codes]> of this instance's codes (tcq rows: their levels), without the norm:
  // scalar / SIMD when present.
  float codes_dot(const float* qrot, const uint32_t* codes) const;
  // A row's levels, unit norm scale: c[codes] (tcq rows: the levels of the trellis path), without
  // the QJL term; code_bits() > 0. out: [pd]
  void levels(const uint32_t* codes, float* out) const;
  float codes_dot_fast(const float* qrot, const uint32_t* codes) const;
  // Split rows (turboquant_split.cpp): the split branch of each method of the same name.
  void init_split();
  ConstRowRef part_row(const ConstRowRef& row, uint32_t i) const;
  void split_encode(const float* x, const RowRef& out) const;
  void split_decode(const ConstRowRef& in, float* out) const;
  void split_decode_rotated(const ConstRowRef& in, float* out) const;
  void split_prepare(const float* q, Query& out) const;
  float split_dot(const Query& q, const ConstRowRef& row, bool fast) const;
  void split_accumulate_rotated(const ConstRowRef& row, float weight, float* acc) const;
  void split_unrotate(const float* acc, float* out) const;

  TqConfig cfg_;
  uint32_t pd_;
  const Codebook* cb_ = nullptr;
  std::optional<Rotation> rot_;  // absent for split rows
  std::vector<float> s_;
  std::shared_ptr<const TurboQuant> parts_[2];  // split rows only (immutable, shared by copies)
  std::vector<uint16_t> order_;                 // split rows: [dim] head channel of each position, outliers first
  uint32_t out_words_ = 0;                      // split rows: words of the outlier part's codes
};

// sqrt(pi/2) / pd: the QJL estimator's scale.
double qjl_scale(uint32_t pd);

}  // namespace tq
