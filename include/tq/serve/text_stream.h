// Generated tokens to text for a client: bytes are released only as whole UTF-8 characters (a
// character may span tokens), and stop strings are found across token boundaries; while a stop
// string could still be starting, its possible first characters are held back, so a streaming
// client never sees a part of one (vLLM's and llama-server's behaviour).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "tq/model/tokenizer.h"

namespace tq::serve {

class TextStream {
 public:
  // `prev`: the last prompt token (decode_next drops the space SentencePiece put after BOS).
  TextStream(const model::Tokenizer& tok, int prev, std::vector<std::string> stops);

  // Appends a token; returns the text now safe to release. After a stop string was found,
  // stopped() is true and later tokens are ignored.
  std::string push(int token);
  // The rest at the end of the request (held bytes, an incomplete character as U+FFFD).
  std::string finish();
  bool stopped() const { return stopped_; }
  const std::string& text() const { return text_; }  // everything released so far, and at the end all of it

 private:
  std::string release(bool final);
  const model::Tokenizer& tok_;
  int prev_;
  std::vector<std::string> stops_;
  size_t hold_ = 0;        // longest stop string - 1
  std::string pending_;    // decoded, not released yet
  std::string text_;       // released
  bool stopped_ = false;
};

// Bytes of `s` that form whole UTF-8 characters from the start (an invalid byte counts as one).
size_t utf8_complete_prefix(std::string_view s);
// Characters (code points) of UTF-8 text: its bytes that do not continue a character.
size_t utf8_characters(std::string_view s);

}  // namespace tq::serve
