// Loading what the commands need: a model, its tokenizer, and the default model's location.
#pragma once

#include <memory>
#include <string>

#include "tq/model/model.h"
#include "tq/model/tokenizer.h"

namespace tq::cli {

// File name of the default model, fetched into models/ by scripts/get_model.sh.
inline constexpr const char* kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

struct LoadedModel {
  std::string path;
  model::Model model;
  std::unique_ptr<model::Tokenizer> tokenizer;
};

// models/<kDefaultModelFile> under the working directory or the source tree; throws tq::Error
// saying to run scripts/get_model.sh when neither has it.
std::string default_model_path();
// path "" means the default model. GGUF files carry their tokenizer; llama2.c checkpoints need
// `tokenizer_path` (tokenizer.bin). Throws tq::Error on unreadable or malformed files.
LoadedModel load_model_and_tokenizer(const std::string& path, const std::string& tokenizer_path);

}  // namespace tq::cli
