#include "tq/engine/generation.h"

namespace tq::engine {

std::string apply_chat_template(model::ChatTemplate t, const std::string& prompt) {
  switch (t) {
    case model::ChatTemplate::ChatML:
      return "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n";
    case model::ChatTemplate::Llama3:
      return "<|start_header_id|>user<|end_header_id|>\n\n" + prompt + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
    case model::ChatTemplate::None: break;
  }
  return prompt;
}

}  // namespace tq::engine
