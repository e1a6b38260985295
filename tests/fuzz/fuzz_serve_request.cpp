// libFuzzer harness: the request bodies of tq serve's /v1/completions and /v1/chat/completions,
// parsed as the server does (Server::Impl::complete): JSON text, then parse_completion into a
// CompletionRequest, and the error body the server would send back. Bad input may only be
// refused with an ApiError (or be invalid JSON): any other exception is a finding.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "tq/serve/openai.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) return 0;
  for (bool chat : {false, true}) {
    try {
      const tq::serve::CompletionRequest r = tq::serve::parse_completion(j, chat);
      (void)r;
    } catch (const tq::serve::ApiError& e) {
      (void)tq::serve::dump(tq::serve::error_body(e));  // the message quotes the client's bytes
    }
  }
  return 0;
}
