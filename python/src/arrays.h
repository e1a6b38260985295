// Checking arrays that come in from Python (numpy, torch, anything with DLPack or the buffer
// protocol) and making numpy arrays that go out. The checks raise TypeError for a wrong dtype or
// device and ValueError for a wrong shape, each naming the function, the argument, what it got and
// what it needs, so that a caller sees "quantize: x must be float32, got float64" instead of
// nanobind's generic "incompatible function arguments".
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tq::py {

namespace nb = nanobind;

std::string dtype_name(nb::dlpack::dtype d);

// The dtypes the bindings take, as DLPack names them.
inline const nb::dlpack::dtype kF32 = nb::dtype<float>(), kU8 = nb::dtype<uint8_t>(), kI64 = nb::dtype<int64_t>(),
                               kI32 = nb::dtype<int32_t>();
inline const nb::dlpack::dtype kF16{uint8_t(nb::dlpack::dtype_code::Float), 16, 1};

// One expected dimension: a fixed size, or any size (kAny) that is returned by check().
inline constexpr int64_t kAny = -1;

struct ArraySpec {
  const char* fn;    // the Python function, e.g. "Quantizer.quantize"
  const char* arg;   // the argument, e.g. "x"
  const char* dims;  // how the shape reads in a message, e.g. "[rows, dim]"
};

// Checks a CPU array: dtype `want` (named `want_name`), shape `shape` (kAny where any size goes),
// C-contiguous. Throws nb::type_error / nb::value_error.
void check_cpu(const nb::ndarray<>& a, const ArraySpec& s, nb::dlpack::dtype want, const char* want_name,
               const std::vector<int64_t>& shape);

// Inputs that are only read take read-only arrays too (np.frombuffer over bytes, a read-only
// memmap, KvCache.data): the same checks.
inline void check_cpu(const nb::ndarray<nb::ro>& a, const ArraySpec& s, nb::dlpack::dtype want, const char* want_name,
                      const std::vector<int64_t>& shape) {
  check_cpu(nb::ndarray<>(a), s, want, want_name, shape);
}

// The same on a CUDA device (any dtype among `allowed`, the index of the one found returned).
int check_cuda(const nb::ndarray<>& a, const ArraySpec& s, const std::vector<nb::dlpack::dtype>& allowed, const char* allowed_names,
               const std::vector<int64_t>& shape, int device_id);

// A numpy array that owns `v` (moved into a capsule): no copy of the data.
template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& v, std::initializer_list<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owned->data(), shape, owner);
}

}  // namespace tq::py
