// Shared basics: the error type every bad input throws, and the host/device annotation.
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

}  // namespace tq

// TQ_CHECK(cond, fmt-args...): throws tq::Error with a formatted message when cond is false.
#define TQ_CHECK(cond, ...)                                 \
  do {                                                      \
    if (!(cond)) throw ::tq::Error(::fmt::format(__VA_ARGS__)); \
  } while (0)
