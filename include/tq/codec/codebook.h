// Lloyd-Max optimal scalar codebooks for one coordinate of a uniformly random unit vector.
//
// In dimension d, a coordinate x of a random unit vector has the density
//   f(x) = Gamma(d/2) / (sqrt(pi) Gamma((d-1)/2)) * (1 - x^2)^((d-3)/2),  x in [-1, 1]
// (a scaled Beta), which tends to N(0, 1/d). The codebook minimizes E (x - c(x))^2 for that exact
// density, computed by numerical integration (deterministic, no sampling) and cached per (d, b).
#pragma once

#include <cstdint>
#include <vector>

namespace tq {

// The grid of 2- and 3-bit centroids in z-units: multiples of 1/32 are int8 at |z| < 4.
inline constexpr int kCentroidGrid = 32;

struct Codebook {
  uint32_t dim = 0;  // the dimension d of the unit vectors; 0 for the Gaussian limit N(0, 1)
  uint32_t bits = 0;
  // [2^bits], ascending, symmetric about 0. For dim > 0 each is h / sqrt(dim) with h (z-units)
  // a multiple of 1 / kCentroidGrid at 2 and 3 bits (the GPU's int8 key operands) and an fp16
  // number at other widths (the GPU's fp16 tables): the format's definition. tcq_codebook's 4-bit
  // unions are on the grid too.
  std::vector<float> centroids;
  std::vector<float> boundaries;  // [2^bits - 1], midpoints between neighbouring centroids
  // Expected squared error of one unit vector, E||x - x~||^2 = d * E(x_i - c(x_i))^2, from the
  // density (for the Gaussian limit: E(z - c(z))^2 with z ~ N(0, 1)).
  double expected_mse = 0;
  uint32_t iterations = 0;  // Lloyd iterations until convergence

  // Index of the nearest centroid: the number of boundaries strictly below x. Ties go down.
  uint8_t encode(float x) const;
};

// The codebook for unit vectors in dimension `dim` (3 <= dim <= 65536) at `bits` (1..8). Thread-safe;
// computed once per process and kept.
const Codebook& codebook(uint32_t dim, uint32_t bits);

// The Gaussian-limit codebook for N(0, 1): centroids in units of 1/sqrt(d).
const Codebook& gaussian_codebook(uint32_t bits);

// The 2-bit codebook of value rows (format.h value_levels_uniform): the uniform levels -1.5, -0.5,
// 0.5, 1.5 in z-units, boundaries at their midpoints. Its squared error is 1.0% above the 2-bit
// Lloyd-Max codebook's at d = 128 (0.1173 against 0.1161, per coordinate in z-units), and its
// levels are c - 1.5 for code c: the GPU's decode builds them from the code's bits with one LOP3
// and one HADD2 (an fp16 magic number), where a table needs a selector and two lookups.
// bits must be 2. dim as codebook().
const Codebook& uniform_codebook(uint32_t dim, uint32_t bits);

// The union of a trellis-coded row of `bits` (1..7) bits a coordinate (format.h kTqTcq): the
// (bits + 1)-bit codebook of `dim`, its centroids on the 1/32 grid up to 4 union bits (3t keys'
// levels are then int8 operands on the GPU, as 2- and 3-bit centroids are), fp16 numbers above.
const Codebook& tcq_codebook(uint32_t dim, uint32_t bits);

}  // namespace tq
