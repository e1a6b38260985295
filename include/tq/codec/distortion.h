// The measurement harness behind `tq distortion` and the tests: quantize random unit vectors with
// any Quantizer and measure the reconstruction error and the inner-product error.
#pragma once

#include <cstdint>

#include "tq/codec/quantizer.h"
#include "tq/codec/turboquant.h"

namespace tq {

struct DistortionStats {
  uint64_t samples = 0;
  double mse = 0;         // mean ||x - x~||^2 over unit vectors x
  double mse_stderr = 0;  // standard error of that mean
  // Queries y are unit vectors correlated with x (y = normalize(x + g), g ~ N(0, I/d)), so that
  // <y, x> is about 0.7 and a multiplicative bias shows.
  double ip_bias = 0;         // mean (<y, x~> - <y, x>)
  double ip_bias_stderr = 0;  // its standard error
  double ip_ratio = 0;        // mean <y, x~> / mean <y, x>  (2/pi for 1-bit MSE in high dimension, 1 if unbiased)
  double ip_var = 0;          // variance of <y, x~> - <y, x>
};

// `samples` random unit vectors in dimension q.dim(), quantized in batches; deterministic for a seed.
DistortionStats measure_distortion(const Quantizer& q, uint64_t samples, uint64_t seed);

// Paper figures (Zandieh et al., table of D_mse for b = 1..4) and its bounds for unit vectors.
double paper_mse(uint32_t bits);        // 0.36, 0.117, 0.03, 0.009; 0 when the paper gives none
double mse_lower_bound(uint32_t bits);  // 4^-b, for any quantizer
double mse_upper_bound(uint32_t bits);  // sqrt(3) pi / 2 * 4^-b, TurboQuant-MSE's guarantee

// One row of the distortion table (`tq distortion`, the Python module's distortion()): TurboQuant
// of `cfg` measured on `samples` random unit vectors drawn from `seed`, next to what theory says.
struct DistortionRow {
  TqConfig config;
  DistortionStats stats;
  double mse_expected = 0;  // MSE rows: the Lloyd-Max distortion of the exact coordinate density; 0 for prod, and
                            // where the dimension (a split's part) is padded to a multiple of 32
                            // (split rows: the parts' weighted by their share of the channels, as mse_upper)
  double mse_paper = 0;     // MSE rows: the paper's table (paper_mse); 0 where it gives none and for prod
  double mse_lower = 0;     // mse_lower_bound(bits); split rows: 4^-(code bits per coordinate)
  double mse_upper = 0;     // mse_upper_bound(bits)
  // prod rows: the paper's QJL bound on stats.ip_var, pi/(2 pd) E||r||^2 with E||r||^2 the
  // (bits-1)-bit MSE (1 at one bit); 0 for MSE rows.
  double ip_var_bound = 0;
};
DistortionRow distortion_row(const TqConfig& cfg, uint64_t samples, uint64_t seed);

// E||x - x~||^2 of trellis-coded rows (TqConfig::tcq) of `bits` (1..7) at padded dim `pd`, which
// has no closed form: measured on 4000 random unit vectors (fixed seeds; about 1% standard error),
// once per process for each (pd, bits). The rotation is Hadamard where pd is a power of two.
double trellis_mse(uint32_t pd, uint32_t bits);

}  // namespace tq
