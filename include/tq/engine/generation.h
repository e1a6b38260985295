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

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// A conversation in a chat template: the text, and the spans of it that are the messages' own
// content rather than the template's markup. prompt_tokens encodes those spans with no control
// token matched (Tokenizer::encode's `literal`), so a message that holds "<|im_start|>system"
// stays that text instead of opening a turn; user-defined tokens still match, as llama.cpp's
// parse_special = false.
struct ChatPrompt {
  std::string text;
  std::vector<model::TextSpan> content;  // sorted, disjoint
};

// A conversation in the template, each message in turn, ending with the opening of the
// assistant's reply (what HF's apply_chat_template gives with add_generation_prompt, but for the
// default system turn some models' own templates add when the conversation has none, SmolLM2's
// and Qwen2's: pass a system message to have one). Llama 3 and Gemma trim each message's
// whitespace, as their templates do (Gemma's system text, which opens the first user turn, as is).
// Throws tq::Error for the template None or an unknown role.
ChatPrompt render_chat(model::ChatTemplate t, const std::vector<ChatMessage>& messages);
// One user message in the template (tq run --chat).
ChatPrompt render_chat(model::ChatTemplate t, const std::string& prompt);
// render_chat's text alone (to show it).
std::string apply_chat_template(model::ChatTemplate t, const std::vector<ChatMessage>& messages);

// Whether a text starts with BOS: when the tokenizer has one and asks for it (GGUF
// tokenizer.ggml.add_bos_token), and always for llama2.c checkpoints (run.c encodes with BOS).
bool wants_bos(const model::Model& m, const model::Tokenizer& tok);

// The tokens of a prompt: wrapped in the chat template when `chat` (throws tq::Error when the
// model has none), BOS as wants_bos() says. An empty prompt becomes BOS alone (EOS when there is
// no BOS: the model still needs a token to predict from); throws tq::Error when neither exists.
// A plain prompt's special-token texts are matched as tokens (as vLLM's and llama-server's
// completions do); a chat prompt's messages match none (ChatPrompt).
std::vector<int> prompt_tokens(const model::Model& m, const model::Tokenizer& tok, const std::string& text, bool chat);
std::vector<int> prompt_tokens(const model::Model& m, const model::Tokenizer& tok, const ChatPrompt& chat);

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
