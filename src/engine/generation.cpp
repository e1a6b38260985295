#include "tq/engine/generation.h"

#include "tq/check.h"

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

std::string apply_chat_template(model::ChatTemplate t, const std::vector<ChatMessage>& messages) {
  TQ_CHECK(t != model::ChatTemplate::None, "the model has no chat template");
  std::string out;
  for (const ChatMessage& m : messages) {
    TQ_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant", "unknown chat role '{}' (system, user or assistant)", m.role);
    if (t == model::ChatTemplate::ChatML)
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    else
      out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
  }
  out += t == model::ChatTemplate::ChatML ? "<|im_start|>assistant\n" : "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

bool wants_bos(const model::Model& m, const model::Tokenizer& tok) {
  return tok.bos_id() >= 0 && (tok.add_bos_default() || m.config.source == model::WeightSource::Llama2c);
}

std::vector<int> prompt_tokens(const model::Model& m, const model::Tokenizer& tok, const std::string& text, bool chat) {
  TQ_CHECK(!chat || m.config.chat_template != model::ChatTemplate::None, "chat prompt: the model has no chat template");
  std::vector<int> ids = tok.encode(chat ? apply_chat_template(m.config.chat_template, text) : text, wants_bos(m, tok));
  if (ids.empty()) {
    const int start = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();
    TQ_CHECK(start >= 0, "the prompt is empty and the tokenizer has neither a BOS nor an EOS token to start from");
    ids.push_back(start);
  }
  return ids;
}

bool is_stop_token(const model::Model& m, const model::Tokenizer& tok, int id) {
  if (id < 0) return false;  // eot_id / bos_id are -1 when the tokenizer has none
  return id == tok.eos_id() || id == tok.eot_id() || (m.config.source == model::WeightSource::Llama2c && id == tok.bos_id());
}

uint32_t generate(Engine& e, int seq, std::vector<float> logits, Sampler& sampler, const model::Model& m, const model::Tokenizer& tok,
                  const GenerateOptions& o, const std::function<void(int)>& on_token) {
  const uint32_t start = e.seq_len(seq);
  uint32_t generated = 0;
  // Another token is sampled while both limits allow one more: it goes at position start + generated.
  const auto more = [&] { return generated < o.max_tokens && (o.context == 0 || start + generated < o.context); };
  if (!more()) return 0;
  // The prefill's logits are here already; later steps sample on the runner's device (only the
  // ids come back).
  int next = sampler.sample(logits);
  while (!is_stop_token(m, tok, next)) {
    on_token(next);
    ++generated;
    if (!more()) break;
    const std::vector<BatchItem> step{BatchItem{seq, {next}, false}};
    next = e.forward_sample(step, {sampler.next_args()})[0];
  }
  return generated;
}

}  // namespace tq::engine
