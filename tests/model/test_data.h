// Locating ../shared/data (the model and texts used by the data-dependent tests).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

#include <unistd.h>

#include <gtest/gtest.h>

#include "tq/common.h"

namespace tq::model::testing {

// $TQ_SHARED_DATA, else the directory CMake passed (<repo>/../shared/data).
inline std::string shared_data_dir() {
  if (const char* e = std::getenv("TQ_SHARED_DATA"); e != nullptr && *e != '\0') return e;
#ifdef TQ_SHARED_DATA_DIR
  return TQ_SHARED_DATA_DIR;
#else
  return "../shared/data";
#endif
}

inline std::string shared_data_file(const std::string& rel) { return shared_data_dir() + "/" + rel; }

// A fresh file path in the temp directory (removed by the caller or left for the OS).
inline std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("tq_model_test_" + std::to_string(::getpid()) + "_" + name)).string();
}

// Expects fn() to throw tq::Error with a message containing `needle` (bad input is named).
template <typename Fn>
void expect_error(Fn fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

}  // namespace tq::model::testing

// Skips the test (with the reason) when a shared data file is absent.
#define TQ_REQUIRE_SHARED(path)                                                                         \
  do {                                                                                                 \
    if (!std::filesystem::exists(path))                                                                \
      GTEST_SKIP() << "shared data file " << (path)                                 \
                   << " not found (the shared data: ../shared/data beside the clone, -DTQ_SHARED_DATA=DIR or $TQ_SHARED_DATA)"; \
  } while (0)
