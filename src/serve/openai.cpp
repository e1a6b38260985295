#include "tq/serve/openai.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "tq/serve/scheduler.h"
#include "tq/serve/text_stream.h"

namespace tq::serve {

using json = nlohmann::json;

namespace {

ApiError bad(const std::string& field, const std::string& what) { return ApiError(400, fmt::format("'{}' {}", field, what), field); }

const json* field(const json& body, const char* key) {
  const auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::optional<double> number(const json& body, const char* key, double lo, double hi) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) throw bad(key, fmt::format("must be a number, got {}", v->type_name()));
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) throw bad(key, fmt::format("must be in [{}, {}], got {}", lo, hi, x));
  return x;
}

// JSON numbers past 64-bit integers parse as doubles: an integral one is out of range, not a fraction.
bool integral_but_huge(const json& v) {
  return v.is_number_float() && std::abs(v.get<double>()) >= 0x1p63 && std::nearbyint(v.get<double>()) == v.get<double>();
}

std::optional<int64_t> integer(const json& body, const char* key, int64_t lo, int64_t hi) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (integral_but_huge(*v)) throw bad(key, fmt::format("must be in [{}, {}], got {}", lo, hi, v->dump()));
  if (!v->is_number_integer()) throw bad(key, fmt::format("must be an integer, got {}", v->is_number() ? v->dump() : v->type_name()));
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX)) throw bad(key, fmt::format("is too large: {}", v->dump()));
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi) throw bad(key, fmt::format("must be in [{}, {}], got {}", lo, hi, x));
  return x;
}

// `name`: the field's name in errors (a nested one's path, e.g. stream_options.include_usage).
bool boolean(const json& body, const char* key, const char* name = nullptr) {
  const json* v = field(body, key);
  if (!v) return false;
  if (!v->is_boolean()) throw bad(name ? name : key, fmt::format("must be true or false, got {}", v->type_name()));
  return v->get<bool>();
}

// Fields this server does not implement: accepted at their defaults only.
void refuse_unsupported(const json& body) {
  if (const auto n = integer(body, "n", 1, 1 << 20); n && *n != 1) throw bad("n", fmt::format("must be 1 (one choice per request), got {}", *n));
  if (const auto b = integer(body, "best_of", 1, 1 << 20); b && *b != 1) throw bad("best_of", fmt::format("must be 1, got {}", *b));
  for (const char* k : {"frequency_penalty", "presence_penalty"})
    if (const auto p = number(body, k, -2, 2); p && *p != 0) throw bad(k, "is not supported (send 0 or leave it out)");
  if (const json* lb = field(body, "logit_bias"); lb && !lb->empty()) throw bad("logit_bias", "is not supported");
  // What clients send when they mean "none" (the openai package's and LangChain's defaults) passes.
  for (const char* k : {"tools", "functions"})
    if (const json* v = field(body, k); v && !(v->is_array() && v->empty())) throw bad(k, "is not supported by this server (send [] or leave it out)");
  for (const char* k : {"tool_choice", "function_call"})
    if (const json* v = field(body, k); v && *v != "none" && *v != "auto")
      throw bad(k, "is not supported by this server (send \"none\" or leave it out)");
  if (const json* v = field(body, "response_format"); v && *v != json{{"type", "text"}})
    throw bad("response_format", "is not supported by this server (send {\"type\": \"text\"} or leave it out)");
  if (const json* v = field(body, "suffix"); v && *v != "") throw bad("suffix", "is not supported by this server (send \"\" or leave it out)");
  if (const json* v = field(body, "prompt_logprobs"); v && !v->is_null())  // vLLM's: its own response field, not made here
    throw bad("prompt_logprobs", "is not supported by this server: ask for \"echo\": true with \"logprobs\" (OpenAI's form) instead");
  // vLLM's sampling extensions and OpenAI's newer options that would change the text: refused
  // unless at their defaults, where a client moving from vLLM or OpenAI would otherwise get text
  // they did not shape, unannounced. (Fields this server does not know at all are ignored, as
  // vLLM ignores them.)
  if (const auto p = number(body, "repetition_penalty", 0, 1e9); p && *p != 1)
    throw bad("repetition_penalty", "is not supported (send 1 or leave it out)");
  if (const auto p = number(body, "length_penalty", -1e9, 1e9); p && *p != 1) throw bad("length_penalty", "is not supported (send 1 or leave it out)");
  if (const json* v = field(body, "stop_token_ids"); v && !(v->is_array() && v->empty()))
    throw bad("stop_token_ids", "is not supported: give stop strings in \"stop\" (or send [] or leave it out)");
  if (const auto m = integer(body, "min_tokens", 0, INT32_MAX); m && *m != 0) throw bad("min_tokens", "is not supported (send 0 or leave it out)");
  for (const char* k : {"ignore_eos", "include_stop_str_in_output"})
    if (boolean(body, k)) throw bad(k, "is not supported (send false or leave it out)");
  if (const json* v = field(body, "skip_special_tokens"); v && *v != true)
    throw bad("skip_special_tokens", "is not supported: special tokens are always left out of the text (send true or leave it out)");
  for (const char* k : {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend", "guided_whitespace_pattern",
                        "structured_outputs", "prediction", "audio", "reasoning_effort", "web_search_options"})
    if (field(body, k)) throw bad(k, "is not supported by this server (leave it out)");
  if (const json* v = field(body, "modalities"); v && *v != json::array({"text"}))
    throw bad("modalities", "is not supported by this server beyond [\"text\"]");
  if (const json* v = field(body, "user"); v && !v->is_string()) throw bad("user", fmt::format("must be a string, got {}", v->type_name()));
}

// Completions: "logprobs" is the number of alternatives (0..20). Chat: "logprobs" true asks for
// them, "top_logprobs" (0..20) how many alternatives.
int parse_logprobs(const json& body, bool chat) {
  if (!chat) {
    const json* lp = field(body, "logprobs");
    if (lp && lp->is_boolean() && !lp->get<bool>()) return -1;  // false: not asked, as chat reads it
    return int(integer(body, "logprobs", 0, kMaxLogprobs).value_or(-1));
  }
  const json* top = field(body, "top_logprobs");
  if (!boolean(body, "logprobs")) {
    if (top) throw bad("top_logprobs", "needs \"logprobs\": true");
    return -1;
  }
  return int(integer(body, "top_logprobs", 0, kMaxLogprobs).value_or(0));
}

json byte_values(const std::string& s) {
  json b = json::array();
  for (const char c : s) b.push_back(int(uint8_t(c)));
  return b;
}

std::string message_content(const json& c, size_t i) {
  const std::string name = fmt::format("messages[{}].content", i);
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) throw bad(name, fmt::format("must be a string or an array of text parts, got {}", c.type_name()));
  std::string text;
  for (const json& part : c) {
    const json* type = part.is_object() ? field(part, "type") : nullptr;
    const json* t = part.is_object() ? field(part, "text") : nullptr;
    if (!type || *type != "text" || !t || !t->is_string()) throw bad(name, "parts must be {\"type\": \"text\", \"text\": \"...\"}");
    text += t->get<std::string>();
  }
  return text;
}

}  // namespace

json error_body(const ApiError& e) {
  return json{{"error",
               {{"message", e.what()},
                {"type", e.type},
                {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

CompletionRequest parse_completion(const json& body, bool chat) {
  if (!body.is_object()) throw ApiError(400, fmt::format("the request body must be a JSON object, got {}", body.type_name()));
  CompletionRequest r;
  r.chat = chat;
  if (const json* m = field(body, "model")) {
    if (!m->is_string()) throw bad("model", fmt::format("must be a string, got {}", m->type_name()));
    r.model = m->get<std::string>();
  }
  refuse_unsupported(body);
  if (chat) {
    // vLLM's chat-template options: this server renders the model's own template, and ends it
    // with the opening of the assistant's reply.
    if (const json* v = field(body, "add_generation_prompt"); v && *v != true)
      throw bad("add_generation_prompt", "is not supported by this server: the prompt always ends with the assistant's turn (send true or leave it out)");
    if (const json* v = field(body, "continue_final_message"); v && *v != false)
      throw bad("continue_final_message", "is not supported by this server (send false or leave it out)");
    for (const char* k : {"chat_template", "chat_template_kwargs"})
      if (const json* v = field(body, k); v && !v->is_null() && !(v->is_object() && v->empty()))
        throw bad(k, "is not supported by this server: it renders the model's own chat template (leave it out)");
    const json* msgs = field(body, "messages");
    if (!msgs) throw ApiError(400, "'messages' is required", "messages");
    if (!msgs->is_array() || msgs->empty()) throw bad("messages", "must be a non-empty array of {role, content}");
    for (size_t i = 0; i < msgs->size(); ++i) {
      const json& m = (*msgs)[i];
      const json* role = m.is_object() ? field(m, "role") : nullptr;
      if (!role || !role->is_string()) throw bad(fmt::format("messages[{}].role", i), "must be a string");
      const std::string rs = role->get<std::string>();
      if (rs != "system" && rs != "user" && rs != "assistant" && rs != "developer")
        throw bad(fmt::format("messages[{}].role", i), fmt::format("must be system, developer, user or assistant, got '{}'", rs));
      const json* content = field(m, "content");
      if (!content) throw bad(fmt::format("messages[{}].content", i), "is required");
      r.messages.push_back({rs == "developer" ? "system" : rs, message_content(*content, i)});
    }
  } else {
    const json* p = field(body, "prompt");
    if (!p) throw ApiError(400, "'prompt' is required", "prompt");
    if (p->is_string()) {
      r.prompt = p->get<std::string>();
    } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
      r.prompt = (*p)[0].get<std::string>();
    } else if (const json& ids = p->is_array() && p->size() == 1 && (*p)[0].is_array() ? (*p)[0] : *p;  // a batch of one: [[ids]]
               ids.is_array() && !ids.empty() && std::all_of(ids.begin(), ids.end(), [](const json& t) { return t.is_number_integer(); })) {
      for (const json& t : ids) {
        if (t.is_number_unsigned() && t.get<uint64_t>() > uint64_t(INT32_MAX)) throw bad("prompt", fmt::format("token id {} is out of range", t.dump()));
        const int64_t id = t.get<int64_t>();
        if (id < 0 || id > INT32_MAX) throw bad("prompt", fmt::format("token id {} is out of range", id));
        r.prompt_ids.push_back(int(id));
      }
    } else if (const json& ids = p->is_array() && p->size() == 1 && (*p)[0].is_array() ? (*p)[0] : *p;
               ids.is_array() && !ids.empty() && std::all_of(ids.begin(), ids.end(), [](const json& t) { return t.is_number(); })) {
      const auto it = std::find_if(ids.begin(), ids.end(), [](const json& t) { return !t.is_number_integer(); });
      throw bad("prompt", fmt::format("token ids must be integers, got {} at [{}]", it->dump(), it - ids.begin()));
    } else if (p->is_array() && p->empty()) {
      throw bad("prompt", "must not be empty");
    } else if (p->is_array() && p->size() > 1) {
      throw bad("prompt", "must be one prompt: this server takes one prompt per request (send them as separate requests)");
    } else {
      throw bad("prompt", fmt::format("must be a string or an array of token ids, got {}", p->type_name()));
    }
    r.echo = boolean(body, "echo");
  }
  const char* max_key = chat && field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (const auto m = integer(body, max_key, 0, INT32_MAX)) r.max_tokens = uint32_t(*m);
  r.max_key = max_key;
  r.sampling.temperature = float(number(body, "temperature", 0, 2).value_or(1.0));
  if (const json* v = field(body, "top_p")) {
    if (!v->is_number()) throw bad("top_p", fmt::format("must be a number, got {}", v->type_name()));
    const double p = v->get<double>();
    if (!(p > 0 && p <= 1)) throw bad("top_p", fmt::format("must be in (0, 1], got {}", p));
    r.sampling.top_p = std::max(float(p), std::numeric_limits<float>::min());  // a positive top_p below float's range: the top token
  }
  const int64_t top_k = integer(body, "top_k", -1, INT32_MAX).value_or(0);  // vLLM's extension; -1 or 0: off
  r.sampling.top_k = top_k < 0 ? 0 : int(top_k);
  r.sampling.min_p = float(number(body, "min_p", 0, 1).value_or(0.0));  // vLLM's extension
  if (const json* s = field(body, "seed")) {
    if (integral_but_huge(*s)) throw bad("seed", fmt::format("must be in [-2^63, 2^64 - 1], got {}", s->dump()));
    if (!s->is_number_integer()) throw bad("seed", fmt::format("must be an integer, got {}", s->is_number() ? s->dump() : s->type_name()));
    r.sampling.seed = s->is_number_unsigned() ? s->get<uint64_t>() : uint64_t(s->get<int64_t>());
    r.seeded = true;
  }
  if (const json* sp = field(body, "speculative")) {  // tq's extension
    if (!sp->is_string()) throw bad("speculative", fmt::format("must be a string (e.g. \"ngram:k=4\" or \"off\"), got {}", sp->type_name()));
    const std::string text = sp->get<std::string>();
    if (text == "off") {
      r.speculation.emplace(std::nullopt);
    } else {
      try {
        r.speculation.emplace(engine::parse_speculative_spec(text));
      } catch (const Error& e) {
        throw bad("speculative", e.what());
      }  // "draft" needs a draft model: the scheduler's check says whether this server has one
    }
  }
  if (const json* s = field(body, "stop")) {
    if (s->is_string()) {
      r.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      for (const json& x : *s) {
        if (!x.is_string()) throw bad("stop", "must be a string or an array of strings");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      throw bad("stop", fmt::format("must be a string or an array of strings, got {}", s->type_name()));
    }
    // OpenAI's chat takes 4; vLLM and llama.cpp any number, and lm-eval sends a task's stops and the
    // EOS text (humaneval: 6). Each string is looked for in the held-back text only: cheap.
    constexpr size_t kMaxStops = 64;
    if (r.stop.size() > kMaxStops) throw bad("stop", fmt::format("takes at most {} strings, got {}", kMaxStops, r.stop.size()));
    for (const std::string& x : r.stop)
      if (x.empty()) throw bad("stop", "strings must not be empty");
  }
  r.logprobs = parse_logprobs(body, chat);
  if (r.max_tokens == 0 && !(r.echo && r.logprobs >= 0))
    throw bad(max_key, "must be at least 1; 0 only scores the prompt, with \"echo\": true and \"logprobs\"");
  r.stream = boolean(body, "stream");
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) throw bad("stream_options", "must be an object");
    if (!r.stream) throw bad("stream_options", "is only allowed with stream: true");
    r.include_usage = boolean(*so, "include_usage", "stream_options.include_usage");
  }
  return r;
}

json usage_json(const Usage& u) {
  return json{{"prompt_tokens", u.prompt}, {"completion_tokens", u.completion}, {"total_tokens", u.prompt + u.completion}};
}

// `s` as the response will spell it: invalid UTF-8 (a byte token, part of a character) replaced by
// U+FFFD as dump() replaces it.
std::string as_sent(const std::string& s) {
  return json::parse(json(s).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}

json logprobs_json(bool chat, std::span<const LogprobEntry> entries, size_t offset) {
  if (chat) {
    json content = json::array();
    for (const LogprobEntry& e : entries) {
      json top = json::array();
      for (const auto& [t, lp] : e.top) top.push_back({{"token", t}, {"logprob", lp}, {"bytes", byte_values(t)}});
      content.push_back({{"token", e.text}, {"logprob", e.logprob}, {"bytes", byte_values(e.text)}, {"top_logprobs", top}});
    }
    return json{{"content", content}, {"refusal", nullptr}};
  }
  json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  for (const LogprobEntry& e : entries) {
    tokens.push_back(e.text);
    lps.push_back(e.scored ? json(e.logprob) : json(nullptr));
    // Keyed by the text as sent: two ids with one text (or two byte tokens, each U+FFFD) keep the
    // more likely one's (e.top is most likely first), and the sampled token is always there, as
    // OpenAI's legacy completions give it (up to logprobs + 1 entries).
    json top = json::object();
    for (const auto& [t, lp] : e.top)
      if (const std::string k = as_sent(t); !top.contains(k)) top[k] = lp;
    if (const std::string k = as_sent(e.text); !top.contains(k)) top[k] = e.logprob;
    tops.push_back(e.scored ? top : json(nullptr));
    offsets.push_back(offset);
    offset += utf8_characters(e.text);
  }
  return json{{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

json completion_body(const ResponseHead& h, const std::string& text, const std::string& finish, const Usage& u, const json& logprobs) {
  json choice = {{"index", 0}, {"finish_reason", finish}, {"logprobs", logprobs}};
  if (h.chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  return json{{"id", h.id},         {"object", h.chat ? "chat.completion" : "text_completion"},
              {"created", h.created}, {"model", h.model},
              {"choices", {choice}}, {"usage", usage_json(u)}};
}

json chunk_body(const ResponseHead& h, const std::string& text, const std::string& finish, bool first, const json& logprobs) {
  json choice = {{"index", 0}, {"logprobs", logprobs}, {"finish_reason", finish.empty() ? json(nullptr) : json(finish)}};
  if (h.chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || (first && finish.empty())) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  return json{{"id", h.id}, {"object", h.chat ? "chat.completion.chunk" : "text_completion"}, {"created", h.created}, {"model", h.model},
              {"choices", {choice}}};
}

json usage_chunk(const ResponseHead& h, const Usage& u) {
  return json{{"id", h.id},       {"object", h.chat ? "chat.completion.chunk" : "text_completion"},
              {"created", h.created}, {"model", h.model}, {"choices", json::array()}, {"usage", usage_json(u)}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

}  // namespace tq::serve
