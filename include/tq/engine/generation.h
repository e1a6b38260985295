// The rules around generation that every caller shares: how a prompt becomes tokens (chat
// template, BOS), which tokens stop it, and the loop that samples, feeds back and stops.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tq/engine/engine.h"
#include "tq/engine/sampler.h"
#include "tq/engine/speculative.h"
#include "tq/model/model.h"
#include "tq/model/tokenizer.h"

namespace tq::engine {

// A chat prompt wrapped in the model's template (ChatML, Llama-3); `prompt` as is when none.
std::string apply_chat_template(model::ChatTemplate t, const std::string& prompt);

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};
// A conversation in the template, each message in turn, ending with the opening of the
// assistant's reply (what HF's apply_chat_template gives with add_generation_prompt, but for the
// default system turn some models' own templates add when the conversation has none, SmolLM2's
// and Qwen2's: pass a system message to have one). Throws tq::Error for the template None or an
// unknown role.
std::string apply_chat_template(model::ChatTemplate t, const std::vector<ChatMessage>& messages);

// Whether a text starts with BOS: when the tokenizer has one and asks for it (GGUF
// tokenizer.ggml.add_bos_token), and always for llama2.c checkpoints (run.c encodes with BOS).
bool wants_bos(const model::Model& m, const model::Tokenizer& tok);

// The tokens of a prompt: wrapped in the chat template when `chat` (throws tq::Error when the
// model has none), BOS as wants_bos() says. An empty prompt becomes BOS alone (EOS when there is
// no BOS: the model still needs a token to predict from); throws tq::Error when neither exists.
std::vector<int> prompt_tokens(const model::Model& m, const model::Tokenizer& tok, const std::string& text, bool chat);

// Whether generating `id` ends the text: EOS, end of turn (e.g. <|im_end|>), and BOS for llama2.c
// checkpoints (run.c stops there: its stories are separated by BOS).
bool is_stop_token(const model::Model& m, const model::Tokenizer& tok, int id);

struct GenerateOptions {
  uint32_t max_tokens = 256;  // most tokens to generate
  uint32_t context = 0;       // most tokens of prompt + generated text (the engine's context); 0: no limit
  // Speculative decoding (speculative.h): null, or a drafter already told the prompt. Each step
  // then feeds the last token with up to length() drafts and keeps what the target agrees with.
  Speculation* speculation = nullptr;
};

// Continues sequence `seq` of `e`, whose last token's logits ([vocab]) are `logits` (from the
// prefill): samples a token, ends on a stop token (neither passed on nor fed), else passes it to
// on_token and feeds it back for the next logits, until max_tokens are generated or the text
// fills `context`. The last token is not fed (nothing would read its logits). Returns the number
// of tokens passed to on_token. With speculation the sequence ends as without: rejected drafts are
// taken back, and the tokens fed are the same.
uint32_t generate(Engine& e, int seq, std::vector<float> logits, Sampler& sampler, const model::Model& m, const model::Tokenizer& tok,
                  const GenerateOptions& o, const std::function<void(int)>& on_token);

}  // namespace tq::engine
