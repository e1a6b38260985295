// stories260K (llama2.c checkpoint and tokenizer from ../shared/data), loaded once for the tests
// that run a real model on the CPU engine; REQUIRE_STORIES() skips a test where it is absent.
#pragma once

#include <filesystem>
#include <memory>

#include "model/test_data.h"
#include "tq/model/model.h"
#include "tq/model/tokenizer.h"

namespace tq::testing {

struct Stories {
  model::Model m;
  std::unique_ptr<model::Tokenizer> tok;
};

inline const Stories* stories() {
  static const Stories* s = []() -> const Stories* {
    const std::string mp = model::testing::shared_data_file("stories260K/stories260K.bin");
    const std::string tp = model::testing::shared_data_file("stories260K/tok512.bin");
    if (!std::filesystem::exists(mp) || !std::filesystem::exists(tp)) return nullptr;
    auto* st = new Stories{model::load_llama2c(mp), nullptr};
    st->tok = model::load_llama2c_tokenizer(tp, st->m.config.vocab_size);
    return st;
  }();
  return s;
}

}  // namespace tq::testing

#define REQUIRE_STORIES() \
  if (!::tq::testing::stories()) GTEST_SKIP() << "stories260K not found under " << ::tq::model::testing::shared_data_dir() \
                 << " (the shared data: ../shared/data beside the clone, -DTQ_SHARED_DATA=DIR or $TQ_SHARED_DATA)"
