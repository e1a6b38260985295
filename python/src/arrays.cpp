#include "arrays.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace tq::py {

nb::object resolve_lazy(nb::object o) {
  if (!nb::hasattr(o, "resolve_neg")) return o;  // not a torch tensor
  if (nb::cast<bool>(o.attr("is_neg")())) o = o.attr("resolve_neg")();
  if (nb::cast<bool>(o.attr("is_conj")())) o = o.attr("resolve_conj")();
  return o;
}

std::string dtype_name(nb::dlpack::dtype d) {
  const char* kind = "?";
  switch (nb::dlpack::dtype_code(d.code)) {
    case nb::dlpack::dtype_code::Int:
      kind = "int";
      break;
    case nb::dlpack::dtype_code::UInt:
      kind = "uint";
      break;
    case nb::dlpack::dtype_code::Float:
      kind = "float";
      break;
    case nb::dlpack::dtype_code::Bfloat:
      kind = "bfloat";
      break;
    case nb::dlpack::dtype_code::Complex:
      kind = "complex";
      break;
    case nb::dlpack::dtype_code::Bool:
      return "bool";
  }
  return fmt::format("{}{}", kind, d.bits);
}

namespace {

std::string shape_text(const nb::ndarray<>& a) {
  std::vector<size_t> s(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) s[i] = a.shape(i);
  return fmt::format("[{}]", fmt::join(s, ", "));
}

void check_shape(const nb::ndarray<>& a, const ArraySpec& s, const std::vector<int64_t>& shape) {
  bool ok = a.ndim() == shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] == kAny || int64_t(a.shape(i)) == shape[i];
  if (!ok) {
    std::vector<std::string> want;
    for (int64_t d : shape) want.push_back(d == kAny ? "*" : std::to_string(d));
    throw nb::value_error(
        fmt::format("{}: {} must have shape {} = [{}], got {}", s.fn, s.arg, s.dims, fmt::join(want, ", "), shape_text(a)).c_str());
  }
  // C order: each stride (in elements) is the product of the sizes after it; size-1 dims say nothing,
  // and an empty array has no element to misplace (numpy 2 gives it strides of 0).
  if (a.size() == 0) return;
  int64_t expect = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expect)
      throw nb::value_error(
          fmt::format("{}: {} must be C-contiguous (e.g. numpy.ascontiguousarray or tensor.contiguous())", s.fn, s.arg).c_str());
    expect *= int64_t(a.shape(i));
  }
}

}  // namespace

uint64_t to_uint(const IntArg& a, const char* fn, const char* name, unsigned bits) {
  const uint64_t hi = bits >= 64 ? UINT64_MAX : (uint64_t(1) << bits) - 1;
  PyObject* o = a.value.ptr();
  if (PyBool_Check(o) || !PyIndex_Check(o))
    throw nb::type_error(fmt::format("{}: {} must be an int, got {}", fn, name, nb::repr(a.value).c_str()).c_str());
  const nb::object i = nb::steal(PyNumber_Index(o));
  if (!i.is_valid()) throw nb::python_error();
  const unsigned long long v = PyLong_AsUnsignedLongLong(i.ptr());  // OverflowError below 0 or past 64 bits
  const bool overflow = v == static_cast<unsigned long long>(-1) && PyErr_Occurred();
  if (overflow) PyErr_Clear();
  if (!overflow && v <= hi) return v;
  throw nb::value_error(fmt::format("{}: {} must be in [0, 2**{}), got {}", fn, name, bits, nb::repr(a.value).c_str()).c_str());
}

void check_cpu(const nb::ndarray<>& a, const ArraySpec& s, nb::dlpack::dtype want, const char* want_name,
               const std::vector<int64_t>& shape) {
  if (a.device_type() != nb::device::cpu::value)
    throw nb::type_error(fmt::format("{}: {} must be in host memory (a numpy array or a CPU tensor)", s.fn, s.arg).c_str());
  if (a.dtype() != want)
    throw nb::type_error(
        fmt::format("{}: {} must be {}, got {} (convert with .astype(numpy.{}))", s.fn, s.arg, want_name, dtype_name(a.dtype()), want_name)
            .c_str());
  check_shape(a, s, shape);
}

int check_cuda(const nb::ndarray<>& a, const ArraySpec& s, const std::vector<nb::dlpack::dtype>& allowed, const char* allowed_names,
               const std::vector<int64_t>& shape, int device_id) {
  if (a.device_type() != nb::device::cuda::value) throw nb::type_error(fmt::format("{}: {} must be a CUDA tensor", s.fn, s.arg).c_str());
  if (device_id >= 0 && a.device_id() != device_id)
    throw nb::value_error(fmt::format("{}: {} is on cuda:{}, the cache on cuda:{}", s.fn, s.arg, a.device_id(), device_id).c_str());
  int found = -1;
  for (size_t i = 0; i < allowed.size(); ++i)
    if (a.dtype() == allowed[i]) found = int(i);
  if (found < 0) throw nb::type_error(fmt::format("{}: {} must be {}, got {}", s.fn, s.arg, allowed_names, dtype_name(a.dtype())).c_str());
  check_shape(a, s, shape);
  return found;
}

}  // namespace tq::py
