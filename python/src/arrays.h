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

// An int argument taken as it came and converted in the function's body (to_uint), so that a wrong
// one is refused naming the function, the argument and the value: nanobind's own conversion read
// "64" and True as ints (as int() does) and answered -1 or 2**32 for a uint32_t with its list of
// signatures. Signatures show it as `int`.
struct IntArg {
  nb::object value;
};

// The argument as an unsigned integer of `bits` bits (32 or 64): TypeError unless it is an int or
// has __index__ (numpy's integers), a bool not being one; ValueError outside [0, 2**bits).
uint64_t to_uint(const IntArg& a, const char* fn, const char* name, unsigned bits);
inline uint32_t to_u32(const IntArg& a, const char* fn, const char* name) { return uint32_t(to_uint(a, fn, name, 32)); }
inline uint64_t to_u64(const IntArg& a, const char* fn, const char* name) { return to_uint(a, fn, name, 64); }

// A read-only array argument, as nanobind takes it (DLPack, the buffer protocol), with a torch
// tensor's lazy negation or conjugation resolved first: torch exports such a tensor's DLPack without
// them (x._neg_view() came in as x's values, not -x's), where its numpy() refuses it.
struct RoArray {
  nb::ndarray<nb::ro> a;
};
// `o` with a torch tensor's negative and conjugate bits resolved (a copy then); anything else as is.
nb::object resolve_lazy(nb::object o);

// A numpy array that owns `v` (moved into a capsule): no copy of the data.
template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& v, std::initializer_list<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owned->data(), shape, owner);
}

}  // namespace tq::py

namespace nanobind::detail {
template <>
struct type_caster<tq::py::IntArg> {
  NB_TYPE_CASTER(tq::py::IntArg, const_name("int"))
  bool from_python(handle src, uint8_t, cleanup_list*) noexcept {
    value.value = borrow(src);
    return true;
  }
};
template <>
struct type_caster<tq::py::RoArray> {
  NB_TYPE_CASTER(tq::py::RoArray, const_name("ndarray"))
  bool from_python(handle src, uint8_t flags, cleanup_list* cleanup) noexcept {
    object o;
    try {
      o = tq::py::resolve_lazy(borrow(src));
    } catch (...) {  // (a python_error clears itself)
      return false;
    }
    make_caster<ndarray<ro>> c;
    if (!c.from_python(o, flags, cleanup)) return false;
    value.a = c.value;  // holds the DLPack tensor it came from (the resolved copy, when there is one)
    return true;
  }
};
}  // namespace nanobind::detail
