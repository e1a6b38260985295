// The OpenAI API's request and response bodies (https://platform.openai.com/docs/api-reference):
// /v1/completions and /v1/chat/completions, their streamed chunks and the error body. Parsing
// checks every field it reads and names the field that is wrong; fields it does not implement
// are refused by name when they ask for something other than the default, never silently dropped.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tq/engine/generation.h"
#include "tq/engine/sampler.h"
#include "tq/engine/speculative.h"

namespace tq::serve {

// An error for the client: HTTP status, OpenAI error type and the parameter at fault.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = {}, std::string type = "invalid_request_error", std::string code = {})
      : std::runtime_error(message), status(status), param(std::move(param)), type(std::move(type)), code(std::move(code)) {}
  int status;
  std::string param, type;
  std::string code;  // OpenAI's error code where it has one (model_not_found, context_length_exceeded); "" is null
};
// {"error": {"message", "type", "param", "code"}}
nlohmann::json error_body(const ApiError& e);

struct CompletionRequest {
  bool chat = false;
  std::string model;                         // "" when not given
  std::string prompt;                        // completions: the text (when prompt_ids is empty)
  std::vector<int> prompt_ids;               // completions: a prompt given as token ids
  std::vector<engine::ChatMessage> messages; // chat
  std::optional<uint32_t> max_tokens;        // not given: completions 16, chat up to the context
  std::string max_key = "max_tokens";        // the field it came in (chat: max_completion_tokens where given), for errors
  engine::SamplingParams sampling;           // temperature 1 unless given (the API's default)
  bool seeded = false;                       // seed given; else the server draws one
  std::vector<std::string> stop;             // at most 64, none empty
  bool stream = false, include_usage = false;
  bool echo = false;                         // completions: the prompt before the completion
  // Request::logprobs: completions' "logprobs" (an integer), chat's "logprobs": true with
  // "top_logprobs"; -1 when not asked. With echo, the prompt's tokens are scored too
  // (Request::prompt_logprobs), and max_tokens may be 0.
  int logprobs = -1;
  // tq's extension "speculative": a --spec value ("ngram:k=4") or "off"; not given: the server's.
  std::optional<std::optional<engine::SpeculativeSpec>> speculation;
};

// Throws ApiError (400) naming the field: a body that is not an object, wrong types, values out
// of range, n other than 1, logprobs over 20, max_tokens 0 without echo and
// logprobs, a missing prompt or messages.
CompletionRequest parse_completion(const nlohmann::json& body, bool chat);

// Response bodies. `id`: "cmpl-..." or "chatcmpl-..."; `created`: Unix seconds.
struct ResponseHead {
  std::string id, model;
  int64_t created = 0;
  bool chat = false;
};
struct Usage {
  uint32_t prompt = 0, completion = 0;
};
nlohmann::json usage_json(const Usage& u);
// One generated token's log-probabilities as reported: its text (the tokenizer's decode_next after
// the token before it; a part of a UTF-8 character where a character spans tokens) and those of
// the most likely tokens.
struct LogprobEntry {
  std::string text;
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;
  bool scored = true;  // false: an echoed prompt's first token, which has no log-probability (null)
};
// A choice's "logprobs" for `entries`. Chat: {"content": [{token, logprob, bytes, top_logprobs}],
// "refusal": null}. Completions: {tokens, token_logprobs, top_logprobs, text_offset}, the offsets
// in characters from `offset` (the characters of the text before the first entry's token); an
// unscored entry's token_logprobs and top_logprobs are null.
nlohmann::json logprobs_json(bool chat, std::span<const LogprobEntry> entries, size_t offset);
// `logprobs`: the choice's "logprobs" (null when not asked).
nlohmann::json completion_body(const ResponseHead& h, const std::string& text, const std::string& finish, const Usage& u,
                               const nlohmann::json& logprobs = nullptr);
// A streamed chunk: text (chat: delta content; the first chat chunk carries the role), and the
// finish reason on the last one ("" for none); `logprobs` those of the tokens since the last chunk.
nlohmann::json chunk_body(const ResponseHead& h, const std::string& text, const std::string& finish, bool first,
                          const nlohmann::json& logprobs = nullptr);
// The usage chunk at the end of a stream when stream_options.include_usage: no choices.
nlohmann::json usage_chunk(const ResponseHead& h, const Usage& u);

// One server-sent event line pair: "data: <json>\n\n" (invalid UTF-8 replaced, never thrown).
std::string sse(const nlohmann::json& j);
// JSON text for a body, invalid UTF-8 replaced by U+FFFD.
std::string dump(const nlohmann::json& j);

}  // namespace tq::serve
