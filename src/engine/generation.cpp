#include "tq/engine/generation.h"

#include "tq/check.h"

namespace tq::engine {

namespace {
// Builds a ChatPrompt: markup as is, content with its span recorded.
struct ChatWriter {
  ChatPrompt p;
  ChatWriter& markup(std::string_view s) {
    p.text += s;
    return *this;
  }
  ChatWriter& content(std::string_view s) {
    if (!s.empty()) p.content.push_back({p.text.size(), p.text.size() + s.size()});
    p.text += s;
    return *this;
  }
};

// Jinja's `trim`, which the Llama 3 and Gemma 3 templates apply to a message's content (ChatML's
// do not): whitespace off both ends.
std::string_view trimmed(std::string_view s) {
  constexpr std::string_view ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  return b == std::string_view::npos ? std::string_view{} : s.substr(b, s.find_last_not_of(ws) - b + 1);
}

void check_role(const ChatMessage& m) {
  TQ_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant", "unknown chat role '{}' (system, user or assistant)", m.role);
}
}  // namespace

ChatPrompt render_chat(model::ChatTemplate t, const std::string& prompt) { return render_chat(t, std::vector<ChatMessage>{{"user", prompt}}); }

ChatPrompt render_chat(model::ChatTemplate t, const std::vector<ChatMessage>& messages) {
  TQ_CHECK(t != model::ChatTemplate::None, "the model has no chat template");
  ChatWriter w;
  if (t == model::ChatTemplate::Gemma) {
    // Gemma has no system turn: its template puts the system text before the first user text,
    // separated by a blank line; the assistant's turns are the "model" role's.
    std::vector<const std::string*> system;  // the system texts waiting for a user turn
    const auto put_system = [&] {
      for (size_t i = 0; i < system.size(); ++i) (i ? w.markup("\n\n") : w).content(*system[i]);
    };
    for (const ChatMessage& m : messages) {
      check_role(m);
      if (m.role == "system") {
        system.push_back(&m.content);
        continue;
      }
      w.markup("<start_of_turn>").markup(m.role == "user" ? "user" : "model").markup("\n");
      if (m.role == "user" && !system.empty()) {
        put_system();
        w.markup("\n\n");
        system.clear();
      }
      w.content(trimmed(m.content)).markup("<end_of_turn>\n");
    }
    if (!system.empty()) {  // a system text no user turn followed
      w.markup("<start_of_turn>user\n");
      put_system();
      w.markup("<end_of_turn>\n");
    }
    return w.markup("<start_of_turn>model\n").p;
  }
  for (const ChatMessage& m : messages) {
    check_role(m);
    if (t == model::ChatTemplate::ChatML)
      w.markup("<|im_start|>").markup(m.role).markup("\n").content(m.content).markup("<|im_end|>\n");
    else
      w.markup("<|start_header_id|>").markup(m.role).markup("<|end_header_id|>\n\n").content(trimmed(m.content)).markup("<|eot_id|>");
  }
  w.markup(t == model::ChatTemplate::ChatML ? "<|im_start|>assistant\n" : "<|start_header_id|>assistant<|end_header_id|>\n\n");
  return w.p;
}

std::string apply_chat_template(model::ChatTemplate t, const std::vector<ChatMessage>& messages) { return render_chat(t, messages).text; }

bool wants_bos(const model::Model& m, const model::Tokenizer& tok) {
  return tok.bos_id() >= 0 && (tok.add_bos_default() || m.config.source == model::WeightSource::Llama2c);
}

namespace {
std::vector<int> start_token_if_empty(const model::Tokenizer& tok, std::vector<int> ids) {
  if (ids.empty()) {
    const int start = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();
    TQ_CHECK(start >= 0, "the prompt is empty and the tokenizer has neither a BOS nor an EOS token to start from");
    ids.push_back(start);
  }
  return ids;
}
}  // namespace

std::vector<int> prompt_tokens(const model::Model& m, const model::Tokenizer& tok, const std::string& text, bool chat) {
  TQ_CHECK(!chat || m.config.chat_template != model::ChatTemplate::None, "chat prompt: the model {}", m.config.chat_template_missing());
  if (chat) return prompt_tokens(m, tok, render_chat(m.config.chat_template, text));
  return start_token_if_empty(tok, tok.encode(text, wants_bos(m, tok)));
}

std::vector<int> prompt_tokens(const model::Model& m, const model::Tokenizer& tok, const ChatPrompt& chat) {
  return start_token_if_empty(tok, tok.encode(chat.text, wants_bos(m, tok), chat.content));
}

bool is_stop_token(const model::Model& m, const model::Tokenizer& tok, int id) {
  if (id < 0) return false;  // eot_id / bos_id are -1 when the tokenizer has none
  return id == tok.eos_id() || id == tok.eot_id() || (m.config.source == model::WeightSource::Llama2c && id == tok.bos_id());
}

namespace {

// One speculative step. `next` is the last token (emitted, not fed); the engine scores it with
// the drafts in one pass. Drafted tokens the target agrees with are emitted (through `emit`, which
// says false on a stop token); `next` becomes the target's token after them. Returns false when
// a stop token ended the text. The cache keeps `next` and the emitted drafts only.
bool verify_drafts(Engine& e, int seq, int& next, const std::vector<int>& drafts, Sampler& sampler, Speculation& sp,
                   const std::function<bool(int)>& emit) {
  const uint32_t before = e.seq_len(seq);
  BatchItem item{seq, {next}, true};
  item.tokens.insert(item.tokens.end(), drafts.begin(), drafts.end());
  // Greedy, the runner takes every row's argmax on its device: ids come back, not logits.
  const Verdict v = sampler.params().greedy() ? verify_greedy(e.forward_greedy({item}), drafts)
                                              : verify_sampled(e.forward({item}), drafts, sampler);
  uint32_t fed = 0;  // drafts emitted (a stop token among them ends the text, unfed)
  bool more = true;
  while (fed < v.kept && (more = emit(drafts[fed]))) ++fed;
  sp.stats.steps++, sp.stats.drafted += drafts.size(), sp.stats.accepted += fed;
  sp.update(uint32_t(drafts.size()), fed);
  if (more) next = v.next;
  e.truncate(seq, before + 1 + fed);
  return more;
}

}  // namespace

uint32_t generate(Engine& e, int seq, std::vector<float> logits, Sampler& sampler, const model::Model& m, const model::Tokenizer& tok,
                  const GenerateOptions& o, const std::function<void(int)>& on_token) {
  const uint32_t start = e.seq_len(seq);
  uint32_t generated = 0;
  // Another token is sampled while both limits allow one more: it goes at position start + generated.
  const auto more = [&] { return generated < o.max_tokens && (o.context == 0 || start + generated < o.context); };
  if (!more()) return 0;
  Speculation* sp = o.speculation;
  const auto emit = [&](int t) {
    if (is_stop_token(m, tok, t)) return false;
    on_token(t);
    ++generated;
    if (sp) sp->drafter->extend({&t, 1});
    return true;
  };
  // The prefill's logits are here already; later steps sample on the runner's device (only the
  // ids come back).
  int next = sampler.sample(logits);
  while (emit(next) && more()) {
    // Drafts fit where their tokens and the target's one after them stay within both limits.
    uint32_t room = sp ? std::min(sp->length(), o.max_tokens - generated - 1) : 0;
    if (o.context) room = std::min(room, o.context - start - generated - 1);
    room = std::min(room, e.options().max_chunk - 1);  // the step carries the last token and the drafts
    const std::vector<int> drafts = room ? sp->drafter->draft(room) : std::vector<int>{};
    if (!drafts.empty()) {
      if (!verify_drafts(e, seq, next, drafts, sampler, *sp, emit)) break;
      continue;  // room kept the target's token within the limits: the loop emits it
    }
    if (sp) sp->stats.plain_steps++;
    const std::vector<BatchItem> step{BatchItem{seq, {next}, false}};
    next = e.forward_sample(step, {sampler.next_args()})[0];
  }
  return generated;
}

}  // namespace tq::engine
