// TQ_CHECK: the one way host code refuses bad input, with a message that names the value.
#pragma once

#include <fmt/format.h>

#include "tq/common.h"

// TQ_CHECK(cond, fmt-args...): throws tq::Error with a formatted message when cond is false.
#define TQ_CHECK(cond, ...)                                 \
  do {                                                      \
    if (!(cond)) throw ::tq::Error(::fmt::format(__VA_ARGS__)); \
  } while (0)
