// Random rotations applied before quantization: after one, every coordinate of a unit vector
// follows the same known density, whatever the input's outlier channels were.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tq {

enum class RotationKind : uint8_t {
  kHadamard = 0,  // random +-1 diagonal, then the normalized fast Walsh-Hadamard transform; power-of-two dims
  kDense = 1,     // Q of the QR factorization of a Gaussian matrix (Haar-distributed); any dim
};

const char* rotation_name(RotationKind k);
RotationKind parse_rotation(const std::string& s);  // "hadamard" | "dense"; throws tq::Error otherwise

class Rotation {
 public:
  // Throws tq::Error for a dim of 0 or a Hadamard rotation of a non-power-of-two dim.
  Rotation(RotationKind kind, uint32_t dim, uint64_t seed);

  RotationKind kind() const { return kind_; }
  uint32_t dim() const { return dim_; }
  uint64_t seed() const { return seed_; }

  // y = R x and x = R^T y; x, y: [dim]. In place is allowed (x == y).
  void forward(const float* x, float* y) const;
  void inverse(const float* y, float* x) const;

  // What a GPU kernel needs to apply the same rotation:
  const std::vector<float>& signs() const { return signs_; }    // [dim] +-1 (Hadamard)
  const std::vector<float>& matrix() const { return matrix_; }  // [dim][dim] row-major R (dense)

 private:
  RotationKind kind_;
  uint32_t dim_;
  uint64_t seed_;
  std::vector<float> signs_;
  std::vector<float> matrix_;
};

// In-place normalized Walsh-Hadamard transform of x[0..n) (n a power of two): the scalar reference.
void fwht_scalar(float* x, uint32_t n);
// The fastest available implementation (AVX2 when the CPU has it); bit-identical to fwht_scalar.
void fwht(float* x, uint32_t n);

inline bool is_pow2(uint32_t n) { return n && !(n & (n - 1)); }

}  // namespace tq
