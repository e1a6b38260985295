// The rules around generation that every caller shares: how a prompt becomes tokens (chat
// template, BOS) and which tokens stop it.
#pragma once

#include <string>
#include <vector>

#include "tq/model/model.h"
#include "tq/model/tokenizer.h"

namespace tq::engine {

// A chat prompt wrapped in the model's template (ChatML, Llama-3); `prompt` as is when none.
std::string apply_chat_template(model::ChatTemplate t, const std::string& prompt);

}  // namespace tq::engine
