// Shared basics: the error type every bad input throws, and the host/device annotation. Included
// by device code too, so it compiles as C++17 and C++20 and includes nothing heavy (TQ_CHECK,
// which needs fmt, is in check.h).
#pragma once

#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define TQ_HD __host__ __device__ __forceinline__
#else
#define TQ_HD inline
#endif

namespace tq {

// Thrown for every bad input (shape, width, spec, NaN...). The message names the offending value.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An Error for sizes past what the machine allows (a host cache past its limit): a command adds
// which of its options size it.
class SizeError : public Error {
 public:
  using Error::Error;
};

}  // namespace tq
